"""A dlt source for Gaia LLM nodes: GaiaNet nodes (<= 0.4 rag-api-server and >= 0.5 gaia-nexus) and AMD GAIA servers.

Six resources, one table each (plus ``retrieve__points`` and ``failed_requests``):

==========================  =======================  ===================================================
resource                    request                  table
==========================  =======================  ===================================================
``models``                  GET /v1/models           one row per model, merged by (node_url, id)
``info``                    GET /v1/info             one snapshot per run, appended (a history)
``chat_completions``        POST /v1/chat/completions  one row per prompt, merged by request id
``chat_completions_stream`` POST … ``stream: true``  one row per prompt, with time to first token
``embeddings``              POST /v1/embeddings      one row per text, the vector in one column
``retrieve``                POST /v1/retrieve        one row per query; points in ``retrieve__points``
==========================  =======================  ===================================================

Usage::

    import dlt
    from gaia_source import gaia_source

    pipeline = dlt.pipeline("gaia_pipeline", destination="duckdb", dataset_name="gaia_data")
    pipeline.run(gaia_source(base_url="http://localhost:8080/v1", prompts=["What is the capital of France?"]))
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional, Sequence

import dlt
from dlt.common.typing import TSecretStrValue
from dlt.sources import DltResource

from .client import GaiaClient, resolve_base_url
from .errors import (
    EndpointNotAvailable,
    GaiaAuthError,
    GaiaConfigError,
    GaiaError,
    GaiaRequestError,
    GaiaResponseError,
)
from .inputs import ChatInput, QueryInput, TextInput, iter_prompts, iter_queries, iter_texts, validate
from .payloads import normalize_chat_params, parse_shard
from .pool import NodePool, resolve_base_urls
from .resources import chat_rows, embeddings_rows, info_rows, models_rows, retrieve_rows
from .rows import declare_tables
from .settings import (
    DEFAULT_EMBEDDING_BATCH_SIZE,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_RESPONSE_MB,
    DEFAULT_RETRY_BACKOFF,
    DEFAULT_TIMEOUT,
    MAX_RETRY_WAIT,
    RESOURCE_NAMES,
)

__all__ = [
    "gaia_source",
    "GaiaClient",
    "NodePool",
    "resolve_base_url",
    "GaiaError",
    "GaiaConfigError",
    "GaiaRequestError",
    "GaiaAuthError",
    "EndpointNotAvailable",
    "GaiaResponseError",
    "RESOURCE_NAMES",
]


@dlt.source(name="gaia_source")
def gaia_source(
    node_id: Optional[Any] = dlt.config.value,
    base_url: Optional[Any] = dlt.config.value,
    api_key: Optional[TSecretStrValue] = dlt.secrets.value,
    chat_model: Optional[str] = None,
    embedding_model: Optional[str] = None,
    prompts: Optional[List[Any]] = None,
    prompts_file: Optional[str] = None,
    system_prompt: Optional[str] = None,
    texts: Optional[List[Any]] = None,
    texts_file: Optional[str] = None,
    queries: Optional[List[Any]] = None,
    queries_file: Optional[str] = None,
    temperature: Optional[float] = None,
    top_p: Optional[float] = None,
    max_tokens: Optional[int] = None,
    stop: Optional[Any] = None,
    presence_penalty: Optional[float] = None,
    frequency_penalty: Optional[float] = None,
    seed: Optional[int] = None,
    chat_params: Optional[Dict[str, Any]] = None,
    embedding_batch_size: int = DEFAULT_EMBEDDING_BATCH_SIZE,
    timeout: float = DEFAULT_TIMEOUT,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    retry_backoff: float = DEFAULT_RETRY_BACKOFF,
    retry_max_wait: float = MAX_RETRY_WAIT,
    max_response_mb: float = DEFAULT_MAX_RESPONSE_MB,
    refresh: bool = False,
    shard: Optional[str] = None,
) -> Sequence[DltResource]:
    """Load what a Gaia node produces: models, node info, chat completions (plain and streamed), embeddings, retrieval.

    Every argument is also a dlt config key under ``[sources.gaia_source]`` (env ``SOURCES__GAIA_SOURCE__<KEY>``);
    ``api_key`` is a secret (``.dlt/secrets.toml``). Inputs are validated here, before any request is sent.

    Args:
        node_id: A hosted node's id: requests go to ``https://{node_id}.gaia.domains/v1``. A list spreads requests
            over several nodes.
        base_url: The node URL, with or without ``/v1`` (e.g. ``http://localhost:8080/v1``); overrides ``node_id``.
            A list (or comma-separated URLs) spreads requests over several nodes, least busy first.
        api_key: Bearer key. Optional: local nodes need none.
        chat_model: Model for chat requests; discovered from /v1/info or /v1/models when absent.
        embedding_model: Model for embeddings; discovered when absent.
        prompts: Prompt strings, message lists, or ``{"messages"|"prompt"|"body", "custom_id"?}`` objects.
        prompts_file: A .jsonl (OpenAI Batch input, ``{"messages"}`` or ``{"prompt"}`` lines), .csv (``prompt``
            column) or plain-text (one prompt per line) file.
        system_prompt: A system message put first in every prompt that has none.
        texts: Texts to embed (strings or ``{"text", "id"?, "metadata"?}``).
        texts_file: A plain-text, .jsonl or .csv (``text`` column) file of texts to embed.
        queries: Retrieval queries.
        queries_file: A plain-text, .jsonl (``{"query"}``/``{"messages"}``) or .csv (``query`` column) file.
        temperature: Chat sampling temperature.
        top_p: Chat nucleus sampling.
        max_tokens: Chat output limit.
        stop: Stop sequence(s); a single string is sent as a one-element list (nodes require a list).
        presence_penalty: Chat presence penalty.
        frequency_penalty: Chat frequency penalty.
        seed: Chat sampling seed.
        chat_params: Any other chat request fields, passed through as they are.
        embedding_batch_size: Texts per embeddings request.
        timeout: Seconds to wait for a response (a stream: between chunks).
        max_concurrency: Requests in flight to each node at once.
        max_attempts: Sends per request; 429, 5xx, timeouts, connection errors and cut streams are retried.
        retry_backoff: Seconds before the first retry (exponential with jitter after that).
        retry_max_wait: Cap in seconds on one wait between attempts, ``Retry-After`` included.
        max_response_mb: Response bodies larger than this are recorded as errors instead of read.
        refresh: Send every prompt and embed every text again, even those already loaded.
        shard: ``"i/n"``: load only partition ``i`` of ``n`` of the inputs (by request id), so ``n`` workers can share
            one job without overlap or gaps; ``models`` and ``info`` are loaded by shard 0.

    Returns:
        The six resources: models, info, chat_completions, chat_completions_stream, embeddings, retrieve.
    """
    if embedding_batch_size < 1:
        raise GaiaConfigError(f"embedding_batch_size must be >= 1, got {embedding_batch_size}")
    partition = parse_shard(shard)
    client = NodePool.connect(
        resolve_base_urls(node_id, base_url), api_key, timeout=timeout, max_concurrency=max_concurrency,
        max_attempts=max_attempts, retry_backoff=retry_backoff, retry_max_wait=retry_max_wait,
        max_response_mb=max_response_mb,
    )
    params = normalize_chat_params(
        {
            **(chat_params or {}),
            "temperature": temperature,
            "top_p": top_p,
            "max_tokens": max_tokens,
            "stop": stop,
            "presence_penalty": presence_penalty,
            "frequency_penalty": frequency_penalty,
            "seed": seed,
        }
    )

    def prompt_inputs() -> Iterator[ChatInput]:
        return iter_prompts(prompts, prompts_file, system_prompt)

    def text_inputs() -> Iterator[TextInput]:
        return iter_texts(texts, texts_file)

    def query_inputs() -> Iterator[QueryInput]:
        return iter_queries(queries, queries_file)

    declare_tables(dlt.current.source_schema())
    # Read every input once now: a malformed line stops the run before the first request.
    for inputs in (prompt_inputs, text_inputs, query_inputs):
        validate(inputs())

    return (
        dlt.resource(models_rows(client, partition), name="models", write_disposition="merge", primary_key=("node_url", "id")),
        dlt.resource(info_rows(client, partition), name="info", write_disposition="append"),
        dlt.resource(
            chat_rows(client, prompt_inputs, chat_model, params, False, refresh, partition),
            name="chat_completions", write_disposition="merge", primary_key="request_id",
        ),
        dlt.resource(
            chat_rows(client, prompt_inputs, chat_model, params, True, refresh, partition),
            name="chat_completions_stream", write_disposition="merge", primary_key="request_id",
        ),
        dlt.resource(
            embeddings_rows(client, text_inputs, embedding_model, embedding_batch_size, refresh, partition),
            # new texts only (hash lookup) are appended; a refresh re-embeds existing ones and merges them
            name="embeddings", write_disposition="merge" if refresh else "append", primary_key="embedding_id",
        ),
        dlt.resource(
            retrieve_rows(client, query_inputs, partition),
            name="retrieve", write_disposition="merge", primary_key="request_id",
        ),
    )
