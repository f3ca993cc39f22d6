"""Embedding vectors in the warehouse: a native vector column, similarity search, an HNSW index.

dlt has no vector type: left alone, DuckDB gets a JSON column, which ``array_cosine_similarity`` cannot use without a
per-row cast and a vss index cannot use at all, and PostgreSQL gets ``jsonb``. So once per run, before the first
vectors are loaded, :func:`ensure_vector_column` makes ``embeddings.embedding`` (and its merge-staging twin) a native
column, with ``dim`` taken from the model's output: ``FLOAT[dim]`` on DuckDB, pgvector's ``vector(dim)`` on
PostgreSQL when the ``vector`` extension is there (created if the role may; ``jsonb`` otherwise, with one note saying
why), a ``FLOAT[]`` list on DuckLake (which has no fixed-size array type). dlt keeps an existing column's type, so
every later load — merge included — lands in it directly. Elsewhere vectors stay the list column the Arrow
fixed-size ``float32`` list becomes: parquet files and LanceDB keep it fixed-size, Delta and Iceberg (no fixed-size
list type) store a ``float32`` list.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple

import dlt
import numpy as np
import orjson
from dlt.destinations.exceptions import DatabaseUndefinedRelation

from .config import resolve_node_settings
from .destination import (
    DestinationCapabilities,
    capabilities_of,
    install_duckdb_extensions,
    lance_literal,
    lance_table,
    packaged_extension,
)
from .errors import GaiaConfigError, GaiaError
from .pool import NodePool
from .rows import EMBEDDING_COLUMNS
from .settings import EMBEDDINGS_PATH

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger("gaia_source")

TABLE = "embeddings"
_FIELD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DUCKDB_TYPES = {"text": "VARCHAR", "bigint": "BIGINT", "double": "DOUBLE", "bool": "BOOLEAN", "json": "JSON",
                 "timestamp": "TIMESTAMP WITH TIME ZONE"}
_POSTGRES_TYPES = {"text": "varchar", "bigint": "bigint", "double": "double precision", "bool": "boolean",
                   "json": "jsonb", "timestamp": "timestamp with time zone"}
PGVECTOR_OPS = {"cosine": ("<=>", "vector_cosine_ops"), "l2sq": ("<->", "vector_l2_ops"),
                "ip": ("<#>", "vector_ip_ops")}
"""pgvector's distance operator and index operator class per metric (``l2sq`` ranks like pgvector's L2 distance)."""


SAME_MODEL = "(model = %s OR model_requested = %s)"
"""Rows whose vectors a query's compares with: embedded by that model, by the name the node answered or the name
asked for (a Gaia node answers any model name with its own)."""


def _is_duckdb(pipeline: Optional[dlt.Pipeline]) -> bool:
    return capabilities_of(pipeline).vector_column == "duckdb"


def _column_type(client: Any, schema_name: str, table: str, column: str) -> Optional[str]:
    rows = client.execute_sql(
        "SELECT data_type FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
        "AND column_name = %s", schema_name, table, column,
    )
    return str(rows[0][0]) if rows else None


def _create_table(client: Any, vector_type: str, types: Any, dlt_columns: bool = False) -> None:
    columns = ", ".join(
        f"{client.escape_column_name(name)} "
        f"{vector_type if name == 'embedding' else types[str(spec['data_type'])]}"
        f"{' NOT NULL' if spec.get('nullable') is False else ''}"
        for name, spec in EMBEDDING_COLUMNS.items()
    )
    if dlt_columns:  # plain rows carry them: created here, dlt does not add NOT NULL columns to an existing table
        columns += ", _dlt_load_id varchar, _dlt_id varchar"
    client.execute_sql(f"CREATE SCHEMA IF NOT EXISTS {client.fully_qualified_dataset_name()}")
    client.execute_sql(f"CREATE TABLE IF NOT EXISTS {client.make_qualified_table_name(TABLE)} ({columns})")


def _ensure_in(client: Any, dim: int, ducklake: bool = False) -> None:
    """Create or convert ``embeddings`` in the client's current dataset so its vector column is FLOAT[dim] (on
    DuckLake: created as a FLOAT[] list, the only float vector type DuckLake has)."""
    schema_name = client.dataset_name
    qualified = client.make_qualified_table_name(TABLE)
    current = _column_type(client, schema_name, TABLE, "embedding")
    wanted = "FLOAT[]" if ducklake else f"FLOAT[{dim}]"
    if current is None:
        _create_table(client, wanted, _DUCKDB_TYPES)
    elif ducklake:  # DuckLake changes a column's type only by widening: an older JSON column stays (search casts)
        if current.upper() != wanted:
            logger.info("%s.embedding is %s (DuckLake cannot change it to %s); search casts it", qualified, current,
                        wanted)
    elif current.upper() in ("JSON", "VARCHAR"):
        logger.info("converting %s.embedding from %s to %s (once)", qualified, current, wanted)
        client.execute_sql(f"ALTER TABLE {qualified} ALTER COLUMN embedding TYPE {wanted} USING embedding::{wanted}")
        # a table dlt created from dict rows has NOT NULL dlt columns, which Arrow rows do not carry
        for column in ("_dlt_load_id", "_dlt_id"):
            if _column_type(client, schema_name, TABLE, column) is not None:
                client.execute_sql(f"ALTER TABLE {qualified} ALTER COLUMN {column} DROP NOT NULL")
    elif current.upper() != wanted:
        raise GaiaConfigError(
            f"{qualified}.embedding is {current}, but the model returns {dim}-dimensional vectors. Vectors of one "
            "table share one dimension: load this model into another dataset (dataset_name=…)."
        )


def ensure_vector_column(pipeline: Optional[dlt.Pipeline], capabilities: DestinationCapabilities, dim: int) -> None:
    """Prepare ``embeddings`` (and its merge staging twin) for ``dim``-dimensional vectors where the destination has a
    native vector column (DuckDB: ``FLOAT[dim]``, PostgreSQL: ``vector(dim)``, DuckLake: ``FLOAT[]``); elsewhere
    nothing. Call it once per run, on the extracting thread.

    Raises:
        GaiaConfigError: the table already stores vectors of another dimension.
    """
    if pipeline is None or capabilities.vector_column not in ("duckdb", "pgvector", "ducklake"):
        return
    with pipeline.sql_client() as client:
        if capabilities.vector_column == "pgvector":
            vector_type = pgvector_type(client)
            if vector_type is None:
                return
            _ensure_pg(client, dim, vector_type)
            with client.with_staging_dataset():
                _ensure_pg(client, dim, vector_type)
            return
        ducklake = capabilities.vector_column == "ducklake"
        _ensure_in(client, dim, ducklake)
        with client.with_staging_dataset():
            _ensure_in(client, dim, ducklake)


# --- PostgreSQL + pgvector -------------------------------------------------------------------------------------


def _pgvector_schema(client: Any) -> Optional[str]:
    rows = client.execute_sql(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector'"
    )
    return str(rows[0][0]) if rows else None


def pgvector_type(client: Any) -> Optional[str]:
    """The schema-qualified name of pgvector's ``vector`` type on this server, creating the extension if the role may.

    Returns None (and logs one warning saying why and what to do) when pgvector is not installed on the server or
    the role may not create it: vectors then stay ``jsonb``.
    """
    schema = _pgvector_schema(client)
    if schema is None:
        available = client.execute_sql("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
        if not available:
            logger.warning(
                "PostgreSQL: the pgvector extension is not installed on this server, so embeddings.embedding stays "
                "jsonb (no similarity operators, no index). Install pgvector on the server to get a vector(dim) column."
            )
            return None
        try:
            client.execute_sql("CREATE EXTENSION IF NOT EXISTS vector SCHEMA public")
        except Exception as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            logger.warning(
                "PostgreSQL: pgvector is available but this role may not create it (%s), so embeddings.embedding "
                "stays jsonb. Ask an administrator to run CREATE EXTENSION vector in this database.", first_line,
            )
            return None
        schema = _pgvector_schema(client) or "public"
    return f'"{schema}".vector'


def _pg_column_type(client: Any, column: str = "embedding") -> Optional[str]:
    rows = client.execute_sql(
        "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "WHERE a.attrelid = to_regclass(%s) AND a.attname = %s AND NOT a.attisdropped",
        client.make_qualified_table_name(TABLE), column,
    )
    return str(rows[0][0]) if rows else None


def _ensure_pg(client: Any, dim: int, vector_type: str) -> None:
    """Create or convert ``embeddings`` in the client's current dataset so its vector column is vector(dim)."""
    qualified = client.make_qualified_table_name(TABLE)
    wanted = f"{vector_type}({dim})"
    current = _pg_column_type(client)
    if current is None:
        _create_table(client, wanted, _POSTGRES_TYPES, dlt_columns=True)
    elif current in ("jsonb", "json", "text", "character varying"):
        logger.info("converting %s.embedding from %s to vector(%d) (once)", qualified, current, dim)
        client.execute_sql(
            f"ALTER TABLE {qualified} ALTER COLUMN embedding TYPE {wanted} USING embedding::text::{wanted}"
        )
    elif not current.endswith(f"vector({dim})"):
        raise GaiaConfigError(
            f"{qualified}.embedding is {current}, but the model returns {dim}-dimensional vectors. Vectors of one "
            "table share one dimension: load this model into another dataset (dataset_name=…)."
        )


