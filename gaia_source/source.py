"""The ``gaia_source`` dlt source: reads and validates the inputs, then wires the endpoint catalogue into resources.

Import it as ``from gaia_source import gaia_source``; the package imports this module (and dlt) on first use.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence, Union

import dlt
from dlt.sources import DltResource

from .chunking import check_chunking
from .config import resolve_node_settings
from .context import RunContext
from .endpoints import ENDPOINTS, Plan, expected_cells
from .errors import GaiaConfigError
from .inputs import iter_prompts, iter_queries, iter_texts, model_list, validate
from .ledger import Ledger
from .payloads import normalize_chat_params, parse_shard
from .resources import declare_tables, source_resources
from .settings import DEFAULT_EMBEDDING_BATCH_SIZE, DEFAULT_RESOURCE_NAMES, RESOURCE_NAMES, TABLE_FORMATS

logger = logging.getLogger("gaia_source")

INPUT_SETTINGS: Dict[str, str] = {"prompts": "prompts / prompts_file", "texts": "texts / texts_file",
                                  "queries": "queries / queries_file"}
"""Which settings feed each input kind (for messages about resources that have none)."""


@dlt.source(name="gaia_source", section="gaia_source")  # the config section and state key it always had
def gaia_source(
    prompts: Optional[List[Any]] = None,
    prompts_file: Optional[str] = None,
    system_prompt: Optional[str] = None,
    texts: Optional[List[Any]] = None,
    texts_file: Optional[str] = None,
    queries: Optional[List[Any]] = None,
    queries_file: Optional[str] = None,
    chat_model: Optional[Union[str, Sequence[str]]] = None,
    embedding_model: Optional[str] = None,
    temperature: Optional[float] = None,
    top_p: Optional[float] = None,
    max_tokens: Optional[int] = None,
    stop: Optional[Any] = None,
    presence_penalty: Optional[float] = None,
    frequency_penalty: Optional[float] = None,
    seed: Optional[int] = None,
    chat_params: Optional[Dict[str, Any]] = None,
    embedding_batch_size: int = DEFAULT_EMBEDDING_BATCH_SIZE,
    chunk_size: Optional[int] = None,
    chunk_overlap: int = 0,
    refresh: bool = False,
    shard: Optional[str] = None,
    resources: Optional[Sequence[str]] = None,
    compare_nodes: bool = False,
    samples: int = 1,
    drift: bool = True,
    required_resources: Optional[bool] = None,
    table_format: Optional[str] = None,
    ledger: Optional[Any] = None,
    **node_settings: Any,
) -> Sequence[DltResource]:
    """Load what a Gaia node produces: models, node info, chat completions (plain and streamed), embeddings, retrieval.

    Every argument is also a dlt config key under ``[sources.gaia_source]`` (env ``SOURCES__GAIA_SOURCE__<KEY>``).
    Inputs are read and validated here, before any request is sent. A resource whose inputs are empty is not run
    (it is deselected, and a log line says so): a run sends exactly what it was given.

    Args:
        prompts: Prompt strings, message lists, or ``{"messages"|"prompt"|"body", "custom_id"?}`` objects.
        prompts_file: A .jsonl (OpenAI Batch input, ``{"messages"}`` or ``{"prompt"}`` lines), .csv (``prompt``
            column) or plain-text (one prompt per line) file.
        system_prompt: A system message put first in every prompt that has none.
        texts: Texts to embed (strings or ``{"text", "id"?, "document_id"?, "metadata"?}``). Texts with a
            ``document_id`` are documents: their rows carry ``document_id``, ``chunk_index`` and their character span,
            and when a document changes its old chunks are deleted.
        texts_file: A plain-text, .jsonl or .csv (``text`` column) file of texts to embed.
        queries: Retrieval queries.
        queries_file: A plain-text, .jsonl (``{"query"}``/``{"messages"}``) or .csv (``query`` column) file.
        chat_model: Model for chat requests, or a list of models (``"a,b"`` or ``["a", "b"]``): every prompt goes to
            each. Discovered from /v1/info or /v1/models when absent.
        embedding_model: Model for embeddings; discovered when absent.
        temperature: Chat sampling temperature.
        top_p: Chat nucleus sampling.
        max_tokens: Chat output limit, sent as ``max_tokens`` and ``max_completion_tokens`` so that every server
            generation honours it (``max_output_tokens`` on ``responses``).
        stop: Stop sequence(s); a single string is sent as a one-element list (nodes require a list).
        presence_penalty: Chat presence penalty.
        frequency_penalty: Chat frequency penalty.
        seed: Chat sampling seed.
        chat_params: Any other chat request fields, passed through as they are.
        embedding_batch_size: Texts per embeddings request.
        chunk_size: Split each text into chunks of at most this many **characters** (with semantic-text-splitter,
            at paragraph, sentence or word boundaries), so a document longer than the model's context still loads.
        chunk_overlap: Characters each chunk shares with the previous one (below ``chunk_size``).
        refresh: Send every prompt and embed every text again, even those already loaded.
        shard: ``"i/n"``: load only partition ``i`` of ``n`` of the inputs (by request id), so ``n`` workers can share
            one job without overlap or gaps; ``models`` and ``info`` are loaded by shard 0.
        resources: The resources to run (default: every one but ``responses``); those without inputs are not run.
        compare_nodes: Send every prompt to every node of ``base_url`` (rows keyed per node) instead of spreading
            prompts across them.
        samples: Send every prompt this many times; rows carry ``sample_index`` and a re-run fills missing samples.
            With ``seed`` set, sample ``i`` is sent with ``seed + i``.
        drift: When the node that answered a prompt (or query) changes its configuration (a new ``info_hash``:
            model, version, template…), send it again and keep both answers (joinable on ``prompt_id``). False:
            answered prompts are never sent again.
        required_resources: Whether a resource whose endpoint the node lacks fails the run (its inputs become
            ``failed_requests`` rows) instead of being skipped with a warning. Default: when ``resources`` names them.
        table_format: ``delta`` or ``iceberg``: every table is written in that open table format (dlt's filesystem
            destination, with the ``delta`` or ``iceberg`` extra); rows merge there by ``upsert`` on their key.
        ledger: A :class:`~gaia_source.ledger.Ledger` to record how every cell of the run ended (completed, failed,
            refused, skipped); keep it to read the run's outcome, and pass it to
            :func:`~gaia_source.destination.apply_chunk_sync` after the load. Default: one per run.
        node_settings: How to reach the node(s): any field of :class:`~gaia_source.config.NodeSettings` —
            ``base_url`` or ``node_id`` (one or a list), ``api_key`` (a secret: ``.dlt/secrets.toml``), ``timeout``,
            ``max_concurrency``, ``max_attempts``, ``retry_backoff``, ``retry_max_wait``, ``max_response_mb``,
            ``breaker_failures``, ``breaker_cooldown``, ``retry_rounds``, ``round_cooldown``. What is not given here
            comes from ``[sources.gaia_source]`` config.

    Returns:
        The seven resources: models, info, chat_completions, chat_completions_stream, embeddings, retrieve,
        responses; those not wanted or without inputs are deselected.
    """
    wanted = list(DEFAULT_RESOURCE_NAMES if resources is None else resources)
    unknown = [name for name in wanted if name not in RESOURCE_NAMES]
    if unknown:
        raise GaiaConfigError(f"resources: unknown resource(s) {unknown}; choose from {', '.join(RESOURCE_NAMES)}")
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise GaiaConfigError(f"samples must be an integer >= 1, got {samples!r}")
    if embedding_batch_size < 1:
        raise GaiaConfigError(f"embedding_batch_size must be >= 1, got {embedding_batch_size}")
    check_chunking(chunk_size, chunk_overlap)
    if table_format not in (None, *TABLE_FORMATS):
        raise GaiaConfigError(f"table_format must be one of {', '.join(TABLE_FORMATS)}, got {table_format!r}")
    settings = resolve_node_settings(**node_settings)
    params = normalize_chat_params({
        **(chat_params or {}),
        "temperature": temperature,
        "top_p": top_p,
        "max_tokens": max_tokens,
        "stop": stop,
        "presence_penalty": presence_penalty,
        "frequency_penalty": frequency_penalty,
        "seed": seed,
    })
    plan = Plan(
        prompts=lambda: iter_prompts(prompts, prompts_file, system_prompt),
        texts=lambda: iter_texts(texts, texts_file),
        queries=lambda: iter_queries(queries, queries_file),
        chat_models=model_list(chat_model),
        embedding_model=embedding_model,
        chat_params=params,
        embedding_batch_size=embedding_batch_size,
        chunk_size=chunk_size,
        chunk_overlap=chunk_overlap,
        refresh=refresh,
        shard=parse_shard(shard),
        compare_nodes=bool(compare_nodes),
        samples=samples,
        drift=bool(drift),
        required=frozenset(wanted) if (resources is not None if required_resources is None else required_resources)
        else frozenset(),
        table_format=table_format,
    )
    declare_tables(dlt.current.source_schema())
    # Read every input once now: a malformed line stops the run before the first request.
    counts = {kind: validate(getattr(plan, kind)()) for kind in INPUT_SETTINGS}
    made = source_resources(plan, RunContext(settings, ledger))
    idle = [e.name for e in ENDPOINTS if e.inputs is not None and counts[e.inputs] == 0]
    for resource in made:
        resource.selected = resource.name in wanted and resource.name not in idle
    if isinstance(ledger, Ledger):  # what a progress view shows as each resource's total
        nodes = len(settings.urls())
        for endpoint in ENDPOINTS:
            if endpoint.name in wanted and endpoint.name not in idle:
                inputs = counts[endpoint.inputs] if endpoint.inputs else 0
                ledger.expect(endpoint.name, expected_cells(endpoint, plan, inputs, nodes))
    if idle:
        logger.debug("not run, no inputs: %s", ", ".join(
            f"{e.name} ({INPUT_SETTINGS[e.inputs]})" for e in ENDPOINTS if e.name in idle and e.inputs))
    return made
