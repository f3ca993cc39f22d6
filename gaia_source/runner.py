"""Runs one resource's requests and turns every outcome into rows for dlt: a completed row or a failure row, once.

1. **The probe.** The first request to each node goes alone (requests spread over the pool share one verdict, made
   by the first of them; requests pinned to a node, with ``compare_nodes``, have that node's own). A 404/405 that
   the server itself gives as "no such route" (text, JSON or empty, not a gateway's HTML page, which is retried)
   means this node's server generation lacks the endpoint: its cells are skipped with one warning and nothing else
   is sent to it, nor to another node in its place — unless the user named the resource, then every cell of that
   node is recorded as refused, so the run exits non-zero. The other nodes' cells go on. That verdict is made here,
   once per node; any later 404/405 is a failed request like any other (a gateway briefly losing its route). A
   refused key (401/403), or no usable node (none listening, or not an OpenAI-compatible API: see
   :mod:`gaia_source.pool`), stops the run.
2. **The fan-out.** The rest go out over a thread pool with a bounded window, so inputs are pulled lazily from their
   files and rows flow to dlt as answers arrive.
3. **The final rounds.** A request that failed transiently (no response, 429/5xx, a cut stream) even after its
   retries is held back and sent again after the others, following a cool-down, for ``retry_rounds`` rounds. A
   flapping gateway costs time, not rows.

A request that still fails is not lost and does not stop the others: each of its cells (a batch has one per text)
becomes a row in ``failed_requests``, keyed by the cell (see :mod:`gaia_source.ledger`), next to whatever partial
row the resource keeps (an interrupted stream's text). When the cell later completes — whatever request carries it:
a batch, a split part, another round — its failure row is deleted (a dlt ``hard_delete`` tombstone), so
``failed_requests`` lists what is failing now. Every cell's ending goes to the run's ledger.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Set, Tuple, TypeVar

import dlt

from .client import Reply
from .errors import (
    EndpointNotAvailable,
    GaiaEmptyAnswer,
    GaiaError,
    GaiaNodeLeftOut,
    GaiaRequestError,
    GaiaRunStopped,
    GaiaStreamCut,
    clean_missing_route,
    is_transient,
)
from .ledger import COMPLETED, FAILED, REFUSED, SKIPPED, Ledger
from .payloads import PreparedRequest, cells_of
from .rows import failed_request_row
from .settings import FAILED_REQUESTS_TABLE, MAX_HELD_FOR_ROUND

logger = logging.getLogger("gaia_source")

LOGGED_FAILURES = 5
"""Failed requests of one resource logged one by one in a run (an ERROR line each); later ones only with ``-v``
(DEBUG): a node down for the rest of a long run would otherwise write a line per cell. ``failed_requests`` has all."""

T = TypeVar("T")
R = TypeVar("R")

# columns are declared in the source schema (rows.declare_tables); the variant only routes rows and sets the key
_FAILED_HINTS = dlt.mark.make_hints(
    table_name=FAILED_REQUESTS_TABLE, primary_key="request_id", write_disposition="merge"
)


def fan_out(fn: Callable[[T], R], items: Iterable[T], max_workers: int) -> Iterator[R]:
    """Apply ``fn`` to ``items`` with up to ``max_workers`` calls in flight; yield results as they complete.

    Items are pulled lazily (at most ``2 * max_workers`` ahead), so a 100,000-line input file is never held in
    memory. An exception raised by ``fn`` cancels what has not started and propagates.

    Ctrl-C (``KeyboardInterrupt``) propagates at once: the calls in flight are left to end on their own (the script
    exits without waiting for them) instead of being waited for, which took up to a request's ``timeout``. Finished
    calls come through a queue the waiting thread reads without holding any lock of theirs:
    ``concurrent.futures.wait`` holds every pending future's lock while it registers, and a Ctrl-C landing there left
    one held, so the call that finished next blocked on it and the run never ended.
    """
    iterator = iter(items)
    if max_workers <= 1:
        for item in iterator:
            yield fn(item)
        return
    window = 2 * max_workers
    pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="gaia-request")
    finished: "queue.SimpleQueue[Future[R]]" = queue.SimpleQueue()
    pending: Set[Future[R]] = set()
    interrupted = False

    def refill() -> None:
        while len(pending) < window:
            try:
                item = next(iterator)
            except StopIteration:
                return
            future = pool.submit(fn, item)
            pending.add(future)
            future.add_done_callback(finished.put)

    try:
        refill()
        while pending:
            future = finished.get()
            pending.discard(future)
            yield future.result()
            refill()
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=not interrupted, cancel_futures=interrupted)


@dataclass
class Outcome:
    """What became of one request: its rows, and the error if it did not complete."""

    request: PreparedRequest
    rows: Any = None
    """Rows for the resource's table (a list of dicts or an Arrow table); a failed stream keeps its partial row."""
    error: Optional[GaiaError] = None

    attempts: int = 0
    """Sends it took in this run so far (a split part counts the sends of the batch it was split from)."""
    parts: Tuple["Outcome", ...] = ()
    """The outcomes of the smaller requests this one was split into (a batch that failed because of one of its
    inputs): they stand for it, and it has no rows or error of its own."""
    latency_s: float = 0.0
    """Seconds its sends took in this run so far, earlier rounds and the batch it was split from included."""
    refused: bool = False
    """Not sent: a server would refuse it, or its endpoint is missing (a ``refused`` cell of the ledger)."""

    @property
    def transient(self) -> bool:
        """Whether sending it again later may succeed."""
        return self.error is not None and not self.refused and is_transient(self.error)