def _embed_query(pool: NodePool, text: str, model: Optional[str]) -> Tuple[Any, Optional[str]]:
    body = {"input": [text], **({"model": model} if model else {})}
    reply = pool.post_json(EMBEDDINGS_PATH, body)
    try:
        vector = np.asarray(reply.body["data"][0]["embedding"], dtype=np.float32)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise GaiaError(f"could not read the query embedding from {reply.node_url}/{EMBEDDINGS_PATH}: {exc}") from None
    returned = reply.body.get("model") if isinstance(reply.body, dict) else None
    return vector, returned if isinstance(returned, str) else None


def _filters(where: Optional[Mapping[str, Any]], dialect: str) -> Tuple[str, List[Any]]:
    """SQL conditions (`` AND …``) and their parameters for a ``where`` mapping; see :func:`search`."""
    conditions: List[str] = []
    params: List[Any] = []
    for key, value in (where or {}).items():
        if not _FIELD_RE.fullmatch(key):
            raise GaiaConfigError(f"where: {key!r} is not a column or metadata field name (letters, digits, _)")
        if key in EMBEDDING_COLUMNS and key != "metadata":
            column = key
        elif dialect == "duckdb":
            column = f"json_extract_string(metadata, '$.{key}')"
        else:
            column = f"(metadata->>'{key}')"
        if key not in EMBEDDING_COLUMNS and value is not None and not isinstance(value, str):
            value = orjson.dumps(value).decode()  # metadata fields compare as JSON text
        if value is None:
            conditions.append(f" AND {column} IS NULL")
        else:
            conditions.append(f" AND {column} = %s")
            params.append(value)
    return "".join(conditions), params


