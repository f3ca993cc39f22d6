"""A local Gaia node on 127.0.0.1 for the demo, the tests and the benchmarks.

It speaks the three server flavours as shared/reference/gaia-node-protocol.md describes them, byte for byte where it
matters (methods, error dialects, SSE shapes):

* ``rag``   — Gaia node <= 0.4 (LlamaEdge rag-api-server): every route accepts any method; ``/v1/retrieve`` returns a
  *list* (``--retrieve-shape object`` gives the pre-0.10 single object); errors are plain text with no Content-Type;
  llama-core streams (``role`` on every chunk, no ``finish_reason: "stop"`` chunk, a usage chunk with ``choices: []``);
  requests are served **one at a time**, like the real single-threaded server.
* ``nexus`` — Gaia node >= 0.5 (gaia-nexus): models/info GET-only (POST → 405), no ``/v1/retrieve``; own errors are
  OpenAI-style JSON, body rejections text (415/400/422); simulated streaming (``choices[0].index`` counts chunks, usage and
  ``finish_reason`` on the last content chunk, an empty answer is only ``[DONE]``); concurrent.
* ``amd``   — AMD GAIA API server: ``/health``, ``/v1/models`` (GET), ``/v1/chat/completions``; FastAPI ``{"detail"}``
  errors; streams with no usage, JSON with spaces, a final ``delta: {}`` chunk; concurrent.

Answers are deterministic (a function of the last user message and the model); embeddings are deterministic hashed
bag-of-words vectors (texts sharing words are similar), computed with numpy and serialized with orjson so that the
emulator is never the bottleneck of a benchmark. Markers in the last user message trigger protocol edge cases:

==================  =============================================================================================
``[[empty]]``       an empty answer
``[[context-full]]`` rag: the ``<|WASMEDGE-GGML-CONTEXT-FULL|>`` chunk with ``finish_reason: "length"``; others: length
``[[tool]]``        a tool call (``get_weather``) instead of text
``[[fail]]``        HTTP 500 in the flavour's error dialect
``[[inband-error]]`` amd: an in-band ``{"error"}`` chunk with HTTP 200; rag: the body aborts mid-stream; nexus: 500
``[[cut]]``         the connection closes halfway through the body (stream or not)
``[[malformed:X]]`` the body ``MALFORMED[X]`` (or, streamed, ``MALFORMED_STREAMS[X]``): 40+ ways a node answers badly
==================  =============================================================================================

Run one: ``python -m gaia_source.emulator --flavor rag|nexus|amd --port 8080 [--api-key K] [--latency-ms 50]``.
``GET /_emulator/stats`` returns request counts per route (tests use them to prove what was *not* sent).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import signal
import socket
import sys
import threading
import time
import uuid
import zlib
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import numpy as np
import orjson

from .settings import CONTEXT_FULL_MARKER

FLAVORS = ("rag", "nexus", "amd")
FAULT_KINDS = ("429", "502", "503", "reset", "truncate", "slow")
GATEWAY_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n"
    b"<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
SYSTEM_FINGERPRINT = "fp_44709d6fcb"

def _j(obj: Any) -> bytes:
    return orjson.dumps(obj)


_OK_MESSAGE = {"role": "assistant", "content": "fine"}
MALFORMED: Dict[str, Tuple[int, Optional[str], bytes]] = {
    # what a broken node, proxy or gateway can answer with (status, Content-Type, body); see ``[[malformed:NAME]]``
    "not-json": (200, "application/json", b"this is not json"),
    "html-200": (200, "text/html", b"<html><head><title>Maintenance</title></head><body>Back soon</body></html>"),
    "empty-body": (200, "application/json", b""),
    "json-array": (200, "application/json", b"[1, 2, 3]"),
    "json-string": (200, "application/json", b'"hello"'),
    "json-null": (200, "application/json", b"null"),
    "truncated-json": (200, "application/json", b'{"choices": [{"message": {"content": "Par'),
    "nan-number": (200, "application/json", b'{"choices": [], "usage": {"prompt_tokens": NaN}}'),
    "invalid-utf8": (200, "application/json", b'{"choices": [{"message": {"content": "\xff\xfe caf\xe9"}}]}'),
    "deep-nesting": (200, "application/json", b"[" * 5000 + b"]" * 5000),
    "choices-null": (200, "application/json", _j({"id": "x", "model": "m", "choices": None})),
    "choices-empty": (200, "application/json", _j({"id": "x", "model": "m", "choices": []})),
    "choices-object": (200, "application/json", _j({"choices": {"0": {"message": _OK_MESSAGE}}})),
    "choice-string": (200, "application/json", _j({"choices": ["fine"]})),
    "message-missing": (200, "application/json", _j({"choices": [{"index": 0, "finish_reason": "stop"}]})),
    "message-null": (200, "application/json", _j({"choices": [{"index": 0, "message": None}]})),
    "content-number": (200, "application/json", _j({"choices": [{"message": {"role": "assistant", "content": 42}}]})),
    "content-object": (200, "application/json", _j({"choices": [{"message": {"content": {"text": "x"}}}]})),
    "usage-strings": (200, "application/json", _j({"choices": [{"message": _OK_MESSAGE}], "usage": {"prompt_tokens": "many"}})),
    "usage-list": (200, "application/json", _j({"choices": [{"message": _OK_MESSAGE}], "usage": [1, 2]})),
    "model-number": (200, "application/json", _j({"model": 7, "choices": [{"message": _OK_MESSAGE}]})),
    "id-object": (200, "application/json", _j({"id": {"v": 1}, "choices": [{"message": _OK_MESSAGE}]})),
    "created-string": (200, "application/json", _j({"created": "yesterday", "choices": [{"message": _OK_MESSAGE}]})),
    "finish-number": (200, "application/json", _j({"choices": [{"message": _OK_MESSAGE, "finish_reason": 1}]})),
    "error-200": (200, "application/json", _j({"error": {"message": "model overloaded", "type": "server_error"}})),
    "emb-data-null": (200, "application/json", _j({"object": "list", "data": None, "model": "m"})),
    "emb-too-few": (200, "application/json", _j({"data": [], "model": "m"})),
    "emb-strings": (200, "application/json", _j({"data": [{"index": 0, "embedding": ["a", "b"]}], "model": "m"})),
    "emb-null-value": (200, "application/json", _j({"data": [{"index": 0, "embedding": [0.1, None]}], "model": "m"})),
    "emb-empty-vector": (200, "application/json", _j({"data": [{"index": 0, "embedding": []}], "model": "m"})),
    "emb-index-out-of-range": (200, "application/json", _j({"data": [{"index": 5, "embedding": [0.1]}], "model": "m"})),
    "ret-string": (200, "application/json", b'"nothing found"'),
    "ret-points-string": (200, "application/json", _j([{"points": "many", "limit": 1, "score_threshold": 0.5}])),
    "ret-point-no-source": (200, "application/json", _j([{"points": [{"score": 0.9}], "limit": 1, "score_threshold": 0.5}])),
    "ret-number-list": (200, "application/json", b"[1, 2]"),
    "html-500": (500, "text/html", b"<html><body><h1>500</h1><p>upstream exploded</p></body></html>"),
    "text-400": (400, None, b"400 Bad Request: Fail to deserialize chat completion request: expected value\njson_value: {...}"),
}
MALFORMED_STREAMS: Dict[str, List[bytes]] = {
    # SSE bodies (HTTP 200, text/event-stream) that break the protocol mid-way
    "sse-garbage": [b'data: {"choices": [{"delta": {"content": "Par"}}]}\n\n', b"data: <<<garbage>>>\n\n"],
    "sse-array": [b"data: [1, 2, 3]\n\n", b"data: [DONE]\n\n"],
    "sse-choices-string": [b'data: {"choices": "abc"}\n\n', b"data: [DONE]\n\n"],
    "sse-delta-string": [b'data: {"choices": [{"delta": "text"}]}\n\n', b"data: [DONE]\n\n"],
    "sse-no-done": [b'data: {"choices": [{"delta": {"content": "Partial"}}]}\n\n'],
}
"""Markers ``[[malformed:NAME]]`` in a prompt, text or query make the emulator answer with that case."""

KNOWLEDGE_BASE: Tuple[str, ...] = (
    "Paris is located in northern central France, in a north-bending arc of the river Seine.\n",
    "The Paris region is the most active water transport area in France, with most cargo handled by the Ports of Paris.\n",
    "The Eiffel Tower was built for the 1889 World's Fair and is the most visited paid monument in Paris.\n",
    "Gaia nodes are OpenAI-compatible API servers that combine a fine-tuned LLM with a knowledge base.\n",
    "A Gaia domain load-balances requests across many nodes that run the same model and knowledge base.\n",
    "dlt is an open-source Python library that loads data from APIs into warehouses such as DuckDB and BigQuery.\n",
    "DuckDB is an in-process analytical database with native fixed-size array columns for embedding vectors.\n",
    "The Seine flows through Paris and into the English Channel at Le Havre.\n",
)

KNOWN_ANSWERS: Dict[str, str] = {
    "what is the capital of france?": "Paris is the capital of France.",
    "what is a gaia node?": "A Gaia node is an OpenAI-compatible API server that runs an LLM with a knowledge base.",
    "what does dlt do?": "dlt loads data from APIs and files into warehouses such as DuckDB, with schemas inferred for you.",
}

_STOPWORDS = frozenset(
    "a an and are as at be by for from how in is it its of on or that the this to was what when where which who why "
    "with does do can you your i me my we our".split()
)
_WORD_RE = re.compile(r"[a-z0-9]+")
_MALFORMED_RE = re.compile(r"\[\[malformed:([a-z0-9-]+)\]\]")
_PIECE_RE = re.compile(r"\S+\s*")


@dataclass(frozen=True)
class FlavorSpec:
    """What a flavour's node has loaded."""

    chat_models: Tuple[str, ...]
    embedding_model: Optional[str]
    owned_by: str = "Not specified"