def leaves(outcomes: Iterable[Outcome]) -> Iterator[Outcome]:
    """The outcomes that stand for themselves: a split request's parts (recursively) instead of the request."""
    for outcome in outcomes:
        if outcome.parts:
            yield from leaves(outcome.parts)
        else:
            yield outcome


Prior = Tuple[int, float]
"""(sends, seconds) a request already took in this run: earlier rounds, or the batch it was split from."""

Execute = Callable[[PreparedRequest, bool, Prior], Outcome]
"""Sends one request and returns its outcome; raises only what stops the run. The flag says it is the probe: then a
clean "no such route" 404/405 is not retried (one request decides that the endpoint is missing). The pair is what
earlier sends of it took (rows and failures count every send, and their latency spans them)."""


def _failed_state() -> Dict[str, str]:
    """Cell keys failing since an earlier run (kept in the source's dlt state; only failures, so it stays small).

    Read it anew at each use, never keep it: a run loaded in parts (:mod:`gaia_source.parts`) extracts each part
    with the state the previous part committed, and a change to an earlier part's dict would never be saved."""
    try:
        return dlt.current.source_state().setdefault("failed_requests", {})  # type: ignore[no-any-return]
    except Exception:  # outside a pipeline (e.g. iterating a resource directly): nothing to reconcile
        return {}


def mark_failing(resource: str, key: str) -> None:
    """Note that cell ``key`` of ``resource`` has a ``failed_requests`` row (found in the destination, written by any
    run or pipeline), so this run deletes it once the cell completes or is found done."""
    _failed_state()[key] = resource


Verdicts = Dict[Optional[str], Optional[EndpointNotAvailable]]
"""What a resource's first request to each node found, for the rest of the run: keyed by the node a request is
pinned to (None: the pool's requests); the value is None when the endpoint exists, else why it is missing. A node
not in it has not been asked yet."""


def run_requests(
    resource: str,
    requests: Iterable[PreparedRequest],
    execute: Execute,
    max_workers: int,
    ledger: Ledger,
    retry_rounds: int = 0,
    round_cooldown: float = 0.0,
    verdicts: Optional[Verdicts] = None,
    required: bool = False,
) -> Iterator[Any]:
    """Send ``requests`` (probe first, then concurrently, then final rounds) and yield rows for dlt; record how every
    cell ended in ``ledger``.

    Args:
        resource: Resource name, for messages and ``failed_requests.resource``.
        requests: Requests to send, consumed lazily.
        execute: Sends one request; see :data:`Execute`.
        max_workers: Requests in flight at once.
        ledger: The run's ledger.
        retry_rounds: Extra rounds at the end for requests that failed transiently.
        round_cooldown: Seconds to wait before each such round.
        verdicts: What earlier pages of this run found (see :data:`Verdicts`); filled in here for later ones.
        required: The user named this resource: a missing endpoint fails every cell of that node (refused, with the
            reason) instead of skipping them with a warning.

    Yields:
        Rows for the resource's table, and ``failed_requests`` rows and tombstones.
    """
    probes = _Probes(resource, execute, ledger, {} if verdicts is None else verdicts, required)
    yield from _run_requests(resource, requests, probes, max_workers, ledger, retry_rounds, round_cooldown)
    # cells found done (skipped) that were failing: a completed row of another request answers them (a compare run's
    # row for a pool cell, a run with drift off), so their failure rows go too
    for key in [k for k, r in _failed_state().items() if r == resource and ledger.outcome(resource, k) == SKIPPED]:
        _failed_state().pop(key, None)  # the state of the part extracting now (a yield may begin another)
        yield dlt.mark.with_hints({"request_id": key, "resolved": True}, _FAILED_HINTS, create_table_variant=True)