def _matches(row: Mapping[str, Any], where: Optional[Mapping[str, Any]]) -> bool:
    metadata = row.get("metadata")
    if isinstance(metadata, (str, bytes)):
        metadata = orjson.loads(metadata)
    for key, value in (where or {}).items():
        actual = row.get(key) if key in EMBEDDING_COLUMNS else (metadata or {}).get(key)
        if actual != value:
            return False
    return True


def _tagged(frame: "pd.DataFrame", model: Optional[str], dim: int) -> "pd.DataFrame":
    """``frame``, with the model and dimension the query was embedded with in its ``attrs``."""
    frame.attrs.update(query_model=model, dim=dim)
    return frame


def _frame(cursor: Any) -> "pd.DataFrame":
    import pandas as pd

    names = [d[0] for d in cursor.description]
    return pd.DataFrame(cursor.fetchall(), columns=names)


def _require_embeddings(pipeline: dlt.Pipeline, capabilities: DestinationCapabilities) -> None:
    """Raise ``GaiaConfigError`` when there is no ``embeddings`` table to search: not in the pipeline's schema and,
    where the destination speaks SQL, not in the destination either (a fresh machine's pipeline has no local schema)."""
    if pipeline.default_schema_name is not None and TABLE in pipeline.default_schema.data_table_names(
            seen_data_only=True):
        return
    if pipeline.destination is None or capabilities.vector_column == "lancedb":
        return  # nothing to ask here: the search itself says what is missing
    try:
        install_duckdb_extensions(capabilities.duckdb_extensions)
        with pipeline.sql_client() as sql:
            sql.execute_sql(f"SELECT 1 FROM {sql.make_qualified_table_name(TABLE)} LIMIT 1")
        return
    except DatabaseUndefinedRelation:
        pass
    except Exception:  # the destination could not tell: the search itself says what went wrong
        return
    raise GaiaConfigError(
        f"no texts are embedded in dataset {pipeline.dataset_name!r} of pipeline {pipeline.pipeline_name!r} yet: "
        "load some first (gaia_pipeline.py --texts-file FILE, or texts=[…] in Python), then search them")


