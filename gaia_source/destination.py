"""What the destination can do, decided once per run, and what it already holds.

:func:`capabilities_of` is the one place that knows destinations apart: the load file format, whether vectors may
go as Arrow, which native vector column to create, and how to ask which ids are loaded. :class:`LoadedIds` asks
that question, so re-runs skip work that is done: the ids live in the destination tables themselves (not in dlt
state, which would grow with the corpus), and a fresh machine or a second worker sees what another run loaded.

A lookup that fails is never taken for "nothing loaded": that would send everything again and double rows. It raises
:class:`~gaia_source.errors.GaiaLookupError` before the requests it would have filtered are sent.

Where text cannot hold U+0000 (PostgreSQL), :func:`escape_nul` writes each NUL as the six characters ``\\u0000``, row
by row, so one NUL in a prompt or an answer never fails a whole load job (which dlt would retry on every run).

Open table formats are read through DuckDB (dlt's filesystem SQL client scans Delta and Iceberg tables, DuckLake is a
DuckDB catalog), whose extensions :func:`install_duckdb_extensions` installs from their PyPI packages, never from the
network. Deletes go where the table lives: SQL on DuckLake, ``deltalake`` on Delta, ``pyiceberg`` on Iceberg.
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple, TypeVar

import dlt
import orjson
from dlt.common.destination.exceptions import DestinationUndefinedEntity
from dlt.destinations.sql_client import WithSqlClient
from dlt.extract.items import DataItemWithMeta

from .errors import GaiaLookupError
from .ledger import SKIPPED, Ledger
from .settings import FAILED_REQUESTS_TABLE as FAILED_TABLE

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
            ``pgvector``: vector(dim) where the server has the extension, else jsonb; ``ducklake``: FLOAT[], as
            DuckLake has no fixed-size array), or which store searches them (``lancedb``).
        lookup: How to ask which ids are loaded: ``duckdb`` (one list parameter; DuckDB, DuckLake and the filesystem
            destination's DuckDB views), ``postgres`` (``= ANY``), ``sql`` (an ``IN`` list), ``lancedb`` (a filter on
            the LanceDB table itself), or None when the destination cannot be asked (then rows are merged on their
            key).
        nul_in_text: Text and JSON columns can hold U+0000 (see :data:`NO_NUL_IN_TEXT`); where not, rows go through
            :func:`escape_nul`.
        duckdb_extensions: DuckDB extensions the destination's SQL client (or dlt's loader) needs, installed from
            their PyPI packages by :func:`install_duckdb_extensions`.
    """

    name: Optional[str]
    load_file_format: Optional[str] = None
    arrow_vectors: bool = True
    vector_column: Optional[str] = None
    lookup: Optional[str] = None
    nul_in_text: bool = True
    duckdb_extensions: Tuple[str, ...] = ()


def current_pipeline() -> Optional[dlt.Pipeline]:
    """The pipeline running now (call it on the extracting thread), or None."""
    try:
        return dlt.current.pipeline()
    except Exception:  # no pipeline is running (e.g. a resource iterated directly)
        return None


DUCKDB_ENGINES = frozenset({"duckdb", "motherduck", "ducklake", "filesystem"})
"""Destinations whose SQL client is DuckDB: DuckDB itself, MotherDuck, DuckLake (a DuckDB catalog) and filesystem
(dlt 1.31 reads its parquet/jsonl files and its Delta and Iceberg tables through DuckDB views)."""
EXTENSIONS_BY_DESTINATION: Dict[str, Tuple[str, ...]] = {
    # ATTACH 'ducklake:…' autoloads ducklake; dlt's default catalog is a SQLite file (sqlite_scanner)
    "ducklake": ("ducklake", "sqlite_scanner"),
    # delta_scan / iceberg_scan behind dlt's views (Iceberg manifests are Avro files)
    "filesystem": ("delta", "iceberg", "avro"),
}
EXTRA_OF_EXTENSION = {"ducklake": "ducklake", "sqlite_scanner": "ducklake", "delta": "delta", "iceberg": "iceberg",
                      "avro": "iceberg", "vss": "vss"}
