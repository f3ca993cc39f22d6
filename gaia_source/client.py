"""The node client: httpx with Bearer auth, retries (tenacity), readable errors, and node metadata discovery.

One :class:`GaiaClient` talks to one node. It is thread-safe: resources fan requests out over a thread pool and
share one connection pool. What it knows about the node during a run (which endpoints are missing, the /v1/info and
/v1/models bodies, a refused key) is remembered, so no endpoint is asked twice for the same answer.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import threading
import time
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Dict, List, Optional, Tuple

import dlt
import httpx
import httpx_sse
import orjson
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from .errors import (
    EndpointNotAvailable,
    GaiaAuthError,
    GaiaConfigError,
    GaiaRequestError,
    GaiaResponseError,
    describe_body,
    redact,
)
from .settings import (
    API_PREFIX,
    AUTH_STATUS,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_RESPONSE_MB,
    DEFAULT_RETRY_BACKOFF,
    DEFAULT_TIMEOUT,
    GAIA_DOMAIN,
    INFO_PATH,
    MAX_RETRY_WAIT,
    MISSING_ENDPOINT_STATUS,
    MODELS_PATH,
    NODE_LOCATION,
    RETRYABLE_STATUS,
    USER_AGENT,
)
from .streaming import STATUS_INTERRUPTED, ChatStreamAccumulator, StreamResult

logger = logging.getLogger("gaia_source")

_NODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")


def resolve_base_url(node_id: Optional[str] = None, base_url: Optional[str] = None) -> str:
    """The node's ``…/v1`` base URL, from ``base_url`` (wins) or ``node_id``.

    ``base_url`` may be given with or without ``/v1`` and with trailing slashes; ``node_id`` may be a bare id
    (``0xabc…`` → ``https://0xabc….gaia.domains/v1``) or a full host name.

    Raises:
        GaiaConfigError: neither is set, or the value is not a usable URL / node id.
    """
    if base_url and str(base_url).strip():
        raw = str(base_url).strip()
        if "://" not in raw:
            raise GaiaConfigError(f"base_url {raw!r} has no scheme; write it like http://localhost:8080/v1")
        try:
            url = httpx.URL(raw)
        except httpx.InvalidURL as exc:
            raise GaiaConfigError(f"base_url {raw!r} is not a valid URL: {exc}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise GaiaConfigError(f"base_url {raw!r} must be an http:// or https:// URL with a host")
        path = re.sub(r"/{2,}", "/", url.path).rstrip("/")
        if not path.endswith(API_PREFIX):
            path += API_PREFIX
        netloc = url.netloc.decode("ascii").rsplit("@", 1)[-1]  # never keep user:password in the node URL
        return f"{url.scheme}://{netloc}{path}"
    if node_id and str(node_id).strip():
        node = str(node_id).strip().rstrip("/")
        if "://" in node:
            return resolve_base_url(base_url=node)
        if "." in node:  # a full host name such as 0xabc.gaia.domains or llama8b.us.gaianet.network
            return resolve_base_url(base_url=f"https://{node}")
        if not _NODE_ID_RE.match(node):
            raise GaiaConfigError(f"node_id {node!r} is not a node id (letters, digits and '-', like 0x1234abcd…)")
        return f"https://{node}.{GAIA_DOMAIN}{API_PREFIX}"
    raise GaiaConfigError(
        f"No Gaia node configured. Set {NODE_LOCATION} "
        "(e.g. base_url = \"http://localhost:8080/v1\" for a local node or an AMD GAIA server), "
        "or try it without a node: python gaia_pipeline.py --demo"
    )


def configured_client(
    node_id: Optional[str] = None,
    base_url: Optional[str] = None,
    api_key: Optional[str] = None,
    timeout: Optional[float] = None,
    max_concurrency: Optional[int] = None,
    max_attempts: Optional[int] = None,
    retry_backoff: Optional[float] = None,
) -> "GaiaClient":
    """A client for the node in ``[sources.gaia_source]`` config (env, .dlt/*.toml); arguments win over config."""

    def setting(key: str, given: Any, kind: type, default: Any = None) -> Any:
        if given is not None:
            return given
        value = dlt.config.get(f"sources.gaia_source.{key}", kind)
        return default if value is None else value

    from .pool import resolve_base_urls  # a configured node list: search and helpers use its first node

    url = resolve_base_urls(setting("node_id", node_id, Any), setting("base_url", base_url, Any))[0]
    key = api_key if api_key is not None else dlt.secrets.get("sources.gaia_source.api_key", str)
    return GaiaClient(
        url,
        key,
        setting("timeout", timeout, float, DEFAULT_TIMEOUT),
        setting("max_concurrency", max_concurrency, int, DEFAULT_MAX_CONCURRENCY),
        setting("max_attempts", max_attempts, int, DEFAULT_MAX_ATTEMPTS),
        setting("retry_backoff", retry_backoff, float, DEFAULT_RETRY_BACKOFF),
    )


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

    def auth_flow(self, request: httpx.Request) -> Any:
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request

    def __repr__(self) -> str:
        return "_BearerAuth(***)"


class StreamInterrupted(Exception):
    """Internal: a stream broke after it started; carries what arrived so far (retried, then recorded)."""

    def __init__(self, result: StreamResult) -> None:
        super().__init__(result.error)
        self.result = result


def _parse_retry_after(value: Optional[str]) -> Optional[float]:
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


def _looks_like_missing_route(detail: str) -> bool:
    """A 404/405 means "no such endpoint" unless the node is talking about a model (AMD: ``Model 'x' not found``)."""
    return "model" not in detail.lower()


class GaiaClient:
    """A thread-safe client for one Gaia node (GaiaNet <= 0.4, >= 0.5, or an AMD GAIA API server).

    Args:
        base_url: The node's ``…/v1`` URL (see :func:`resolve_base_url`).
        api_key: Bearer key; None for local nodes that need none.
        timeout: Seconds to wait for a response (for a stream: between two chunks).
        max_concurrency: Connections kept to the node; resources keep at most this many requests in flight.
        max_attempts: Sends per request (1 = no retries) on 429/5xx/timeouts/connection errors/cut streams.
        retry_backoff: Seconds before the first retry; grows exponentially with jitter.
        retry_max_wait: Cap on one wait between attempts, ``Retry-After`` included.
        max_response_mb: Bodies larger than this are refused (recorded as an error) instead of read.
    """

    def __init__(
        self,
        base_url: str,
        api_key: Optional[str] = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        retry_backoff: float = DEFAULT_RETRY_BACKOFF,
        retry_max_wait: float = MAX_RETRY_WAIT,
        max_response_mb: float = DEFAULT_MAX_RESPONSE_MB,
    ) -> None:
        if timeout <= 0:
            raise GaiaConfigError(f"timeout must be > 0 seconds, got {timeout}")
        if max_concurrency < 1:
            raise GaiaConfigError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if max_attempts < 1:
            raise GaiaConfigError(f"max_attempts must be >= 1, got {max_attempts}")
        self.base_url = base_url.rstrip("/")
        self.max_concurrency = max_concurrency
        self.max_attempts = max_attempts
        self.retry_backoff = retry_backoff
        self.retry_max_wait = retry_max_wait
        if max_response_mb <= 0:
            raise GaiaConfigError(f"max_response_mb must be > 0, got {max_response_mb}")
        self.max_response_bytes = int(max_response_mb * 2**20)
        self._api_key = api_key or None
        url = httpx.URL(self.base_url)
        if self._api_key and url.scheme == "http" and not _is_loopback(url.host):
            logger.warning(
                "Sending the API key over plain http to %s: anyone on the network path can read it. Use https.",
                self.base_url,
            )
        self._http = httpx.Client(
            auth=_BearerAuth(self._api_key) if self._api_key else None,
            timeout=httpx.Timeout(timeout, connect=min(timeout, DEFAULT_CONNECT_TIMEOUT)),
            limits=httpx.Limits(max_connections=max_concurrency + 2, max_keepalive_connections=max_concurrency + 2),
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
            follow_redirects=True,
        )
        self._slots = threading.BoundedSemaphore(max_concurrency)  # per-node limit, shared by all resources
        self._lock = threading.Lock()
        self._missing: Dict[str, EndpointNotAvailable] = {}
        self._auth_error: Optional[GaiaAuthError] = None
        self._metadata: Dict[str, Tuple[Any, datetime, float]] = {}
        self._metadata_locks: Dict[str, threading.Lock] = {}

    # --- plumbing --------------------------------------------------------------------------------------------

    def url(self, path: str) -> str:
        """Full URL of an endpoint path such as ``chat/completions``."""
        return f"{self.base_url}/{path.lstrip('/')}"

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> "GaiaClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GaiaClient({self.base_url!r}, api_key={'***' if self._api_key else None})"

    def _redact(self, text: str) -> str:
        return redact(text, [self._api_key])

    def _guard(self, path: str) -> None:
        """Fail fast on what this run already learned: a refused key, or an endpoint the node lacks."""
        if self._auth_error is not None:
            raise self._auth_error
        missing = self._missing.get(path)
        if missing is not None:
            raise missing

    def _raise_for_status(self, response: httpx.Response, method: str, path: str, content: Optional[bytes] = None) -> None:
        if response.status_code < 400:
            return
        status = response.status_code
        body = response.content if content is None else content
        detail = self._redact(describe_body(body, response.headers.get("content-type")))
        url = self.url(path)
        if status in AUTH_STATUS:
            error = GaiaAuthError(method, url, detail, status)
            self._auth_error = error
            raise error
        if status in MISSING_ENDPOINT_STATUS and _looks_like_missing_route(detail):
            missing = EndpointNotAvailable(method, url, detail, status)
            self._missing[path] = missing
            raise missing
        raise GaiaRequestError(
            method, url, detail, status, retry_after=_parse_retry_after(response.headers.get("retry-after"))
        )

    def _transport_error(self, method: str, path: str, exc: Exception) -> GaiaRequestError:
        if isinstance(exc, httpx.TimeoutException):
            detail = f"timed out ({type(exc).__name__}); raise `timeout` if the node is just slow"
        else:
            detail = f"{type(exc).__name__}: {self._redact(str(exc)) or 'connection failed'}"
        return GaiaRequestError(method, self.url(path), detail, None)

    # --- retries ---------------------------------------------------------------------------------------------

    @staticmethod
    def _retryable(exc: BaseException) -> bool:
        if isinstance(exc, StreamInterrupted):
            return True
        if isinstance(exc, (GaiaAuthError, EndpointNotAvailable)):
            return False
        if isinstance(exc, GaiaRequestError):
            return exc.status_code is None or exc.status_code in RETRYABLE_STATUS
        return False

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            return min(retry_after, self.retry_max_wait)  # the server's Retry-After, capped
        # exponential with jitter; tenacity caps the result (jitter included) at retry_max_wait
        return wait_exponential_jitter(initial=self.retry_backoff, max=self.retry_max_wait, jitter=self.retry_backoff)(state)

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        logger.info("attempt %d/%d failed, retrying in %.2f s: %s", state.attempt_number, self.max_attempts, wait, exc)

    def _retrying(self) -> Retrying:
        return Retrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=self._wait,
            retry=retry_if_exception(self._retryable),
            before_sleep=self._log_retry,
            reraise=True,
        )

    def _with_retries(self, fn: Any, *args: Any) -> Any:
        retrying = self._retrying()
        try:
            return retrying(fn, *args)
        except GaiaRequestError as exc:
            exc.attempts = retrying.statistics.get("attempt_number", 1)
            raise

    # --- requests --------------------------------------------------------------------------------------------

    def _send_once(self, method: str, path: str, body: Optional[Dict[str, Any]]) -> Tuple[Any, float]:
        self._guard(path)
        content = None if body is None else orjson.dumps(body)
        headers = None if body is None else {"Content-Type": "application/json"}
        request = self._http.build_request(method, self.url(path), content=content, headers=headers)
        with self._slots:
            started = time.perf_counter()
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
            return orjson.loads(raw), elapsed
        except orjson.JSONDecodeError as exc:
            detail = describe_body(raw, response.headers.get("content-type"))
            raise GaiaResponseError(method, self.url(path), f"not JSON ({exc}): {self._redact(detail)}") from None

    def _read_capped(self, response: httpx.Response, method: str, path: str) -> bytes:
        """The body, read up to ``max_response_bytes`` (a runaway body is an error, not an out-of-memory crash)."""
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
        return b"".join(chunks)

    def _too_large(self, size: int) -> str:
        limit = self.max_response_bytes / 2**20
        return f"response of {size / 2**20:.1f}+ MiB is larger than max_response_mb = {limit:g}; it was not read"

    def get_json(self, path: str) -> Tuple[Any, float]:
        """GET an endpoint; return its JSON body and the latency in seconds (retried as configured)."""
        return self._with_retries(self._send_once, "GET", path, None)  # type: ignore[no-any-return]

    def post_json(self, path: str, body: Dict[str, Any]) -> Tuple[Any, float]:
        """POST a JSON body; return the JSON response and the latency in seconds (retried as configured)."""
        return self._with_retries(self._send_once, "POST", path, body)  # type: ignore[no-any-return]

    def _stream_once(self, path: str, body: Dict[str, Any]) -> StreamResult:
        self._guard(path)
        with self._slots:
            return self._stream_exchange(path, body)

    def _stream_exchange(self, path: str, body: Dict[str, Any]) -> StreamResult:
        accumulator = ChatStreamAccumulator()
        try:
            with httpx_sse.connect_sse(
                self._http,
                "POST",
                self.url(path),
                content=orjson.dumps(body),
                headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
            ) as source:
                response = source.response
                if response.status_code >= 400:
                    response.read()
                    self._raise_for_status(response, "POST", path)
                ctype = response.headers.get("content-type", "")
                if "text/event-stream" not in ctype:
                    response.read()
                    detail = describe_body(response.content, ctype)
                    raise GaiaResponseError(
                        "POST", self.url(path), f"expected an event stream, got {ctype or 'no Content-Type'}: {detail}"
                    )
                for event in source.iter_sse():
                    if not event.data:
                        continue
                    try:
                        if not accumulator.add(event.data):
                            break
                    except ValueError as exc:
                        accumulator.error = str(exc)
                        break
        except httpx.TransportError as exc:
            if accumulator.chunk_count == 0:
                raise self._transport_error("POST", path, exc) from None
            result = accumulator.finish(interruption=f"{type(exc).__name__}: {self._redact(str(exc)) or 'stream cut'}")
            raise StreamInterrupted(result) from None
        result = accumulator.finish()
        if result.status == STATUS_INTERRUPTED:
            raise StreamInterrupted(result)
        return result

    def stream_chat(self, path: str, body: Dict[str, Any]) -> Tuple[StreamResult, int]:
        """POST a streaming chat request and fold its SSE chunks.

        A stream cut before ``[DONE]`` is retried like a failed request; when every attempt was cut, the last
        partial result comes back with status ``interrupted`` instead of an exception.

        Returns:
            The folded stream and the number of attempts it took.
        """
        retrying = self._retrying()
        try:
            result = retrying(self._stream_once, path, body)
        except StreamInterrupted as exc:
            result = exc.result
        except GaiaRequestError as exc:
            exc.attempts = retrying.statistics.get("attempt_number", 1)
            raise
        return result, retrying.statistics.get("attempt_number", 1)

    # --- node metadata ---------------------------------------------------------------------------------------

    def metadata(self, path: str) -> Tuple[Any, datetime, float]:
        """GET /v1/info or /v1/models once per run (thread-safe); return (body, fetched_at, latency_s)."""
        with self._lock:
            lock = self._metadata_locks.setdefault(path, threading.Lock())
        with lock:
            if path not in self._metadata:
                fetched_at = datetime.now(timezone.utc)
                body, latency = self.get_json(path)
                self._metadata[path] = (body, fetched_at, latency)
            return self._metadata[path]

    def _optional_metadata(self, path: str) -> Any:
        try:
            return self.metadata(path)[0]
        except (EndpointNotAvailable, GaiaResponseError):
            return None
        except GaiaRequestError as exc:
            if isinstance(exc, GaiaAuthError):
                raise
            logger.debug("could not read %s for model discovery: %s", path, exc)
            return None

    def discover_models(self) -> Tuple[Optional[str], Optional[str]]:
        """The node's (chat model, embedding model), from /v1/info, else guessed from /v1/models.

        Gaia nodes ignore an unknown ``model`` and answer with the loaded one, so a wrong guess is harmless there;
        AMD GAIA servers need a real agent id, which /v1/models gives.
        """
        chat, embedding = models_from_info(self._optional_metadata(INFO_PATH))
        if chat and embedding:
            return chat, embedding
        ids = model_ids(self._optional_metadata(MODELS_PATH))
        embedders = [m for m in ids if "embed" in m.lower()]
        others = [m for m in ids if m not in embedders]
        return chat or (others[0] if others else None), embedding or (embedders[0] if embedders else None)


def model_ids(models_body: Any) -> List[str]:
    """Model ids listed in a /v1/models body (empty when the body is not the expected shape)."""
    data = models_body.get("data") if isinstance(models_body, dict) else None
    return [m["id"] for m in data or [] if isinstance(m, dict) and isinstance(m.get("id"), str)]


def models_from_info(info: Any) -> Tuple[Optional[str], Optional[str]]:
    """(chat model, embedding model) named in a /v1/info body of any server generation."""
    if not isinstance(info, dict):
        return None, None

    def name(obj: Any) -> Optional[str]:
        return obj.get("name") if isinstance(obj, dict) and isinstance(obj.get("name"), str) else None

    # rag-api-server / llama-api-server (Gaia <= 0.4): {"chat_model": {...}, "embedding_model": {...}}
    chat, embedding = name(info.get("chat_model")), name(info.get("embedding_model"))
    models = info.get("models")
    if isinstance(models, dict):  # gaia-nexus (Gaia >= 0.5): {"models": {"chat": [...], "embedding": [...]}}
        chat = chat or next((name(m) for m in models.get("chat") or [] if name(m)), None)
        embedding = embedding or next((name(m) for m in models.get("embedding") or [] if name(m)), None)
    elif isinstance(models, list):  # the stale documented shape: {"models": [{"name", "type"}, ...]}
        for m in models:
            if isinstance(m, dict) and m.get("type") == "chat":
                chat = chat or name(m)
            elif isinstance(m, dict) and m.get("type") == "embedding":
                embedding = embedding or name(m)
    return chat, embedding
