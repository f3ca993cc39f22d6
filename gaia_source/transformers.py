"""Transformers: send the rows of any upstream dlt resource — or of a table already in the warehouse — to the node.

::

    questions = dlt.resource(read_questions(), name="questions", selected=False)  # yields lists of dicts (pages)
    pipeline.run(questions | chat_completions_from(prompt_field="question", id_field="question_id"))
    pipeline.run(questions | chat_completions_stream_from(prompt_field="question"))  # streamed, with time to first token

    docs = dlt.resource(pipeline.dataset()["docs"].iter_arrow(chunk_size=2_000), name="docs", selected=False)
    pipeline.run(docs | embeddings_from(text_field="body", id_field="doc_id", metadata_fields=["title"]))

Node settings come from the same ``[sources.gaia_source]`` config as the source (``base_url``/``node_id``,
``api_key``, models, ``timeout``, ``max_concurrency``, …) or from arguments. A transformer is called once per item
its parent yields: a parent that yields pages (lists, Arrow tables, DataFrames) gets its rows sent concurrently, one
that yields single rows gets them sent one by one. Rows land in the same tables as the source's, with the same
skip-what-is-done rule (``refresh=True`` re-sends).
"""

from __future__ import annotations

import threading
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import dlt
from dlt.common.typing import TDataItems, TSecretStrValue

from .errors import GaiaConfigError
from .inputs import ChatInput, TextInput, chat_input_from_object, text_input_from_object, with_system_prompt
from .payloads import normalize_chat_params
from .pool import NodePool, resolve_base_urls
from .resources import chat_rows, embeddings_rows
from .rows import declare_tables
from .settings import (
    DEFAULT_EMBEDDING_BATCH_SIZE,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_RETRY_BACKOFF,
    DEFAULT_TIMEOUT,
)

_pools: Dict[Tuple[Any, ...], NodePool] = {}
_pools_lock = threading.Lock()


def _client(
    node_id: Any, base_url: Any, api_key: Optional[str], timeout: float, max_concurrency: int,
    max_attempts: int, retry_backoff: float,
) -> NodePool:
    """One pool (connections, discovered models) per node list and settings, reused across pages."""
    urls = tuple(resolve_base_urls(node_id, base_url))
    key = (urls, api_key, timeout, max_concurrency, max_attempts, retry_backoff)
    with _pools_lock:
        if key not in _pools:
            _pools[key] = NodePool.connect(urls, api_key, timeout=timeout, max_concurrency=max_concurrency,
                                           max_attempts=max_attempts, retry_backoff=retry_backoff)
        return _pools[key]


def records_of(items: TDataItems) -> List[Dict[str, Any]]:
    """A page from any upstream as a list of dicts: a dict, a list, a pyarrow Table/RecordBatch or a DataFrame."""
    if isinstance(items, dict):
        return [items]
    if hasattr(items, "to_pylist"):
        return list(items.to_pylist())
    if hasattr(items, "to_dict") and hasattr(items, "columns"):
        return list(items.to_dict("records"))
    return list(items)


def _field(record: Dict[str, Any], name: str, where: str) -> Any:
    if name not in record:
        raise GaiaConfigError(f"{where}: upstream row has no field {name!r} (fields: {sorted(record)})")
    return record[name]