"""The gaia-dlt extra that installs each extension's PyPI package (``duckdb-extension-<name>``)."""


def capabilities_of(pipeline: Optional[dlt.Pipeline]) -> DestinationCapabilities:
    """Decide what ``pipeline``'s destination can do (no connection is opened)."""
    if pipeline is None or pipeline.destination is None:
        return DestinationCapabilities(name=None)
    name = pipeline.destination.destination_name
    duckdb_like = name in ("duckdb", "motherduck", "ducklake")
    has_sql = issubclass(pipeline.destination.client_class, WithSqlClient)  # the class only: no client is made
    lookup: Optional[str] = None
    if name == "lancedb":
        lookup = "lancedb"  # its SQL client reads through DuckDB; filters and deletes go to LanceDB directly
    elif has_sql:
        lookup = "duckdb" if name in DUCKDB_ENGINES else "postgres" if name == "postgres" else "sql"
    return DestinationCapabilities(
        name=name,
        load_file_format="parquet" if duckdb_like else None,
        # PostgreSQL loads Arrow through CSV, which has no list type: plain rows there (vectors as jsonb)
        # LanceDB takes our vectors only as Arrow fixed-size lists (a list in a dict row becomes a child table)
        arrow_vectors=duckdb_like or name in ("filesystem", "lancedb"),
        vector_column={"duckdb": "duckdb", "ducklake": "ducklake", "postgres": "pgvector",
                       "lancedb": "lancedb"}.get(name),
        lookup=lookup,
        nul_in_text=name not in NO_NUL_IN_TEXT,
        duckdb_extensions=EXTENSIONS_BY_DESTINATION.get(name, ()),
    )


def packaged_extension(name: str) -> Optional[str]:
    """The file of DuckDB extension ``name`` for the running DuckDB, from its PyPI package
    (``duckdb-extension-<name>``), or None when that package (or its build for this DuckDB version) is missing."""
    try:
        from importlib.resources import files

        import duckdb

        path = files(f"duckdb_extension_{name}") / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
    except ImportError:
        return None
    return str(path) if path.is_file() else None


def install_duckdb_extensions(names: Iterable[str]) -> List[str]:
    """Install DuckDB extensions from their PyPI packages into DuckDB's extension directory, so that every later
    connection (dlt's loader and SQL clients included) loads them by name without the network; return the names that
    are neither installed nor packaged.

    Without this, DuckDB autoloads a missing extension from extensions.duckdb.org, which fails offline (see
    :func:`extension_hint`). ``INSTALL '<file>'`` copies the file once; the check costs a few milliseconds after.
    """
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return []
    import duckdb

    missing: List[str] = []
    with duckdb.connect() as con:
        installed = {row[0] for row in con.execute(
            "SELECT extension_name FROM duckdb_extensions() WHERE installed").fetchall()}
        for name in wanted:
            if name in installed:
                continue
            packaged = packaged_extension(name)
            if packaged is None:
                missing.append(name)
                continue
            con.execute(f"INSTALL '{packaged}'")
    return missing


def extension_hint(error: str) -> str:
    """What to install when DuckDB failed to download an extension (an empty string for any other error)."""
    match = re.search(r"install the required extension '(\w+)'|Failed to download extension \"(\w+)\"", error)
    if match is None:
        return ""
    name = match.group(1) or match.group(2)
    package = "duckdb-extension-" + name.replace("_", "-")
    return (f" DuckDB has no '{name}' extension here and cannot download it: install it from PyPI with "
            f"`pip install \"gaia-dlt[{EXTRA_OF_EXTENSION.get(name, name)}]\"` ({package}).")


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


