"""One exception hierarchy for everything that can go wrong, with messages a user can act on.

Every message says what failed and where (method, endpoint, node URL) and what to do; none contains the API key.
Node error bodies come in three dialects (plain text from LlamaEdge servers, OpenAI-style JSON from gaia-nexus,
FastAPI ``{"detail": …}`` from AMD GAIA) and sometimes as an HTML gateway page: :func:`describe_body` turns any of
them into one readable line.
"""

from __future__ import annotations

import html
import re
from typing import Any, Iterable, Optional, Tuple

import orjson

from .settings import API_KEY_LOCATION, MAX_ERROR_DETAIL_CHARS, MISSING_ENDPOINT_STATUS, RETRYABLE_STATUS


class GaiaError(Exception):
    """Base class of every error raised by ``gaia_source``."""


class GaiaConfigError(GaiaError, ValueError):
    """The configuration or the user's input is wrong; raised before any request is sent."""


class GaiaRequestError(GaiaError):
    """A request to the node failed.

    Attributes:
        method: HTTP method.
        url: Full URL of the endpoint (never contains the key).
        status_code: HTTP status, or None when no response arrived.
        detail: Readable, truncated error text from the node (or the transport error).
        attempts: How many times the request was sent.
    """

    def __init__(
        self,
        method: str,
        url: str,
        detail: str,
        status_code: Optional[int] = None,
        attempts: int = 1,
        retry_after: Optional[float] = None,
    ) -> None:
        self.method = method
        self.url = url
        self.detail = detail
        self.status_code = status_code
        self.attempts = attempts
        self.retry_after = retry_after
        super().__init__(self._message())

    def _message(self) -> str:
        status = f"HTTP {self.status_code}" if self.status_code is not None else "no response"
        return f"{self.method} {self.url} failed ({status}): {self.detail}"

    def __reduce__(self) -> Any:  # keep pickling (dlt may move exceptions between threads/processes) working
        return (self.__class__, (self.method, self.url, self.detail, self.status_code, self.attempts, self.retry_after))


class GaiaRunStopped(GaiaError):
    """An error that ends the whole run at once: no later request of it could succeed (a refused key, no usable
    node). It is never recorded as a failed request; the run stops with its one message."""


class GaiaAuthError(GaiaRequestError, GaiaRunStopped):
    """401/403: the node (or the hosted gateway in front of it) refused the API key. Stops the whole run."""

    def _message(self) -> str:
        return (
            f"{self.method} {self.url} was refused with HTTP {self.status_code}: {self.detail}. "
            f"The node did not accept the API key. Set a valid key in {API_KEY_LOCATION} "
            "(local nodes and AMD GAIA servers without GAIA_API_KEY need none)."
        )


class GaiaConnectError(GaiaRequestError):
    """No connection could be made (refused, unknown host, TLS handshake): nothing answered at the node's address."""


class GaiaNodeDown(GaiaConnectError):
    """Not sent: the node answered earlier in this run, then refused ``breaker_failures`` connections in a row (its
    server stopped, or restarts). While it rests (``breaker_cooldown``) a request to it fails at once instead of waiting
    out its retries; it is given the run's final rounds like any transient failure (the node is tried again once its
    rest is over), and the next run sends what still failed. ``attempts`` counts only real sends."""

    def _message(self) -> str:
        return f"{self.method} {self.url} not sent: {self.detail}"


class GaiaNodeUnusable(GaiaRequestError, GaiaRunStopped):
    """No node of the run can be used: each refused the connection before it ever answered, or is not an
    OpenAI-compatible API (a wrong URL). ``detail`` is the whole message: what answered, and what to do."""

    def _message(self) -> str:
        return self.detail


class GaiaNodeLeftOut(GaiaRequestError):
    """A request pinned to a node that this run left out (see :class:`GaiaNodeUnusable`) while other nodes answer."""


class GaiaStreamError(GaiaRequestError):
    """A stream that did not complete: an in-band error or an unreadable chunk (the partial answer is kept).

    Attributes:
        partial: The reply as far as it got (a :class:`gaia_source.client.Reply` with the folded stream).
    """

    partial: Any = None


class GaiaStreamInterrupted(GaiaStreamError):
    """A stream cut before ``[DONE]``: transient, so it is retried (and given another round at the end of a run)."""


class GaiaStreamCut(GaiaStreamError):
    """A stream the server itself ended early: ``[DONE]`` after some content, with no ``finish_reason`` and none of the
    usage asked for (llama.cpp's server does this when another request arrives, its ``--interrupt_requests``).

    Its row keeps the partial text (status ``interrupted``) and the cell fails. It is not retried within the run: a
    retry arriving at such a server cuts another client's stream, and is cut in turn; it needs another setting
    (:data:`~gaia_source.settings.CUT_STREAM_HINT`), and a re-run sends it again.
    """


