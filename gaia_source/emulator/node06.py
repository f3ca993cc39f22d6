"""Gaia node 0.6.0: gaia-nexus 0.8.2 in front of llama-api-server 0.27 (protocol reference §0, §9B, §14).

What a node installed today answers on port 8080. It is the nexus (:mod:`.nexus`) as released, not as on main: no
``/v1/responses`` and no ``/health``; ``/v1/info`` is the ``{"node_version", "servers": {"chat-server-<uuid>": {…}}}``
shape gaia-nexus pushes to the hub; ``/v1/retrieve`` is gone (RAG happens inside the nexus, through an MCP server).
``max_tokens`` is dropped unread (llama-api-server >= 0.23): only ``max_completion_tokens`` caps an answer. Streams are
replayed after the whole answer was generated downstream. The nexus's own errors are OpenAI-style JSON; a downstream
failure is relayed with the downstream's status and its plain-text body.
"""

from __future__ import annotations

import uuid
from typing import Any, ClassVar

from .flavor import Endpoint, FlavorSpec
from .nexus import Nexus
from .rag import REASONS
from .server import NodeBase

LLAMA_API_SERVER_VERSION = "0.27.0"
GGML_PLUGIN_VERSION = "b6273 (commit 5fd160bb)"


class Node06(Nexus):
    """gaia-nexus 0.8.2 + llama-api-server 0.27.0 (chat on 9068, embeddings on 9069)."""

    NAME: ClassVar[str] = "node06"
    SPEC: ClassVar[FlavorSpec] = FlavorSpec(("Qwen3-4B-Q5_K_M",), "nomic-embed-text-v1.5")

    def routes(self) -> dict[str, tuple[str, Endpoint]]:
        """Chat, embeddings, models and info (no responses in the 0.8.2 release)."""
        routes = super().routes()
        routes.pop("/v1/responses")
        return routes

    def serve_public(self, method: str, path: str) -> bool:
        """No public routes: ``/health`` is not in the 0.8.2 release."""
        return False

    def answer_error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        """A downstream failure (``internal_error``) is relayed as llama-api-server's text; the nexus's own as JSON."""
        if kind == "internal_error":
            self.send(status, f"{status} {REASONS.get(status, 'Error')}: {message}".encode(), None)
        else:
            super().answer_error(status, message, kind)

    @classmethod
    def info_body(cls, node: NodeBase) -> dict[str, Any]:
        """``{"node_version", "servers": {"<kind>-server-<uuid>": llama-api-server's info}}``."""

        def server(kind: str, port: int, model: dict[str, Any]) -> tuple[str, dict[str, Any]]:
            server_id = f"{kind}-server-{uuid.uuid5(uuid.NAMESPACE_URL, f'{node.port}/{kind}')}"
            return server_id, {"type": "llama", "version": LLAMA_API_SERVER_VERSION,
                               "ggml_plugin_version": GGML_PLUGIN_VERSION, "port": str(port),
                               f"{'embedding' if kind == 'embeddings' else 'chat'}_model": model, "extras": {}}

        chat = cls.model_config(cls.chat_models(node)[0], "chat", 16384, "ChatML")
        embedding = cls.model_config(cls.SPEC.embedding_model, "embedding", 8192, "Embedding")
        return {"node_version": "0.6.0", "servers": dict([server("chat", 9068, chat),
                                                          server("embeddings", 9069, embedding)])}
