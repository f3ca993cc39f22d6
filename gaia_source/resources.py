"""The one factory that turns an :class:`~gaia_source.endpoints.Endpoint` into a dlt resource, and the table schema.

:func:`extract` is the body of every resource and transformer: it enters the run context, builds the requests from
the plan, sends them through :func:`~gaia_source.runner.run_requests`, and hands dlt the rows in the form the
destination takes (Arrow vectors or plain rows, a load file format, a write disposition when the destination cannot
be asked what it holds). Nothing here knows a particular endpoint.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Iterable, Iterator, List, Optional, cast

import dlt
import orjson
import pyarrow as pa
from dlt.common.schema import Schema
from dlt.common.schema.typing import TColumnSchema, TTableFormat, TWriteDispositionConfig
from dlt.common.schema.utils import new_table
from dlt.extract.items import DataItemWithMeta
from dlt.extract.resource import DltResource
from dlt.extract.source import DltSource

from .client import Reply
from .context import RunContext
from .destination import capabilities_of, escape_nul
from .endpoints import ENDPOINTS, Endpoint, Plan
from .errors import GaiaRequestError, GaiaRunStopped, blames_an_input, looks_like_missing_route
from .ledger import row_id
from .payloads import PreparedRequest
from .rows import FAILED_REQUEST_COLUMNS, usage_estimated_by
from .runner import Outcome, Prior, outcome_of, run_requests
from .settings import FAILED_REQUESTS_TABLE
from .vectors import ensure_vector_column

logger = logging.getLogger("gaia_source")


def declare_tables(schema: Schema) -> None:
    """Put every table's columns in the source schema, so each table has the same shape whatever a load carried.

    Column types live here and not in resource hints: dlt builds a table variant (``failed_requests``) from a copy of
    its resource's hints, and resource columns would leak into it.
    """
    tables = {endpoint.name: endpoint.columns for endpoint in ENDPOINTS}
    tables[FAILED_REQUESTS_TABLE] = FAILED_REQUEST_COLUMNS
    for table, columns in tables.items():
        schema.update_table(new_table(table, columns=[{"name": name, **spec} for name, spec in columns.items()]))


def create_tables(pipeline: dlt.Pipeline) -> List[str]:
    """Create, now, every table the source declares that ``pipeline``'s dataset lacks; returns those created.

    For pipelines about to load into one dataset in parallel (the shards of a job): they then find their tables there,
    instead of racing to create them (on PostgreSQL the losers fail with ``duplicate key value violates unique
    constraint "pg_type_typname_nsp_index"``). Each table gets the row columns dlt's normalizer gives its rows
    (``_dlt_load_id``, ``_dlt_id``), as dlt itself would create it; a table whose rows go as Arrow (``embeddings``
    where the destination takes Arrow vectors) gets none, as dlt adds none there, and is left to its first load.
    Not foreseen: nested tables (``retrieve__points``) and columns a later load adds; a parallel load that races on
    those is repeated with dlt's ``retry_schema_update``.

    Call it after ``pipeline`` ran the source once (a ``models``/``info`` snapshot will do): its schema then holds the
    declared tables and dlt's row columns of the snapshot tables.
    """
    from dlt.common.schema.utils import dlt_id_column, dlt_load_id_column

    schema = pipeline.default_schema
    snapshot = next((schema.tables[t]["columns"] for t in ("models", "info") if t in schema.tables), {})
    row_columns: List[TColumnSchema] = [snapshot.get(name) or default for name, default in (
        ("_dlt_load_id", dlt_load_id_column()), ("_dlt_id", dlt_id_column()))]
    arrow = capabilities_of(pipeline).arrow_vectors
    tables = [e.name for e in ENDPOINTS if not (e.vectors and arrow)] + [FAILED_REQUESTS_TABLE]
    for table in tables:
        schema.update_table(new_table(table, columns=[TColumnSchema(**c) for c in row_columns]))  # copies
    pipeline.schemas.save_schema(schema)  # a new version of the pipeline's schema: what the client migrates to
    with pipeline.destination_client() as client:
        created = client.update_stored_schema(only_tables=tables, force=True) or {}
    return sorted(created)


def write_disposition(endpoint: Endpoint, plan: Plan) -> TWriteDispositionConfig:
    """The endpoint's write disposition for this plan: rows known new are appended; a refresh merges them.

    An endpoint that appends when rows are new (``append_when_new``) merges instead, from the item on which the run
    learns it, when the run sends a cell again whose row is loaded (see :func:`_with_table_hints`): dlt applies a
    write disposition to the whole table of a load package, so the rows appended before are merged too.
    """
    if endpoint.append_when_new and plan.refresh:
        return merge_disposition(endpoint, plan)
    return endpoint.write_disposition  # type: ignore[return-value]


def merge_disposition(endpoint: Endpoint, plan: Plan) -> TWriteDispositionConfig:
    """How an ``append_when_new`` endpoint's rows merge on their key.

    Delta and Iceberg tables merge by ``upsert`` (dlt 1.31 has no ``delete-insert`` there); elsewhere
    ``delete-insert``, skipping dlt's dedup pass over the staged rows where the run yields each key once
    (``unique_in_run``, see :meth:`~gaia_source.context.RunContext.seen`).
    """
    if plan.table_format in ("delta", "iceberg"):
        return {"disposition": "merge", "strategy": "upsert"}
    if endpoint.unique_in_run:
        return {"disposition": "merge", "strategy": "delete-insert", "deduplicated": True}
    return "merge"  # dlt's default strategy (delete-insert), its dedup pass included


def make_resource(endpoint: Endpoint, plan: Plan, context: RunContext) -> DltResource:
    """The dlt resource of one endpoint for one source run."""

    def rows() -> Iterator[Any]:  # all the rows, or this part's when the run loads in parts
        yield from context.parts.items(endpoint.name, lambda: extract(endpoint, plan, context))

    rows.__doc__ = endpoint.rows.__doc__
    resource = dlt.resource(rows, name=endpoint.name, write_disposition=write_disposition(endpoint, plan),
                            **table_key(endpoint))
    resource.gaia_run_context = context  # type: ignore[attr-defined]  # read by run_context_of
    if plan.table_format:  # nested tables and table variants (failed_requests) take it too
        resource.apply_hints(table_format=cast(TTableFormat, plan.table_format))
    return resource


def run_context_of(source: DltSource) -> Optional[RunContext]:
    """The run context behind ``source``'s selected resources (one per ``gaia_source`` call); None for a source of
    other resources."""
    contexts = {id(c): c for r in source.selected_resources.values()
                if (c := getattr(r, "gaia_run_context", None)) is not None}
    return next(iter(contexts.values())) if len(contexts) == 1 else None


def table_key(endpoint: Endpoint) -> Dict[str, Any]:
    """The ``primary_key`` hint of an endpoint's resource (none for a history of snapshots)."""
    return {"primary_key": endpoint.primary_key} if endpoint.primary_key else {}


