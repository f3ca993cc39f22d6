"""What is already loaded: looks ids up in the destination so that re-runs skip work that is done.

The ids live in the destination tables themselves, not in dlt state, so state does not grow with the corpus, and a
fresh machine (or a second worker) sees what another run loaded. Lookups go through the running pipeline's SQL
client; outside a pipeline, or before the table exists, nothing counts as done.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable, Iterator, List, Optional, Set, TypeVar

import dlt
from dlt.destinations.exceptions import DatabaseUndefinedRelation

logger = logging.getLogger("gaia_source")

T = TypeVar("T")
LOOKUP_BATCH = 2_000
"""Ids per ``IN (...)`` lookup: bounded queries, whatever the size of the table."""


def current_pipeline() -> Optional[dlt.Pipeline]:
    """The pipeline running now (call it on the extracting thread), or None."""
    try:
        return dlt.current.pipeline()
    except Exception:  # no pipeline is running (e.g. a resource iterated directly)
        return None


def loaded_ids(table: str, id_column: str, ids: Iterable[str], where: str = "") -> Set[str]:
    """Which of ``ids`` are already in ``table.id_column`` (optionally only rows matching SQL ``where``).

    Args:
        table: Table name in the pipeline's dataset.
        id_column: The id column to match.
        ids: Candidate ids (looked up in batches of ``LOOKUP_BATCH``).
        where: Extra SQL condition, e.g. ``status = 'completed'``.

    Returns:
        The subset of ``ids`` present; empty when no pipeline runs, the table does not exist yet, or the
        destination cannot be queried with SQL (a warning says so then).
    """
    pipeline = current_pipeline()
    wanted = list(dict.fromkeys(ids))
    if pipeline is None or not wanted or pipeline.destination is None:
        return set()
    found: Set[str] = set()
    try:
        with pipeline.sql_client() as client:
            qualified = client.make_qualified_table_name(table)
            column = client.escape_column_name(id_column)
            condition = f" AND ({where})" if where else ""
            for start in range(0, len(wanted), LOOKUP_BATCH):
                batch = wanted[start : start + LOOKUP_BATCH]
                placeholders = ",".join(["%s"] * len(batch))
                rows = client.execute_sql(
                    f"SELECT {column} FROM {qualified} WHERE {column} IN ({placeholders}){condition}", *batch
                )
                found.update(str(r[0]) for r in rows or [])
    except DatabaseUndefinedRelation:
        return set()
    except Exception as exc:  # a destination without SQL access: everything is sent again, merge keeps one row
        logger.warning("could not look up already-loaded rows in %s (%s); sending everything again", table, exc)
        return set()
    return found


def skip_loaded(
    items: Iterable[T], key: Callable[[T], str], table: str, id_column: str, where: str = "", what: str = "requests"
) -> Iterator[T]:
    """Yield the items whose key is not yet in ``table`` (looked up a batch at a time, streaming).

    Logs how many were skipped, so a re-run that sends nothing says why.
    """
    skipped = 0
    batch: List[T] = []

    def flush() -> Iterator[T]:
        nonlocal skipped
        done = loaded_ids(table, id_column, (key(i) for i in batch), where)
        for item in batch:
            if key(item) in done:
                skipped += 1
            else:
                yield item
        batch.clear()

    for item in items:
        batch.append(item)
        if len(batch) >= LOOKUP_BATCH:
            yield from flush()
    yield from flush()
    if skipped:
        logger.info("%s: %d %s already loaded, not sent again (refresh=true sends them again)", table, skipped, what)