def search(
    pipeline: dlt.Pipeline,
    query: str,
    k: int = 5,
    *,
    where: Optional[Mapping[str, Any]] = None,
    model: Optional[str] = None,
    pool: Optional[NodePool] = None,
    **node_settings: Any,
) -> "pd.DataFrame":
    """Embed ``query`` through the node and return the ``k`` most similar loaded texts, best first.

    The ranking runs in SQL where the destination has a vector column: DuckDB's ``array_cosine_distance`` over
    ``FLOAT[dim]`` (a vss HNSW index accelerates it) — also over the list columns DuckDB reads on DuckLake and on the
    filesystem destination (parquet files, Delta and Iceberg tables), cast to ``FLOAT[dim]`` —, pgvector's ``<=>``
    over ``vector(dim)`` (an HNSW index from :func:`create_hnsw_index` serves it); LanceDB searches its own table;
    elsewhere the vectors are ranked with numpy.

    Args:
        pipeline: The pipeline that loaded the ``embeddings`` table.
        query: The text to search for.
        k: How many hits.
        where: Prefilter applied before ranking: ``{name: value}`` pairs that must all hold. A name that is a column
            of ``embeddings`` (``text_id``, ``document_id``, ``model``…) compares that column; any other name compares
            the top-level ``metadata`` field of that name (``{"lang": "en"}``).
        model: Embedding model (default: the node's); only rows embedded by the same model are compared: rows whose
            ``model`` (what the node answered) or ``model_requested`` (what was asked) is this name.
        pool: A node pool to embed the query with; by default one is opened from
            :class:`~gaia_source.config.NodeSettings` (``node_settings`` win over ``[sources.gaia_source]`` config)
            and closed afterwards.
        node_settings: Fields of :class:`~gaia_source.config.NodeSettings` (``base_url``, ``api_key``, …).

    Returns:
        A DataFrame with ``text_id``, ``text``, ``metadata``, ``model`` and ``score`` (cosine similarity); its
        ``attrs`` name the model and dimension the query was embedded with (``query_model``, ``dim``).
    """
    if k < 1:
        raise GaiaConfigError(f"k must be >= 1, got {k}")
    capabilities = capabilities_of(pipeline)
    _require_embeddings(pipeline, capabilities)  # before the node is asked to embed the query
    vector_column = capabilities.vector_column
    _filters(where, "duckdb")  # names are checked before the node is asked anything
    if pool is None:
        with NodePool(resolve_node_settings(**node_settings)) as own:
            vector, returned_model = _embed_query(own, query, model)
    else:
        vector, returned_model = _embed_query(pool, query, model)
    stored_model = model or returned_model
    dim = len(vector)
    if vector_column == "lancedb":
        return _tagged(_search_lancedb(pipeline, vector, k, stored_model, where), stored_model, dim)
    install_duckdb_extensions(capabilities.duckdb_extensions)
    with pipeline.sql_client() as sql:
        table = sql.make_qualified_table_name(TABLE)
        if capabilities.lookup == "duckdb":  # DuckDB, DuckLake, and the filesystem destination's DuckDB views
            column_type = _column_type(sql, sql.dataset_name, TABLE, "embedding") or ""
            column = "embedding" if column_type.upper() == f"FLOAT[{dim}]" else f"CAST(embedding AS FLOAT[{dim}])"
            conditions, params = _filters(where, "duckdb")
            # the form a vss HNSW index serves; CAST, not ::, for the SQL parser of dlt's filesystem client (sqlglot)
            distance = f"array_cosine_distance({column}, CAST(%s AS FLOAT[{dim}]))"
            _load_vss_for_index(sql)
            kinds = sql.execute_sql(f"SELECT DISTINCT model, model_requested, dim FROM {table} LIMIT 2")
            one_kind = [tuple(r) for r in kinds or []]
            if not conditions and len(one_kind) == 1 and stored_model in one_kind[0][:2] and one_kind[0][2] == dim:
                # one model in the table: no WHERE, so an HNSW index serves the query (vss skips it under a filter)
                sql_text = (f"SELECT text_id, text, metadata, model, 1 - {distance} AS score FROM {table} "
                            f"ORDER BY {distance} LIMIT {int(k)}")
                with sql.execute_query(sql_text, vector.tolist(), vector.tolist()) as cursor:
                    return _tagged(_frame(cursor), stored_model, dim)
            sql_text = (
                f"SELECT text_id, text, metadata, model, 1 - {distance} AS score FROM {table} "
                f"WHERE {SAME_MODEL} AND dim = %s{conditions} ORDER BY {distance} LIMIT {int(k)}"
            )
            with sql.execute_query(sql_text, vector.tolist(), stored_model, stored_model, dim, *params,
                                   vector.tolist()) as cursor:
                return _tagged(_frame(cursor), stored_model, dim)
        if vector_column == "pgvector" and (_pg_column_type(sql) or "").endswith(f"vector({dim})"):
            vector_type = f'"{_pgvector_schema(sql) or "public"}".vector'
            operator = f"OPERATOR({vector_type.rsplit('.', 1)[0]}.<=>)"
            literal = "[" + ",".join(repr(float(x)) for x in vector) + "]"
            conditions, params = _filters(where, "postgres")
            sql_text = (
                f"SELECT text_id, text, metadata, model, 1 - (embedding {operator} %s::{vector_type}) AS score "
                f"FROM {table} WHERE {SAME_MODEL} AND dim = %s{conditions} "
                f"ORDER BY embedding {operator} %s::{vector_type} LIMIT {int(k)}"
            )
            with sql.execute_query(sql_text, literal, stored_model, stored_model, dim, *params, literal) as cursor:
                return _tagged(_frame(cursor), stored_model, dim)
        rows = sql.execute_sql(
            f"SELECT text_id, text, metadata, model, embedding, {_optional_columns(where)} FROM {table} "
            f"WHERE {SAME_MODEL} AND dim = %s",
            stored_model, stored_model, dim,
        )
    return _tagged(_rank(_filtered(rows or [], where), vector, k), stored_model, dim)