class EndpointNotAvailable(GaiaRequestError):
    """404/405 on a resource's first request: this node's server generation does not have the endpoint."""

    @property
    def where(self) -> Tuple[str, str]:
        """(the node's URL, the endpoint's path), e.g. ``("http://host:8080/v1", "/v1/retrieve")``."""
        node, _, endpoint = self.url.rpartition("/v1/")
        return f"{node}/v1", f"/v1/{endpoint}"

    def _message(self) -> str:
        node, endpoint = self.where
        hint = _MISSING_HINTS.get(endpoint.removeprefix("/v1/"), "This server generation does not have it.")
        return f"the node at {node} has no {self.method} {endpoint} (HTTP {self.status_code}: {self.detail}). {hint}"


_MISSING_HINTS = {
    "retrieve": "Only Gaia nodes <= 0.4 (rag-api-server) serve /v1/retrieve; gaia-nexus (>= 0.5) and AMD GAIA do not "
                "(a 0.6 node retrieves inside the nexus and returns no chunks).",
    "responses": "Only llama-api-server >= 0.28 and llama-nexus main serve /v1/responses; Gaia node 0.6 (gaia-nexus "
                 "0.8.2) and AMD GAIA do not.",
    "embeddings": "AMD GAIA servers have no embeddings; use a GaiaNet node for them.",
    "info": "Neither /v1/info nor /health answered; the models table still describes the server.",
}


class GaiaEmptyAnswer(GaiaError):
    """A chat answer (or response) with no content and no tool call: HTTP 200, yet nothing was answered.

    Its row is loaded with status ``empty`` (so what the server sent stays visible), and the cell fails: a
    ``failed_requests`` row, a ``failed`` cell in the run's ledger, a non-zero exit. It is not retried within the run
    (a model that really answers nothing would answer nothing again), and a re-run sends it again. The usual cause is
    a llama.cpp server cutting an in-flight stream when another request arrives (its ``--interrupt_requests``,
    on by default: ``cut``); otherwise the model itself answered nothing, and does so again at temperature 0.

    Attributes:
        method: HTTP method.
        url: Full URL of the endpoint.
        detail: What came back (finish reason, chunks) and what to do.
        status_code: The HTTP status of the answer (200).
        cut: The server cut the stream before its end (else the model answered nothing).
    """

    def __init__(self, method: str, url: str, detail: str, status_code: Optional[int] = 200, cut: bool = False) -> None:
        self.method = method
        self.url = url
        self.detail = detail
        self.status_code = status_code
        self.cut = cut
        super().__init__(f"{method} {url} answered with nothing: {detail}")

    def __reduce__(self) -> Any:
        return (self.__class__, (self.method, self.url, self.detail, self.status_code, self.cut))


class GaiaInputRefused(GaiaError):
    """An input the server would refuse, so it was not sent (it is recorded in ``failed_requests``, with 0 attempts).

    Args:
        message: What is wrong, and where the input came from (``file:line``).
    """

    attempts = 0


class GaiaLookupError(GaiaError):
    """The destination could not say which rows are already loaded; nothing was sent, so nothing is doubled."""


class GaiaPipelineStateError(GaiaError):
    """What an interrupted run left in the pipeline's working directory cannot be finished; nothing new was sent.

    The message names the package, the cause, and what to do (which directory to delete, or which ``dlt pipeline``
    command to run)."""


class GaiaResponseError(GaiaError):
    """The node answered 200 with a body that is not what the protocol promises (bad JSON, missing fields…)."""

    def __init__(self, method: str, url: str, detail: str) -> None:
        self.method = method
        self.url = url
        self.detail = detail
        super().__init__(f"{method} {url} returned an unexpected body: {detail}")

    def __reduce__(self) -> Any:
        return (self.__class__, (self.method, self.url, self.detail))


_PATH_RE = re.compile(r"\S*/\S*")


def looks_like_missing_route(error: GaiaRequestError) -> bool:
    """A 404/405 that says "no such route" (not AMD's ``Model 'x' not found``, which is about the request; a path
    the body quotes, such as ``/v1/models``, is not a model)."""
    said = _PATH_RE.sub(" ", error.detail).lower()
    return error.status_code in MISSING_ENDPOINT_STATUS and "model" not in said


def clean_missing_route(error: GaiaRequestError) -> bool:
    """A "no such route" answer a server itself gives (a text, JSON or empty 404/405), not a gateway's or web
    server's HTML page: only such an answer tells that a server generation lacks an endpoint. An HTML 404 may be a
    gateway briefly losing its route, so it is retried like any transient failure."""
    return looks_like_missing_route(error) and not error.detail.startswith("HTML page")


INPUT_FAILURE_MARKERS = ("Failed to compute embeddings",)
"""What a node says when one input of a batch cannot be processed (llama-core: a text longer than the model's
context, say). Sending the same batch again fails the same way; sending it without that input succeeds."""


