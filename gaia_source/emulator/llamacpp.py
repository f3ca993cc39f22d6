"""llama.cpp's server as llama-cpp-python 0.3.36 ships it (``python -m llama_cpp.server``; protocol reference §15).

Not a Gaia node, but an OpenAI-compatible server people point the source at, with quirks a loader must survive:

* **It cuts an in-flight stream when another request arrives** (``--interrupt_requests``, on by default): after each
  chunk it sends, a stream checks whether a request is waiting for the model and, if so, sends ``[DONE]`` at once. Under
  concurrency a stream is one role chunk, then ``[DONE]``: no content, no ``finish_reason``; a stream under way when
  another request arrives ends mid-answer, its words so far then ``[DONE]``. Every route (models too)
  waits for the one model, so requests are served one at a time. ``interrupt_requests=False`` makes them queue.
* Streams carry **no usage**, even with ``stream_options.include_usage``; they open with a role-only chunk and end with
  a ``delta: {}`` chunk holding ``finish_reason``. Stream JSON is ``json.dumps``-spaced, other bodies compact.
* ``/v1/models`` lists the ``--model_alias`` (``owned_by: "me"``); no ``/v1/info``, ``/v1/retrieve`` or ``/health``.
  The answer's ``model`` echoes whatever was asked, and is the GGUF path when nothing was.
* ``max_tokens`` caps an answer; ``max_completion_tokens`` is dropped unread.
* Without ``--embedding`` the model cannot embed: ``/v1/embeddings`` is a 500. FastAPI's ``{"detail"}`` for an unknown
  route (404) or method (405); other errors, a malformed body included, are 500s with an OpenAI-style
  ``internal_server_error``.
"""

from __future__ import annotations

from typing import Any, ClassVar, NoReturn

import orjson

from .content import word_pieces
from .flavor import Completion, Endpoint, Flavor, FlavorSpec, StreamEvent
from .server import ClientError, NodeBase

MODEL_PATH = "/models/gemma3-270m-q4_k_m.gguf"
"""The ``--model`` path: what the answer's ``model`` says when the request names none."""


class LlamaCpp(Flavor):
    """llama-cpp-python 0.3.36's server with a chat model (``--model_alias gemma3-270m --chat_format gemma``)."""

    NAME: ClassVar[str] = "llamacpp"
    SPEC: ClassVar[FlavorSpec] = FlavorSpec(("gemma3-270m",), None, owned_by="me")
    SERIALIZED: ClassVar[bool] = True  # one model, one lock: every route waits for it
    OUTPUT_LIMIT_FIELDS: ClassVar[tuple[str, ...]] = ("max_tokens",)

    # --- routes and errors ---------------------------------------------------------------------------------------

    def routes(self) -> dict[str, tuple[str, Endpoint]]:
        """Chat, embeddings (which fail without ``--embedding``) and models; no info."""
        return {"/v1/chat/completions": ("POST", self.chat), "/v1/embeddings": ("POST", self.embeddings),
                "/v1/models": ("GET", self.models)}

    def answer_error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        """FastAPI's ``{"detail"}`` for routing errors; the server's own errors as OpenAI-style JSON."""
        if status in (404, 405):
            self.send_json(status, {"detail": message})
        else:
            self.send_json(status, {"error": {"message": message, "type": "internal_server_error", "param": None,
                                              "code": None}})

    def reject_json(self, what: str, exc: orjson.JSONDecodeError) -> NoReturn:
        """A body that is not JSON: a 500 (its error handler wraps the validation error)."""
        raise ClientError(500, f"1 validation error:\n  {{'type': 'json_invalid', 'loc': ('body', {exc.pos}), "
                               f"'msg': 'JSON decode error'}}")

    def reject_shape(self, what: str, required: str, problem: str, body: bytes) -> NoReturn:
        """A body without ``required``: a 500 naming the missing field."""
        raise ClientError(500, f"1 validation error:\n  {{'type': 'missing', 'loc': ('body', '{required}'), "
                               "'msg': 'Field required'}")

    # --- the model -------------------------------------------------------------------------------------------------

    @classmethod
    def resolve_chat_model(cls, requested: Any, node: NodeBase) -> str:
        """The one model answers whatever is asked; the answer's ``model`` echoes the request (else the GGUF path)."""
        return requested if isinstance(requested, str) and requested else MODEL_PATH

    @classmethod
    def model_card(cls, model_id: str, created: int) -> dict[str, Any]:
        """``{"id", "object", "owned_by": "me", "permissions": []}``."""
        return {"id": model_id, "object": "model", "owned_by": cls.SPEC.owned_by, "permissions": []}

    def embeddings(self, body: bytes) -> None:
        """The chat model was not loaded for embeddings."""
        raise ClientError(500, "Llama model must be created with embedding=True to call this method")

    # --- streams -------------------------------------------------------------------------------------------------

    def stream_events(self, completion: Completion) -> list[StreamEvent]:
        """A role-only chunk, a chunk per word, a ``delta: {}`` chunk with the finish reason; never usage."""
        c = completion

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            return {"id": c.id, "model": c.model, "created": c.created, "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

        return [chunk({"role": "assistant"}), *(chunk({"content": piece}) for piece in word_pieces(c.answer)),
                chunk({}, c.finish)]

    def stream(self, completion: Completion) -> None:
        """Send the stream; after each chunk, end it with ``[DONE]`` when another request waits (interrupt_requests)."""
        events = self.stream_events(completion)
        cut_at = max(1, len(events) // 2) if "[[cut]]" in completion.question or self.fault == "truncate" else None
        self.start_stream()
        for i, event in enumerate(events):
            if i == cut_at:
                self.cut()
                return
            self.send_event(event, spaced=True)
            if self.node.interrupt_requests and self.node.others_waiting():
                break
        self.end_stream()
