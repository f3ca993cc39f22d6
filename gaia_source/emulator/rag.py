"""Gaia node <= 0.4.24 with a knowledge base: LlamaEdge rag-api-server (protocol reference §1-§9A).

It routes on the path alone (any method), answers errors as plain text with no Content-Type and CORS headers, streams
the llama-core way (``role`` on every chunk, no ``finish_reason: "stop"`` chunk, a usage chunk with ``choices: []``),
serves ``/v1/retrieve`` (a list, or the pre-0.10 single object) and ``GET /echo``, and answers one request at a time
like the real single-threaded server.
"""

from __future__ import annotations

from typing import Any, ClassVar, NoReturn

import orjson

from .content import count_tokens, last_user_text, tool_calls, word_pieces
from .flavor import ABORT, Completion, Endpoint, Flavor, FlavorSpec, StreamEvent
from .server import ClientError, NodeBase

CONTEXT_FULL_MARKER = "<|WASMEDGE-GGML-CONTEXT-FULL|>"
"""The content of llama-core's chunk when the context is full (sent with ``finish_reason: "length"``)."""
SYSTEM_FINGERPRINT = "fp_44709d6fcb"
"""llama-core's constant ``system_fingerprint`` on stream chunks."""
REASONS = {400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
           415: "Unsupported Media Type", 422: "Unprocessable Entity", 500: "Internal Server Error"}
"""Status texts of the ``"<code> <reason>: <message>"`` error bodies (others read ``Error``)."""
_CORS = (("Access-Control-Allow-Origin", "*"), ("Access-Control-Allow-Methods", "*"),
         ("Access-Control-Allow-Headers", "*"))


class Rag(Flavor):
    """LlamaEdge rag-api-server 0.13 on a Gaia node <= 0.4.24."""

    NAME: ClassVar[str] = "rag"
    SPEC: ClassVar[FlavorSpec] = FlavorSpec(("Llama-3.2-3B-Instruct",), "Nomic-embed-text-v1.5")
    SERIALIZED: ClassVar[bool] = True
    ROUTES_ON_PATH_ALONE: ClassVar[bool] = True
    INCLUDE_USAGE: ClassVar[bool] = True  # Gaia starts it with --include-usage

    # --- routes and errors ---------------------------------------------------------------------------------------

    def serve_public(self, method: str, path: str) -> bool:
        """``GET /echo`` answers ``echo test``."""
        if path == "/echo" and method == "GET":
            self.send(200, b"echo test", "text/plain")
            return True
        return False

    def routes(self) -> dict[str, tuple[str, Endpoint]]:
        """Chat, embeddings, models, info and retrieve (any method reaches them)."""
        return {**super().routes(), "/v1/retrieve": ("POST", self.retrieve)}

    def unknown_route(self, method: str, path: str) -> None:
        """A 404 text error under /v1, the static web UI's 404 page elsewhere."""
        if path.startswith("/v1/"):
            self.answer_error(404, f"The requested service endpoint is not found: {path}")
        else:
            self.send_static_404()

    def answer_error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        """``"<code> <reason>: <message>"`` as text with no Content-Type, and CORS headers."""
        text = f"{status} {REASONS.get(status, 'Error')}: {message}".encode()
        self.send(status, text, None, _CORS)

    def reject_json(self, what: str, exc: orjson.JSONDecodeError) -> NoReturn:
        """400: serde's parse error."""
        raise ClientError(400, f"Fail to deserialize {what} request: {exc}")

    def reject_shape(self, what: str, required: str, problem: str, body: bytes) -> NoReturn:
        """400: serde's error followed by an echo of the request JSON."""
        echo = body.decode(errors="replace")
        raise ClientError(400, f"Fail to deserialize {what} request: {problem}\njson_value: {echo}")

    # --- retrieve ------------------------------------------------------------------------------------------------

    def retrieve(self, body: bytes) -> None:
        """``/v1/retrieve``: knowledge-base points for the last user message, in the node's ``retrieve_shape``."""
        request = self.parse(body, "chat completion", "messages")
        node = self.node
        query = last_user_text(self.messages(request))
        if not query:
            raise ClientError(400, "No user messages found.")
        if "[[fail]]" in query:
            raise ClientError(500, "No point retrieved. Reason: emulated Qdrant failure", "internal_error")
        if self.answer_malformed(query):
            return
        self.delay(node.latency_ms)
        points = node.retrieve(query)
        meta = {"limit": node.retrieve_limit, "score_threshold": node.score_threshold}
        if node.retrieve_shape == "object":
            self.send_json(200, {"points": points, **meta} if points else meta)
        else:
            self.send_json(200, [{"points": points, **meta}] if points else [])

    # --- streams and info ----------------------------------------------------------------------------------------

    def stream_events(self, completion: Completion) -> list[StreamEvent]:
        """llama-core's stream: a chunk per word, the context-full chunk, a usage chunk; aborted on a backend error."""
        c = completion

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            return {"id": c.id, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                             "finish_reason": finish_reason}],
                    "created": c.created, "model": c.model, "system_fingerprint": SYSTEM_FINGERPRINT,
                    "object": "chat.completion.chunk"}

        include_usage = self.include_usage(c.request)
        usage_chunk = {"id": c.id, "choices": [], "created": c.created, "model": c.model,
                       "system_fingerprint": SYSTEM_FINGERPRINT, "object": "chat.completion.chunk", "usage": c.usage}
        if "[[tool]]" in c.question:
            call = {**tool_calls()[0], "index": 0}
            return [chunk({"tool_calls": [call], "role": "assistant"}), usage_chunk]
        events: list[StreamEvent] = []
        sent = 0
        for piece in word_pieces(c.answer):
            event = chunk({"content": piece, "role": "assistant"})
            if self.node.cumulative_usage:
                sent += count_tokens(piece)
                prompt = c.usage["prompt_tokens"]
                event["usage"] = {"prompt_tokens": prompt, "completion_tokens": sent, "total_tokens": prompt + sent}
            events.append(event)
        if "[[inband-error]]" in c.question:  # llama-core aborts the HTTP body on a backend error
            return events[: max(1, len(events) // 2)] + [ABORT]
        if c.finish == "length" and "[[context-full]]" in c.question:
            events.append(chunk({"content": CONTEXT_FULL_MARKER, "role": "assistant"}, "length"))
        elif c.finish == "length":  # the token cap was reached
            events.append(chunk({"content": "", "role": "assistant"}, "length"))
        if include_usage:
            events.append(usage_chunk)
        return events

    @classmethod
    def info_body(cls, node: NodeBase) -> dict[str, Any]:
        """rag-api-server's ``ServerInfo``: api_server, chat and embedding model, rag policy, Qdrant config list."""
        chat = cls.model_config(cls.chat_models(node)[0], "chat", 16384, "Llama3Chat")
        embedding = cls.model_config(cls.SPEC.embedding_model, "embedding", 8192, "Embedding")
        return {
            "node_version": "0.4.27",
            "api_server": {"type": "rag", "version": "0.13.15", "ggml_plugin_version": "b5074 (commit 0d56246f)",
                           "port": str(node.port)},
            "chat_model": chat,
            "embedding_model": embedding,
            "rag_policy": "system-message",
            "qdrant_config": [{"url": "http://127.0.0.1:6333", "collection_name": "default",
                               "limit": node.retrieve_limit, "score_threshold": node.score_threshold}],
            "extras": {},
        }
