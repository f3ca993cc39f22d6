"""The resources' generators: each turns inputs into requests, runs them, and yields rows for dlt.

The source (``gaia_source``) and the transformers (``gaia_source.transformers``) wrap these with dlt hints; nothing
here knows where its inputs came from.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import dlt
import orjson
import pyarrow as pa
from dlt.extract.items import DataItemWithMeta

from .client import GaiaClient
from .destination import current_pipeline, destination_name, skip_loaded, unique
from .inputs import ChatInput, QueryInput, TextInput
from .payloads import (
    PreparedRequest,
    Shard,
    chat_request,
    embedding_id,
    embeddings_request,
    in_shard,
    normalize_chat_params,
    retrieve_request,
)
from .rows import (
    Row,
    chat_completion_row,
    chat_stream_row,
    embedding_table,
    info_row,
    model_rows,
    retrieve_row,
    utc_now,
)
from .pool import NodePool
from .runner import run_requests
from .settings import CHAT_PATH, EMBEDDINGS_PATH, INFO_PATH, MODELS_PATH, RETRIEVE_PATH
from .vectors import VectorColumn

logger = logging.getLogger("gaia_source")


def _batched(items: Iterable[TextInput], size: int) -> Iterator[List[TextInput]]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def with_load_format(items: Iterable[Any]) -> Iterator[Any]:
    """On DuckDB, carry a ``parquet`` file-format hint on the first plain item (dlt applies it to the item's table).

    DuckDB loads parquet with a fraction of the memory insert_values statements take (0.4 GB vs 1.7 GB peak at
    10,000 completions). Elsewhere the destination's own choice stands (PostgreSQL keeps ``jsonb``).
    """
    file_format = "parquet" if destination_name(current_pipeline()) in ("duckdb", "motherduck") else None
    tagged = file_format is None
    for item in items:
        if not tagged and not isinstance(item, DataItemWithMeta):
            item = dlt.mark.with_hints(item, dlt.mark.make_hints(file_format=file_format))  # type: ignore[arg-type]
            tagged = True
        yield item


def _per_node(pool: NodePool, path: str) -> List[PreparedRequest]:
    """One GET per node of the pool (its body names the node, so each has its own request id)."""
    return [PreparedRequest(path, {"node_url": node.base_url}, extra={"node": node}) for node in pool.nodes]


def models_rows(pool: NodePool, shard: Optional[Shard] = None) -> Iterator[Any]:
    """Yield one row per model each node lists at GET /v1/models, stamped with ``last_seen_at`` (shard 0 only)."""
    if not _first_shard(shard, "models"):
        return

    def execute(request: PreparedRequest) -> List[Row]:
        node: GaiaClient = request.extra["node"]
        body, fetched_at, _ = node.metadata(MODELS_PATH)
        return model_rows(body, node.base_url, fetched_at, node.url(MODELS_PATH))

    yield from with_load_format(run_requests("models", pool, _per_node(pool, MODELS_PATH), execute))


def info_rows(pool: NodePool, shard: Optional[Shard] = None) -> Iterator[Any]:
    """Yield one GET /v1/info snapshot per node (any server generation's shape, kept whole; shard 0 only)."""
    if not _first_shard(shard, "info"):
        return

    def execute(request: PreparedRequest) -> List[Row]:
        node: GaiaClient = request.extra["node"]
        body, fetched_at, latency = node.metadata(INFO_PATH)
        return [info_row(body, node.base_url, fetched_at, latency, node.url(INFO_PATH))]

    yield from with_load_format(run_requests("info", pool, _per_node(pool, INFO_PATH), execute))


def _chat_requests(
    inputs: Callable[[], Iterator[ChatInput]],
    client: NodePool,
    chat_model: Optional[str],
    params: Dict[str, Any],
    stream: bool,
) -> Iterator[PreparedRequest]:
    items = inputs()
    first = next(items, None)
    if first is None:
        return
    model = chat_model or client.discover_models()[0]
    for item in itertools.chain([first], items):
        merged = {**params, **normalize_chat_params(item.params)}
        yield chat_request(item.messages, item.model or model, merged, stream, item.custom_id, item.source)


def _first_shard(shard: Optional[Shard], resource: str) -> bool:
    if shard is not None and shard[0] != 0:
        logger.info("%s: loaded by shard 0 only (this is shard %d/%d)", resource, *shard)
        return False
    return True


def _request_key(request: PreparedRequest) -> str:
    return request.request_id


def _first(pair: Tuple[str, Any]) -> str:
    return pair[0]


def chat_rows(
    client: NodePool,
    inputs: Callable[[], Iterator[ChatInput]],
    chat_model: Optional[str],
    params: Dict[str, Any],
    stream: bool,
    refresh: bool = False,
    shard: Optional[Shard] = None,
) -> Iterator[Any]:
    """Yield one row per prompt: ``chat_completions`` rows, or with ``stream`` the folded SSE answer with its TTFT.

    Prompts whose request id already has a ``completed`` row are not sent again unless ``refresh``; interrupted and
    failed ones are.
    """

    def execute(request: PreparedRequest) -> List[Row]:
        requested_at = utc_now()
        if stream:
            streamed = client.stream_chat(CHAT_PATH, request.body)
            return [chat_stream_row(request, streamed.result, streamed.node_url, requested_at, streamed.attempts)]
        reply = client.post_json(CHAT_PATH, request.body)
        return [chat_completion_row(request, reply.body, reply.latency_s, reply.node_url, requested_at)]

    name = "chat_completions_stream" if stream else "chat_completions"
    requests = (r for r in _chat_requests(inputs, client, chat_model, params, stream) if in_shard(r.request_id, shard))
    if not refresh:
        requests = skip_loaded(requests, _request_key, name, "request_id", "status = 'completed'", "prompts")
    yield from with_load_format(run_requests(name, client, requests, execute))


def embeddings_rows(
    client: NodePool,
    inputs: Callable[[], Iterator[TextInput]],
    embedding_model: Optional[str],
    batch_size: int,
    refresh: bool = False,
    shard: Optional[Shard] = None,
) -> Iterator[Any]:
    """Yield ``embeddings`` rows: texts are sent ``batch_size`` at a time, one row comes back per text.

    A (model, text) pair already in the table is not embedded again unless ``refresh`` (looked up by content hash in
    the destination, so dlt state does not grow with the corpus), and a text repeated in the input is sent once.
    """

    pipeline = current_pipeline()
    vector_column = VectorColumn(pipeline)
    # DuckDB and parquet files take Arrow vectors as they are; other destinations (PostgreSQL loads Arrow as CSV,
    # which has no list type) get plain rows, whose vectors dlt stores in the JSON column.
    destination = destination_name(pipeline)
    arrow_native = destination is None or destination in ARROW_VECTOR_DESTINATIONS

    def requests() -> Iterator[PreparedRequest]:
        items = inputs()
        first = next(items, None)
        if first is None:
            return
        model = embedding_model or client.discover_models()[1]
        keyed: Iterator[Tuple[str, TextInput]] = ((embedding_id(model, t.text), t) for t in itertools.chain([first], items))
        keyed = unique((kt for kt in keyed if in_shard(kt[0], shard)), _first)  # one row per (model, text) in a load
        if not refresh:
            keyed = skip_loaded(keyed, _first, "embeddings", "embedding_id", what="texts")
        for batch in _batched((text for _, text in keyed), batch_size):
            yield embeddings_request([t.text for t in batch], model, extra={"inputs": batch})

    def execute(request: PreparedRequest) -> Any:
        embedded_at = utc_now()
        reply = client.post_json(EMBEDDINGS_PATH, request.body)
        table = embedding_table(request, reply.body, reply.node_url, embedded_at)
        vector_column.ensure(table.schema.field("embedding").type.list_size)  # before the first vectors are loaded
        return table if arrow_native else table_rows(table)

    yield from with_load_format(coalesce_tables(run_requests("embeddings", client, requests(), execute)))


ARROW_VECTOR_DESTINATIONS = frozenset({"duckdb", "motherduck", "filesystem"})


def table_rows(table: pa.Table) -> List[Row]:
    """An embeddings Arrow table as plain rows (vectors as lists, metadata as objects)."""
    rows = table.to_pylist()
    for row in rows:
        if row["metadata"] is not None:
            row["metadata"] = orjson.loads(row["metadata"])
    return rows


def coalesce_tables(items: Iterable[Any], min_rows: int = 5_000) -> Iterator[Any]:
    """Merge consecutive Arrow tables into ones of at least ``min_rows`` rows; pass anything else straight through.

    dlt spends a few milliseconds on every item it extracts, whatever its size: thousands of 64-row tables cost more
    than the vectors in them.
    """
    pending: List[pa.Table] = []
    rows = 0
    for item in items:
        if not isinstance(item, pa.Table):
            yield item
            continue
        pending.append(item)
        rows += item.num_rows
        if rows >= min_rows:
            yield pa.concat_tables(pending)
            pending, rows = [], 0
    if pending:
        yield pa.concat_tables(pending)


def retrieve_rows(
    client: NodePool, inputs: Callable[[], Iterator[QueryInput]], shard: Optional[Shard] = None
) -> Iterator[Any]:
    """Yield one ``retrieve`` row per query with its ranked points (POST /v1/retrieve, Gaia <= 0.4 RAG nodes)."""

    def execute(request: PreparedRequest) -> List[Row]:
        retrieved_at = utc_now()
        reply = client.post_json(RETRIEVE_PATH, request.body)
        return [retrieve_row(request, reply.body, reply.latency_s, reply.node_url, retrieved_at)]

    queries = (retrieve_request(q.query, q.custom_id, q.source) for q in inputs())
    queries = (q for q in queries if in_shard(q.request_id, shard))
    yield from with_load_format(run_requests("retrieve", client, queries, execute))
