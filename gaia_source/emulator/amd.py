"""AMD GAIA API server (amd-gaia 0.25, FastAPI): GAIA agents as OpenAI models (protocol reference §13, §14).

``GET /health``, ``GET /v1/models`` and ``POST /v1/chat/completions`` only (no embeddings, retrieve or info); errors
are FastAPI's ``{"detail"}``; the one built-in model is ``gaia`` and an unknown model is a 404; with an API key set, a
missing or wrong key is a 401 with ``WWW-Authenticate: Bearer``; the last message must be a user message and content
parts must be text (400 otherwise); system/developer messages join the agent's system prompt; usage is estimated
(characters / 4); JSON is ``json.dumps``-spaced; streams open with an empty assistant delta, carry one chunk per agent
event (each ending in a newline), end with a ``delta: {}`` chunk, have no usage, and report an agent failure in-band.
``GET /health`` reports ``ok`` or ``degraded`` with per-component status. Requests are served concurrently.
"""

from __future__ import annotations

import uuid
from typing import Any, ClassVar, NoReturn, Sequence

import orjson

from .flavor import Completion, Endpoint, Flavor, FlavorSpec, StreamEvent
from .server import ClientError, Handled, NodeBase

MISSING_KEY = "Missing API key. Send 'Authorization: Bearer <key>' matching GAIA_API_KEY on the server."


class Amd(Flavor):
    """amd-gaia 0.25's ``gaia api`` server with its built-in ``gaia`` agent."""

    NAME: ClassVar[str] = "amd"
    SPEC: ClassVar[FlavorSpec] = FlavorSpec(("gaia",), None, owned_by="amd-gaia")
    SPACED_JSON: ClassVar[bool] = True
    HONOURS_N: ClassVar[bool] = False
    EMPTY_MESSAGES: ClassVar[str] = "messages is required"

    # --- routes and errors ---------------------------------------------------------------------------------------

    def serve_public(self, method: str, path: str) -> bool:
        """``GET /health`` needs no key."""
        if path == "/health" and method == "GET":
            degraded = self.node.degraded
            llm = {"status": "unavailable" if degraded else "ready", "backend": "lemonade",
                   "model": "Qwen3-Coder-30B-A3B-Instruct-GGUF", "url": "http://localhost:8000/api/v1"}
            components = {"api": {"status": "ready"}, "llm": llm, "rag": {"status": "not_configured"}}
            self.send_json(200, {"status": "degraded" if degraded else "ok", "service": "gaia-api",
                                 "components": components}, spaced=True)
            return True
        return False

    def routes(self) -> dict[str, tuple[str, Endpoint]]:
        """Chat and models only."""
        return {"/v1/chat/completions": ("POST", self.chat), "/v1/models": ("GET", self.models)}

    def reject_unauthorized(self, header: str) -> None:
        """401 naming the missing header, or the wrong key."""
        challenge = [("WWW-Authenticate", "Bearer")]
        if not header:
            self.send_json(401, {"detail": MISSING_KEY}, headers=challenge)
        elif not header.startswith("Bearer "):
            self.send_json(401, {"detail": "Malformed Authorization header. Expected 'Bearer <key>'."},
                           headers=challenge)
        else:
            self.send_json(401, {"detail": "Invalid API key."}, headers=challenge)

    def answer_error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        """FastAPI's ``{"detail": message}``."""
        self.send_json(status, {"detail": message})

    def reject_json(self, what: str, exc: orjson.JSONDecodeError) -> NoReturn:
        """FastAPI: 422 ``json_invalid``."""
        self.send_json(422, {"detail": [{"type": "json_invalid", "loc": ["body"], "msg": "JSON decode error"}]})
        raise Handled

    def reject_shape(self, what: str, required: str, problem: str, body: bytes) -> NoReturn:
        """FastAPI: 422 ``missing`` for the required field."""
        self.send_json(422, {"detail": [{"type": "missing", "loc": ["body", required], "msg": "Field required"}]})
        raise Handled

    # --- chat ----------------------------------------------------------------------------------------------------

    @classmethod
    def resolve_chat_model(cls, requested: Any, node: NodeBase) -> str:
        """The agent asked for: an unknown id is a 404."""
        if requested not in cls.chat_models(node):
            raise ClientError(404, f"Model '{requested}' not found")
        return str(requested)

    def check_chat(self, messages: list[dict[str, Any]]) -> None:
        """The last message must be a user message (400)."""
        if messages[-1].get("role") != "user":
            raise ClientError(400, "The last message must be a user message.")
        for message in messages:
            content = message.get("content")
            for part in content if isinstance(content, list) else []:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                if kind != "text":
                    raise ClientError(400, f"Unsupported content part type: {kind!r}. Only 'text' parts are supported.")

    def answer(self, question: str, model: str) -> str:
        """The agent's event text, ending in a newline."""
        answer = super().answer(question, model)
        return answer + "\n" if answer else answer

    def completion_id(self, request: dict[str, Any]) -> str:
        """Always ``chatcmpl-<uuid4>`` (``user`` is not echoed)."""
        return f"chatcmpl-{uuid.uuid4()}"

    def usage(self, messages: Sequence[dict[str, Any]], answer: str) -> dict[str, int]:
        """Estimated: characters / 4."""
        prompt = sum(len(m.get("content") or "") for m in messages if isinstance(m.get("content"), str)) // 4
        completion = len(answer) // 4
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def reply_message(self, answer: str, calls: list[dict[str, Any]] | None) -> dict[str, Any]:
        """``content`` always, ``tool_calls: null`` always (agents make no client-side tool calls)."""
        return {"role": "assistant", "content": answer, "tool_calls": None}

    def stream_events(self, completion: Completion) -> list[StreamEvent]:
        """Empty assistant delta, one chunk per line, ``delta: {}`` with the finish reason; in-band error on failure."""
        c = completion

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            return {"id": c.id, "object": "chat.completion.chunk", "created": c.created, "model": c.model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}

        events: list[StreamEvent] = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": line}) for line in c.answer.splitlines(keepends=True)]
        if "[[inband-error]]" in c.question:
            return events[:2] + [{"error": {"message": "Agent processing failed: emulated agent crash",
                                            "type": "server_error"}}]
        events.append(chunk({}, c.finish))
        return events

    @classmethod
    def model_card(cls, model_id: str, created: int) -> dict[str, Any]:
        """An agent: with ``description`` and token limits."""
        card = super().model_card(model_id, created)
        card.update(description=f"GAIA agent {model_id}", max_input_tokens=32768, max_output_tokens=8192)
        return card