def _load_vss_for_index(sql: Any) -> None:
    """Load vss on this connection when ``embeddings`` has an HNSW index (DuckDB reads without it, but scans)."""
    indexes = sql.execute_sql(
        "SELECT count(*) FROM duckdb_indexes() WHERE schema_name = %s AND table_name = %s AND sql ILIKE '%HNSW%'",
        sql.dataset_name, TABLE,
    )
    if indexes and indexes[0][0]:
        try:
            sql.execute_sql("LOAD vss")
        except Exception as exc:  # still correct without it: an exact scan
            logger.warning("embeddings has an HNSW index but vss does not load here (%s); searching by a full scan",
                           str(exc).splitlines()[0])


def _optional_columns(where: Optional[Mapping[str, Any]]) -> str:
    names = [key for key in (where or {}) if key in EMBEDDING_COLUMNS and key != "metadata"]
    return ", ".join(names) if names else "NULL AS no_filter"


def _filtered(rows: Sequence[Sequence[Any]], where: Optional[Mapping[str, Any]]) -> List[Sequence[Any]]:
    if not where:
        return list(rows)
    names = [key for key in where if key in EMBEDDING_COLUMNS and key != "metadata"]
    kept = []
    for row in rows:
        fields: Dict[str, Any] = {"metadata": row[2], **dict(zip(names, row[5:], strict=False))}
        if _matches(fields, where):
            kept.append(row)
    return kept


def _rank(rows: Sequence[Sequence[Any]], vector: Any, k: int) -> "pd.DataFrame":
    """Cosine-rank rows of (text_id, text, metadata, model, embedding) in numpy."""
    import pandas as pd

    columns = ["text_id", "text", "metadata", "model", "score"]
    if not rows:
        return pd.DataFrame(columns=columns)
    matrix = np.asarray([orjson.loads(r[4]) if isinstance(r[4], (str, bytes)) else r[4] for r in rows], np.float32)
    scores = matrix @ vector / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(vector) + 1e-12)
    order = np.argsort(-scores)[:k]
    return pd.DataFrame([[*rows[i][:4], float(scores[i])] for i in order], columns=columns)


def load_vss(sql: Any) -> None:
    """Load DuckDB's vss extension on ``sql``'s connection, offline from ``duckdb-extension-vss`` when installed.

    ``INSTALL '<file>'`` also copies it into DuckDB's extension directory, so ``LOAD vss`` (and dlt's
    ``extensions=["vss"]`` credential) works in later connections without network.

    Raises:
        GaiaConfigError: the extension is neither installed from the package nor downloadable.
    """
    packaged = packaged_extension("vss")
    try:
        sql.execute_sql(f"INSTALL '{packaged}'" if packaged else "INSTALL vss")
        sql.execute_sql("LOAD vss")
    except Exception as exc:
        raise GaiaConfigError(
            f"DuckDB's vss extension is not available ({str(exc).splitlines()[0]}). gaia-dlt installs it from PyPI "
            "(duckdb-extension-vss, built for the DuckDB version the project pins): reinstall gaia-dlt so both "
            "match (`pip install -e .`), or run `INSTALL vss` once on a machine with access to extensions.duckdb.org."
        ) from None