def _chat_transformer(stream: bool) -> Any:
    """Build the chat transformer for plain (``chat_completions``) or streamed (``chat_completions_stream``) answers."""
    table = "chat_completions_stream" if stream else "chat_completions"

    def transform(
        items: TDataItems,
        prompt_field: str = "prompt",
        id_field: Optional[str] = None,
        node_id: Optional[Any] = dlt.config.value,
        base_url: Optional[Any] = dlt.config.value,
        api_key: Optional[TSecretStrValue] = dlt.secrets.value,
        chat_model: Optional[str] = None,
        system_prompt: Optional[str] = None,
        chat_params: Optional[Dict[str, Any]] = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        retry_backoff: float = DEFAULT_RETRY_BACKOFF,
        refresh: bool = False,
    ) -> Iterator[Any]:
        declare_tables(dlt.current.source_schema())
        client = _client(node_id, base_url, api_key, timeout, max_concurrency, max_attempts, retry_backoff)
        inputs: List[ChatInput] = []
        for i, record in enumerate(records_of(items)):
            where = f"upstream row {i}"
            value = _field(record, prompt_field, where)
            obj: Dict[str, Any] = {"messages": value} if isinstance(value, list) else {"prompt": value}
            if id_field and record.get(id_field) is not None:
                obj["custom_id"] = str(record[id_field])
            inputs.append(with_system_prompt(chat_input_from_object(obj, where), system_prompt))
        params = normalize_chat_params(chat_params or {})
        yield from chat_rows(client, lambda: iter(inputs), chat_model, params, stream, refresh)

    transform.__name__ = f"{table}_from"
    transform.__doc__ = f"""Send each upstream row's prompt to the node; one ``{table}`` row per upstream row.

    Args:
        items: A page (or a row) from the upstream resource.
        prompt_field: The field holding the prompt: a string, or a list of ``{{role, content}}`` messages.
        id_field: A field carried into ``custom_id``, to join answers back to the upstream rows.
        node_id: See :func:`gaia_source.gaia_source`; likewise every other node and client setting below.
        base_url: The node URL.
        api_key: Bearer key.
        chat_model: Model; discovered when absent.
        system_prompt: A system message for rows whose messages have none.
        chat_params: Chat parameters (temperature, max_tokens, …).
        timeout: Seconds to wait for a response.
        max_concurrency: Requests in flight at once.
        max_attempts: Sends per request.
        retry_backoff: Seconds before the first retry.
        refresh: Send rows already answered again.

    Yields:
        Rows of ``{table}`` and ``failed_requests``.
    """
    return dlt.transformer(
        section="gaia_source", name=table, write_disposition="merge", primary_key="request_id"
    )(transform)


chat_completions_from = _chat_transformer(stream=False)
chat_completions_stream_from = _chat_transformer(stream=True)


@dlt.transformer(
    section="gaia_source", name="embeddings", write_disposition="merge", primary_key="embedding_id"
)
def embeddings_from(
    items: TDataItems,
    text_field: str = "text",
    id_field: Optional[str] = None,
    metadata_fields: Optional[Sequence[str]] = None,
    node_id: Optional[Any] = dlt.config.value,
    base_url: Optional[Any] = dlt.config.value,
    api_key: Optional[TSecretStrValue] = dlt.secrets.value,
    embedding_model: Optional[str] = None,
    embedding_batch_size: int = DEFAULT_EMBEDDING_BATCH_SIZE,
    timeout: float = DEFAULT_TIMEOUT,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    retry_backoff: float = DEFAULT_RETRY_BACKOFF,
    refresh: bool = False,
) -> Iterator[Any]:
    """Embed each upstream row's text; one ``embeddings`` row per upstream row, with its id and chosen metadata.

    Args:
        items: A page (or a row) from the upstream resource.
        text_field: The field holding the text.
        id_field: A field carried into ``text_id``, to join vectors back to the upstream rows.
        metadata_fields: Fields copied into the ``metadata`` JSON column.
        node_id: See :func:`gaia_source.gaia_source`; likewise every other node and client setting.
        base_url: The node URL.
        api_key: Bearer key.
        embedding_model: Model; discovered when absent.
        embedding_batch_size: Texts per request.
        timeout: Seconds to wait for a response.
        max_concurrency: Requests in flight at once.
        max_attempts: Sends per request.
        retry_backoff: Seconds before the first retry.
        refresh: Embed texts already embedded again.

    Yields:
        Rows of ``embeddings`` and ``failed_requests``.
    """
    if embedding_batch_size < 1:
        raise GaiaConfigError(f"embedding_batch_size must be >= 1, got {embedding_batch_size}")
    declare_tables(dlt.current.source_schema())
    client = _client(node_id, base_url, api_key, timeout, max_concurrency, max_attempts, retry_backoff)
    inputs: List[TextInput] = []
    for i, record in enumerate(records_of(items)):
        where = f"upstream row {i}"
        obj: Dict[str, Any] = {"text": _field(record, text_field, where)}
        if id_field and record.get(id_field) is not None:
            obj["id"] = str(record[id_field])
        if metadata_fields:
            obj["metadata"] = {name: record.get(name) for name in metadata_fields}
        inputs.append(text_input_from_object(obj, where))
    yield from embeddings_rows(client, lambda: iter(inputs), embedding_model, embedding_batch_size, refresh)