def blames_an_input(error: BaseException) -> bool:
    """Whether a request failed because of one of its inputs (a 4xx/500 naming an input failure): the same request
    fails again, but a batch split into smaller ones loads everything except that input."""
    return (
        isinstance(error, GaiaRequestError)
        and error.status_code in (400, 413, 422, 500)
        and any(marker in error.detail for marker in INPUT_FAILURE_MARKERS)
    )


def is_transient(error: BaseException, missing_route: bool = True) -> bool:
    """Whether sending the same request again may succeed: no response, 408/409/425/429/5xx, a cut stream, a gateway's
    HTML 404 page, and — once an endpoint is known to exist (``missing_route``) — any route-like 404/405."""
    if isinstance(error, (GaiaRunStopped, EndpointNotAvailable, GaiaNodeLeftOut)):
        return False
    if isinstance(error, GaiaStreamInterrupted):
        return True
    if isinstance(error, GaiaStreamError) or not isinstance(error, GaiaRequestError) or blames_an_input(error):
        return False
    if error.status_code is None or error.status_code in RETRYABLE_STATUS:
        return True
    return looks_like_missing_route(error) and (missing_route or not clean_missing_route(error))


def what_answered(status: Optional[int], detail: str) -> str:
    """What a server's answer was, for a message: ``HTTP 404 with an HTML page (404 Not Found)``."""
    if detail.startswith("HTML page: "):
        return f"HTTP {status} with an HTML page ({detail[len('HTML page: '):]})"
    if detail.startswith("HTML page"):
        return f"HTTP {status} with an HTML page"
    if detail == "empty response body":
        return f"HTTP {status} with an empty body"
    return f"HTTP {status}: {detail}"


_TAG_RE = re.compile(r"<[^>]+>")
_SPACE_RE = re.compile(r"\s+")
_TITLE_RE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_DROP_BLOCKS_RE = re.compile(r"<(script|style|head)[^>]*>.*?</\1>", re.IGNORECASE | re.DOTALL)


def _truncate(text: str, limit: int = MAX_ERROR_DETAIL_CHARS) -> str:
    text = _SPACE_RE.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _json_error_text(data: Any) -> Optional[str]:
    """Pull the human text out of the JSON error dialects nodes speak."""
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str) and err:
            return err
        detail = data.get("detail")
        if isinstance(detail, str) and detail:
            return detail
        if isinstance(detail, list) and detail:  # FastAPI validation errors
            parts = []
            for d in detail:
                if isinstance(d, dict):
                    loc = ".".join(str(x) for x in d.get("loc", []) if x != "body")
                    parts.append(f"{loc}: {d.get('msg', d)}" if loc else str(d.get("msg", d)))
            return "; ".join(parts) or None
        if data.get("message"):
            return str(data["message"])
    return None


def describe_body(content: bytes, content_type: Optional[str] = None, secrets: Iterable[Optional[str]] = ()) -> str:
    """Turn an error body of any dialect into one readable line, with ``secrets`` redacted.

    JSON errors give their message; HTML pages (gateway 502s, a node's web UI 404) give their title and text;
    plain text is kept, minus the request echo LlamaEdge appends to 400 bodies. Invalid UTF-8 is replaced,
    never raised. Secrets are replaced by ``***`` in the whole text before it is shortened: a key cut in two by the
    length limit would no longer be found, and most of it would be kept.

    Args:
        content: The raw response body.
        content_type: The response's Content-Type header, if any (nodes often send none, or a wrong one).
        secrets: Texts that must not appear in the line (the API key), see :func:`redact`.

    Returns:
        A single line of at most ``MAX_ERROR_DETAIL_CHARS`` characters.
    """
    secrets = tuple(secrets)

    def shorten(line: str) -> str:
        return _truncate(redact(line, secrets))

    if not content or not content.strip():
        return "empty response body"
    text = redact(content.decode("utf-8", errors="replace"), secrets)
    stripped = text.lstrip()
    if stripped[:1] in ("{", "["):
        try:
            message = _json_error_text(orjson.loads(content))
        except orjson.JSONDecodeError:
            message = None
        if message:
            return shorten(message)
    ctype = (content_type or "").lower()
    if "html" in ctype or stripped[:1] == "<":
        title_match = _TITLE_RE.search(text)
        title = html.unescape(title_match.group(1)).strip() if title_match else ""
        body = shorten(html.unescape(_TAG_RE.sub(" ", _DROP_BLOCKS_RE.sub(" ", text))))
        if title and not body.startswith(title):
            body = f"{title} — {body}" if body else title
        return shorten(f"HTML page: {body}" if body else "HTML page with no text")
    # LlamaEdge 400 bodies end with "\njson_value: <the whole request>" — not worth showing, may be huge.
    text = text.split("\njson_value:", 1)[0]
    return shorten(text)


def redact(text: str, secrets: Iterable[Optional[str]]) -> str:
    """Replace every occurrence of each secret (of 4+ characters) in ``text`` with ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text