def extract(endpoint: Endpoint, plan: Plan, context: RunContext) -> Iterator[Any]:
    """Send the endpoint's requests for ``plan`` and yield its rows (run on dlt's extracting thread)."""
    with context.active():
        settings, pool = context.settings, context.pool

        def send(request: PreparedRequest, probe: bool) -> Reply:
            if request.node is not None and endpoint.method == "GET":
                return _metadata(context, endpoint, request.node, missing_is_transient=not probe)
            body = request.sent_body if endpoint.method == "POST" else None
            return pool.send(endpoint.method, endpoint.path, body, stream=endpoint.stream, node=request.node,
                             missing_is_transient=not probe)

        def rows(request: PreparedRequest, reply: Reply) -> Any:
            built = endpoint.rows(request, reply)
            if endpoint.inputs is None:  # per-node metadata: its own rows describe the node
                return built
            info_hash = context.node_configuration(reply.node_url)
            node: Dict[str, Any] = {"info_hash": info_hash}
            if request.cell_id is not None:  # an answer row: its cell, who answered, under which configuration
                node["request_id"] = row_id(request.cell_id, reply.node_url, info_hash)
            if endpoint.estimates_usage:
                node["usage_estimated"] = usage_estimated_by(endpoint.name, context.node_info(reply.node_url))
            return _with_columns(built, node)

        def execute(request: PreparedRequest, probe: bool, prior: Prior) -> Outcome:
            refusal = endpoint.refuse(request, context) if endpoint.refuse is not None else None
            if refusal is not None:  # not sent: a refused cell
                return Outcome(request, None, refusal, prior[0], latency_s=prior[1], refused=True)
            outcome = outcome_of(request, lambda: send(request, probe), lambda reply: rows(request, reply), prior)
            if outcome.error is None and endpoint.unanswered is not None:
                outcome.error = endpoint.unanswered(request, outcome.rows)  # e.g. an empty answer: kept, failing
            if outcome.error is not None and endpoint.split is not None and blames_an_input(outcome.error):
                smaller = endpoint.split(request)
                if smaller:  # one input broke the batch: send it in halves until that input is alone
                    logger.info("%s: a batch failed because of one of its inputs (%s); splitting it in %d",
                                endpoint.name, outcome.error.detail if isinstance(outcome.error, GaiaRequestError)
                                else outcome.error, len(smaller))
                    parts = tuple(execute(part, False, (outcome.attempts, outcome.latency_s)) for part in smaller)
                    return Outcome(request, attempts=outcome.attempts, parts=parts, latency_s=outcome.latency_s)
            return outcome

        requests = endpoint.requests(endpoint, plan, context)
        items = run_requests(
            endpoint.name, requests, execute, pool.max_concurrency, context.ledger, settings.retry_rounds,
            settings.round_cooldown, context.endpoint_verdicts(endpoint.name), required=endpoint.name in plan.required,
        )
        if endpoint.vectors:
            items = _as_destination_takes(context, coalesce_tables(_with_vector_column(context, items)))
        items = escape_nul(context.destination, endpoint.name, items)
        yield from _with_table_hints(endpoint, plan, context, items)