class _Probes:
    """The endpoint verdict of one resource, per node: a request to a node not asked yet is its probe, sent alone
    (the node's other requests wait for it), and what it finds holds for every later request to that node.

    A pinned request (``compare_nodes``, a node's metadata) is that node's; the pool's requests share one verdict
    (key None). A node whose endpoint is missing is never asked again in the run, and no request of it goes to another
    node: its cells are skipped (one warning, one note) or, when the user named the resource, refused.
    """

    def __init__(self, resource: str, execute: Execute, ledger: Ledger, verdicts: Verdicts, required: bool) -> None:
        self.resource, self._execute, self._ledger, self.verdicts = resource, execute, ledger, verdicts
        self.required = required
        self._lock = threading.Lock()
        self._node_locks: Dict[Optional[str], threading.Lock] = {}

    def skips_all(self) -> bool:
        """Whether nothing more is to be sent or recorded: the pool's endpoint is missing and was not asked for by
        name (so the rest of the inputs need not even be read)."""
        return not self.required and self.verdicts.get(None) is not None

    def send(self, request: PreparedRequest, prior: Prior) -> Optional[Outcome]:
        """Send ``request`` (as its node's probe when that node was not asked yet); None: not sent, its node lacks
        the endpoint and the resource was not named."""
        node = request.node
        with self._lock:
            known = node in self.verdicts
            lock = self._node_locks.setdefault(node, threading.Lock())
        if not known:
            with lock:
                with self._lock:
                    known = node in self.verdicts
                if not known:
                    return self._probe(request, prior)
        missing = self.verdicts[node]
        if missing is None:
            return self._execute(request, False, prior)
        return self._refused(request, missing, prior[0]) if self.required else None

    def _probe(self, request: PreparedRequest, prior: Prior) -> Optional[Outcome]:
        outcome = self._execute(request, True, prior)
        if outcome.refused:  # refused before sending (see Endpoint.refuse): it tells nothing; the next one probes
            return outcome
        error = outcome.error
        missing = None
        if isinstance(error, GaiaRequestError) and clean_missing_route(error):
            missing = EndpointNotAvailable(error.method, error.url, error.detail, error.status_code)
        with self._lock:
            self.verdicts[request.node] = missing
        if missing is None:
            return outcome
        node, endpoint = missing.where
        self._ledger.lacks(self.resource, node, f"{missing.method} {endpoint}")
        if not self.required:
            logger.warning("Skipping resource '%s': %s", self.resource, missing)
            self._ledger.note(f"{self.resource}: not run on {node}, which has no {missing.method} {endpoint} "
                              f"(HTTP {missing.status_code})")
            return None
        logger.error("%s: %s Every request of it to %s is recorded as failing (it was asked for by name).",
                     self.resource, missing, node)
        return self._refused(request, missing, outcome.attempts)

    @staticmethod
    def _refused(request: PreparedRequest, missing: EndpointNotAvailable, attempts: int) -> Outcome:
        return Outcome(request, None, missing, attempts, refused=True)


def _run_requests(
    resource: str,
    requests: Iterable[PreparedRequest],
    probes: _Probes,
    max_workers: int,
    ledger: Ledger,
    retry_rounds: int,
    round_cooldown: float,
) -> Iterator[Any]:
    def pending() -> Iterator[PreparedRequest]:
        source = iter(requests)
        while not probes.skips_all():  # checked before each pull: a later page does not even start its inputs
            request = next(source, None)
            if request is None:
                return
            yield request

    iterator = pending()
    held: List[Tuple[PreparedRequest, Prior]] = []  # (request, what it took so far) waiting for the next round
    quiet: Set[str] = set()

    def settle(outcomes: Iterable[Optional[Outcome]], last_round: bool) -> Iterator[Any]:
        for outcome in leaves(o for o in outcomes if o is not None):
            if outcome.transient and not last_round and len(held) < MAX_HELD_FOR_ROUND:
                held.append((outcome.request, (outcome.attempts, outcome.latency_s)))
            else:
                yield from _emit(resource, outcome, ledger, quiet)

    first = next(iterator, None)
    if first is None:
        return
    probe = probes.send(first, (0, 0.0))  # alone: nothing else is pulled before its rows are taken
    outcomes = fan_out(lambda r: probes.send(r, (0, 0.0)), iterator, max_workers)
    yield from settle(itertools.chain([probe], outcomes), last_round=retry_rounds == 0)
    for round_number in range(1, retry_rounds + 1):
        if not held:
            break
        batch, held = held, []
        logger.warning("%s: %d request(s) failed transiently; round %d of %d in %.1f s", resource, len(batch),
                       round_number, retry_rounds, round_cooldown)
        time.sleep(round_cooldown)
        again = fan_out(lambda pair: probes.send(pair[0], pair[1]), batch, max_workers)
        yield from settle(again, round_number == retry_rounds)