def purge_lance_tombstones(pipeline: dlt.Pipeline) -> int:
    """Delete the tombstones dlt's LanceDB merge left in ``failed_requests``; return how many.

    A completed cell's failure row is deleted by a tombstone (``resolved = true``, a ``hard_delete`` column). dlt
    1.31's LanceDB merge ignores ``hard_delete``: it upserts the tombstone, so the row stays, with ``resolved`` true
    and every other column null. Called after every load to LanceDB, so ``failed_requests`` lists what is failing.
    """
    table = lance_table(pipeline, FAILED_TABLE)
    if table is None or "resolved" not in table.schema.names:
        return 0
    found = int(table.count_rows("resolved = TRUE"))
    if found:
        table.delete("resolved = TRUE")
    return found


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
        columns: Other columns to return for each id found (e.g. who answered it, under which configuration).
    """

    def __init__(
        self, pipeline: Optional[dlt.Pipeline], capabilities: DestinationCapabilities, table: str, id_column: str,
        where: str = "", columns: Sequence[str] = (),
    ) -> None:
        self.table = table
        self.id_column = id_column
        self.where = where
        self.columns = tuple(columns)
        self._pipeline = pipeline
        self._dialect = capabilities.lookup if pipeline is not None else None
        self._destination = capabilities.name
        self._client: Any = None

    def __enter__(self) -> "LoadedIds":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def release(self) -> None:
        """Close the connection now; the next :meth:`lookup` opens another (a run between two of its loads lets the
        destination go: DuckDB keeps what a load inserted cached while any connection to its file is open)."""
        if self._client is not None:
            self._client.close_connection()
            self._client = None

    def lookup(self, ids: Iterable[str]) -> Dict[str, List[Tuple[Any, ...]]]:
        """The ids present, each with the values of :attr:`columns` of each of its rows; empty when there is no
        pipeline, no SQL, or the table (or, written by an older version, the id column) does not exist yet.

        Raises:
            GaiaLookupError: the destination failed to answer (naming the table and its error).
        """
        wanted = list(dict.fromkeys(ids))
        if self._dialect is None or not wanted:
            return {}
        found: Dict[str, List[Tuple[Any, ...]]] = {}
        try:
            if self._dialect == "lancedb":
                return self._lookup_lance(wanted)
            if self._client is None:
                self._client = self._pipeline.sql_client()  # type: ignore[union-attr]
                self._client.open_connection()
            client = self._client
            qualified = client.make_qualified_table_name(self.table)
            column = client.escape_column_name(self.id_column)
            selected = ", ".join([column, *(client.escape_column_name(c) for c in self.columns)])
            condition = f" AND ({self.where})" if self.where else ""
            for start in range(0, len(wanted), LOOKUP_BATCH):
                match, args = _in(column, wanted[start : start + LOOKUP_BATCH], str(self._dialect))
                rows = client.execute_sql(f"SELECT {selected} FROM {qualified} WHERE {match}{condition}", *args)
                for row in rows or []:
                    found.setdefault(str(row[0]), []).append(tuple(row[1:]))
        except DestinationUndefinedEntity:
            return {}  # the table (or dataset) does not exist yet: nothing is loaded
        except Exception as exc:
            if self._missing_column(exc):
                logger.info("%s: no %s column yet (written by an older version): its rows count as not done",
                            self.table, self.id_column)
                return {}
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise GaiaLookupError(
                f"could not look up which rows of table '{self.table}' are already loaded in the {self._destination} "
                f"destination ({type(exc).__name__}: {first_line}). Nothing more was sent, so nothing is doubled; "
                "run again once the destination answers (or use refresh to send everything on purpose)."
                + extension_hint(str(exc))
            ) from None
        return found

    def _missing_column(self, exc: Exception) -> bool:
        """Whether the lookup failed only because a column it asks for is not in the table yet."""
        text = str(exc).lower()
        return any(c.lower() in text for c in (self.id_column, *self.columns)) and any(
            marker in text for marker in ("not found", "does not exist", "no field", "unknown column", "no such column")
        )

    def _lookup_lance(self, wanted: List[str]) -> Dict[str, List[Tuple[Any, ...]]]:
        table = lance_table(self._pipeline, self.table)  # type: ignore[arg-type]
        if table is None:
            return {}
        if self.id_column not in table.schema.names or any(c not in table.schema.names for c in self.columns):
            return {}
        condition = f" AND ({self.where})" if self.where else ""
        found: Dict[str, List[Tuple[Any, ...]]] = {}
        for start in range(0, len(wanted), LOOKUP_BATCH):
            batch = wanted[start : start + LOOKUP_BATCH]
            # every row of each id: a cell has a row per node and configuration (compare runs, drift), so any cap
            # could leave a cell out, which would then be sent again and appended next to its rows
            rows = (table.search().where(_lance_in(self.id_column, batch) + condition)
                    .select([self.id_column, *self.columns]).limit(None).to_arrow())
            columns = [rows.column(c).to_pylist() for c in (self.id_column, *self.columns)]
            for values in zip(*columns, strict=True):
                found.setdefault(str(values[0]), []).append(tuple(values[1:]))
        return found


def _in(column: str, values: Sequence[Any], dialect: str) -> Tuple[str, List[Any]]:
    """``column IN values`` in the lookup dialect, with its arguments."""
    if dialect == "duckdb":  # one list parameter binds ~8x faster than thousands of them
        return f"{column} IN (SELECT UNNEST(CAST(%s AS VARCHAR[])))", [list(values)]
    if dialect == "postgres":
        return f"{column} = ANY(%s)", [list(values)]
    return f"{column} IN ({','.join(['%s'] * len(values))})", list(values)


def _same_model(model: Optional[str], dialect: str) -> Tuple[str, List[Any]]:
    if model is None:
        return "model_requested IS NULL", []
    return "model_requested = %s", [model]


def _chunk_query(
    pipeline: dlt.Pipeline, capabilities: DestinationCapabilities, table: str, what: str,
    run: Callable[[Any, str, str], Any],
) -> Any:
    """Run ``run(client_or_lance_table, qualified_name, dialect)`` on ``table``; a missing table answers None."""
    dialect = capabilities.lookup
    try:
        if dialect == "lancedb":
            lance = lance_table(pipeline, table)
            return None if lance is None else run(lance, table, dialect)
        with pipeline.sql_client() as client:
            return run(client, client.make_qualified_table_name(table), str(dialect))
    except DestinationUndefinedEntity:
        return None
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GaiaLookupError(
            f"could not {what} in table '{table}' of the {capabilities.name} destination ({type(exc).__name__}: "
            f"{first_line}). Nothing was deleted; run again once it answers.{extension_hint(str(exc))}"
        ) from None


def find_stale_documents(
    pipeline: Optional[dlt.Pipeline], capabilities: DestinationCapabilities, table: str, model: Optional[str],
    documents: Dict[str, List[str]],
) -> Set[str]:
    """The documents (id -> the keys of its chunks asked for now) that have rows in ``table`` for ``model`` — or
    ``failed_requests`` rows — that are none of those chunks: what a changed document left behind. Read only.

    Raises:
        GaiaLookupError: the destination failed to answer.
    """
    if pipeline is None or capabilities.lookup is None or not documents:
        return set()
    ids = list(documents)
    stale: Set[str] = set()
    for name, key_column in ((table, "embedding_id"), (FAILED_TABLE, "request_id")):

        def run(handle: Any, qualified: str, dialect: str, name: str = name,
                key_column: str = key_column) -> List[Tuple[str, str]]:
            if dialect == "lancedb":
                if "document_id" not in handle.schema.names:
                    return []
                where = _lance_in("document_id", ids) + " AND " + (
                    "model_requested IS NULL" if model is None else f"model_requested = {lance_literal(model)}")
                rows = handle.search().where(where).select(["document_id", key_column]).limit(None).to_arrow()
                columns = (rows.column("document_id").to_pylist(), rows.column(key_column).to_pylist())
                return list(zip(*columns, strict=True))
            match, args = _in("document_id", ids, dialect)
            same, model_args = _same_model(model, dialect)
            resource = " AND resource = %s" if name == FAILED_TABLE else ""
            return list(handle.execute_sql(
                f"SELECT document_id, {key_column} FROM {qualified} WHERE {match} AND {same}{resource}",
                *args, *model_args, *([table] if name == FAILED_TABLE else [])) or [])

        try:
            found = _chunk_query(pipeline, capabilities, name, "look for old chunks of changed documents", run)
        except GaiaLookupError:
            if name == FAILED_TABLE:  # no document columns yet (written by an older version): nothing to clear
                continue
            raise
        for document_id, key in found or []:
            if document_id in documents and key not in set(documents[document_id]):
                stale.add(str(document_id))
    return stale


def apply_chunk_sync(pipeline: dlt.Pipeline, ledger: Ledger) -> Tuple[int, int]:
    """After a load: for each document the run found changed (``ledger.pending_chunk_syncs``), delete its rows for
    the same model that are none of its current chunks, and its ``failed_requests`` rows that are none of them —
    but only when every current chunk is in the table. A document whose new chunks did not all load (a request
    failed, the load failed) keeps its old chunks until a run completes it.

    dlt has no chunk management for SQL destinations (dlt-hub/dlt#1533), so this is ours. The rows are found in SQL
    and deleted where the table lives (:func:`delete_rows`): SQL ``DELETE`` (DuckDB, DuckLake, PostgreSQL…),
    ``deltalake`` on Delta tables, ``pyiceberg`` on Iceberg tables, LanceDB's ``delete``. Plain parquet/jsonl files
    on the filesystem destination cannot delete rows: their old chunks stay (one warning says so). Returns (rows
    deleted, documents kept as they were); the kept ones are noted in the ledger.

    Raises:
        GaiaLookupError: the destination failed to answer.
    """
    capabilities = capabilities_of(pipeline)
    if capabilities.lookup is None:
        return 0, 0
    install_duckdb_extensions(capabilities.duckdb_extensions)
    deleted = kept = 0
    for (table, model), documents in ledger.pending_chunk_syncs.items():
        if not documents:
            continue
        if not can_delete(pipeline, table):
            logger.warning(
                "%s: %d changed document(s) keep their old chunks: the filesystem destination writes plain files, "
                "which cannot delete rows (load with table_format delta or iceberg for chunk sync)",
                table, len(documents))
            continue
        complete = _complete_documents(pipeline, capabilities, table, documents)
        kept += len(documents) - len(complete)
        for start in range(0, len(complete), 500):
            batch = {d: documents[d] for d in complete[start : start + 500]}
            deleted += _delete_stale(pipeline, capabilities, table, model, batch)
        ledger.pending_chunk_syncs[(table, model)] = {d: documents[d] for d in documents if d not in complete}
    if deleted:
        logger.info("deleted %d old chunk(s) of changed documents, after their new chunks loaded", deleted)
    if kept:
        ledger.note(f"{kept} changed document(s) keep their old chunks: not all of their new chunks loaded")
    return deleted, kept


def table_format_of(pipeline: dlt.Pipeline, table: str) -> Optional[str]:
    """The open table format (``delta``, ``iceberg``) dlt stores ``table`` in on the filesystem destination, from the
    table's hint in the pipeline's schema; None elsewhere (DuckLake is a DuckDB catalog: plain SQL)."""
    if pipeline.destination is None or pipeline.destination.destination_name != "filesystem":
        return None
    if not pipeline.default_schema_name or table not in pipeline.default_schema.tables:
        return None
    table_format = pipeline.default_schema.tables[table].get("table_format")
    return str(table_format) if table_format else None


def can_delete(pipeline: dlt.Pipeline, table: str) -> bool:
    """Whether rows of ``table`` can be deleted after a load: everywhere but plain files on the filesystem
    destination (Delta and Iceberg tables can)."""
    if pipeline.destination is None or pipeline.destination.destination_name != "filesystem":
        return True
    return table_format_of(pipeline, table) is not None


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    return "'" + str(value).replace("'", "''") + "'"


def _delta_predicate(conditions: Sequence[Tuple[str, str, Any]]) -> str:
    """A Delta (DataFusion SQL) predicate from (column, operator, value) triples, values as literals."""
    parts = []
    for column, operator, value in conditions:
        if operator == "is null":
            parts.append(f'"{column}" IS NULL')
        elif operator in ("in", "not in"):
            listed = ", ".join(_literal(v) for v in value)
            parts.append(f'"{column}" IN ({listed})' if operator == "in" else f'NOT ("{column}" IN ({listed}))')
        else:
            parts.append(f'"{column}" = {_literal(value)}')
    return " AND ".join(parts)


def _iceberg_filter(conditions: Sequence[Tuple[str, str, Any]]) -> Any:
    """A pyiceberg boolean expression from (column, operator, value) triples."""
    import pyiceberg.expressions

    ice: Any = pyiceberg.expressions  # its pydantic signatures hide the positional (term, value) form it accepts
    parts: List[Any] = []
    for column, operator, value in conditions:
        if operator == "is null":
            parts.append(ice.IsNull(column))
        elif operator == "in":
            parts.append(ice.In(column, set(value)))
        elif operator == "not in":
            parts.append(ice.NotIn(column, set(value)))
        else:
            parts.append(ice.EqualTo(column, value))
    return parts[0] if len(parts) == 1 else ice.And(*parts)


def delete_rows(pipeline: dlt.Pipeline, table: str, conditions: Sequence[Tuple[str, str, Any]]) -> int:
    """Delete the rows of ``table`` where every (column, operator, value) condition holds — operators ``=``,
    ``in``, ``not in``, ``is null`` — where the table lives; return how many there were (counted in SQL first).

    SQL ``DELETE`` through dlt's SQL client (DuckDB, DuckLake, PostgreSQL…); on the filesystem destination a Delta
    table deletes through ``deltalake`` (one commit, a new table version) and an Iceberg table through ``pyiceberg``
    (a new snapshot; rewritten data files where a file keeps other rows); LanceDB through its ``delete``.

    Raises:
        GaiaLookupError: the destination failed to answer; nothing was deleted.
    """
    capabilities = capabilities_of(pipeline)
    table_format = table_format_of(pipeline, table)

    def run(handle: Any, qualified: str, dialect: str) -> int:
        if dialect == "lancedb":
            condition = " AND ".join(
                f"{c} IS NULL" if op == "is null" else _lance_in(c, v) if op == "in"
                else f"NOT {_lance_in(c, v)}" if op == "not in" else f"{c} = {lance_literal(v)}"
                for c, op, v in conditions)
            found = int(handle.count_rows(condition))
            if found:
                handle.delete(condition)
            return found
        parts: List[str] = []
        args: List[Any] = []
        for column, operator, value in conditions:
            if operator == "is null":
                parts.append(f"{column} IS NULL")
            elif operator in ("in", "not in"):
                match, match_args = _in(column, list(value), dialect)
                parts.append(match if operator == "in" else f"NOT ({match})")
                args.extend(match_args)
            else:
                parts.append(f"{column} = %s")
                args.append(value)
        condition = " AND ".join(parts)
        found = handle.execute_sql(f"SELECT count(*) FROM {qualified} WHERE {condition}", *args)
        number = int(found[0][0]) if found else 0
        if not number:
            return 0
        if table_format == "delta":
            from dlt.common.libs.deltalake import get_delta_tables

            get_delta_tables(pipeline, table)[table].delete(_delta_predicate(conditions))
        elif table_format == "iceberg":
            from dlt.common.libs.pyiceberg import get_iceberg_tables

            get_iceberg_tables(pipeline, table)[table].delete(_iceberg_filter(conditions))
        else:
            handle.execute_sql(f"DELETE FROM {qualified} WHERE {condition}", *args)
        return number

    return int(_chunk_query(pipeline, capabilities, table, "delete rows", run) or 0)


def _complete_documents(
    pipeline: dlt.Pipeline, capabilities: DestinationCapabilities, table: str, documents: Dict[str, List[str]]
) -> List[str]:
    """The documents all of whose current chunks are in ``table``."""
    keys = [key for chunk_keys in documents.values() for key in chunk_keys]
    present: Set[str] = set()
    with LoadedIds(pipeline, capabilities, table, "embedding_id") as ids:
        for start in range(0, len(keys), LOOKUP_BATCH):
            present.update(ids.lookup(keys[start : start + LOOKUP_BATCH]))
    return [d for d, chunk_keys in documents.items() if all(k in present for k in chunk_keys)]


def _delete_stale(
    pipeline: dlt.Pipeline, capabilities: DestinationCapabilities, table: str, model: Optional[str],
    documents: Dict[str, List[str]],
) -> int:
    ids = list(documents)
    keys = [key for chunk_keys in documents.values() for key in chunk_keys]
    same: Tuple[str, str, Any] = ("model_requested", "is null", None) if model is None else (
        "model_requested", "=", model)
    count = 0
    for name, key_column in ((table, "embedding_id"), (FAILED_TABLE, "request_id")):
        conditions = [("document_id", "in", ids), same, (key_column, "not in", keys)]
        if name == FAILED_TABLE:
            conditions.append(("resource", "=", table))
        try:
            count += delete_rows(pipeline, name, conditions)
        except GaiaLookupError:
            if name != FAILED_TABLE:
                raise
    return count


def purge_resolved_failures(pipeline: dlt.Pipeline) -> int:
    """Delete ``failed_requests`` rows marked resolved, on Iceberg tables only; return how many.

    A request that failed and then completed sends a tombstone (``resolved = true``, a dlt ``hard_delete`` hint),
    which the merge turns into a delete on DuckDB, DuckLake, PostgreSQL and Delta. dlt 1.31's Iceberg merge is
    pyiceberg's upsert, which ignores ``hard_delete``: the tombstone replaces the row instead. This deletes those
    rows after the load, so ``failed_requests`` holds what is failing there too.
    """
    if table_format_of(pipeline, FAILED_TABLE) != "iceberg":
        return 0
    try:
        return delete_rows(pipeline, FAILED_TABLE, [("resolved", "=", True)])
    except GaiaLookupError as exc:
        logger.warning("could not delete the resolved rows of %s: %s", FAILED_TABLE, exc)
        return 0


def unique(items: Iterable[T], key: Callable[[T], str], seen: Set[str]) -> Iterator[T]:
    """Drop items whose key is in ``seen`` (keys seen earlier in this run), adding the others' keys to it."""
    for item in items:
        item_key = key(item)
        if item_key not in seen:
            seen.add(item_key)
            yield item


def _cell_key(item: Any, key: Callable[[Any], str]) -> str:
    """The ledger key of an item: a request's cell key, else its lookup key."""
    return str(getattr(item, "request_id", None) or key(item))


def skip_loaded(
    items: Iterable[T], key: Callable[[T], str], ids: LoadedIds, what: str = "requests",
    done: Optional[Callable[[T, List[Tuple[Any, ...]]], bool]] = None,
    ledger: Optional[Tuple[Ledger, str]] = None,
    failures: Optional[Tuple[LoadedIds, Callable[[str], None]]] = None,
) -> Iterator[T]:
    """Yield the items not done yet: whose key is not in ``ids.table`` (looked up a batch at a time, streaming), or
    for which ``done(item, rows)`` says the rows found do not make it done.

    The first batch is looked up before the first item is yielded, so a destination that cannot answer stops the
    resource before it sends anything. Each skipped item is recorded in ``ledger`` (a ledger and the resource) as
    ``skipped``; a log line says how many, so a re-run that sends nothing says why.

    ``failures`` (a lookup of ``failed_requests`` by the items' cell keys, and a callback) tells the callback each
    item, skipped or not, whose cell has a ``failed_requests`` row in the destination, whichever run or pipeline
    wrote it: the runner then deletes that row once the cell is completed or found done.
    """
    skipped = 0
    batch: List[T] = []

    def flush() -> Iterator[T]:
        nonlocal skipped
        found = ids.lookup(key(i) for i in batch)
        if failures is not None:
            for failing in failures[0].lookup(_cell_key(i, key) for i in batch):
                failures[1](failing)
        done_items = []
        for item in batch:
            rows = found.get(key(item))
            if rows is not None and (done is None or done(item, rows)):
                done_items.append(item)
            else:
                yield item
        skipped += len(done_items)
        if ledger is not None:  # one record for the batch's cells found done
            ledger[0].record_many(ledger[1], [_cell_key(i, key) for i in done_items], SKIPPED,
                                  cells=[getattr(i, "cell", None) for i in done_items])
        batch.clear()

    with ids, (failures[0] if failures is not None else contextlib.nullcontext()):
        for item in items:
            batch.append(item)
            if len(batch) >= LOOKUP_BATCH:
                yield from flush()
        yield from flush()
    if skipped:
        logger.info("%s: %d %s already loaded, not sent again (refresh=true sends them again)",
                    ids.table, skipped, what)
