"""Embedding vectors in the warehouse: a native ``FLOAT[dim]`` column on DuckDB, similarity search, an HNSW index.

dlt has no vector type: left alone, DuckDB gets a JSON column, which ``array_cosine_similarity`` cannot use without a
per-row cast and a vss index cannot use at all. So once per run, before the first vectors are loaded,
:func:`ensure_vector_column` makes ``embeddings.embedding`` (and its merge-staging twin) a ``FLOAT[dim]`` column,
with ``dim`` taken from the model's output. dlt keeps an existing column's type, so every later load — merge
included — lands in it directly. On other destinations vectors stay a JSON/list column (PostgreSQL ``jsonb``,
parquet ``list<float>``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Optional, Sequence, Tuple

import dlt
import numpy as np
import orjson

from .config import resolve_node_settings
from .destination import DestinationCapabilities, capabilities_of
from .errors import GaiaConfigError, GaiaError
from .pool import NodePool
from .rows import EMBEDDING_COLUMNS
from .settings import EMBEDDINGS_PATH

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger("gaia_source")

TABLE = "embeddings"
_DUCKDB_TYPES = {"text": "VARCHAR", "bigint": "BIGINT", "double": "DOUBLE", "bool": "BOOLEAN", "json": "JSON",
                 "timestamp": "TIMESTAMP WITH TIME ZONE"}


def _is_duckdb(pipeline: Optional[dlt.Pipeline]) -> bool:
    return capabilities_of(pipeline).vector_column == "duckdb"


def _column_type(client: Any, schema_name: str, table: str, column: str) -> Optional[str]:
    rows = client.execute_sql(
        "SELECT data_type FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
        "AND column_name = %s", schema_name, table, column,
    )
    return str(rows[0][0]) if rows else None


def _ensure_in(client: Any, dim: int) -> None:
    """Create or convert ``embeddings`` in the client's current dataset so its vector column is FLOAT[dim]."""
    schema_name = client.dataset_name
    qualified = client.make_qualified_table_name(TABLE)
    current = _column_type(client, schema_name, TABLE, "embedding")
    wanted = f"FLOAT[{dim}]"
    if current is None:
        columns = ", ".join(
            f"{client.escape_column_name(name)} "
            f"{wanted if name == 'embedding' else _DUCKDB_TYPES[str(spec['data_type'])]}"
            f"{' NOT NULL' if spec.get('nullable') is False else ''}"
            for name, spec in EMBEDDING_COLUMNS.items()
        )
        client.execute_sql(f"CREATE SCHEMA IF NOT EXISTS {client.fully_qualified_dataset_name()}")
        client.execute_sql(f"CREATE TABLE IF NOT EXISTS {qualified} ({columns})")
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
    native vector column (DuckDB: ``FLOAT[dim]``); elsewhere nothing. Call it once per run, on the extracting thread.

    Raises:
        GaiaConfigError: the table already stores vectors of another dimension.
    """
    if pipeline is None or capabilities.vector_column != "duckdb":
        return
    with pipeline.sql_client() as client:
        _ensure_in(client, dim)
        with client.with_staging_dataset():
            _ensure_in(client, dim)


def _embed_query(pool: NodePool, text: str, model: Optional[str]) -> Tuple[Any, Optional[str]]:
    body = {"input": [text], **({"model": model} if model else {})}
    reply = pool.post_json(EMBEDDINGS_PATH, body)
    try:
        vector = np.asarray(reply.body["data"][0]["embedding"], dtype=np.float32)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise GaiaError(f"could not read the query embedding from {reply.node_url}/{EMBEDDINGS_PATH}: {exc}") from None
    returned = reply.body.get("model") if isinstance(reply.body, dict) else None
    return vector, returned if isinstance(returned, str) else None


def search(
    pipeline: dlt.Pipeline,
    query: str,
    k: int = 5,
    *,
    model: Optional[str] = None,
    pool: Optional[NodePool] = None,
    **node_settings: Any,
) -> "pd.DataFrame":
    """Embed ``query`` through the node and return the ``k`` most similar loaded texts, best first.

    On DuckDB the ranking runs in SQL (``array_cosine_similarity`` over the ``FLOAT[dim]`` column, which a vss HNSW
    index accelerates); on other destinations the vectors are ranked with numpy.

    Args:
        pipeline: The pipeline that loaded the ``embeddings`` table.
        query: The text to search for.
        k: How many hits.
        model: Embedding model (default: the node's); only rows embedded by the same model are compared.
        pool: A node pool to embed the query with; by default one is opened from
            :class:`~gaia_source.config.NodeSettings` (``node_settings`` win over ``[sources.gaia_source]`` config)
            and closed afterwards.
        node_settings: Fields of :class:`~gaia_source.config.NodeSettings` (``base_url``, ``api_key``, …).

    Returns:
        A DataFrame with ``text_id``, ``text``, ``metadata``, ``model`` and ``score`` (cosine similarity).
    """
    if k < 1:
        raise GaiaConfigError(f"k must be >= 1, got {k}")
    if pool is None:
        with NodePool(resolve_node_settings(**node_settings)) as own:
            vector, returned_model = _embed_query(own, query, model)
    else:
        vector, returned_model = _embed_query(pool, query, model)
    import pandas as pd

    stored_model = model or returned_model
    dim = len(vector)
    with pipeline.sql_client() as sql:
        table = sql.make_qualified_table_name(TABLE)
        if _is_duckdb(pipeline):
            column_type = _column_type(sql, sql.dataset_name, TABLE, "embedding") or ""
            column = "embedding" if column_type.upper() == f"FLOAT[{dim}]" else f"embedding::FLOAT[{dim}]"
            sql_text = (
                f"SELECT text_id, text, metadata, model, array_cosine_similarity({column}, ?::FLOAT[{dim}]) AS score "
                f"FROM {table} WHERE model = ? AND dim = ? ORDER BY score DESC LIMIT {int(k)}"
            )
            with sql.execute_query(sql_text, vector.tolist(), stored_model, dim) as cursor:
                names = [d[0] for d in cursor.description]
                return pd.DataFrame(cursor.fetchall(), columns=names)
        rows = sql.execute_sql(
            f"SELECT text_id, text, metadata, model, embedding FROM {table} WHERE model = %s AND dim = %s",
            stored_model, dim,
        )
    return _rank(rows or [], vector, k)


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


def create_hnsw_index(pipeline: dlt.Pipeline, metric: str = "cosine", name: str = "embeddings_hnsw") -> None:
    """Build a DuckDB vss HNSW index on ``embeddings.embedding`` (after the bulk load: it is built in memory).

    Installs and loads the ``vss`` extension, and sets ``hnsw_enable_experimental_persistence`` because the pipeline's
    DuckDB is a file. The index then serves ``ORDER BY array_cosine_distance(embedding, ?::FLOAT[dim]) LIMIT k``
    (metric ``cosine``; ``l2sq`` and ``ip`` use ``array_distance`` and ``array_negative_inner_product``).

    Raises:
        GaiaConfigError: not a DuckDB pipeline, or the vss extension cannot be installed (it downloads from
            extensions.duckdb.org the first time: on an offline machine, install it where online, or point
            DuckDB's ``extension_directory`` at a copy).
    """
    if metric not in ("cosine", "l2sq", "ip"):
        raise GaiaConfigError(f"metric must be cosine, l2sq or ip, got {metric!r}")
    if not _is_duckdb(pipeline):
        raise GaiaConfigError("HNSW indexes are a DuckDB (vss) feature; this pipeline loads elsewhere")
    with pipeline.sql_client() as sql:
        try:
            sql.execute_sql("INSTALL vss")
            sql.execute_sql("LOAD vss")
        except Exception as exc:
            raise GaiaConfigError(
                f"DuckDB's vss extension is not available ({str(exc).splitlines()[0]}). It is downloaded from "
                "extensions.duckdb.org on first use: run `INSTALL vss` once on a machine with access, or set DuckDB's "
                "extension_directory to a copy."
            ) from None
        sql.execute_sql("SET hnsw_enable_experimental_persistence = true")
        table = sql.make_qualified_table_name(TABLE)
        sql.execute_sql(
            f"CREATE INDEX IF NOT EXISTS {name} ON {table} USING HNSW (embedding) WITH (metric = '{metric}')"
        )
