"""The nodes of one run: which node gets each attempt, retries across nodes, and a circuit breaker per node.

An old Gaia node answers one request at a time, so parallelism comes from more nodes, not more connections to one:
``base_url = ["http://node-a:8080/v1", "http://node-b:8080/v1"]`` with ``max_concurrency`` per node. A pool of one node
is the ordinary case.

Retries belong here, not to a node: an attempt that fails transiently is retried on another healthy node when there is
one (at once), or on the same node after a backoff (``Retry-After`` honoured, capped). A node that fails
``breaker_failures`` times in a row is benched for ``breaker_cooldown`` seconds while other nodes can answer, then
tried again. The :class:`~gaia_source.client.Reply` names the node that finally answered and counts every attempt;
an error that escapes names the last node tried and carries the attempt count.

A node that answered and then refuses ``breaker_failures`` connections in a row has stopped (or restarts): even when it
is the only node, it rests for ``breaker_cooldown`` seconds, and a request to it meanwhile fails at once
(:class:`~gaia_source.errors.GaiaNodeDown`, not sent) instead of waiting out its own retries, so a server killed
mid-run costs seconds, not minutes per remaining input; the final rounds try it again once its rest is over.

A node that plainly cannot serve this run is left out of it at once, with one warning, instead of being retried:
one that refuses the connection before it ever answered (nothing listens there), and one that is not an
OpenAI-compatible API (a wrong URL: a web server's 404 page where the API should be). The second is told by one cheap
check per node and run, made only when a node that has not answered yet gives a "no such route" 404/405 or an HTML
page: ``GET …/models`` must list models. A gateway's passing 404 on a node whose ``/models`` answers stays a
transient failure, retried. Requests go on to the other nodes; when none is left, the run stops
(:class:`~gaia_source.errors.GaiaNodeUnusable`, one line naming what answered and the likely URL).

A pool belongs to one run (see :mod:`gaia_source.context`): a refused key or the loss of every node stops every later
send of that run, and nothing it learned outlives :meth:`NodePool.close`.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Dict, Iterator, List, Optional

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from .client import NodeClient, Reply, tls_context
from .config import NodeSettings
from .errors import (
    GaiaAuthError,
    GaiaConfigError,
    GaiaConnectError,
    GaiaError,
    GaiaNodeDown,
    GaiaNodeLeftOut,
    GaiaNodeUnusable,
    GaiaRequestError,
    GaiaResponseError,
    GaiaRunStopped,
    GaiaStreamError,
    is_transient,
    looks_like_missing_route,
    what_answered,
)
from .settings import API_PREFIX, MODELS_PATH, RETRYABLE_STATUS

logger = logging.getLogger("gaia_source")


@dataclass
class _Health:
    """A node's load and breaker state (guarded by the pool's condition)."""

    in_flight: int = 0
    failures: int = 0
    benched_until: float = 0.0
    answered: bool = False
    """It gave an HTTP answer in this run (a refused connection after that is a restart: retried)."""
    is_api: Optional[bool] = None
    """Whether it is an OpenAI-compatible API: True once it answered a request or listed its models."""
    unusable: Optional[GaiaNodeUnusable] = None
    """Why it is left out of this run (None: it is in)."""
    refused: int = 0
    """Connections it refused in a row after it had answered (it stopped, or restarts)."""
    down_until: float = 0.0
    """Until when requests to it fail at once, unsent (``time.monotonic()``): it refused too many connections."""


class NodePool:
    """Spreads attempts over nodes, least busy first, each node within its own ``max_concurrency``.

    Args:
        settings: The resolved node settings; one client is made per URL in ``settings.urls()``.
    """

    def __init__(self, settings: NodeSettings) -> None:
        self.settings = settings
        urls = settings.urls()
        tls = tls_context(urls)
        self.nodes = [NodeClient(url, settings, tls) for url in urls]
        if not self.nodes:
            raise GaiaConfigError("a node pool needs at least one node")
        self.max_concurrency = sum(node.max_concurrency for node in self.nodes)
        self._health: Dict[str, _Health] = {node.base_url: _Health() for node in self.nodes}
        self._free = threading.Condition()
        self._stopped: Optional[GaiaRunStopped] = None
        """What ended the run (a refused key, no usable node): every later send raises it at once."""
        self._checks: Dict[str, threading.Lock] = {node.base_url: threading.Lock() for node in self.nodes}

    def close(self) -> None:
        """Close every node's connections."""
        for node in self.nodes:
            node.close()

    def __enter__(self) -> "NodePool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def node(self, base_url: str) -> NodeClient:
        """The pool's client for one node URL."""
        for node in self.nodes:
            if node.base_url == base_url:
                return node
        raise KeyError(base_url)

    # --- choosing a node -------------------------------------------------------------------------------------

    def _benched(self, node: NodeClient, now: float) -> bool:
        return self._health[node.base_url].benched_until > now

    def _candidates(self, pinned: Optional[str], avoid: Optional[str]) -> List[NodeClient]:
        """Nodes an attempt may go to, best first: healthy ones (other than ``avoid``) before benched ones; none of
        those left out of the run."""
        nodes = [self.node(pinned)] if pinned else self.nodes
        nodes = [n for n in nodes if self._health[n.base_url].unusable is None]
        if not nodes:
            return []
        now = time.monotonic()
        healthy = [n for n in nodes if not self._benched(n, now)]
        if not healthy:  # everyone is benched: try the one that rests the shortest (half-open)
            return [min(nodes, key=lambda n: self._health[n.base_url].benched_until)]
        return [n for n in healthy if n.base_url != avoid] or healthy

    @contextmanager
    def _borrow(self, pinned: Optional[str], avoid: Optional[str], method: str, path: str) -> Iterator[NodeClient]:
        """Borrow the least busy candidate node, waiting while every candidate is at its limit.

        Raises:
            GaiaRunStopped: the run is over (a refused key; every node left out).
            GaiaNodeLeftOut: ``pinned`` is left out of the run, and other nodes are not.
        """
        with self._free:
            while True:
                if self._stopped is not None:
                    raise self._stopped
                down = self._all_down(pinned, method, path)
                if down is not None:
                    raise down
                candidates = self._candidates(pinned, avoid)
                if not candidates and pinned is not None:
                    reason = self._health[pinned].unusable
                    raise GaiaNodeLeftOut(method, self.node(pinned).url(path), f"left out of this run: {reason}")
                free = [n for n in candidates if self._health[n.base_url].in_flight < n.max_concurrency]
                if free:
                    node = min(free, key=lambda n: self._health[n.base_url].in_flight / n.max_concurrency)
                    self._health[node.base_url].in_flight += 1
                    break
                self._free.wait(timeout=0.5)  # a bench can end without anyone releasing a slot
        try:
            yield node
        finally:
            with self._free:
                self._health[node.base_url].in_flight -= 1
                self._free.notify()

    def _all_down(self, pinned: Optional[str], method: str, path: str) -> Optional[GaiaNodeDown]:
        """The error of an attempt that is not sent because every node it may go to is resting after refused
        connections (see :class:`~gaia_source.errors.GaiaNodeDown`); None when one may be tried."""
        nodes = [self.node(pinned)] if pinned else self.nodes
        nodes = [n for n in nodes if self._health[n.base_url].unusable is None]
        now = time.monotonic()
        if not nodes or any(self._health[n.base_url].down_until <= now for n in nodes):
            return None
        node = min(nodes, key=lambda n: self._health[n.base_url].down_until)
        health = self._health[node.base_url]
        return GaiaNodeDown(method, node.url(path), f"{node.base_url} answered earlier in this run, then refused "
                            f"{health.refused} connections in a row (its server stopped, or restarts); it is tried "
                            f"again in {health.down_until - now:.0f} s, and the next run sends what failed", None,
                            attempts=0)

    def _record(self, node: NodeClient, error: Optional[BaseException]) -> None:
        with self._free:
            health = self._health[node.base_url]
            if error is None:
                health.failures, health.benched_until = 0, 0.0
                health.refused, health.down_until = 0, 0.0
                health.answered = health.is_api = True
                return
            if isinstance(error, GaiaConnectError):  # it had answered (else it was left out): stopped, or restarts
                health.refused += 1
                now = time.monotonic()
                if health.refused >= self.settings.breaker_failures and health.down_until <= now:
                    logger.warning("node %s refused %d connections in a row: its server stopped or restarts; requests "
                                   "to it fail at once for %.0f s, then it is tried again", node.base_url,
                                   health.refused, self.settings.breaker_cooldown)
                    health.down_until = now + self.settings.breaker_cooldown
            elif isinstance(error, GaiaRequestError) and error.status_code is not None:
                health.refused = 0
            if isinstance(error, GaiaRequestError) and error.status_code is not None:
                health.answered = True
            if isinstance(error, GaiaAuthError):
                self._stopped = error
                return
            if not is_transient(error):
                return
            health.failures += 1
            if health.failures >= self.settings.breaker_failures and len(self.nodes) > 1:
                if health.benched_until <= time.monotonic():
                    logger.warning("node %s failed %d times in a row; benched for %.0f s while other nodes answer",
                                   node.base_url, health.failures, self.settings.breaker_cooldown)
                health.benched_until = time.monotonic() + self.settings.breaker_cooldown

    # --- leaving a node out of the run ------------------------------------------------------------------------

    def _left_out(self, node: NodeClient, error: GaiaError, method: str) -> bool:
        """Whether ``error`` shows that ``node`` cannot serve this run; if so, it is left out (one warning, or, when it
        was the last node in, the run stops).

        Two findings leave a node out: a refused connection before the node ever answered, and an answer that is not
        an OpenAI-compatible API's (see :meth:`_check_api`), asked only after a "no such route" 404/405 or an HTML
        page from a node not yet known to be one.
        """
        health = self._health[node.base_url]
        if isinstance(error, GaiaConnectError) and not health.answered:
            detail = f"cannot connect to {node.base_url} ({error.detail}): is the node running, and is the URL right?"
            return self._leave_out(node, GaiaNodeUnusable(method, node.base_url, detail, None))
        html_200 = isinstance(error, GaiaResponseError) and "HTML page" in error.detail
        route_like = isinstance(error, GaiaRequestError) and looks_like_missing_route(error)
        if health.is_api is None and (html_200 or route_like):
            finding = self._check_api(node)
            if finding is not None:
                return self._leave_out(node, finding)
        return False

    def _check_api(self, node: NodeClient) -> Optional[GaiaNodeUnusable]:
        """Ask ``GET …/models`` of ``node`` once per run (one send, no retry): None when it lists models (or the
        answer tells nothing: no response, a 5xx, a refused key), else why the node is not an OpenAI-compatible API."""
        with self._checks[node.base_url]:
            health = self._health[node.base_url]
            if health.is_api is not None:
                return health.unusable
            url = f"{node.base_url}/{MODELS_PATH}"
            status: Optional[int] = 200
            try:
                reply = node.send("GET", MODELS_PATH)
            except GaiaAuthError:
                return None
            except GaiaRequestError as exc:
                if exc.status_code is None or exc.status_code in RETRYABLE_STATUS:
                    return None
                status, answered = exc.status_code, what_answered(exc.status_code, exc.detail)
            except GaiaResponseError as exc:
                answered = f"HTTP 200 with {exc.detail}"
            else:
                data = reply.body.get("data") if isinstance(reply.body, dict) else None
                if isinstance(data, list):
                    health.is_api = True
                    return None
                answered = "HTTP 200 with JSON that is not a list of models"
            health.is_api = False
            hint = _url_hint(node)
            return GaiaNodeUnusable("GET", url, f"{node.base_url} is not an OpenAI-compatible API: GET {url} answered "
                                    f"{answered}. {hint}", status)

    def _leave_out(self, node: NodeClient, finding: GaiaNodeUnusable) -> bool:
        """Leave ``node`` out of the run for ``finding`` (once); stop the run when no node is left."""
        with self._free:
            health = self._health[node.base_url]
            if health.unusable is None:
                health.unusable = finding
                left = [n for n in self.nodes if self._health[n.base_url].unusable is None]
                if left:
                    logger.warning("%s — left out of this run; %d other node(s) answer", finding, len(left))
                elif self._stopped is None:
                    findings = [self._health[n.base_url].unusable for n in self.nodes]
                    self._stopped = finding if len(self.nodes) == 1 else GaiaNodeUnusable(
                        finding.method, finding.url, "no node can be used: " + "; ".join(map(str, findings)), None)
            self._free.notify_all()
        return True

    # --- sending ---------------------------------------------------------------------------------------------

    def send(
        self,
        method: str,
        path: str,
        body: Optional[Dict[str, Any]] = None,
        *,
        stream: bool = False,
        node: Optional[str] = None,
        missing_is_transient: bool = False,
    ) -> Reply:
        """Send a request, retrying transient failures on the best node for each attempt.

        Args:
            method: ``GET`` or ``POST``.
            path: Endpoint path relative to ``/v1``.
            body: JSON body.
            stream: Fold an SSE stream (streamed chat).
            node: Pin every attempt to this node URL (per-node metadata such as /v1/info).
            missing_is_transient: Whether a route-like 404/405 is retried: a run sets it once an endpoint is known to
                exist (a gateway briefly losing its route); by default a 404/405 answers at once.

        Returns:
            The reply of the node that answered, with every attempt counted and the total latency.

        Raises:
            GaiaError: the last attempt's error, with ``attempts`` set (every send, those to a node left out
                included).
            GaiaRunStopped: at once, a refused key (``GaiaAuthError``) or no usable node left
                (``GaiaNodeUnusable``).
        """
        started = time.perf_counter()
        last: Dict[str, str] = {}
        sends = 0

        def attempt() -> Reply:
            nonlocal sends
            while True:
                with self._borrow(node, last.get("node"), method, path) as client:
                    last["node"] = client.base_url
                    sends += 1
                    try:
                        reply = client.send(method, path, body, stream=stream)
                    except GaiaError as exc:
                        if self._left_out(client, exc, method):
                            continue  # at once to another node, or the run stops in _borrow
                        self._record(client, exc)
                        raise
                    self._record(client, None)
                    return reply

        retrying = Retrying(
            stop=stop_after_attempt(self.settings.max_attempts),
            wait=lambda state: self._wait(state, node, last.get("node")),
            retry=retry_if_exception(lambda exc: is_transient(exc, missing_is_transient)
                                     and not isinstance(exc, GaiaNodeDown)),  # unsent: the final rounds retry it
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            reply = retrying(attempt)
        except GaiaError as exc:
            if isinstance(exc, GaiaRequestError) and not isinstance(exc, GaiaRunStopped):
                exc.attempts = sends
            if isinstance(exc, GaiaStreamError) and isinstance(exc.partial, Reply):
                exc.partial = replace(exc.partial, attempts=sends, latency_s=time.perf_counter() - started)
            raise
        return replace(reply, attempts=sends, latency_s=time.perf_counter() - started)

    def get_json(self, path: str, node: Optional[str] = None) -> Reply:
        """GET an endpoint (of one node if ``node`` is given)."""
        return self.send("GET", path, node=node)

    def post_json(self, path: str, body: Dict[str, Any]) -> Reply:
        """POST a JSON body to the best node."""
        return self.send("POST", path, body)

    def stream_chat(self, path: str, body: Dict[str, Any]) -> Reply:
        """POST a streaming chat request and fold its chunks."""
        return self.send("POST", path, body, stream=True)

    def _wait(self, state: RetryCallState, pinned: Optional[str], failed: Optional[str]) -> float:
        """No wait when another healthy node can take the retry; else the node's Retry-After or a backoff."""
        if pinned is None and len(self.nodes) > 1:
            with self._free:
                if any(n.base_url != failed for n in self._candidates(None, failed)):
                    return 0.0
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            return float(min(retry_after, self.settings.retry_max_wait))
        backoff = self.settings.retry_backoff
        return float(wait_exponential_jitter(initial=backoff, max=self.settings.retry_max_wait, jitter=backoff)(state))

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        logger.debug("attempt %d/%d failed, retrying in %.2f s: %s", state.attempt_number, self.settings.max_attempts,
                     wait, exc)


def _url_hint(node: NodeClient) -> str:
    """Where the API likely is: at ``/v1`` of the server's root."""
    url = httpx.URL(node.base_url)
    likely = f"{url.scheme}://{url.netloc.decode('ascii')}{API_PREFIX}"
    if likely != node.base_url:
        return f"Is the URL right? The API is usually at {likely}"
    return "Is the URL right (host, port, node id)?"
