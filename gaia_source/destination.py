"""What is already loaded: looks ids up in the destination so that re-runs skip work that is done.

The ids live in the destination tables themselves, not in dlt state, so state does not grow with the corpus, and a
fresh machine (or a second worker) sees what another run loaded. Lookups go through the running pipeline's SQL
client; outside a pipeline, or before the table exists, nothing counts as done.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Iterator, List, Optional, Set, TypeVar

import dlt
from dlt.destinations.exceptions import DatabaseUndefinedRelation

logger = logging.getLogger("gaia_source")

T = TypeVar("T")
LOOKUP_BATCH = 5_000
"""Ids per ``IN (...)`` lookup: bounded queries, whatever the size of the table."""


def current_pipeline() -> Optional[dlt.Pipeline]:
    """The pipeline running now (call it on the extracting thread), or None."""
    try:
        return dlt.current.pipeline()
    except Exception:  # no pipeline is running (e.g. a resource iterated directly)
        return None


def destination_name(pipeline: Optional[dlt.Pipeline]) -> Optional[str]:
    """The destination a pipeline loads to (``duckdb``, ``postgres``, ``filesystem``…), or None."""
    return pipeline.destination.destination_name if pipeline is not None and pipeline.destination is not None else None


class LoadedIds:
    """Looks up which ids a destination table already holds, through one SQL connection opened on first use.

    Args:
        table: Table name in the running pipeline's dataset.
        id_column: The id column to match.
        where: Extra SQL condition, e.g. ``status = 'completed'``.
    """

    def __init__(self, table: str, id_column: str, where: str = "") -> None:
        self.table = table
        self.id_column = id_column
        self.where = where
        self._pipeline = current_pipeline()
        self._client: Any = None
        self._usable = destination_name(self._pipeline) is not None

    def __enter__(self) -> "LoadedIds":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._client is not None:
            self._client.close_connection()
            self._client = None

    def lookup(self, ids: Iterable[str]) -> Set[str]:
        """The subset of ``ids`` present; empty when no pipeline runs, the table does not exist yet, or the
        destination cannot be queried with SQL (a warning says so then)."""
        wanted = list(dict.fromkeys(ids))
        if not self._usable or not wanted:
            return set()
        found: Set[str] = set()
        try:
            if self._client is None:
                self._client = self._pipeline.sql_client()  # type: ignore[union-attr]
                self._client.open_connection()
            client = self._client
            qualified = client.make_qualified_table_name(self.table)
            column = client.escape_column_name(self.id_column)
            condition = f" AND ({self.where})" if self.where else ""
            kind = destination_name(self._pipeline)
            for start in range(0, len(wanted), LOOKUP_BATCH):
                batch = wanted[start : start + LOOKUP_BATCH]
                if kind in ("duckdb", "motherduck"):  # one list parameter binds ~8x faster than thousands of them
                    match, args = f"{column} IN (SELECT UNNEST(%s::VARCHAR[]))", [batch]
                elif kind == "postgres":
                    match, args = f"{column} = ANY(%s)", [batch]
                else:
                    match, args = f"{column} IN ({','.join(['%s'] * len(batch))})", batch
                rows = client.execute_sql(f"SELECT {column} FROM {qualified} WHERE {match}{condition}", *args)
                found.update(str(r[0]) for r in rows or [])
        except DatabaseUndefinedRelation:
            return set()
        except Exception as exc:  # a destination without SQL access: everything is sent again, merge keeps one row
            logger.warning("could not look up already-loaded rows in %s (%s); sending everything again", self.table, exc)
            self._usable = False
            return set()
        return found


def unique(items: Iterable[T], key: Callable[[T], str]) -> Iterator[T]:
    """Drop items whose key was already seen in this run (the first one wins)."""
    seen: Set[str] = set()
    for item in items:
        item_key = key(item)
        if item_key not in seen:
            seen.add(item_key)
            yield item


def skip_loaded(
    items: Iterable[T], key: Callable[[T], str], table: str, id_column: str, where: str = "", what: str = "requests"
) -> Iterator[T]:
    """Yield the items whose key is not yet in ``table`` (looked up a batch at a time, streaming).

    Logs how many were skipped, so a re-run that sends nothing says why.
    """
    skipped = 0
    batch: List[T] = []

    def flush(ids: LoadedIds) -> Iterator[T]:
        nonlocal skipped
        done = ids.lookup(key(i) for i in batch)
        for item in batch:
            if key(item) in done:
                skipped += 1
            else:
                yield item
        batch.clear()

    with LoadedIds(table, id_column, where) as ids:
        for item in items:
            batch.append(item)
            if len(batch) >= LOOKUP_BATCH:
                yield from flush(ids)
        yield from flush(ids)
    if skipped:
        logger.info("%s: %d %s already loaded, not sent again (refresh=true sends them again)", table, skipped, what)
