"""What the destination can do, decided once per run, and what it already holds.

:func:`capabilities_of` is the one place that knows destinations apart: the load file format, whether vectors may
go as Arrow, which native vector column to create, and how to ask which ids are loaded. :class:`LoadedIds` asks
that question, so re-runs skip work that is done: the ids live in the destination tables themselves (not in dlt
state, which would grow with the corpus), and a fresh machine or a second worker sees what another run loaded.

A lookup that fails is never taken for "nothing loaded": that would send everything again and double rows. It raises
:class:`~gaia_source.errors.GaiaLookupError` before the requests it would have filtered are sent.

Where text cannot hold U+0000 (PostgreSQL), :func:`escape_nul` writes each NUL as the six characters ``\\u0000``, row
by row, so one NUL in a prompt or an answer never fails a whole load job (which dlt would retry on every run).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Set, TypeVar

import dlt
import orjson
from dlt.common.destination.exceptions import DestinationUndefinedEntity
from dlt.destinations.sql_client import WithSqlClient
from dlt.extract.items import DataItemWithMeta

from .errors import GaiaLookupError

logger = logging.getLogger("gaia_source")

T = TypeVar("T")
LOOKUP_BATCH = 5_000
"""Ids per lookup query: bounded queries, whatever the size of the table."""
NUL = "\x00"
ESCAPED_NUL = "\\u0000"
"""What a U+0000 is loaded as where text cannot hold it: the six characters backslash, u, 0, 0, 0, 0."""
NO_NUL_IN_TEXT = frozenset({"postgres", "redshift"})
"""Destinations whose text and JSON columns cannot hold U+0000. PostgreSQL: a NUL fails the whole load job, in text
(``UntranslatableCharacter``) and in jsonb (``unsupported Unicode escape sequence``), tested here. Redshift, a
PostgreSQL descendant, refuses NUL in VARCHAR too (from its documentation, not tested here). DuckDB (tested), and as
far as their documentation goes Snowflake, BigQuery, MS SQL and parquet files, store it as it is. The ``sqlalchemy``
destination over a PostgreSQL engine would need it too, but its name does not say which database it reaches."""


@dataclass(frozen=True)
class DestinationCapabilities:
    """How rows and vectors go to one destination.

    Attributes:
        name: dlt's destination name (``duckdb``, ``postgres``, ``filesystem``…); None outside a pipeline.
        load_file_format: A file format to ask for (``parquet`` on DuckDB: a fraction of insert_values' memory).
        arrow_vectors: Vectors may go as Arrow fixed-size lists (else plain rows, whose vectors become JSON).
        vector_column: Which native vector column to create before the first vectors load (``duckdb``: FLOAT[dim];
            ``pgvector``: vector(dim) where the server has the extension, else jsonb), or which store searches them
            (``lancedb``).
        lookup: How to ask which ids are loaded: ``duckdb`` (one list parameter), ``postgres`` (``= ANY``), ``sql``
            (an ``IN`` list), ``lancedb`` (a filter on the LanceDB table itself), or None when the destination cannot
            be asked (then rows are merged on their key).
        nul_in_text: Text and JSON columns can hold U+0000 (see :data:`NO_NUL_IN_TEXT`); where not, rows go through
            :func:`escape_nul`.
    """

    name: Optional[str]
    load_file_format: Optional[str] = None
    arrow_vectors: bool = True
    vector_column: Optional[str] = None
    lookup: Optional[str] = None
    nul_in_text: bool = True


def current_pipeline() -> Optional[dlt.Pipeline]:
    """The pipeline running now (call it on the extracting thread), or None."""
    try:
        return dlt.current.pipeline()
    except Exception:  # no pipeline is running (e.g. a resource iterated directly)
        return None


def capabilities_of(pipeline: Optional[dlt.Pipeline]) -> DestinationCapabilities:
    """Decide what ``pipeline``'s destination can do (no connection is opened)."""
    if pipeline is None or pipeline.destination is None:
        return DestinationCapabilities(name=None)
    name = pipeline.destination.destination_name
    duckdb_like = name in ("duckdb", "motherduck")
    has_sql = issubclass(pipeline.destination.client_class, WithSqlClient)  # the class only: no client is made
    lookup: Optional[str] = None
    if name == "lancedb":
        lookup = "lancedb"  # its SQL client reads through DuckDB; filters and deletes go to LanceDB directly
    elif has_sql:
        lookup = "duckdb" if duckdb_like else "postgres" if name == "postgres" else "sql"
    return DestinationCapabilities(
        name=name,
        load_file_format="parquet" if duckdb_like else None,
        # PostgreSQL loads Arrow through CSV, which has no list type: plain rows there (vectors as jsonb)
        # LanceDB takes our vectors only as Arrow fixed-size lists (a list in a dict row becomes a child table)
        arrow_vectors=duckdb_like or name in ("filesystem", "lancedb"),
        vector_column={"duckdb": "duckdb", "postgres": "pgvector", "lancedb": "lancedb"}.get(name),
        lookup=lookup,
        nul_in_text=name not in NO_NUL_IN_TEXT,
    )


def escape_nul(capabilities: DestinationCapabilities, table: str, items: Iterable[Any]) -> Iterator[Any]:
    """``items`` as the destination can store them: where text cannot hold U+0000, every string (keys and values,
    nested in objects and lists as well) has each NUL replaced by the six characters ``\\u0000``.

    Items are rows, lists of rows, or rows marked with dlt hints (``failed_requests`` rows); a row with a NUL is
    copied, never changed in place (its lists may be a request's own). Arrow tables pass as they are (on a destination
    without NUL in text, vectors go as plain rows). When the items are exhausted, one warning per table (``table``,
    or the table a mark names) says how many strings were escaped.
    """
    if capabilities.nul_in_text:
        yield from items
        return
    escaped: Dict[str, int] = {}
    for item in items:
        meta, data = (item.meta, item.data) if isinstance(item, DataItemWithMeta) else (None, item)
        target = _marked_table(meta) or table
        if isinstance(data, dict):
            data = _escape_row(data, target, escaped)
        elif isinstance(data, list):
            data = [_escape_row(row, target, escaped) if isinstance(row, dict) else row for row in data]
        if meta is None:
            yield data
        else:
            yield item if data is item.data else DataItemWithMeta(meta, data)
    for name, count in sorted(escaped.items()):
        logger.warning(
            "Table '%s': %d text value(s) held U+0000 (NUL), which the %s destination cannot store; each NUL was "
            "loaded as the six characters \\u0000 instead (resource '%s')", name, count, capabilities.name, table)


def _marked_table(meta: Any) -> Optional[str]:
    hints = getattr(meta, "hints", None)
    name = hints.get("table_name") if isinstance(hints, dict) else getattr(meta, "table_name", None)
    return name if isinstance(name, str) else None


def _escape_row(row: Dict[str, Any], table: str, escaped: Dict[str, int]) -> Dict[str, Any]:
    try:  # a scan in C: most rows have no NUL, and a row of floats is not walked in Python
        if b"\\u0000" not in orjson.dumps(row, default=str, option=orjson.OPT_NON_STR_KEYS):
            return row
    except (TypeError, orjson.JSONEncodeError):
        pass
    count = [0]
    copy = _escaped(row, count)
    if count[0]:
        escaped[table] = escaped.get(table, 0) + count[0]
    return copy  # type: ignore[no-any-return]


def _escaped(value: Any, count: List[int]) -> Any:
    if isinstance(value, str):
        if NUL in value:
            count[0] += 1
            return value.replace(NUL, ESCAPED_NUL)
        return value
    if isinstance(value, dict):
        return {_escaped(k, count): _escaped(v, count) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_escaped(v, count) for v in value]
    return value


def lance_table(pipeline: dlt.Pipeline, table: str) -> Any:
    """The LanceDB table behind ``table`` of the pipeline's dataset, or None before it exists."""
    client: Any = pipeline.destination_client()
    name = client.make_qualified_table_name(table)
    try:
        return client.db_client.open_table(name)
    except (FileNotFoundError, ValueError):
        return None


def lance_literal(value: Any) -> str:
    """A value as a LanceDB (DataFusion) SQL literal."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def _lance_in(column: str, values: Iterable[Any]) -> str:
    return f"{column} IN ({', '.join(lance_literal(v) for v in values)})"


class LoadedIds:
    """Looks up which ids a destination table already holds, through one SQL connection opened on first use.

    Args:
        pipeline: The running pipeline.
        capabilities: Its destination's capabilities (the lookup dialect).
        table: Table name in the pipeline's dataset.
        id_column: The id column to match.
        where: Extra SQL condition, e.g. ``status = 'completed'``.
    """

    def __init__(
        self, pipeline: Optional[dlt.Pipeline], capabilities: DestinationCapabilities, table: str, id_column: str,
        where: str = "",
    ) -> None:
        self.table = table
        self.id_column = id_column
        self.where = where
        self._pipeline = pipeline
        self._dialect = capabilities.lookup if pipeline is not None else None
        self._destination = capabilities.name
        self._client: Any = None

    def __enter__(self) -> "LoadedIds":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._client is not None:
            self._client.close_connection()
            self._client = None

    def lookup(self, ids: Iterable[str]) -> Set[str]:
        """The subset of ``ids`` present; empty when there is no pipeline, no SQL, or the table does not exist yet.

        Raises:
            GaiaLookupError: the destination failed to answer (naming the table and its error).
        """
        wanted = list(dict.fromkeys(ids))
        if self._dialect is None or not wanted:
            return set()
        found: Set[str] = set()
        try:
            if self._dialect == "lancedb":
                return self._lookup_lance(wanted)
            if self._client is None:
                self._client = self._pipeline.sql_client()  # type: ignore[union-attr]
                self._client.open_connection()
            client = self._client
            qualified = client.make_qualified_table_name(self.table)
            column = client.escape_column_name(self.id_column)
            condition = f" AND ({self.where})" if self.where else ""
            args: List[Any]
            for start in range(0, len(wanted), LOOKUP_BATCH):
                batch = wanted[start : start + LOOKUP_BATCH]
                if self._dialect == "duckdb":  # one list parameter binds ~8x faster than thousands of them
                    match, args = f"{column} IN (SELECT UNNEST(%s::VARCHAR[]))", [batch]
                elif self._dialect == "postgres":
                    match, args = f"{column} = ANY(%s)", [batch]
                else:
                    match, args = f"{column} IN ({','.join(['%s'] * len(batch))})", batch
                rows = client.execute_sql(f"SELECT {column} FROM {qualified} WHERE {match}{condition}", *args)
                found.update(str(r[0]) for r in rows or [])
        except DestinationUndefinedEntity:
            return set()  # the table (or dataset) does not exist yet: nothing is loaded
        except Exception as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise GaiaLookupError(
                f"could not look up which rows of table '{self.table}' are already loaded in the {self._destination} "
                f"destination ({type(exc).__name__}: {first_line}). Nothing more was sent, so nothing is doubled; "
                "run again once the destination answers (or use refresh to send everything on purpose)."
            ) from None
        return found

    def _lookup_lance(self, wanted: List[str]) -> Set[str]:
        table = lance_table(self._pipeline, self.table)  # type: ignore[arg-type]
        if table is None:
            return set()
        condition = f" AND ({self.where})" if self.where else ""
        found: Set[str] = set()
        for start in range(0, len(wanted), LOOKUP_BATCH):
            batch = wanted[start : start + LOOKUP_BATCH]
            rows = (table.search().where(_lance_in(self.id_column, batch) + condition)
                    .select([self.id_column]).limit(len(batch)).to_arrow())
            found.update(str(v) for v in rows.column(self.id_column).to_pylist())
        return found


def remove_orphans(
    pipeline: Optional[dlt.Pipeline], capabilities: DestinationCapabilities, table: str,
    documents: Dict[str, List[str]],
) -> int:
    """Delete the rows of ``table`` that belong to ``documents`` (document id -> the keys of its current chunks) but
    are none of their current chunks: what a changed document left behind. Returns how many were deleted.

    Nothing to do without SQL (or before the table exists). dlt has no chunk management for SQL destinations
    (dlt-hub/dlt#1533), so this is ours: it runs on the extracting thread before the new chunks load.

    Raises:
        GaiaLookupError: the destination failed to answer.
    """
    dialect = capabilities.lookup if pipeline is not None else None
    if dialect is None or not documents:
        return 0
    ids = list(documents)
    keys = [key for chunk_keys in documents.values() for key in chunk_keys]
    args: List[Any]
    try:
        if dialect == "lancedb":
            lance = lance_table(pipeline, table)  # type: ignore[arg-type]
            condition = f"{_lance_in('document_id', ids)} AND NOT {_lance_in('embedding_id', keys)}"
            count = int(lance.count_rows(condition)) if lance is not None else 0
            if count:
                lance.delete(condition)
                logger.info("%s: deleted %d chunk(s) that changed documents no longer have", table, count)
            return count
        with pipeline.sql_client() as client:  # type: ignore[union-attr]
            qualified = client.make_qualified_table_name(table)
            if dialect == "duckdb":
                condition, args = ("document_id IN (SELECT UNNEST(%s::VARCHAR[])) AND embedding_id NOT IN "
                                   "(SELECT UNNEST(%s::VARCHAR[]))", [ids, keys])
            elif dialect == "postgres":
                condition, args = "document_id = ANY(%s) AND NOT (embedding_id = ANY(%s))", [ids, keys]
            else:
                condition = (f"document_id IN ({','.join(['%s'] * len(ids))}) "
                             f"AND embedding_id NOT IN ({','.join(['%s'] * len(keys))})")
                args = [*ids, *keys]
            found = client.execute_sql(f"SELECT count(*) FROM {qualified} WHERE {condition}", *args)
            count = int(found[0][0]) if found else 0
            if count:
                client.execute_sql(f"DELETE FROM {qualified} WHERE {condition}", *args)
    except DestinationUndefinedEntity:
        return 0  # nothing loaded yet: nothing to delete
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GaiaLookupError(
            f"could not delete the old chunks of changed documents from table '{table}' in the {capabilities.name} "
            f"destination ({type(exc).__name__}: {first_line}). Nothing more was sent; run again once it answers."
        ) from None
    if count:
        logger.info("%s: deleted %d chunk(s) that changed documents no longer have", table, count)
    return count


def unique(items: Iterable[T], key: Callable[[T], str], seen: Set[str]) -> Iterator[T]:
    """Drop items whose key is in ``seen`` (keys seen earlier in this run), adding the others' keys to it."""
    for item in items:
        item_key = key(item)
        if item_key not in seen:
            seen.add(item_key)
            yield item


def skip_loaded(items: Iterable[T], key: Callable[[T], str], ids: LoadedIds, what: str = "requests") -> Iterator[T]:
    """Yield the items whose key is not yet in ``ids.table`` (looked up a batch at a time, streaming).

    The first batch is looked up before the first item is yielded, so a destination that cannot answer stops the
    resource before it sends anything. Logs how many were skipped, so a re-run that sends nothing says why.
    """
    skipped = 0
    batch: List[T] = []

    def flush() -> Iterator[T]:
        nonlocal skipped
        done = ids.lookup(key(i) for i in batch)
        for item in batch:
            if key(item) in done:
                skipped += 1
            else:
                yield item
        batch.clear()

    with ids:
        for item in items:
            batch.append(item)
            if len(batch) >= LOOKUP_BATCH:
                yield from flush()
        yield from flush()
    if skipped:
        logger.info("%s: %d %s already loaded, not sent again (refresh=true sends them again)",
                    ids.table, skipped, what)
