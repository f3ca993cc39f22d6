"""Runs one resource's requests and turns every outcome into rows for dlt: a completed row or a failure row, once.

1. **The probe.** The first request goes alone. A 404/405 that says "no such route" means this node's server
   generation lacks the endpoint: the resource is skipped with one warning and nothing else is sent. That verdict is
   made here, once; any later 404/405 is a failed request like any other (a gateway briefly losing its route).
   A refused key (401/403) stops the run.
2. **The fan-out.** The rest go out over a thread pool with a bounded window, so inputs are pulled lazily from their
   files and rows flow to dlt as answers arrive.
3. **The final rounds.** A request that failed transiently (no response, 429/5xx, a cut stream) even after its
   retries is held back and sent again after the others, following a cool-down, for ``retry_rounds`` rounds. A
   flapping gateway costs time, not rows.

A request that still fails is not lost and does not stop the others: it becomes a row in ``failed_requests`` (merged
by request id), next to whatever partial row the resource keeps (an interrupted stream's text). When it later
succeeds, its failure row is deleted (a dlt ``hard_delete`` tombstone), so ``failed_requests`` always lists what is
failing now.
"""

from __future__ import annotations

import itertools
import logging
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Set, Tuple, TypeVar

import dlt

from .client import Reply
from .errors import (
    EndpointNotAvailable,
    GaiaAuthError,
    GaiaError,
    GaiaRequestError,
    is_transient,
    looks_like_missing_route,
)
from .payloads import PreparedRequest
from .rows import failed_request_row
from .settings import FAILED_REQUESTS_TABLE, MAX_HELD_FOR_ROUND

logger = logging.getLogger("gaia_source")

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
    """
    iterator = iter(items)
    if max_workers <= 1:
        for item in iterator:
            yield fn(item)
        return
    window = 2 * max_workers
    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="gaia-request") as pool:
        pending: Set[Future[R]] = set()

        def refill() -> None:
            while len(pending) < window:
                try:
                    item = next(iterator)
                except StopIteration:
                    return
                pending.add(pool.submit(fn, item))

        try:
            refill()
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
                refill()
        finally:
            for future in pending:
                future.cancel()


@dataclass
class Outcome:
    """What became of one request: its rows, and the error if it did not complete."""

    request: PreparedRequest
    rows: Any = None
    """Rows for the resource's table (a list of dicts or an Arrow table); a failed stream keeps its partial row."""
    error: Optional[GaiaError] = None

    attempts: int = 0
    """Sends it took in this run so far."""
    parts: Tuple["Outcome", ...] = ()
    """The outcomes of the smaller requests this one was split into (a batch that failed because of one of its
    inputs): they stand for it, and it has no rows or error of its own."""

    @property
    def transient(self) -> bool:
        """Whether sending it again later may succeed."""
        return self.error is not None and is_transient(self.error)


def leaves(outcomes: Iterable[Outcome]) -> Iterator[Outcome]:
    """The outcomes that stand for themselves: a split request's parts (recursively) instead of the request."""
    for outcome in outcomes:
        if outcome.parts:
            yield from leaves(outcome.parts)
        else:
            yield outcome


Execute = Callable[[PreparedRequest, bool, int], Outcome]
"""Sends one request and returns its outcome; raises only what stops the run. The flag says it is the probe: then a
route-like 404/405 is not retried (one request decides that the endpoint is missing). The number is how many times
earlier rounds of this run sent it (rows and failures count every send)."""


def _failed_state() -> Dict[str, str]:
    """Request ids failing since an earlier run (kept in the source's dlt state; only failures, so it stays small)."""
    try:
        return dlt.current.source_state().setdefault("failed_requests", {})  # type: ignore[no-any-return]
    except Exception:  # outside a pipeline (e.g. iterating a resource directly): nothing to reconcile
        return {}


