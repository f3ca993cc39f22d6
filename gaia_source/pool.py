"""Several nodes behind one source: each request goes to the least busy node, within that node's own limit.

An old Gaia node answers one request at a time, so parallelism comes from more nodes, not more connections to one:
``base_url = ["http://node-a:8080/v1", "http://node-b:8080/v1"]`` with ``max_concurrency`` per node. Every reply says
which node gave it, so rows carry the real ``node_url``. A pool of one node is the ordinary case.
"""

from __future__ import annotations

import re
import threading
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import orjson

from .client import GaiaClient, resolve_base_url
from .errors import GaiaConfigError
from .streaming import StreamResult


class Reply(NamedTuple):
    """A JSON reply: the body, the latency in seconds, and the node that answered."""

    body: Any
    latency_s: float
    node_url: str


class StreamReply(NamedTuple):
    """A folded stream, how many sends it took, and the node that answered."""

    result: StreamResult
    attempts: int
    node_url: str


def _as_list(value: Any) -> List[str]:
    """A config value that may be one URL/id, a list, a JSON list, or comma-separated text."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    text = str(value).strip()
    if text.startswith("["):
        try:
            parsed = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise GaiaConfigError(f"node list {text!r} is not a JSON list of URLs") from None
        return _as_list(parsed)
    return [part.strip() for part in re.split(r"[,\s]+", text) if part.strip()]


def resolve_base_urls(node_id: Any = None, base_url: Any = None) -> List[str]:
    """Every node's ``…/v1`` URL: ``base_url`` (one or a list) wins over ``node_id`` (one or a list).

    Raises:
        GaiaConfigError: nothing configured, a malformed entry, or the same node listed twice.
    """
    urls = [resolve_base_url(base_url=u) for u in _as_list(base_url)]
    if not urls:
        urls = [resolve_base_url(node_id=n) for n in _as_list(node_id)]
    if not urls:
        urls = [resolve_base_url(None, None)]  # raises the "No Gaia node configured" message
    duplicates = sorted({u for u in urls if urls.count(u) > 1})
    if duplicates:
        raise GaiaConfigError(f"node listed more than once: {', '.join(duplicates)}")
    return urls


class NodePool:
    """Spreads requests over nodes; each node keeps its own concurrency limit and retry policy.

    Args:
        clients: One client per node.
    """

    def __init__(self, clients: Sequence[GaiaClient]) -> None:
        if not clients:
            raise GaiaConfigError("a node pool needs at least one node")
        self.nodes = list(clients)
        self.max_concurrency = sum(c.max_concurrency for c in self.nodes)
        self._in_flight = [0] * len(self.nodes)
        self._free = threading.Condition()

    @classmethod
    def connect(cls, urls: Sequence[str], api_key: Optional[str] = None, **client_settings: Any) -> "NodePool":
        """A pool of clients for ``urls`` sharing one key and client settings."""
        return cls([GaiaClient(url, api_key, **client_settings) for url in urls])

    @property
    def base_url(self) -> str:
        """The node URL (a pool: the URLs joined by commas)."""
        return ",".join(c.base_url for c in self.nodes)

    def url(self, path: str) -> str:
        """The first node's URL of an endpoint (for messages)."""
        return self.nodes[0].url(path)

    def close(self) -> None:
        """Close every node's connections."""
        for node in self.nodes:
            node.close()

    @contextmanager
    def _node(self) -> Iterator[GaiaClient]:
        """Borrow the node with the most free capacity, waiting while every node is at its limit."""
        with self._free:
            while True:
                load = [
                    (self._in_flight[i] / node.max_concurrency, i)
                    for i, node in enumerate(self.nodes)
                    if self._in_flight[i] < node.max_concurrency
                ]
                if load:
                    index = min(load)[1]
                    self._in_flight[index] += 1
                    break
                self._free.wait()
        try:
            yield self.nodes[index]
        finally:
            with self._free:
                self._in_flight[index] -= 1
                self._free.notify()

    def post_json(self, path: str, body: Dict[str, Any]) -> Reply:
        """POST to the least busy node (retried there as configured)."""
        with self._node() as node:
            response, latency = node.post_json(path, body)
            return Reply(response, latency, node.base_url)

    def stream_chat(self, path: str, body: Dict[str, Any]) -> StreamReply:
        """Stream a chat request from the least busy node."""
        with self._node() as node:
            result, attempts = node.stream_chat(path, body)
            return StreamReply(result, attempts, node.base_url)

    def discover_models(self) -> Tuple[Optional[str], Optional[str]]:
        """The (chat, embedding) models of the first node (a pool serves one model set)."""
        return self.nodes[0].discover_models()
