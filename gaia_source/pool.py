"""The nodes of one run: which node gets each attempt, retries across nodes, and a circuit breaker per node.

An old Gaia node answers one request at a time, so parallelism comes from more nodes, not more connections to one:
``base_url = ["http://node-a:8080/v1", "http://node-b:8080/v1"]`` with ``max_concurrency`` per node. A pool of one node
is the ordinary case.

Retries belong here, not to a node: an attempt that fails transiently is retried on another healthy node when there is
one (at once), or on the same node after a backoff (``Retry-After`` honoured, capped). A node that fails
``breaker_failures`` times in a row is benched for ``breaker_cooldown`` seconds while other nodes can answer, then
tried again. The :class:`~gaia_source.client.Reply` names the node that finally answered and counts every attempt;
an error that escapes names the last node tried and carries the attempt count.

A pool belongs to one run (see :mod:`gaia_source.context`): a refused key stops every later send of that run, and
nothing it learned outlives :meth:`NodePool.close`.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Dict, Iterator, List, Optional

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from .client import NodeClient, Reply, tls_context
from .config import NodeSettings
from .errors import GaiaAuthError, GaiaConfigError, GaiaError, GaiaRequestError, GaiaStreamError, is_transient

logger = logging.getLogger("gaia_source")


@dataclass
class _Health:
    """A node's load and breaker state (guarded by the pool's condition)."""

    in_flight: int = 0
    failures: int = 0
    benched_until: float = 0.0


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
        self._auth_error: Optional[GaiaAuthError] = None

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
        """Nodes an attempt may go to, best first: healthy ones (other than ``avoid``) before benched ones."""
        nodes = [self.node(pinned)] if pinned else self.nodes
        now = time.monotonic()
        healthy = [n for n in nodes if not self._benched(n, now)]
        if not healthy:  # everyone is benched: try the one that rests the shortest (half-open)
            return [min(nodes, key=lambda n: self._health[n.base_url].benched_until)]
        return [n for n in healthy if n.base_url != avoid] or healthy

    @contextmanager
    def _borrow(self, pinned: Optional[str], avoid: Optional[str]) -> Iterator[NodeClient]:
        """Borrow the least busy candidate node, waiting while every candidate is at its limit."""
        with self._free:
            while True:
                if self._auth_error is not None:
                    raise self._auth_error
                free = [n for n in self._candidates(pinned, avoid)
                        if self._health[n.base_url].in_flight < n.max_concurrency]
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

    def _record(self, node: NodeClient, error: Optional[BaseException]) -> None:
        with self._free:
            health = self._health[node.base_url]
            if error is None:
                health.failures, health.benched_until = 0, 0.0
                return
            if isinstance(error, GaiaAuthError):
                self._auth_error = error
                return
            if not is_transient(error):
                return
            health.failures += 1
            if health.failures >= self.settings.breaker_failures and len(self.nodes) > 1:
                if health.benched_until <= time.monotonic():
                    logger.warning("node %s failed %d times in a row; benched for %.0f s while other nodes answer",
                                   node.base_url, health.failures, self.settings.breaker_cooldown)
                health.benched_until = time.monotonic() + self.settings.breaker_cooldown

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
            GaiaError: the last attempt's error, with ``attempts`` set; a refused key (``GaiaAuthError``) at once.
        """
        started = time.perf_counter()
        last: Dict[str, str] = {}

        def attempt() -> Reply:
            with self._borrow(node, last.get("node")) as client:
                last["node"] = client.base_url
                try:
                    reply = client.send(method, path, body, stream=stream)
                except GaiaError as exc:
                    self._record(client, exc)
                    raise
                self._record(client, None)
                return reply

        retrying = Retrying(
            stop=stop_after_attempt(self.settings.max_attempts),
            wait=lambda state: self._wait(state, node, last.get("node")),
            retry=retry_if_exception(lambda exc: is_transient(exc, missing_is_transient)),
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            reply = retrying(attempt)
        except GaiaError as exc:
            attempts = int(retrying.statistics.get("attempt_number", 1))
            if isinstance(exc, GaiaRequestError):
                exc.attempts = attempts
            if isinstance(exc, GaiaStreamError) and isinstance(exc.partial, Reply):
                exc.partial = replace(exc.partial, attempts=attempts, latency_s=time.perf_counter() - started)
            raise
        attempts = int(retrying.statistics.get("attempt_number", 1))
        return replace(reply, attempts=attempts, latency_s=time.perf_counter() - started)

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
        logger.info("attempt %d/%d failed, retrying in %.2f s: %s", state.attempt_number, self.settings.max_attempts,
                    wait, exc)
