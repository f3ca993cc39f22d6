"""Runs one resource's requests against the node and turns their outcomes into items for dlt.

The first request goes alone, as a probe: if the node lacks the endpoint (404/405) the resource is skipped with one
warning and nothing else is sent; if the key is refused (401/403) the run stops. The rest fan out over a thread pool
with a bounded window, so inputs are pulled lazily from their files and rows flow to dlt as answers arrive.

A request that still fails after its retries is not lost and does not stop the others: it becomes a row in the
``failed_requests`` table (merged by request id). When it later succeeds, its failure row is deleted (a dlt
``hard_delete`` tombstone), so ``failed_requests`` always lists what is failing now.
"""

from __future__ import annotations

import itertools
import logging
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, Optional, Set, TypeVar

import dlt

from .errors import EndpointNotAvailable, GaiaAuthError, GaiaRequestError, GaiaResponseError
from .payloads import PreparedRequest
from .rows import Row, failed_request_row
from .settings import FAILED_REQUESTS_TABLE

if TYPE_CHECKING:
    from .pool import NodePool

logger = logging.getLogger("gaia_source")

T = TypeVar("T")
R = TypeVar("R")

# columns are declared in the source schema (rows.declare_tables); the variant only routes rows and sets the key
_FAILED_HINTS = dlt.mark.make_hints(table_name=FAILED_REQUESTS_TABLE, primary_key="request_id", write_disposition="merge")


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
        pending: Set[Future] = set()

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
class _Outcome:
    request: PreparedRequest
    rows: Any = None
    failure: Optional[Row] = None


def _failed_state() -> Dict[str, str]:
    """Request ids failing since an earlier run (kept in the source's dlt state; only failures, so it stays small)."""
    try:
        return dlt.current.source_state().setdefault("failed_requests", {})  # type: ignore[no-any-return]
    except Exception:  # outside a pipeline (e.g. iterating a resource directly): nothing to reconcile
        return {}


def _node_of(error: BaseException, fallback: str) -> str:
    """The node a failed request went to, from the endpoint URL in the error."""
    url = getattr(error, "url", None)
    return url.rsplit("/v1/", 1)[0] + "/v1" if isinstance(url, str) and "/v1/" in url else fallback


def run_requests(
    resource: str,
    client: "NodePool",
    requests: Iterable[PreparedRequest],
    execute: Callable[[PreparedRequest], Any],
) -> Iterator[Any]:
    """Send ``requests`` through ``execute`` (probe first, then concurrently) and yield rows for dlt.

    Args:
        resource: Resource name, for messages and ``failed_requests.resource``.
        client: The nodes (their summed ``max_concurrency`` bounds the fan-out).
        requests: Requests to send, consumed lazily.
        execute: Sends one request and returns its rows (a list of dicts or an Arrow table); raises a
            ``GaiaError`` on failure.

    Yields:
        Lists of rows for the resource's table, and ``failed_requests`` rows/tombstones.
    """

    def attempt(request: PreparedRequest) -> _Outcome:
        try:
            return _Outcome(request, execute(request))
        except (GaiaAuthError, EndpointNotAvailable):
            raise
        except (GaiaRequestError, GaiaResponseError) as exc:
            where = f" ({request.source})" if request.source else ""
            logger.error("%s: request %s%s failed: %s", resource, request.request_id[:12], where, exc)
            attempts = getattr(exc, "attempts", 1)
            node_url = _node_of(exc, client.base_url)
            return _Outcome(request, failure=failed_request_row(resource, request, exc, node_url, attempts))

    failed = _failed_state()
    iterator = iter(requests)
    first = next(iterator, None)
    if first is None:
        return
    try:
        probe = attempt(first)
        outcomes = fan_out(attempt, iterator, client.max_concurrency)
        for outcome in itertools.chain([probe], outcomes):
            request_id = outcome.request.request_id
            if outcome.rows is not None and len(outcome.rows) > 0:
                yield outcome.rows
            if outcome.failure is not None:
                failed[request_id] = resource
                yield dlt.mark.with_hints({**outcome.failure, "resolved": False}, _FAILED_HINTS, create_table_variant=True)
            elif failed.pop(request_id, None) is not None:
                yield dlt.mark.with_hints({"request_id": request_id, "resolved": True}, _FAILED_HINTS, create_table_variant=True)
    except EndpointNotAvailable as exc:
        logger.warning("Skipping resource '%s': %s", resource, exc)
