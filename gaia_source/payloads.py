"""Request bodies and their deterministic ids.

A request id is a hash of the endpoint and the canonical JSON of the body, so the same prompt with the same model
and parameters always maps to the same row (the tables' primary key), across runs, machines and workers.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import orjson

from .errors import GaiaConfigError
from .inputs import Message
from .settings import CHAT_PATH, EMBEDDINGS_PATH, RETRIEVE_PATH


def canonical_json(value: Any) -> bytes:
    """JSON with sorted keys and no whitespace: the same value always gives the same bytes."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)


def content_hash(*parts: Any) -> str:
    """A 128-bit BLAKE2b hex digest of the canonical JSON of ``parts``."""
    return hashlib.blake2b(canonical_json(list(parts)), digest_size=16).hexdigest()


def request_id(endpoint: str, body: Mapping[str, Any]) -> str:
    """The deterministic id of one request: a hash of its endpoint and body."""
    return content_hash(endpoint, body)


Shard = Tuple[int, int]


def parse_shard(spec: Optional[str]) -> Optional[Shard]:
    """``"i/n"`` → ``(i, n)``: this worker takes the inputs whose id falls in partition ``i`` of ``n``.

    Raises:
        GaiaConfigError: the text is not ``i/n`` with ``0 <= i < n``.
    """
    if spec is None or str(spec).strip() == "":
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(spec))
    if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
        raise GaiaConfigError(f"shard must look like i/n with 0 <= i < n (e.g. 0/4 … 3/4), got {spec!r}")
    return int(match.group(1)), int(match.group(2))


def in_shard(key: str, shard: Optional[Shard]) -> bool:
    """Whether a hex id belongs to ``shard``: a deterministic partition, the same on every machine."""
    return shard is None or int(key[:15], 16) % shard[1] == shard[0]


def normalize_chat_params(params: Mapping[str, Any]) -> Dict[str, Any]:
    """Drop unset parameters and fix what nodes reject.

    ``stop`` must be a JSON array on Gaia nodes (a string is a 400 on rag-api-server, a 422 on gaia-nexus), so a
    single string becomes a one-element list.
    """
    out = {k: v for k, v in params.items() if v is not None}
    if isinstance(out.get("stop"), str):
        out["stop"] = [out["stop"]]
    return out


@dataclass(frozen=True)
class PreparedRequest:
    """One request ready to send: endpoint, body, id, and what the row needs to remember about it."""

    endpoint: str
    body: Dict[str, Any]
    custom_id: Optional[str] = None
    source: Optional[str] = None
    """Where the input came from (``file:line``, ``prompts[3]``): for error messages."""
    extra: Dict[str, Any] = field(default_factory=dict)
    """Caller data carried into rows (e.g. text ids and metadata of an embeddings batch)."""
    node: Optional[str] = None
    """Send every attempt to this node (per-node metadata such as /v1/info); None: the best node of the pool."""

    @property
    def request_id(self) -> str:
        """Deterministic id: hash of endpoint and body."""
        return request_id(self.endpoint, self.body)


def chat_request(
    messages: Sequence[Message],
    model: Optional[str],
    params: Mapping[str, Any],
    stream: bool,
    custom_id: Optional[str] = None,
    source: Optional[str] = None,
) -> PreparedRequest:
    """Build a POST /v1/chat/completions request.

    A streaming request asks for usage explicitly (``stream_options.include_usage``): Gaia nodes send it by default,
    other OpenAI-compatible servers only when asked.
    """
    body: Dict[str, Any] = {"messages": list(messages)}
    if model:
        body["model"] = model
    body.update(normalize_chat_params(params))
    body.pop("stream", None)
    if stream:
        body["stream"] = True
        body.setdefault("stream_options", {"include_usage": True})
    return PreparedRequest(CHAT_PATH, body, custom_id=custom_id, source=source)


def embeddings_request(
    texts: Sequence[str], model: Optional[str], extra: Optional[Dict[str, Any]] = None
) -> PreparedRequest:
    """Build a POST /v1/embeddings request for a batch of texts."""
    body: Dict[str, Any] = {"input": list(texts)}
    if model:
        body["model"] = model
    return PreparedRequest(EMBEDDINGS_PATH, body, extra=extra or {})


def retrieve_request(query: str, custom_id: Optional[str] = None, source: Optional[str] = None) -> PreparedRequest:
    """Build a POST /v1/retrieve request: a chat-shaped body whose last user message is the query."""
    body = {"messages": [{"role": "user", "content": query}]}
    return PreparedRequest(RETRIEVE_PATH, body, custom_id=custom_id, source=source, extra={"query": query})


def embedding_id(model: Optional[str], text: str) -> str:
    """The id of one embedded text: a hash of (model, text), so re-embedding the same pair is recognisable."""
    return content_hash("embedding", model, text)


def chat_params_of(body: Mapping[str, Any]) -> Dict[str, Any]:
    """The parameters of a chat body: everything except messages, model and the streaming switches."""
    return {k: v for k, v in body.items() if k not in ("messages", "model", "stream", "stream_options")}
