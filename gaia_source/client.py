"""One node, one attempt: httpx with Bearer auth, a capped body read, SSE folding, and readable errors.

:class:`NodeClient` sends a request to one node exactly once and returns a :class:`Reply`, or raises a
:class:`~gaia_source.errors.GaiaError` that says what failed and where. It remembers nothing between requests:
retries, node choice and what a run learned belong to :class:`gaia_source.pool.NodePool`, which returns the same
:class:`Reply` type.

A node or gateway that echoes the API key (an error page quoting the ``Authorization`` header) gets it replaced by
``***`` as the body is read, before any of it is parsed, described or shortened: whatever a message, a row or a log
line keeps of a body, it keeps no piece of the key.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Dict, Generator, List, Mapping, Optional

import httpx
import httpx_sse
import orjson

from .config import NodeSettings
from .errors import (
    GaiaAuthError,
    GaiaConnectError,
    GaiaRequestError,
    GaiaResponseError,
    GaiaStreamCut,
    GaiaStreamError,
    GaiaStreamInterrupted,
    describe_body,
    redact,
)
from .settings import API_PREFIX, AUTH_STATUS, DEFAULT_CONNECT_TIMEOUT, HEADERS_OF_INTEREST, USER_AGENT
from .streaming import STATUS_COMPLETED, STATUS_INTERRUPTED, ChatStreamAccumulator, StreamResult

logger = logging.getLogger("gaia_source")


@dataclass(frozen=True)
class Reply:
    """What a node answered, from a single client and from the pool alike.

    Attributes:
        node_url: The node that answered (``…/v1``).
        status: HTTP status of the answer.
        attempts: Sends it took (always 1 from a :class:`NodeClient`).
        latency_s: Seconds from the first send to this answer, waits between attempts included.
        attempt_latency_s: Seconds of the answering attempt alone (for a stream: until its end).
        body: The parsed JSON body (None for a stream).
        stream: The folded stream, for streamed chat.
        headers: Response headers of interest (lower-case names; e.g. ``x-node-domain`` from a domain gateway).
    """

    node_url: str
    status: int
    attempts: int
    latency_s: float
    attempt_latency_s: float
    body: Any = None
    stream: Optional[StreamResult] = None
    headers: Mapping[str, str] = field(default_factory=dict)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _BearerAuth(httpx.Auth):
    """Adds ``Authorization: Bearer <key>`` at send time, so the key is in no default header and no repr."""

    def __init__(self, token: str) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request

    def __repr__(self) -> str:
        return "_BearerAuth(***)"


def parse_retry_after(value: Optional[str]) -> Optional[float]:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


class NodeClient:
    """Sends requests to one Gaia node (GaiaNet <= 0.4, >= 0.5, or an AMD GAIA API server), one attempt each.

    Thread-safe: the pool's worker threads share one httpx connection pool per node.

    Args:
        base_url: The node's ``…/v1`` URL.
        settings: The resolved node settings (key, timeout, concurrency, body cap).
        tls: The TLS context to verify https nodes with (one per pool: building one costs ~35 ms); by default the
            system's, built for this client.
    """

    def __init__(self, base_url: str, settings: NodeSettings, tls: Optional[ssl.SSLContext] = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_concurrency = settings.max_concurrency
        self.max_response_bytes = int(settings.max_response_mb * 2**20)
        self._api_key: Optional[str] = settings.api_key or None
        url = httpx.URL(self.base_url)
        if self._api_key and url.scheme == "http" and not _is_loopback(url.host):
            logger.warning(
                "Sending the API key over plain http to %s: anyone on the network path can read it. Use https.",
                self.base_url,
            )
        connections = settings.max_concurrency + 2
        self._http = httpx.Client(
            verify=tls if tls is not None else True,
            auth=_BearerAuth(self._api_key) if self._api_key else None,
            timeout=httpx.Timeout(settings.timeout, connect=min(settings.timeout, DEFAULT_CONNECT_TIMEOUT)),
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
            follow_redirects=True,
        )

    def url(self, path: str) -> str:
        """Full URL of an endpoint path: ``chat/completions`` is under ``/v1``; ``/health`` (a leading slash) is at the
        server's root."""
        if path.startswith("/"):
            root = self.base_url[: -len(API_PREFIX)] if self.base_url.endswith(API_PREFIX) else self.base_url
            return f"{root}{path}"
        return f"{self.base_url}/{path}"

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __repr__(self) -> str:
        return f"NodeClient({self.base_url!r}, api_key={'***' if self._api_key else None})"

    def _redact(self, text: str) -> str:
        return redact(text, [self._api_key])

    def _redact_body(self, raw: bytes) -> bytes:
        """``raw`` with the key replaced by ``***`` (as :func:`~gaia_source.errors.redact` does to text)."""
        key = self._api_key
        if key and len(key) >= 4 and key.encode() in raw:
            return raw.replace(key.encode(), b"***")
        return raw

    # --- one attempt -----------------------------------------------------------------------------------------

    def send(self, method: str, path: str, body: Optional[Dict[str, Any]] = None, stream: bool = False) -> Reply:
        """Send one request once.

        Args:
            method: ``GET`` or ``POST``.
            path: Endpoint path relative to ``/v1``.
            body: JSON body (POST).
            stream: Ask for and fold an SSE stream (streamed chat).

        Returns:
            The reply (``attempts`` 1). A stream that ended with an in-band error or an unreadable chunk comes back
            as a reply whose ``stream.status`` says so, with the partial answer.

        Raises:
            GaiaAuthError: 401/403.
            GaiaRequestError: any other HTTP error, or no response (``status_code`` None).
            GaiaStreamInterrupted: the stream broke before ``[DONE]`` (``partial`` holds what arrived).
            GaiaResponseError: a 200 whose body is not what the protocol promises.
        """
        started = time.perf_counter()
        if stream:
            return self._stream(path, body or {}, started)
        content = None if body is None else orjson.dumps(body)
        headers = None if body is None else {"Content-Type": "application/json"}
        request = self._http.build_request(method, self.url(path), content=content, headers=headers)
        try:
            response = self._http.send(request, stream=True)
            try:
                raw = self._read_capped(response, method, path)
            finally:
                response.close()
        except httpx.TransportError as exc:
            raise self._transport_error(method, path, exc) from None
        elapsed = time.perf_counter() - started
        self._raise_for_status(response, method, path, raw)
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            detail = describe_body(raw, response.headers.get("content-type"), [self._api_key])
            raise GaiaResponseError(method, self.url(path), f"not JSON ({exc}): {detail}") from None
        return Reply(self.base_url, response.status_code, 1, elapsed, elapsed, body=parsed,
                     headers=_headers_of_interest(response))

    def _raise_for_status(self, response: httpx.Response, method: str, path: str, content: bytes) -> None:
        status = response.status_code
        if status < 400:
            return
        detail = describe_body(content, response.headers.get("content-type"), [self._api_key])
        if status in AUTH_STATUS:
            raise GaiaAuthError(method, self.url(path), detail, status)
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        raise GaiaRequestError(method, self.url(path), detail, status, retry_after=retry_after)

    def _transport_error(self, method: str, path: str, exc: Exception) -> GaiaRequestError:
        if isinstance(exc, httpx.TimeoutException):
            detail = f"timed out ({type(exc).__name__}); raise `timeout` if the node is just slow"
            return GaiaRequestError(method, self.url(path), detail, None)
        detail = f"{type(exc).__name__}: {self._redact(str(exc)) or 'connection failed'}"
        kind = GaiaConnectError if isinstance(exc, httpx.ConnectError) else GaiaRequestError
        return kind(method, self.url(path), detail, None)

    def _read_capped(self, response: httpx.Response, method: str, path: str) -> bytes:
        """The body, read up to ``max_response_bytes`` (a runaway body is an error, not an out-of-memory crash), with
        the key redacted."""
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_response_bytes:
            raise GaiaResponseError(method, self.url(path), self._too_large(int(declared)))
        chunks: List[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > self.max_response_bytes:
                raise GaiaResponseError(method, self.url(path), self._too_large(size))
            chunks.append(chunk)
        return self._redact_body(b"".join(chunks))

    def _too_large(self, size: int) -> str:
        limit = self.max_response_bytes / 2**20
        return f"response of {size / 2**20:.1f}+ MiB is larger than max_response_mb = {limit:g}; it was not read"

    # --- streams ---------------------------------------------------------------------------------------------

    def _stream(self, path: str, body: Dict[str, Any], started: float) -> Reply:
        options = body.get("stream_options")
        usage_asked = isinstance(options, dict) and options.get("include_usage") is True
        accumulator = ChatStreamAccumulator(started_at=started, usage_asked=usage_asked)
        headers: Mapping[str, str] = {}
        status = 0
        try:
            with httpx_sse.connect_sse(
                self._http,
                "POST",
                self.url(path),
                content=orjson.dumps(body),
                headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
            ) as source:
                response = source.response
                status, headers = response.status_code, _headers_of_interest(response)
                if status >= 400:
                    self._raise_for_status(response, "POST", path, self._read_capped(response, "POST", path))
                ctype = response.headers.get("content-type", "")
                if "text/event-stream" not in ctype:
                    detail = describe_body(self._read_capped(response, "POST", path), ctype, [self._api_key])
                    raise GaiaResponseError(
                        "POST", self.url(path), f"expected an event stream, got {ctype or 'no Content-Type'}: {detail}"
                    )
                for event in source.iter_sse():
                    if not event.data:
                        continue
                    try:
                        if not accumulator.add(self._redact(event.data)):
                            break
                    except ValueError as exc:
                        accumulator.error = str(exc)
                        break
        except httpx.TransportError as exc:
            if accumulator.chunk_count == 0:
                raise self._transport_error("POST", path, exc) from None
            cut = f"{type(exc).__name__}: {self._redact(str(exc)) or 'stream cut'}"
            raise self._stream_failure(path, accumulator.finish(interruption=cut), status, headers) from None
        result = accumulator.finish()
        if result.status != STATUS_COMPLETED:
            raise self._stream_failure(path, result, status, headers)
        return Reply(self.base_url, status, 1, result.duration_s, result.duration_s, stream=result, headers=headers)

    def _stream_failure(
        self, path: str, result: StreamResult, status: int, headers: Mapping[str, str]
    ) -> GaiaStreamError:
        kind = GaiaStreamInterrupted if result.status == STATUS_INTERRUPTED else GaiaStreamError
        detail = self._redact(result.error or result.status)
        if result.cut_by_server:  # not transient: a retry would be cut too (see GaiaStreamCut)
            kind, detail = GaiaStreamCut, f"{detail}. A re-run sends it again"
        error = kind("POST", self.url(path), detail, status or None)
        error.partial = Reply(self.base_url, status, 1, result.duration_s, result.duration_s, stream=result,
                              headers=headers)
        return error


def tls_context(urls: List[str]) -> ssl.SSLContext:
    """One TLS context for a pool's nodes: the system's verified one when a node is https; otherwise a context that
    trusts nothing (nothing is verified over http, and a redirect to https fails closed) and costs nothing to make."""
    if any(url.startswith("https://") for url in urls):
        return httpx.create_ssl_context()
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def _headers_of_interest(response: httpx.Response) -> Dict[str, str]:
    return {name: response.headers[name] for name in HEADERS_OF_INTEREST if name in response.headers}