def _with_columns(rows: Any, values: Dict[str, Any]) -> Any:
    """Rows (dicts or an Arrow table) with ``values`` set on every row: what the answering node tells about them."""
    if isinstance(rows, pa.Table):
        for name, value in values.items():
            column = pa.array([value] * rows.num_rows, pa.string() if isinstance(value, str) or value is None
                              else pa.bool_())
            index = rows.schema.get_field_index(name)
            rows = rows.set_column(index, name, column) if index >= 0 else rows.append_column(name, column)
        return rows
    for row in rows:
        row.update(values)
    return rows


def _metadata(context: RunContext, endpoint: Endpoint, node: str, missing_is_transient: bool) -> Reply:
    """One node's metadata GET (once per run), from the endpoint's fallback path where the server lacks the route."""
    try:
        return context.metadata(node, endpoint.path, missing_is_transient=missing_is_transient)
    except GaiaRequestError as exc:
        if endpoint.fallback_path is None or not looks_like_missing_route(exc):
            raise
        try:
            return context.metadata(node, endpoint.fallback_path, missing_is_transient=False)
        except GaiaRequestError as fallback_exc:
            if isinstance(fallback_exc, GaiaRunStopped) or not looks_like_missing_route(fallback_exc):
                raise
            raise exc from None


def _with_vector_column(context: RunContext, items: Iterable[Any]) -> Iterator[Any]:
    """Prepare the native vector column once, here on the extracting thread, when the first vectors arrive.

    The first vectors are normally the first request's: the runner sends it alone and pulls the rest only once its
    rows have been taken, so the DDL runs before any other request is sent (if that request has to wait for a final
    round, the first answer that comes back takes its place). Never on a request thread.
    """
    prepared = False
    for item in items:
        if not prepared and isinstance(item, pa.Table):
            dim = item.schema.field("embedding").type.list_size
            ensure_vector_column(context.pipeline, context.destination, dim)
            prepared = True
        yield item


def _as_destination_takes(context: RunContext, items: Iterable[Any]) -> Iterator[Any]:
    """Arrow tables where the destination takes Arrow vectors, plain rows elsewhere."""
    arrow = context.destination.arrow_vectors
    for item in items:
        yield table_rows(item) if isinstance(item, pa.Table) and not arrow else item


def _with_table_hints(endpoint: Endpoint, plan: Plan, context: RunContext, items: Iterable[Any]) -> Iterator[Any]:
    """Carry the run's table hints on plain items (dlt applies them to the item's table, for the whole load).

    DuckDB loads parquet with a fraction of the memory insert_values statements take, for the resources fed by
    inputs (thousands of rows); a node's models and info are a few rows, which insert_values loads without importing
    pandas (pyarrow's parquet writer does, ~0.2 s of a snapshot run). A table whose rows are appended when new merges
    on its key instead (:func:`merge_disposition`) when the destination cannot be asked which rows it holds, and from
    the first item after the run said it sends a cell again whose row is loaded
    (:meth:`~gaia_source.context.RunContext.replaces_rows`): dlt then merges the whole table of the load package,
    rows yielded before included.
    """
    capabilities = context.destination
    hints: Dict[str, Any] = {}
    if capabilities.load_file_format and endpoint.inputs is not None:
        hints["file_format"] = capabilities.load_file_format
    merging = not endpoint.append_when_new or plan.refresh
    if not merging and capabilities.name and capabilities.lookup is None:
        logger.info("%s: the %s destination cannot be asked which rows it holds; merging on %s instead of appending",
                    endpoint.name, capabilities.name, endpoint.primary_key)
        hints["write_disposition"], merging = merge_disposition(endpoint, plan), True
    tagged = not hints
    for item in items:
        if isinstance(item, DataItemWithMeta):  # a table variant's rows (failed_requests): their own hints
            yield item
            continue
        if not merging and context.replacing(endpoint.name):
            logger.info("%s: this run sends again cells whose rows are loaded; merging on %s instead of appending",
                        endpoint.name, endpoint.primary_key)
            hints["write_disposition"], merging, tagged = merge_disposition(endpoint, plan), True, False
        if not tagged:
            item = dlt.mark.with_hints(item, dlt.mark.make_hints(**hints))
            tagged = True
        yield item


def table_rows(table: pa.Table) -> List[Dict[str, Any]]:
    """An embeddings Arrow table as plain rows (vectors as lists, metadata as objects)."""
    rows: List[Dict[str, Any]] = table.to_pylist()
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


def source_resources(plan: Plan, context: RunContext, names: Optional[Iterable[str]] = None) -> List[DltResource]:
    """One resource per catalogue endpoint (or per name in ``names``)."""
    wanted = set(names) if names is not None else None
    return [make_resource(e, plan, context) for e in ENDPOINTS if wanted is None or e.name in wanted]
