"""The endpoint catalogue: one declaration per Gaia endpoint, which :mod:`gaia_source.resources` turns into a resource.

An :class:`Endpoint` says what to request (method, path, a request builder over the run's inputs), how to read the
reply (a row builder from :mod:`gaia_source.rows`) and what the table looks like (columns, key, write disposition).
Nothing here sends a request. Adding an endpoint (say ``/v1/rerank``) is one entry in :data:`ENDPOINTS`, one row
builder, and one route in the emulator.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, FrozenSet, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from dlt.common.schema.typing import TTableSchemaColumns

from .chunking import chunk_texts
from .client import Reply
from .context import RunContext
from .destination import skip_loaded, unique
from .errors import GaiaError, GaiaInputRefused
from .inputs import ChatInput, QueryInput, TextInput
from .ledger import is_done
from .payloads import (
    PreparedRequest,
    Shard,
    amd_gaia_refusal,
    chat_request,
    embedding_id,
    embeddings_request,
    for_cell,
    in_shard,
    merge_chat_params,
    responses_request,
    retrieve_request,
)
from .rows import (
    CHAT_NONSTREAM_COLUMNS,
    CHAT_STREAM_COLUMNS,
    EMBEDDING_COLUMNS,
    INFO_COLUMNS,
    MODEL_COLUMNS,
    RESPONSE_COLUMNS,
    RETRIEVE_COLUMNS,
    chat_completion_row,
    chat_stream_row,
    embedding_table,
    empty_answer,
    info_row,
    model_rows,
    response_row,
    retrieve_row,
)
from .runner import mark_failing
from .settings import (
    CHAT_PATH,
    DEFAULT_EMBEDDING_BATCH_SIZE,
    DEFAULT_RESOURCE_NAMES,
    EMBEDDINGS_PATH,
    FAILED_REQUESTS_TABLE,
    HEALTH_PATH,
    INFO_PATH,
    LONG_TEXT_CHARS,
    LONG_TEXTS_HELD,
    MODELS_PATH,
    RESOURCE_NAMES,
    RESPONSES_PATH,
    RETRIEVE_PATH,
)
from .streaming import STATUS_COMPLETED

logger = logging.getLogger("gaia_source")


def _nothing() -> Iterator[Any]:
    return iter(())


@dataclass(frozen=True)
class Plan:
    """What one source or transformer run was asked to do (how to reach the node is :class:`NodeSettings`).

    The input callables return a fresh iterator on each call: inputs are read lazily, and once more to validate.
    """

    prompts: Callable[[], Iterator[ChatInput]] = _nothing
    texts: Callable[[], Iterator[TextInput]] = _nothing
    queries: Callable[[], Iterator[QueryInput]] = _nothing
    chat_models: Tuple[str, ...] = ()
    """Models every prompt is sent to (empty: the node's, discovered)."""
    embedding_model: Optional[str] = None
    chat_params: Dict[str, Any] = field(default_factory=dict)
    embedding_batch_size: int = DEFAULT_EMBEDDING_BATCH_SIZE
    chunk_size: Optional[int] = None
    """Split texts into chunks of at most this many characters (see :mod:`gaia_source.chunking`)."""
    chunk_overlap: int = 0
    refresh: bool = False
    shard: Optional[Shard] = None
    compare_nodes: bool = False
    """Send every prompt to every node (pinned, one row per node) instead of spreading prompts across them."""
    samples: int = 1
    """Send every prompt this many times (rows carry ``sample_index``)."""
    drift: bool = True
    """Send a prompt again when the node that answered it now has another configuration (see
    :func:`~gaia_source.ledger.is_done`)."""
    required: FrozenSet[str] = frozenset()
    """Resources the user named: a missing endpoint fails their cells instead of skipping them."""
    table_format: Optional[str] = None
    """The open table format of every table (``delta``, ``iceberg``: dlt's filesystem destination), or None."""


RequestBuilder = Callable[["Endpoint", Plan, RunContext], Iterator[PreparedRequest]]
RowBuilder = Callable[[PreparedRequest, Reply], Any]


@dataclass(frozen=True)
class Endpoint:
    """One endpoint as a dlt resource.

    Attributes:
        name: Resource and table name.
        method: ``GET`` or ``POST``.
        path: Path relative to ``/v1``.
        requests: Builds the run's requests from its plan (and skips what is already loaded).
        rows: Turns one reply into rows: a list of dicts, or an Arrow table.
        columns: The table's columns.
        primary_key: The table's key (empty: none, e.g. a history of snapshots).
        write_disposition: How rows land.
        inputs: The plan input that feeds it (``prompts``/``texts``/``queries``); None: one request per node.
        stream: Sent as a stream and folded (streamed chat).
        vectors: Rows carry a vector column (Arrow where the destination takes it, a native column prepared first).
        append_when_new: Rows are known new (looked up first) and appended; merged on their key on ``refresh``,
            when the destination cannot be asked what it holds, or when the run sends a cell again whose row is
            loaded (an interrupted or empty answer: the new one replaces it). See
            :func:`~gaia_source.resources.write_disposition`.
        unique_in_run: A merge may skip dlt's dedup pass over the staged rows: a run yields each key once.
        by_default: Part of a run that does not name its resources (False: only when asked for by name).
        fallback_path: Per-node metadata asked here when ``path`` is not a route of the server (AMD GAIA's
            ``/health`` for ``/v1/info``).
        refuse: Says why a request must not be sent to this run's nodes (it becomes a ``failed_requests`` row with 0
            attempts), or None.
        estimates_usage: Rows get ``usage_estimated`` from the answering node's server type.
        split: Splits a failed batch request in halves (see the attribute).
        unanswered: Says why rows that loaded are no answer (an empty chat answer), or None: the cell then fails,
            and keeps its row.
    """

    name: str
    method: str
    path: str
    requests: RequestBuilder
    rows: RowBuilder
    columns: TTableSchemaColumns
    primary_key: Union[str, Tuple[str, ...]]
    write_disposition: str
    inputs: Optional[str] = None
    stream: bool = False
    vectors: bool = False
    append_when_new: bool = False
    unique_in_run: bool = False
    by_default: bool = True
    fallback_path: Optional[str] = None
    refuse: Optional[Callable[[PreparedRequest, RunContext], Optional[GaiaError]]] = None
    estimates_usage: bool = False
    split: Optional[Callable[[PreparedRequest], Tuple[PreparedRequest, ...]]] = None
    """Splits a batch request in two when it failed because of one of its inputs (see
    :func:`~gaia_source.errors.blames_an_input`), so the bad input is isolated and the others load; None: no batch."""
    unanswered: Optional[Callable[[PreparedRequest, Any], Optional[GaiaError]]] = None


def _one(build: Callable[[PreparedRequest, Reply], Dict[str, Any]]) -> RowBuilder:
    def rows(request: PreparedRequest, reply: Reply) -> List[Dict[str, Any]]:
        return [build(request, reply)]

    rows.__doc__ = build.__doc__
    return rows


# --- request builders -------------------------------------------------------------------------------------------


def _first_shard(plan: Plan, resource: str) -> bool:
    if plan.shard is not None and plan.shard[0] != 0:
        logger.info("%s: loaded by shard 0 only (this is shard %d/%d)", resource, *plan.shard)
        return False
    return True


def per_node_requests(endpoint: Endpoint, plan: Plan, context: RunContext) -> Iterator[PreparedRequest]:
    """One GET per node of the pool (shard 0 only); the body names the node, so each has its own request id."""
    if _first_shard(plan, endpoint.name):
        for node in context.pool.nodes:
            yield PreparedRequest(endpoint.path, {"node_url": node.base_url}, node=node.base_url)


def _request_id(request: PreparedRequest) -> str:
    return request.request_id


PromptRequest = Callable[[ChatInput, Optional[str], Dict[str, Any]], PreparedRequest]
"""Builds one request from a prompt, the model to ask for and the merged parameters."""


def _labels(item: ChatInput) -> Dict[str, Any]:
    """What a prompt's rows carry besides the request: its reference answer and labels."""
    return {"expected": item.expected, "metadata": item.metadata}


def _chat(stream: bool) -> PromptRequest:
    def build(item: ChatInput, model: Optional[str], params: Dict[str, Any]) -> PreparedRequest:
        request = chat_request(item.messages, model, params, stream, item.custom_id, item.source)
        return replace(request, extra=_labels(item))

    return build


def _response(item: ChatInput, model: Optional[str], params: Dict[str, Any]) -> PreparedRequest:
    request = responses_request(item.messages, model, params, item.custom_id, item.source)
    return replace(request, extra=_labels(item))


def _targets(plan: Plan, context: RunContext) -> List[Optional[str]]:
    """The nodes requests are pinned to: each node of the pool when comparing nodes, else none (the pool's best)."""
    return [node.base_url for node in context.pool.nodes] if plan.compare_nodes else [None]


def skip_done(
    endpoint: Endpoint, plan: Plan, context: RunContext, requests: Iterator[PreparedRequest], what: str
) -> Iterator[PreparedRequest]:
    """The cells not done yet (see :func:`~gaia_source.ledger.is_done`); all of them with ``refresh``. Each cell is
    sent once per run, however often its input appears (two identical lines are one cell)."""
    cells = unique(requests, _request_id, context.seen(endpoint.name))
    if plan.refresh:
        yield from cells
        return
    lookup = context.loaded_cells(endpoint.name)
    current = context.node_configuration

    def done(request: PreparedRequest, loaded: List[Tuple[Any, ...]]) -> bool:
        completed = [(node_url, info_hash) for node_url, info_hash, status in loaded if status == STATUS_COMPLETED]
        if is_done(completed, request.node, plan.drift, current):
            return True
        context.replaces_rows(endpoint.name)  # sent again with a row loaded: its new answer may take that row's key
        return False

    failures = context.loaded_ids(FAILED_REQUESTS_TABLE, "request_id")
    yield from skip_loaded(cells, lambda r: r.cell_id or r.request_id, lookup, what, done=done,
                           ledger=(context.ledger, endpoint.name),
                           failures=(failures, lambda key: mark_failing(endpoint.name, key)))


def _prompt_requests(build: PromptRequest) -> RequestBuilder:
    def requests(endpoint: Endpoint, plan: Plan, context: RunContext) -> Iterator[PreparedRequest]:
        """One request per cell: prompt × target node (compare runs) × model × sample; cells already answered (under
        the answering node's current configuration, with ``drift``) are skipped unless ``refresh``."""
        items = plan.prompts()
        first = next(items, None)
        if first is None:
            return
        discovered = None if plan.chat_models else context.discover_models()[0]
        targets = _targets(plan, context)

        def expand(item: ChatInput) -> Iterator[PreparedRequest]:
            params = merge_chat_params(plan.chat_params, item.params)
            named = (item.model,) if item.model else plan.chat_models
            for model in named or (None,):
                request = build(item, model or discovered, params)
                for target in targets:
                    for sample in range(plan.samples):
                        seed = params.get("seed")
                        sent_seed = int(seed) + sample if seed is not None and plan.samples > 1 else None
                        yield for_cell(request, endpoint.name, model, target, sample, sent_seed)

        built = (request for item in itertools.chain([first], items) for request in expand(item))
        sharded = (r for r in built if in_shard(r.cell_id or r.request_id, plan.shard))
        yield from skip_done(endpoint, plan, context, sharded, "prompts")

    return requests


def _first(pair: Tuple[str, TextInput]) -> str:
    return pair[0]


def embedding_requests(endpoint: Endpoint, plan: Plan, context: RunContext) -> Iterator[PreparedRequest]:
    """Embeddings requests of ``embedding_batch_size`` texts; each (model, text) is sent once, and not at all when
    it is already in the table (looked up by content hash) unless ``refresh``."""
    items = plan.texts()
    first = next(items, None)
    if first is None:
        return
    model = plan.embedding_model or context.discover_models()[1]
    chunks = chunk_texts(itertools.chain([first], items), plan.chunk_size, plan.chunk_overlap,
                         context.chunk_positions(endpoint.name, model))
    keyed: Iterator[Tuple[str, TextInput]] = ((embedding_id(model, t.text, *t.position), t) for t in chunks)
    if plan.shard is None:  # a shard sees only some of a document's chunks: it cannot tell which are orphans
        keyed = context.track_documents(endpoint.name, model, keyed)  # changed documents: old chunks go after load
    # one row per (model, text) in a run, across the pages a transformer gets too
    keyed = unique((kt for kt in keyed if in_shard(kt[0], plan.shard)), _first, context.seen(endpoint.name))
    if not plan.refresh:
        keyed = skip_loaded(keyed, _first, context.loaded_ids(endpoint.name, "embedding_id"), "texts",
                            ledger=(context.ledger, endpoint.name))
    for batch in _batches(keyed, plan.embedding_batch_size):
        yield embeddings_batch([text for _, text in batch], model, plan.embedding_model, [key for key, _ in batch])


def _batches(keyed: Iterable[Tuple[str, TextInput]], size: int) -> Iterator[List[Tuple[str, TextInput]]]:
    """Batches of ``size`` (embedding id, text) pairs in input order, but a text over
    :data:`~gaia_source.settings.LONG_TEXT_CHARS` alone, after the others (up to
    :data:`~gaia_source.settings.LONG_TEXTS_HELD` of them wait; more go as they come): a server that times out on it,
    or holds its one model while it reads it, fails it alone, and no short text waits behind it."""
    batch: List[Tuple[str, TextInput]] = []
    held: List[Tuple[str, TextInput]] = []
    for pair in keyed:
        if len(pair[1].text) > LONG_TEXT_CHARS:
            if len(held) < LONG_TEXTS_HELD:
                held.append(pair)
            else:
                yield [pair]
            continue
        batch.append(pair)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
    for pair in held:
        yield [pair]


def embeddings_batch(
    batch: Sequence[TextInput], model: Optional[str], named: Optional[str], ids: Optional[Sequence[str]] = None,
) -> PreparedRequest:
    """One embeddings request for ``batch`` (``named``: the model the user named, which, not a discovered one, is
    part of each text's cell); a single text carries its id and source into a ``failed_requests`` row.

    ``ids``: each text's ``embedding_id`` under ``model``, when the caller has them already (kept with the model in
    ``extra["ids"]``: the rows and the ledger use them instead of hashing every text again)."""
    one = batch[0] if len(batch) == 1 else None
    extra: Dict[str, Any] = {"inputs": list(batch), "named_model": named}
    if ids is not None:
        extra["ids"] = (model, list(ids))
    return embeddings_request([t.text for t in batch], model, extra=extra,
                              custom_id=one.id if one else None, source=one.source if one else None)


def split_embeddings(request: PreparedRequest) -> Tuple[PreparedRequest, ...]:
    """The two halves of an embeddings batch (none for a single text): a batch that failed because of one text is
    split until that text is alone, and every other text loads."""
    inputs: List[TextInput] = request.extra["inputs"]
    if len(inputs) < 2:
        return ()
    middle = len(inputs) // 2
    model, named = request.body.get("model"), request.extra.get("named_model")
    ids_model, ids = request.extra.get("ids") or (None, None)
    if ids is None or ids_model != model:
        return embeddings_batch(inputs[:middle], model, named), embeddings_batch(inputs[middle:], model, named)
    return (embeddings_batch(inputs[:middle], model, named, ids[:middle]),
            embeddings_batch(inputs[middle:], model, named, ids[middle:]))


def retrieve_requests(endpoint: Endpoint, plan: Plan, context: RunContext) -> Iterator[PreparedRequest]:
    """One retrieval request per query (per query and node when comparing nodes, so every node answers the same
    queries); its expected sources ride along, for ``hit_rank`` and ``hits``."""
    targets = _targets(plan, context) if plan.compare_nodes else [None]

    def expand() -> Iterator[PreparedRequest]:
        for query in plan.queries():
            request = retrieve_request(query.query, query.custom_id, query.source)
            if query.expected_sources is not None:
                request = replace(request, extra={**request.extra, "expected_sources": list(query.expected_sources)})
            for target in targets:
                cell = for_cell(request, endpoint.name, node=target)
                if in_shard(cell.cell_id or cell.request_id, plan.shard):
                    yield cell

    yield from skip_done(endpoint, plan, context, expand(), "queries")


def refuse_for_amd_gaia(request: PreparedRequest, context: RunContext) -> Optional[GaiaError]:
    """A prompt an AMD GAIA server would answer with a 400 is not sent to one (see
    :func:`~gaia_source.payloads.amd_gaia_refusal`); the node is asked what it is only for such a prompt."""
    problem = amd_gaia_refusal(request.body.get("messages") or [])
    if problem is None or not context.serves_amd_gaia():
        return None
    return GaiaInputRefused(f"{request.source or 'a prompt'}: not sent: {problem}")


def expected_cells(endpoint: Endpoint, plan: Plan, inputs: int, nodes: int) -> Optional[int]:
    """How many cells a run of ``endpoint`` has, known before the first request: per node for a node's metadata,
    else inputs × models × target nodes × samples (a text's chunks are known only once it is chunked, so a chunked
    corpus has more). None for a shard, which takes a part of them that only hashing every cell would tell."""
    if endpoint.inputs is None:
        return nodes if plan.shard is None or plan.shard[0] == 0 else 0
    if plan.shard is not None:
        return None
    targets = nodes if plan.compare_nodes else 1
    if endpoint.inputs == "prompts":
        return inputs * max(1, len(plan.chat_models)) * targets * plan.samples
    return inputs * targets if endpoint.inputs == "queries" else inputs


# --- the catalogue ----------------------------------------------------------------------------------------------

ENDPOINTS: Tuple[Endpoint, ...] = (
    Endpoint("models", "GET", MODELS_PATH, per_node_requests, model_rows, MODEL_COLUMNS,
             ("node_url", "id"), "merge"),
    Endpoint("info", "GET", INFO_PATH, per_node_requests, _one(info_row), INFO_COLUMNS, (), "append",
             fallback_path=HEALTH_PATH),
    Endpoint("chat_completions", "POST", CHAT_PATH, _prompt_requests(_chat(stream=False)), _one(chat_completion_row),
             CHAT_NONSTREAM_COLUMNS, "request_id", "append", inputs="prompts", append_when_new=True,
             refuse=refuse_for_amd_gaia, unanswered=empty_answer),
    Endpoint("chat_completions_stream", "POST", CHAT_PATH, _prompt_requests(_chat(stream=True)),
             _one(chat_stream_row), CHAT_STREAM_COLUMNS, "request_id", "append", inputs="prompts", stream=True,
             append_when_new=True, refuse=refuse_for_amd_gaia, unanswered=empty_answer),
    Endpoint("embeddings", "POST", EMBEDDINGS_PATH, embedding_requests, embedding_table, EMBEDDING_COLUMNS,
             "embedding_id", "append", inputs="texts", vectors=True, append_when_new=True, unique_in_run=True,
             split=split_embeddings),
    Endpoint("retrieve", "POST", RETRIEVE_PATH, retrieve_requests, _one(retrieve_row), RETRIEVE_COLUMNS,
             "request_id", "merge", inputs="queries"),
    Endpoint("responses", "POST", RESPONSES_PATH, _prompt_requests(_response), _one(response_row), RESPONSE_COLUMNS,
             "request_id", "append", inputs="prompts", append_when_new=True, by_default=False, estimates_usage=True,
             unanswered=empty_answer),
)
"""Every endpoint the source loads, in the order of its resources."""

ENDPOINT_BY_NAME: Dict[str, Endpoint] = {endpoint.name: endpoint for endpoint in ENDPOINTS}
_DEFAULTS = tuple(e.name for e in ENDPOINTS if e.by_default)
if tuple(ENDPOINT_BY_NAME) != RESOURCE_NAMES or _DEFAULTS != DEFAULT_RESOURCE_NAMES:  # read by the CLI from settings
    raise RuntimeError(f"settings.RESOURCE_NAMES {RESOURCE_NAMES} and DEFAULT_RESOURCE_NAMES {DEFAULT_RESOURCE_NAMES} "
                       f"must list the endpoints {tuple(ENDPOINT_BY_NAME)} and those run by default {_DEFAULTS}")