SPECS: Dict[str, FlavorSpec] = {
    "rag": FlavorSpec(("Llama-3.2-3B-Instruct",), "Nomic-embed-text-v1.5"),
    "nexus": FlavorSpec(("Qwen3-4B",), "Nomic-embed-text-v1.5"),
    "amd": FlavorSpec(("gaia-code", "gaia-chat"), None, owned_by="amd-gaia"),
}


# ----------------------------------------------------------------------------------------------------------------
# deterministic content


def _tokens(text: str) -> List[str]:
    words = [w for w in _WORD_RE.findall(text.lower()) if w not in _STOPWORDS]
    return [w[:5] for w in words]  # a crude stem: "located"/"location" → "locat"


def embed_text(text: str, dim: int) -> np.ndarray:
    """A deterministic unit vector for ``text``: signed feature hashing of its (stemmed) words, in float32."""
    vector = np.zeros(dim, dtype=np.float32)
    tokens = _tokens(text) or [text or "<empty>"]
    for token in tokens:
        h = zlib.crc32(token.encode("utf-8"))
        vector[h % dim] += 1.0 if (h >> 20) & 1 else -1.0
        vector[(h >> 8) % dim] += 0.5
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm else vector


def _last_user_text(messages: Sequence[Dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def answer_for(question: str, model: str) -> str:
    """The emulator's deterministic answer to a question."""
    known = KNOWN_ANSWERS.get(question.strip().lower())
    if known:
        return known
    return f"{model} answers: {question.strip()}"


def _count_tokens(text: str) -> int:
    return len(text.split())


def _prompt_tokens(messages: Sequence[Dict[str, Any]]) -> int:
    total = 0
    for message in messages:
        content = message.get("content")
        total += 3 + (_count_tokens(content) if isinstance(content, str) else 0)
    return total


def _pieces(text: str, min_chars: int = 0) -> List[str]:
    """Split ``text`` into word pieces that concatenate back to it exactly (grouped to ``min_chars`` if given)."""
    words = _PIECE_RE.findall(text)
    if "".join(words) != text:
        return [text] if text else []
    if not min_chars:
        return words
    pieces: List[str] = []
    current = ""
    for word in words:
        current += word
        if len(current) >= min_chars:
            pieces.append(current)
            current = ""
    if current:
        pieces.append(current)
    return pieces


# ----------------------------------------------------------------------------------------------------------------
# the server


class _ClientError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # many concurrent clients: the default backlog of 5 drops connections
    emulator: "NodeEmulator"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients closing keep-alive connections is normal; anything else is printed."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


@dataclass
class NodeEmulator:
    """A Gaia node emulator serving on a background thread.

    Args:
        flavor: ``rag``, ``nexus`` or ``amd``.
        host: Interface to bind (loopback by default).
        port: Port; 0 picks a free one (see :attr:`base_url`).
        api_key: When set, /v1 requests need ``Authorization: Bearer <api_key>`` (as a hosted gateway enforces).
        latency_ms: Delay before each chat/embeddings/retrieve answer (a stream: before its first chunk).
        chunk_delay_ms: Delay between stream chunks.
        dim: Embedding dimension.
        retrieve_shape: ``list`` (rag-api-server >= 0.10) or ``object`` (older servers, the docs).
        retrieve_limit: Points per retrieval at most.
        score_threshold: Minimum retrieval score.
    """

    flavor: str = "rag"
    host: str = "127.0.0.1"
    port: int = 0
    api_key: Optional[str] = None
    latency_ms: float = 0.0
    chunk_delay_ms: float = 0.0
    dim: int = 768
    retrieve_shape: str = "list"
    retrieve_limit: int = 3
    score_threshold: float = 0.2
    fault_rate: float = 0.0
    """Share of /v1 requests that meet a fault (drawn from ``fault_kinds`` with a seeded RNG: reproducible)."""
    fault_seed: int = 0
    fault_kinds: Tuple[str, ...] = FAULT_KINDS
    retry_after: Optional[str] = "0"
    """``Retry-After`` sent with a 429 fault (None: no header)."""
    slow_ms: float = 2000.0
    """How long a ``slow`` fault stalls before answering (set it above the client's timeout)."""
    cumulative_usage: bool = False
    """rag flavour: repeat the usage-so-far on every stream chunk, as some backends do (a client must never sum it)."""
    outage: Optional[int] = None
    """When set, every /v1 request is answered with this HTTP status in the flavour's dialect (a failing node)."""
    stats: Counter = field(default_factory=Counter, init=False)
    max_in_flight: int = field(default=0, init=False)
    """The most requests this node was handling at the same moment (1 for the rag flavour, by design)."""
    started_at: int = field(default_factory=lambda: int(time.time()), init=False)

    def __post_init__(self) -> None:
        if self.flavor not in FLAVORS:
            raise ValueError(f"unknown flavor {self.flavor!r}; expected one of {FLAVORS}")
        if self.retrieve_shape not in ("list", "object"):
            raise ValueError("retrieve_shape must be 'list' or 'object'")
        unknown = set(self.fault_kinds) - set(FAULT_KINDS)
        if unknown or not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError(f"fault kinds must be among {FAULT_KINDS} and fault_rate in [0, 1]")
        self._fault_rng = random.Random(self.fault_seed)
        self.spec = SPECS[self.flavor]
        self._stats_lock = threading.Lock()
        self._serial = threading.Lock()  # the rag flavour answers one request at a time
        self._in_flight = 0
        self._kb_matrix = np.stack([embed_text(p, self.dim) for p in KNOWLEDGE_BASE])
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> "NodeEmulator":
        """Bind and serve on a daemon thread; returns self."""
        server = _Server((self.host, self.port), _Handler)
        server.emulator = self
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, name=f"gaia-emulator-{self.flavor}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "NodeEmulator":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def root_url(self) -> str:
        """``http://host:port`` (for AMD GAIA, the documented base URL)."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://host:port/v1``, what the source's ``base_url`` takes."""
        return f"{self.root_url}/v1"

    # --- stats -------------------------------------------------------------------------------------------------

    def count(self, method: str, path: str) -> None:
        with self._stats_lock:
            self.stats[f"{method} {path}"] += 1

    def requests_to(self, path: str, method: Optional[str] = None) -> int:
        """How many requests reached ``path`` (e.g. ``/v1/chat/completions``), optionally for one method."""
        with self._stats_lock:
            return sum(n for key, n in self.stats.items() if key.split(" ", 1)[1] == path and (method is None or key.startswith(method + " ")))

    def total_requests(self) -> int:
        """Requests received on any route except the stats route."""
        with self._stats_lock:
            return sum(n for key, n in self.stats.items() if not key.startswith("fault "))

    def reset_stats(self) -> None:
        """Forget the request counts and the in-flight high-water mark."""
        with self._stats_lock:
            self.stats.clear()
            self.max_in_flight = 0

    def draw_fault(self) -> Optional[str]:
        """The fault this request meets, if any (thread-safe, reproducible for a given seed and request order)."""
        if self.fault_rate <= 0:
            return None
        with self._stats_lock:
            if self._fault_rng.random() >= self.fault_rate:
                return None
            kind = self._fault_rng.choice(self.fault_kinds)
            self.stats[f"fault {kind}"] += 1
            return kind

    def faults(self) -> int:
        """How many faults were injected so far."""
        with self._stats_lock:
            return sum(n for key, n in self.stats.items() if key.startswith("fault "))

    def _enter(self) -> None:
        with self._stats_lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)

    def _leave(self) -> None:
        with self._stats_lock:
            self._in_flight -= 1

    # --- behaviour -----------------------------------------------------------------------------------------------

    @property
    def default_chat_model(self) -> str:
        return self.spec.chat_models[0]

    def resolve_chat_model(self, requested: Any) -> str:
        """Gaia nodes answer with their loaded model whatever is asked; AMD GAIA needs a known agent id."""
        if self.flavor == "amd":
            if requested not in self.spec.chat_models:
                raise _ClientError(404, f"Model '{requested}' not found")
            return str(requested)
        if isinstance(requested, str) and requested in self.spec.chat_models:
            return requested
        return self.default_chat_model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts; rows are unit vectors."""
        return np.stack([embed_text(t, self.dim) for t in texts]) if texts else np.zeros((0, self.dim), np.float32)

    def retrieve(self, query: str) -> List[Dict[str, Any]]:
        """Knowledge-base points scoring at least the threshold, best first, at most ``retrieve_limit``."""
        scores = self._kb_matrix @ embed_text(query, self.dim)
        order = np.argsort(-scores)
        return [
            {"source": KNOWLEDGE_BASE[i], "score": round(float(scores[i]), 8)}
            for i in order[: self.retrieve_limit]
            if scores[i] >= self.score_threshold
        ]

    def models_body(self) -> Dict[str, Any]:
        ids: List[str] = list(self.spec.chat_models)
        if self.spec.embedding_model:
            ids.append(self.spec.embedding_model)
        if self.flavor == "nexus":
            ids.reverse()  # gaia-nexus lists models in hash-map order: clients must not rely on chat-first
        data = []
        for model_id in ids:
            item: Dict[str, Any] = {"id": model_id, "created": self.started_at, "object": "model", "owned_by": self.spec.owned_by}
            if self.flavor == "amd":
                item.update(description=f"GAIA agent {model_id}", max_input_tokens=32768, max_output_tokens=8192)
            data.append(item)
        return {"object": "list", "data": data}

    def info_body(self) -> Dict[str, Any]:
        chat = {
            "name": self.default_chat_model, "type": "chat", "ctx_size": 16384, "batch_size": 128, "ubatch_size": 128,
            "prompt_template": "Llama3Chat", "n_predict": -1, "n_gpu_layers": 100, "temperature": 1.0, "top_p": 1.0,
            "repeat_penalty": 1.1, "presence_penalty": 0.0, "frequency_penalty": 0.0, "split_mode": "layer",
        }
        embedding = {**chat, "name": self.spec.embedding_model, "type": "embedding", "ctx_size": 8192,
                     "prompt_template": "Embedding"}
        if self.flavor == "nexus":
            return {"models": {"chat": [chat], "embedding": [embedding], "image": [], "tts": [], "translate": [],
                               "transcribe": []}}
        return {
            "node_version": "0.4.27",
            "api_server": {"type": "rag", "version": "0.13.15", "ggml_plugin_version": "b5074 (commit 0d56246f)",
                           "port": str(self.port)},
            "chat_model": chat,
            "embedding_model": embedding,
            "rag_policy": "system-message",
            "qdrant_config": [{"url": "http://127.0.0.1:6333", "collection_name": "default",
                               "limit": self.retrieve_limit, "score_threshold": self.score_threshold}],
            "extras": {},
        }


_REASONS = {400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            415: "Unsupported Media Type", 422: "Unprocessable Entity", 500: "Internal Server Error"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    _fault: Optional[str] = None

    # --- plumbing ------------------------------------------------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        # headers and body go out in separate writes: without this, Nagle + delayed ACK add ~40 ms per response
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence per-request logging
        return

    @property
    def emu(self) -> NodeEmulator:
        return self.server.emulator

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send_head(self, status: int, length: int, content_type: Optional[str], headers: Iterable[Tuple[str, str]] = ()) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()

    def _send(self, status: int, body: bytes, content_type: Optional[str], headers: Iterable[Tuple[str, str]] = ()) -> None:
        self._send_head(status, len(body), content_type, headers)
        self.wfile.write(body)

    def _json(self, status: int, obj: Any, spaced: bool = False) -> None:
        body = json.dumps(obj).encode() if spaced else orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)
        self._send(status, body, "application/json")

    def _error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        """An error in this flavour's dialect."""
        flavor = self.emu.flavor
        if flavor == "rag":  # "<code> <reason>: <message>", no Content-Type, CORS headers
            text = f"{status} {_REASONS.get(status, 'Error')}: {message}".encode()
            cors = [("Access-Control-Allow-Origin", "*"), ("Access-Control-Allow-Methods", "*"),
                    ("Access-Control-Allow-Headers", "*")]
            self._send(status, text, None, cors)
        elif flavor == "nexus":
            code = {404: "not_found", 401: "invalid_api_key"}.get(status, "operation_failed")
            self._json(status, {"error": {"message": message, "type": kind, "param": None, "code": code}})
        else:
            self._json(status, {"detail": message})

    def _text(self, status: int, message: str) -> None:
        self._send(status, message.encode(), "text/plain; charset=utf-8")

    def _html_404(self) -> None:
        page = b"<!DOCTYPE html><html><head><title>404 Not Found</title></head><body><h1>Not Found</h1></body></html>"
        self._send(404, page, "text/html")

    def _inject(self, kind: str) -> None:
        """Answer as a flaky gateway would (``truncate`` is applied by the handlers, mid-body)."""
        if kind == "429":
            headers = [("Retry-After", self.emu.retry_after)] if self.emu.retry_after is not None else []
            self._send(429, b'{"error":{"message":"Too many requests","type":"rate_limit_error"}}', "application/json", headers)
        elif kind == "502":
            self._send(502, GATEWAY_502, "text/html")
        elif kind == "503":
            self._send(503, b'{"error":{"message":"Service temporarily unavailable","type":"server_error"}}', "application/json")
        elif kind == "reset":
            self._cut()
        elif kind == "slow":
            self._delay(self.emu.slow_ms)

    def _cut(self, partial: bytes = b"") -> None:
        """Close the connection mid-body: what a reset or a crashed node looks like to a client."""
        if partial:
            self.wfile.write(partial)
        self.wfile.flush()
        self.close_connection = True

    # --- routing -------------------------------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        path = urlsplit(self.path).path
        body = self._read_body()
        emu = self.emu
        if path == "/_emulator/stats":
            with emu._stats_lock:
                self._json(200, {"flavor": emu.flavor, "requests": dict(emu.stats)})
            return
        emu.count(method, path)
        try:
            with emu._serial if emu.flavor == "rag" else contextlib.nullcontext():
                emu._enter()
                try:
                    self._route(method, path, body)
                finally:
                    emu._leave()
        except _ClientError as exc:
            self._error(exc.status, exc.message, exc.kind)
        except _Handled:
            pass
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _authorized(self, path: str) -> bool:
        emu = self.emu
        if not emu.api_key or not path.startswith("/v1/"):
            return True
        header = self.headers.get("Authorization") or ""
        if header == f"Bearer {emu.api_key}":
            return True
        if emu.flavor == "amd" and not header:
            self._error(401, "Missing API key. Send 'Authorization: Bearer <key>' matching GAIA_API_KEY on the server.")
        else:
            self._error(401, "Invalid API key.", "authentication_error")
        return False

    def _route(self, method: str, path: str, body: bytes) -> None:
        flavor = self.emu.flavor
        if flavor == "amd" and path == "/health" and method == "GET":
            self._json(200, {"status": "ok", "service": "gaia-api", "components": {}}, spaced=True)
            return
        if flavor == "rag" and path == "/echo" and method == "GET":
            self._send(200, b"echo test", "text/plain")
            return
        if not self._authorized(path):
            return
        if self.emu.outage is not None and path.startswith("/v1/"):
            raise _ClientError(self.emu.outage, "emulated outage: the node is unavailable", "internal_error")
        self._fault = self.emu.draw_fault() if path.startswith("/v1/") else None
        if self._fault in ("429", "502", "503", "reset", "slow"):
            self._inject(self._fault)
            if self._fault != "slow":
                return
        routes = {
            "/v1/chat/completions": ("POST", self._chat),
            "/v1/embeddings": ("POST", self._embeddings),
            "/v1/models": ("GET", lambda _m, _b: self._json(200, self.emu.models_body(), spaced=flavor == "amd")),
            "/v1/info": ("GET", lambda _m, _b: self._json(200, self.emu.info_body())),
            "/v1/retrieve": ("POST", self._retrieve),
        }
        available = {
            "rag": set(routes),
            "nexus": {"/v1/chat/completions", "/v1/embeddings", "/v1/models", "/v1/info"},
            "amd": {"/v1/chat/completions", "/v1/models"},
        }[flavor]
        if path not in available:
            if flavor == "rag":
                if path.startswith("/v1/"):
                    self._error(404, f"The requested service endpoint is not found: {path}")
                else:
                    self._html_404()
            elif flavor == "nexus" and method == "POST":  # static web UI fallback: POST 405, GET 404 page
                self._send(405, b"", None)
            elif flavor == "nexus":
                self._html_404()
            else:
                self._error(404, "Not Found")
            return
        expected, handler = routes[path]
        if flavor != "rag" and method != expected:  # rag-api-server routes on the path alone
            if flavor == "nexus":
                self._send(405, b"", None)
            else:
                self._error(405, "Method Not Allowed")
            return
        handler(method, body)

    # --- request bodies --------------------------------------------------------------------------------------------

    def _parse(self, body: bytes, what: str, required: str) -> Dict[str, Any]:
        """Parse a JSON body, rejecting it the way this flavour does (raises ``_Handled`` once it has answered)."""
        flavor = self.emu.flavor
        if flavor == "nexus":
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            if ctype != "application/json":
                self._text(415, "Expected request with `Content-Type: application/json`")
                raise _Handled
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            if flavor == "rag":
                raise _ClientError(400, f"Fail to deserialize {what} request: {exc}") from None
            if flavor == "nexus":
                self._text(400, f"Failed to parse the request body as JSON: {exc}")
                raise _Handled from None
            self._json(422, {"detail": [{"type": "json_invalid", "loc": ["body"], "msg": "JSON decode error"}]})
            raise _Handled from None
        problem = None
        if not isinstance(data, dict) or required not in data:
            problem = f"missing field `{required}`"
        elif isinstance(data.get("stop"), str):
            problem = "invalid type: string, expected a sequence for key `stop`"
        if problem:
            if flavor == "rag":
                raise _ClientError(400, f"Fail to deserialize {what} request: {problem}\njson_value: {body.decode(errors='replace')}")
            if flavor == "nexus":
                self._text(422, f"Failed to deserialize the JSON body into the target type: {problem}")
                raise _Handled
            self._json(422, {"detail": [{"type": "missing", "loc": ["body", required], "msg": "Field required"}]})
            raise _Handled
        return data

    def _answer_malformed(self, text: str, stream: bool = False) -> bool:
        """Answer with the ``[[malformed:NAME]]`` case named in ``text``, if any; True when it did."""
        match = _MALFORMED_RE.search(text)
        if not match:
            return False
        name = match.group(1)
        if name == "huge":  # a valid completion of several megabytes
            content = "word " * 700_000
            self._send(200, _j({"id": "x", "model": "m", "choices": [{"message": {"role": "assistant", "content": content}}]}),
                       "application/json")
        elif name == "echo-auth":  # a gateway that echoes request headers into its error page
            echoed = f"500 Internal Server Error: rejected request with Authorization: {self.headers.get('Authorization')}"
            self._send(500, echoed.encode(), "text/plain")
        elif stream and name in MALFORMED_STREAMS:
            self._start_stream()
            for raw in MALFORMED_STREAMS[name]:
                self._write_chunk(raw)
            self.wfile.write(b"0\r\n\r\n")
        elif name in MALFORMED:
            status, content_type, body = MALFORMED[name]
            self._send(status, body, content_type)
        else:
            raise _ClientError(400, f"unknown malformed case {name!r}")
        return True

    def _messages(self, request: Dict[str, Any]) -> List[Dict[str, Any]]:
        messages = request.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _ClientError(400, "messages is required" if self.emu.flavor == "amd" else "Messages should not be empty.")
        return messages

    def _delay(self, ms: float) -> None:
        if ms > 0:
            time.sleep(ms / 1000.0)

    # --- chat ------------------------------------------------------------------------------------------------------

    def _chat(self, method: str, body: bytes) -> None:
        request = self._parse(body, "chat completion", "messages")
        emu = self.emu
        messages = self._messages(request)
        if emu.flavor == "amd" and messages[-1].get("role") != "user":
            raise _ClientError(400, "The last message must be a user message.")
        model = emu.resolve_chat_model(request.get("model"))
        question = _last_user_text(messages)
        if self._answer_malformed(question, stream=bool(request.get("stream"))):
            return
        if "[[fail]]" in question or ("[[inband-error]]" in question and emu.flavor == "nexus"):
            raise _ClientError(500, "Failed to get the completion: the model crashed (emulated)", "internal_error")
        self._delay(emu.latency_ms)
        answer = "" if "[[empty]]" in question else answer_for(question, model)
        if emu.flavor == "amd" and answer:
            answer += "\n"
        finish = "stop"
        if "[[context-full]]" in question:
            finish = "length"
        user = request.get("user")
        completion_id = user if isinstance(user, str) and user and emu.flavor != "amd" else f"chatcmpl-{uuid.uuid4()}"
        usage = self._usage(messages, answer)
        if request.get("stream"):
            self._stream(request, completion_id, model, answer, finish, usage, question)
            return
        tool_calls = self._tool_calls() if "[[tool]]" in question else None
        message: Dict[str, Any] = {"content": None if tool_calls else answer, "role": "assistant"}
        if tool_calls:
            message["tool_calls"] = tool_calls
            finish = "tool_calls"
        if emu.flavor == "amd":
            message = {"role": "assistant", "content": answer, "tool_calls": None}
        n = request.get("n") if isinstance(request.get("n"), int) and emu.flavor != "amd" else 1
        choices = [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}]
        for i in range(1, max(1, min(n, 8))):
            choices.append({"index": i, "message": {"content": f"{answer} (variant {i})", "role": "assistant"},
                            "finish_reason": finish, "logprobs": None})
        response = {"id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model,
                    "choices": choices, "usage": usage}
        if "[[cut]]" in question or self._fault == "truncate":
            raw = orjson.dumps(response)
            self._send_head(200, len(raw), "application/json")
            self._cut(raw[: len(raw) // 2])
            return
        self._json(200, response, spaced=emu.flavor == "amd")

    def _usage(self, messages: Sequence[Dict[str, Any]], answer: str) -> Dict[str, int]:
        if self.emu.flavor == "amd":  # AMD GAIA estimates len/4
            prompt = sum(len(m.get("content") or "") for m in messages if isinstance(m.get("content"), str)) // 4
            completion = len(answer) // 4
        else:
            prompt, completion = _prompt_tokens(messages), _count_tokens(answer)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    @staticmethod
    def _tool_calls() -> List[Dict[str, Any]]:
        return [{"id": "call_0", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]

    # --- streaming -------------------------------------------------------------------------------------------------

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _event(self, payload: Any, spaced: bool = False) -> None:
        if isinstance(payload, str):
            text = payload
        else:
            text = json.dumps(payload) if spaced else orjson.dumps(payload).decode()
        self._write_chunk(f"data: {text}\n\n".encode())
        self._delay(self.emu.chunk_delay_ms)

    def _end_stream(self) -> None:
        self._event("[DONE]")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _stream(self, request: Dict[str, Any], cid: str, model: str, answer: str, finish: str,
                usage: Dict[str, int], question: str) -> None:
        created = int(time.time())
        flavor = self.emu.flavor
        self._start_stream()
        if flavor == "rag":
            events = self._llama_core_events(request, cid, created, model, answer, finish, usage, question)
        elif flavor == "nexus":
            events = self._nexus_events(cid, created, model, answer, usage)
        else:
            events = self._amd_events(cid, created, model, answer, finish, question)
        cut_at = max(1, len(events) // 2) if "[[cut]]" in question or self._fault == "truncate" else None
        for i, event in enumerate(events):
            if cut_at is not None and i == cut_at:
                self._cut()
                return
            if event is _ABORT:
                self._cut()
                return
            self._event(event, spaced=flavor == "amd")
        self._end_stream()

    def _llama_core_events(self, request: Dict[str, Any], cid: str, created: int, model: str, answer: str,
                           finish: str, usage: Dict[str, int], question: str) -> List[Any]:
        def chunk(delta: Dict[str, Any], finish_reason: Optional[str] = None) -> Dict[str, Any]:
            return {"id": cid, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
                    "created": created, "model": model, "system_fingerprint": SYSTEM_FINGERPRINT,
                    "object": "chat.completion.chunk"}

        options = request.get("stream_options")
        include_usage = bool(options.get("include_usage")) if isinstance(options, dict) else True  # Gaia: --include-usage
        usage_chunk = {"id": cid, "choices": [], "created": created, "model": model,
                       "system_fingerprint": SYSTEM_FINGERPRINT, "object": "chat.completion.chunk", "usage": usage}
        if "[[tool]]" in question:
            call = {**self._tool_calls()[0], "index": 0}
            return [chunk({"tool_calls": [call], "role": "assistant"}), usage_chunk]
        events: List[Any] = []
        sent = 0
        for piece in _pieces(answer):
            event = chunk({"content": piece, "role": "assistant"})
            if self.emu.cumulative_usage:
                sent += _count_tokens(piece)
                prompt = usage["prompt_tokens"]
                event["usage"] = {"prompt_tokens": prompt, "completion_tokens": sent, "total_tokens": prompt + sent}
            events.append(event)
        if "[[inband-error]]" in question:  # llama-core aborts the HTTP body on a backend error
            return events[: max(1, len(events) // 2)] + [_ABORT]
        if finish == "length":
            events.append(chunk({"content": CONTEXT_FULL_MARKER, "role": "assistant"}, "length"))
        if include_usage:
            events.append(usage_chunk)
        return events

    def _nexus_events(self, cid: str, created: int, model: str, answer: str, usage: Dict[str, int]) -> List[Any]:
        pieces = _pieces(answer, min_chars=10)
        events: List[Any] = []
        for ordinal, piece in enumerate(pieces):
            last = ordinal == len(pieces) - 1
            event: Dict[str, Any] = {
                "id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": ordinal, "delta": {"role": "assistant", "content": piece}, "logprobs": None,
                             "finish_reason": "stop" if last else None}],
            }
            if last:
                event["usage"] = usage
            events.append(event)
        return events

    def _amd_events(self, cid: str, created: int, model: str, answer: str, finish: str, question: str) -> List[Any]:
        def chunk(delta: Dict[str, Any], finish_reason: Optional[str] = None) -> Dict[str, Any]:
            return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}

        events: List[Any] = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": line}) for line in answer.splitlines(keepends=True)]
        if "[[inband-error]]" in question:
            return events[:2] + [{"error": {"message": "Agent processing failed: emulated agent crash",
                                            "type": "server_error"}}]
        events.append(chunk({}, finish))
        return events

    # --- embeddings and retrieval ----------------------------------------------------------------------------------

    def _embeddings(self, method: str, body: bytes) -> None:
        request = self._parse(body, "embedding", "input")
        emu = self.emu
        raw = request["input"]
        if isinstance(raw, str):
            texts = [raw]
        elif isinstance(raw, list) and all(isinstance(x, str) for x in raw):
            texts = list(raw)
        elif isinstance(raw, list) and all(isinstance(x, int) for x in raw):
            texts = [" ".join(str(x) for x in raw)]  # token ids are embedded as decimal text
        elif isinstance(raw, list) and all(isinstance(x, list) for x in raw):
            texts = [" ".join(str(t) for t in x) for x in raw]
        else:
            raise _ClientError(400, "Fail to deserialize embedding request: invalid type for `input`")
        if any("[[fail]]" in t for t in texts):
            raise _ClientError(500, "Failed to compute embeddings. Reason: emulated failure", "internal_error")
        if self._answer_malformed(" ".join(texts)):
            return
        self._delay(emu.latency_ms)
        vectors = emu.embed(texts)
        model = emu.spec.embedding_model
        tokens = sum(max(1, _count_tokens(t)) for t in texts)
        response = {
            "object": "list",
            "data": [{"index": i, "object": "embedding", "embedding": vectors[i]} for i in range(len(texts))],
            "model": model,
            "usage": {"prompt_tokens": tokens, "completion_tokens": 0, "total_tokens": tokens},
        }
        raw = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
        if self._fault == "truncate":
            self._send_head(200, len(raw), "application/json")
            self._cut(raw[: len(raw) // 2])
            return
        self._send(200, raw, "application/json")

    def _retrieve(self, method: str, body: bytes) -> None:
        request = self._parse(body, "chat completion", "messages")
        emu = self.emu
        messages = self._messages(request)
        query = _last_user_text(messages)
        if not query:
            raise _ClientError(400, "No user messages found.")
        if "[[fail]]" in query:
            raise _ClientError(500, "No point retrieved. Reason: emulated Qdrant failure", "internal_error")
        if self._answer_malformed(query):
            return
        self._delay(emu.latency_ms)
        points = emu.retrieve(query)
        meta = {"limit": emu.retrieve_limit, "score_threshold": emu.score_threshold}
        if emu.retrieve_shape == "object":
            self._json(200, {"points": points, **meta} if points else meta)
        else:
            self._json(200, [{"points": points, **meta}] if points else [])


class _Handled(Exception):
    """Internal: the response was already sent."""


_ABORT = object()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run an emulator in the foreground until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m gaia_source.emulator", description=__doc__.split("\n\n")[0])
    parser.add_argument("--flavor", choices=FLAVORS, default="rag", help="server generation to emulate (default rag)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (0 = any free port; default 8080)")
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 routes")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before each answer / first chunk")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0, help="delay between stream chunks")
    parser.add_argument("--dim", type=int, default=768, help="embedding dimension (default 768)")
    parser.add_argument("--retrieve-shape", choices=("list", "object"), default="list",
                        help="/v1/retrieve response shape (rag flavour)")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="share of /v1 requests that meet a fault (0-1)")
    parser.add_argument("--fault-seed", type=int, default=0, help="seed of the fault draw (same seed, same faults)")
    parser.add_argument("--fault-kinds", default=",".join(FAULT_KINDS),
                        help=f"comma-separated subset of {','.join(FAULT_KINDS)}")
    parser.add_argument("--slow-ms", type=float, default=2000.0, help="stall of a 'slow' fault")
    args = parser.parse_args(argv)
    emulator = NodeEmulator(
        flavor=args.flavor, host=args.host, port=args.port, api_key=args.api_key, latency_ms=args.latency_ms,
        chunk_delay_ms=args.chunk_delay_ms, dim=args.dim, retrieve_shape=args.retrieve_shape,
        fault_rate=args.fault_rate, fault_seed=args.fault_seed,
        fault_kinds=tuple(k.strip() for k in args.fault_kinds.split(",") if k.strip()), slow_ms=args.slow_ms,
    ).start()
    print(f"Gaia node emulator ({args.flavor}) listening on {emulator.base_url}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