def run_requests(
    resource: str,
    requests: Iterable[PreparedRequest],
    execute: Execute,
    max_workers: int,
    retry_rounds: int = 0,
    round_cooldown: float = 0.0,
    verdict: Optional[bool] = None,
    on_verdict: Callable[[bool], None] = lambda present: None,
) -> Iterator[Any]:
    """Send ``requests`` (probe first, then concurrently, then final rounds) and yield rows for dlt.

    Args:
        resource: Resource name, for messages and ``failed_requests.resource``.
        requests: Requests to send, consumed lazily.
        execute: Sends one request; see :data:`Execute`.
        max_workers: Requests in flight at once.
        retry_rounds: Extra rounds at the end for requests that failed transiently.
        round_cooldown: Seconds to wait before each such round.
        verdict: Whether this run already knows the endpoint exists (True) or not (None: the first request probes).
        on_verdict: Told what the probe found (True: the endpoint exists), so later pages of the run skip the probe.

    Yields:
        Rows for the resource's table, and ``failed_requests`` rows and tombstones.
    """
    failing = _failed_state()
    iterator = iter(requests)
    first = next(iterator, None)
    if first is None:
        return
    probe = execute(first, verdict is None, 0)
    while verdict is None and probe.attempts == 0 and probe.error is not None:
        # refused before sending (see Endpoint.refuse): it tells nothing about the endpoint; the next one probes
        yield from _emit(resource, probe, failing)
        first = next(iterator, None)
        if first is None:
            return
        probe = execute(first, True, 0)
    if verdict is None:
        missing = isinstance(probe.error, GaiaRequestError) and looks_like_missing_route(probe.error)
        on_verdict(not missing)
        if isinstance(probe.error, GaiaRequestError) and missing:
            error = probe.error
            logger.warning("Skipping resource '%s': %s", resource,
                           EndpointNotAvailable(error.method, error.url, error.detail, error.status_code))
            return
    held: List[Tuple[PreparedRequest, int]] = []  # (request, sends so far) waiting for the next round

    def settle(outcomes: Iterable[Outcome], last_round: bool) -> Iterator[Any]:
        for outcome in leaves(outcomes):
            if outcome.transient and not last_round and len(held) < MAX_HELD_FOR_ROUND:
                held.append((outcome.request, outcome.attempts))
            else:
                yield from _emit(resource, outcome, failing)

    outcomes = fan_out(lambda r: execute(r, False, 0), iterator, max_workers)
    yield from settle(itertools.chain([probe], outcomes), last_round=retry_rounds == 0)
    for round_number in range(1, retry_rounds + 1):
        if not held:
            break
        batch, held = held, []
        logger.warning("%s: %d request(s) failed transiently; round %d of %d in %.1f s", resource, len(batch),
                       round_number, retry_rounds, round_cooldown)
        time.sleep(round_cooldown)
        again = fan_out(lambda pair: execute(pair[0], False, pair[1]), batch, max_workers)
        yield from settle(again, round_number == retry_rounds)


def _emit(resource: str, outcome: Outcome, failing: Dict[str, str]) -> Iterator[Any]:
    request_id = outcome.request.request_id
    if outcome.rows is not None and len(outcome.rows) > 0:
        yield outcome.rows
    if outcome.error is not None:
        where = f" ({outcome.request.source})" if outcome.request.source else ""
        logger.error("%s: request %s%s failed: %s", resource, request_id[:12], where, outcome.error)
        failing[request_id] = resource
        row = {**failed_request_row(resource, outcome.request, outcome.error), "resolved": False}
        yield dlt.mark.with_hints(row, _FAILED_HINTS, create_table_variant=True)
    elif failing.pop(request_id, None) is not None:
        tombstone = {"request_id": request_id, "resolved": True}
        yield dlt.mark.with_hints(tombstone, _FAILED_HINTS, create_table_variant=True)


def outcome_of(
    request: PreparedRequest, send: Callable[[], Reply], rows: Callable[[Reply], Any], prior_attempts: int = 0
) -> Outcome:
    """Run ``send`` and turn its reply into rows; a request or response error becomes the outcome's error.

    ``prior_attempts`` (sends of earlier rounds) are added to the reply's and the error's count. A failed stream
    keeps its partial answer: its ``partial`` reply becomes the rows too. Auth errors propagate.
    """
    try:
        reply = send()
    except GaiaAuthError:
        raise
    except GaiaError as exc:
        attempts = prior_attempts + getattr(exc, "attempts", 1)
        if isinstance(exc, GaiaRequestError):
            exc.attempts = attempts
        partial = getattr(exc, "partial", None)
        try:
            kept = rows(replace(partial, attempts=attempts)) if isinstance(partial, Reply) else None
        except GaiaError:
            kept = None
        return Outcome(request, kept, exc, attempts)
    reply = replace(reply, attempts=prior_attempts + reply.attempts)
    try:
        return Outcome(request, rows(reply), None, reply.attempts)
    except GaiaAuthError:
        raise
    except GaiaError as exc:  # a 200 whose body is not what the protocol promises
        return Outcome(request, None, exc, reply.attempts)
