"""LlamaEdge llama-api-server on its own (protocol reference §1, §5, §8, §9A, §14).

What port 8080 is on a Gaia node <= 0.4 without a knowledge base, what the 0.4.28+ nexus talks to on 9068/9069, and
what people run standalone. Emulated as released today (0.28.1): it routes on the exact path whatever the method, has
no ``/v1/retrieve``, answers errors as rag-api-server does (``"<code> <reason>: <message>"`` text, no Content-Type),
streams live the llama-core way, and sends the usage chunk only when ``stream_options.include_usage`` asks or the
server was started with ``--include-usage`` (off here, unlike a Gaia node's rag-api-server). ``max_tokens`` is dropped
unread since 0.23; ``max_completion_tokens`` caps the answer. ``/v1/info`` is ``{"type": "llama", "version",
"ggml_plugin_version", …}``. ``POST /v1/responses`` is new in 0.28 (0.28.0 returned one hard-coded id for every reply:
``fixed_response_id``). One request at a time, like every WasmEdge server.
"""

from __future__ import annotations

from typing import Any, ClassVar

from .flavor import Endpoint, Flavor, FlavorSpec
from .rag import Rag
from .server import NodeBase


class Llama(Rag):
    """llama-api-server 0.28.1 with a chat and an embedding model."""

    NAME: ClassVar[str] = "llama"
    SPEC: ClassVar[FlavorSpec] = FlavorSpec(("Llama-3.2-1B-Instruct",), "nomic-embed-text-v1.5")
    OUTPUT_LIMIT_FIELDS: ClassVar[tuple[str, ...]] = ("max_completion_tokens",)
    INCLUDE_USAGE: ClassVar[bool] = False

    def serve_public(self, method: str, path: str) -> bool:
        """No public routes (``/echo`` is rag-api-server's)."""
        return False

    def routes(self) -> dict[str, tuple[str, Endpoint]]:
        """Chat, embeddings, models, info and responses (any method reaches them); no retrieve."""
        return {**Flavor.routes(self), "/v1/responses": ("POST", self.create_response)}

    @classmethod
    def info_body(cls, node: NodeBase) -> dict[str, Any]:
        """llama-api-server's ``ServerInfo``: its type and version at the top, then the models it serves."""
        return {
            "type": "llama", "version": "0.28.1", "ggml_plugin_version": "b6273 (commit 5fd160bb)",
            "port": str(node.port),
            "chat_model": cls.model_config(cls.chat_models(node)[0], "chat", 4096, "Llama3Chat"),
            "embedding_model": cls.model_config(cls.SPEC.embedding_model, "embedding", 8192, "Embedding"),
            "extras": {},
        }