def _emit(resource: str, outcome: Outcome, ledger: Ledger, quiet: Set[str]) -> Iterator[Any]:
    """The rows of one outcome, a ``failed_requests`` row per cell it failed, a tombstone per cell it completed that
    was failing; and the ledger's record of each of its cells. ``quiet``: the resources that said they log no more
    failures one by one (see :data:`LOGGED_FAILURES`)."""
    request = outcome.request
    if outcome.rows is not None and len(outcome.rows) > 0:
        yield outcome.rows
    cells = cells_of(request)
    if outcome.error is not None:
        where = f" ({request.source})" if request.source else ""
        if not isinstance(outcome.error, GaiaNodeLeftOut):  # the pool said once why the node is left out
            logged = ledger.count(FAILED, resource) + ledger.count(REFUSED, resource)
            if logged < LOGGED_FAILURES:
                logger.error("%s: request %s%s failed: %s", resource, request.request_id[:12], where, outcome.error)
            else:
                if not quiet:
                    quiet.add(resource)
                    logger.error("%s: more requests failed; they are not logged one by one (-v logs them): SELECT * "
                                 "FROM %s lists every one", resource, FAILED_REQUESTS_TABLE)
                logger.debug("%s: request %s%s failed: %s", resource, request.request_id[:12], where, outcome.error)
        state = REFUSED if outcome.refused else FAILED
        empty = isinstance(outcome.error, GaiaEmptyAnswer)
        cut = isinstance(outcome.error, GaiaStreamCut) or (isinstance(outcome.error, GaiaEmptyAnswer)
                                                            and outcome.error.cut)
        ledger.record_many(resource, [key for key, _ in cells], state, outcome.attempts, str(outcome.error),
                           [request.cell if text is None else None for _, text in cells], empty=empty, cut=cut)
        for key, text in cells:
            _failed_state()[key] = resource  # the state of the part extracting now (see _failed_state)
            row = {**failed_request_row(resource, request, outcome.error, key, text, outcome.attempts),
                   "resolved": False}
            yield dlt.mark.with_hints(row, _FAILED_HINTS, create_table_variant=True)
        return
    ledger.record_many(resource, [key for key, _ in cells], COMPLETED, outcome.attempts,
                       cells=None if request.cell is None else [request.cell if text is None else None
                                                                for _, text in cells])
    if not _failed_state():  # nothing failing since an earlier run: no tombstones to send
        return
    for key, _ in cells:
        if _failed_state().pop(key, None) is not None:
            tombstone = {"request_id": key, "resolved": True}
            yield dlt.mark.with_hints(tombstone, _FAILED_HINTS, create_table_variant=True)


def outcome_of(
    request: PreparedRequest, send: Callable[[], Reply], rows: Callable[[Reply], Any], prior: Prior = (0, 0.0)
) -> Outcome:
    """Run ``send`` and turn its reply into rows; a request or response error becomes the outcome's error.

    ``prior`` (sends and seconds of earlier rounds, or of the batch it was split from) is added to the reply's and
    the error's count. A failed stream keeps its partial answer: its ``partial`` reply becomes the rows too. What stops
    the run (a refused key, no usable node) propagates.
    """
    prior_attempts, prior_latency = prior
    started = time.perf_counter()
    try:
        reply = send()
    except GaiaRunStopped:
        raise
    except GaiaError as exc:
        attempts = prior_attempts + getattr(exc, "attempts", 1)
        latency = prior_latency + time.perf_counter() - started
        if isinstance(exc, GaiaRequestError):
            exc.attempts = attempts
        partial = getattr(exc, "partial", None)
        try:
            kept = rows(replace(partial, attempts=attempts, latency_s=prior_latency + partial.latency_s)) \
                if isinstance(partial, Reply) else None
        except GaiaError:
            kept = None
        return Outcome(request, kept, exc, attempts, latency_s=latency)
    reply = replace(reply, attempts=prior_attempts + reply.attempts, latency_s=prior_latency + reply.latency_s)
    try:
        return Outcome(request, rows(reply), None, reply.attempts, latency_s=reply.latency_s)
    except GaiaRunStopped:
        raise
    except GaiaError as exc:  # a 200 whose body is not what the protocol promises
        return Outcome(request, None, exc, reply.attempts, latency_s=reply.latency_s)