def create_hnsw_index(pipeline: dlt.Pipeline, metric: str = "cosine", name: str = "embeddings_hnsw") -> None:
    """Build an HNSW index on ``embeddings.embedding`` (after the bulk load: building it is cheaper than updating it).

    DuckDB: the vss extension (loaded offline from ``duckdb-extension-vss``, see :func:`load_vss`), persistent
    (``hnsw_enable_experimental_persistence``, since the pipeline's DuckDB is a file). It serves
    ``ORDER BY array_cosine_distance(embedding, ?::FLOAT[dim]) LIMIT k`` (``l2sq``: ``array_distance``, ``ip``:
    ``array_negative_inner_product``). Later loads into the table need vss loaded on dlt's connections too:
    ``dlt.destinations.duckdb(path, extensions=["vss"], global_config={"hnsw_enable_experimental_persistence": True})``.

    PostgreSQL with pgvector: ``CREATE INDEX … USING hnsw (embedding vector_cosine_ops)`` (``vector_l2_ops``,
    ``vector_ip_ops``), which serves ``ORDER BY embedding <=> q LIMIT k`` and so :func:`search`.

    Raises:
        GaiaConfigError: the destination has no index for vectors here (no DuckDB/pgvector column), or vss is missing.
    """
    if metric not in ("cosine", "l2sq", "ip"):
        raise GaiaConfigError(f"metric must be cosine, l2sq or ip, got {metric!r}")
    vector_column = capabilities_of(pipeline).vector_column
    if vector_column not in ("duckdb", "pgvector"):
        raise GaiaConfigError("HNSW indexes are built on DuckDB (vss) and PostgreSQL (pgvector); this pipeline "
                              "loads elsewhere (LanceDB indexes its own tables)")
    with pipeline.sql_client() as sql:
        table = sql.make_qualified_table_name(TABLE)
        if vector_column == "pgvector":
            if "vector(" not in (_pg_column_type(sql) or ""):
                raise GaiaConfigError(f"{table}.embedding is not a pgvector column (is pgvector installed? see the "
                                      "warning of the load), so it cannot have an HNSW index")
            schema = _pgvector_schema(sql) or "public"
            sql.execute_sql(f'CREATE INDEX IF NOT EXISTS {name} ON {table} USING hnsw '
                            f'(embedding "{schema}".{PGVECTOR_OPS[metric][1]})')
            return
        load_vss(sql)
        sql.execute_sql("SET hnsw_enable_experimental_persistence = true")
        sql.execute_sql(
            f"CREATE INDEX IF NOT EXISTS {name} ON {table} USING HNSW (embedding) WITH (metric = '{metric}')"
        )


def _search_lancedb(
    pipeline: dlt.Pipeline, vector: Any, k: int, model: Optional[str], where: Optional[Mapping[str, Any]]
) -> "pd.DataFrame":
    """Rank with LanceDB's own vector search over the pipeline's ``embeddings`` table (cosine), prefiltered on
    columns; ``where`` on metadata fields is applied to the column-filtered rows, ranked here."""
    import pandas as pd

    table = lance_table(pipeline, TABLE)
    columns = ["text_id", "text", "metadata", "model", "score"]
    if table is None:
        return pd.DataFrame(columns=columns)
    same = f"(model = {lance_literal(model)} OR model_requested = {lance_literal(model)})"
    conditions = [same if model else "model IS NULL", f"dim = {len(vector)}"]
    metadata_keys = {key: value for key, value in (where or {}).items() if key not in EMBEDDING_COLUMNS}
    for key, value in (where or {}).items():
        if key in EMBEDDING_COLUMNS and key != "metadata":
            conditions.append(f"{key} IS NULL" if value is None else f"{key} = {lance_literal(value)}")
    condition = " AND ".join(conditions)
    if metadata_keys:
        found = table.search().where(condition).limit(None).to_arrow().to_pylist()
        rows = [[r["text_id"], r["text"], r["metadata"], r["model"], r["embedding"]] for r in found
                if _matches({"metadata": r["metadata"]}, metadata_keys)]
        return _rank(rows, vector, k)
    hits = (table.search(np.asarray(vector, np.float32), vector_column_name="embedding").metric("cosine")
            .where(condition, prefilter=True).limit(k).to_pandas())
    hits["score"] = 1.0 - hits["_distance"]
    return hits[columns].reset_index(drop=True)
