"""llama-nexus, the open-source line of gaia-nexus (Gaia node >= 0.4.28), as on its main branch (protocol reference §1,
§8, §9B, §14).

Models and info are GET-only (other methods: a bare 405) and ``/v1/retrieve`` is gone (the static web UI fallback: POST
405, GET a 404 page). axum rejects bodies before the handler as text: 415 without a JSON Content-Type, 400 for broken
JSON, 422 for the wrong shape. The nexus's own errors are OpenAI-style JSON. Streaming is simulated: the whole answer
replayed in ~10-character word-aligned chunks whose ``choices[0].index`` counts chunks, with ``finish_reason`` and usage
on the last one (an empty answer is only ``[DONE]``); the generation time passes before the first chunk. ``/v1/info``
is ``{"models": {kind: [...]}}``; ``max_tokens`` is dropped unread (only ``max_completion_tokens`` caps an answer). The
main branch adds ``POST /v1/responses`` (usage *estimated*: characters / 4) and ``GET /health``. Requests are served
concurrently. Gaia node 0.6 itself (gaia-nexus 0.8.2) is :mod:`.node06`.
"""

from __future__ import annotations

from typing import Any, ClassVar, NoReturn, Sequence

import orjson

from .content import word_pieces
from .flavor import Completion, Endpoint, Flavor, FlavorSpec, StreamEvent
from .server import Handled, NodeBase

_CODES = {404: "not_found", 401: "invalid_api_key"}
"""The ``code`` of nexus JSON errors by status (others: ``operation_failed``)."""


class Nexus(Flavor):
    """llama-nexus main (the gaia-nexus 0.8 line) in front of llama-api-server."""

    NAME: ClassVar[str] = "nexus"
    SPEC: ClassVar[FlavorSpec] = FlavorSpec(("Qwen3-4B",), "Nomic-embed-text-v1.5")
    OUTPUT_LIMIT_FIELDS: ClassVar[tuple[str, ...]] = ("max_completion_tokens",)  # endpoints 0.35: no max_tokens
    REPLAYS_STREAM: ClassVar[bool] = True

    # --- routes and errors ---------------------------------------------------------------------------------------

    def routes(self) -> dict[str, tuple[str, Endpoint]]:
        """Chat, embeddings, models, info, and the main branch's responses."""
        return {**super().routes(), "/v1/responses": ("POST", self.create_response)}

    def serve_public(self, method: str, path: str) -> bool:
        """``GET /health`` (main branch)."""
        if path == "/health" and method == "GET":
            self.send_json(200, {"status": "ok"})
            return True
        return False

    def response_usage(self, messages: Sequence[dict[str, Any]], answer: str) -> dict[str, int]:
        """Estimated from characters (/ 4): the nexus does not count tokens."""
        prompt = sum(len(m.get("content") or "") for m in messages) // 4
        output = len(answer) // 4
        return {"input_tokens": prompt, "output_tokens": output, "total_tokens": prompt + output}

    def unknown_route(self, method: str, path: str) -> None:
        """The static web UI fallback: POST gives a bare 405, other methods its 404 page."""
        if method == "POST":
            self.send(405, b"", None)
        else:
            self.send_static_404()

    def wrong_method(self, method: str, path: str) -> None:
        """axum's method router: a bare 405."""
        self.send(405, b"", None)

    def answer_error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        """OpenAI-style JSON: ``{"error": {"message", "type", "param", "code"}}``."""
        code = _CODES.get(status, "operation_failed")
        self.send_json(status, {"error": {"message": message, "type": kind, "param": None, "code": code}})

    def check_content_type(self) -> None:
        """axum's ``Json`` extractor: 415 text unless the Content-Type is ``application/json``."""
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if ctype != "application/json":
            self.send_text(415, "Expected request with `Content-Type: application/json`")
            raise Handled

    def reject_json(self, what: str, exc: orjson.JSONDecodeError) -> NoReturn:
        """axum: 400 text."""
        self.send_text(400, f"Failed to parse the request body as JSON: {exc}")
        raise Handled

    def reject_shape(self, what: str, required: str, problem: str, body: bytes) -> NoReturn:
        """axum: 422 text."""
        self.send_text(422, f"Failed to deserialize the JSON body into the target type: {problem}")
        raise Handled

    # --- chat ----------------------------------------------------------------------------------------------------

    def fails(self, question: str) -> bool:
        """The nexus waits for the whole answer before streaming, so a backend error is a 500, never in-band."""
        return "[[fail]]" in question or "[[inband-error]]" in question

    def stream_events(self, completion: Completion) -> list[StreamEvent]:
        """The replayed stream: ~10-char chunks, ``index`` = chunk ordinal, finish_reason and usage on the last one."""
        c = completion
        chunks = word_pieces(c.answer, min_chars=10)
        events: list[StreamEvent] = []
        for ordinal, piece in enumerate(chunks):
            last = ordinal == len(chunks) - 1
            event: dict[str, Any] = {
                "id": c.id, "object": "chat.completion.chunk", "created": c.created, "model": c.model,
                "choices": [{"index": ordinal, "delta": {"role": "assistant", "content": piece}, "logprobs": None,
                             "finish_reason": "stop" if last else None}],
            }
            if last:
                event["usage"] = c.usage
            events.append(event)
        return events

    # --- models and info -----------------------------------------------------------------------------------------

    @classmethod
    def listed_models(cls, node: NodeBase) -> list[str]:
        """Hash-map order: embedding model first, so that clients must not rely on chat-first."""
        return list(reversed(super().listed_models(node)))

    @classmethod
    def info_body(cls, node: NodeBase) -> dict[str, Any]:
        """llama-nexus's ``{"models": {kind: [model config]}}``."""
        chat = cls.model_config(cls.chat_models(node)[0], "chat", 16384, "Llama3Chat")
        embedding = cls.model_config(cls.SPEC.embedding_model, "embedding", 8192, "Embedding")
        return {"models": {"chat": [chat], "embedding": [embedding], "image": [], "tts": [], "translate": [],
                           "transcribe": []}}
