"""Transformers: send the rows of any upstream dlt resource — or of a table already in the warehouse — to the node.

::

    questions = dlt.resource(read_questions(), name="questions", selected=False)  # yields lists of dicts (pages)
    pipeline.run(questions | chat_completions_from(prompt_field="question", id_field="question_id"))
    pipeline.run(questions | chat_completions_stream_from(prompt_field="question"))  # streamed, with its TTFT

    docs = dlt.resource(pipeline.dataset()["docs"].iter_arrow(chunk_size=2_000), name="docs", selected=False)
    pipeline.run(docs | embeddings_from(text_field="body", id_field="doc_id", metadata_fields=["title"]))

Node settings are the source's: :class:`~gaia_source.config.NodeSettings`, from keyword arguments or the
``[sources.gaia_source]`` config, resolved once when the transformer is made; ``ledger=Ledger()`` records how each
cell ended, as for the source. Each call makes a transformer with its
own run context (pool, discoveries), which starts afresh for every pipeline run. A transformer is called once per item
its parent yields: a page (list, Arrow table, DataFrame) gets its rows sent concurrently. Rows land in the same tables
as the source's, with the same skip-what-is-done rule (``refresh=True`` re-sends).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import dlt
from dlt.common.typing import TDataItems
from dlt.extract.resource import DltResource

from .chunking import check_chunking
from .config import resolve_node_settings
from .context import RunContext
from .endpoints import ENDPOINT_BY_NAME, Plan
from .errors import GaiaConfigError
from .inputs import (
    ChatInput,
    TextInput,
    chat_input_from_object,
    model_list,
    text_input_from_object,
    with_system_prompt,
)
from .payloads import normalize_chat_params
from .resources import declare_tables, extract, table_key, write_disposition
from .settings import DEFAULT_EMBEDDING_BATCH_SIZE


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


def _transformer(
    name: str, plan_of: Callable[[TDataItems], Plan], refresh: bool, node_settings: Dict[str, Any]
) -> DltResource:
    """A transformer that sends each page through the catalogue endpoint ``name``, with one run context."""
    endpoint = ENDPOINT_BY_NAME[name]
    ledger = node_settings.pop("ledger", None)  # a Ledger to read the run's outcome from (see gaia_source())
    context = RunContext(resolve_node_settings(**node_settings), ledger)

    def transform(items: TDataItems) -> Iterator[Any]:
        declare_tables(dlt.current.source_schema())
        yield from extract(endpoint, plan_of(items), context)

    transform.__name__ = f"{name}_from"
    disposition: Any = write_disposition(endpoint, Plan(refresh=refresh))  # dlt types it narrower than it takes
    return dlt.transformer(transform, name=name, write_disposition=disposition, **table_key(endpoint))


def _chat_from(stream: bool) -> Callable[..., DltResource]:
    table = "chat_completions_stream" if stream else "chat_completions"

    def chat_from(
        prompt_field: str = "prompt",
        id_field: Optional[str] = None,
        *,
        chat_model: Optional[str] = None,
        system_prompt: Optional[str] = None,
        chat_params: Optional[Dict[str, Any]] = None,
        refresh: bool = False,
        **node_settings: Any,
    ) -> DltResource:
        def plan_of(items: TDataItems) -> Plan:
            inputs: List[ChatInput] = []
            for i, record in enumerate(records_of(items)):
                where = f"upstream row {i}"
                value = _field(record, prompt_field, where)
                obj: Dict[str, Any] = {"messages": value} if isinstance(value, list) else {"prompt": value}
                if id_field and record.get(id_field) is not None:
                    obj["custom_id"] = str(record[id_field])
                inputs.append(with_system_prompt(chat_input_from_object(obj, where), system_prompt))
            return Plan(prompts=lambda: iter(inputs), chat_models=model_list(chat_model),
                        chat_params=normalize_chat_params(chat_params or {}), refresh=refresh)

        return _transformer(table, plan_of, refresh, node_settings)

    chat_from.__name__ = f"{table}_from"
    chat_from.__doc__ = f"""A transformer sending each upstream row's prompt to the node; one ``{table}`` row per row.

    Args:
        prompt_field: The field holding the prompt: a string, or a list of ``{{role, content}}`` messages.
        id_field: A field carried into ``custom_id``, to join answers back to the upstream rows.
        chat_model: Model; discovered when absent.
        system_prompt: A system message for rows whose messages have none.
        chat_params: Chat parameters (temperature, max_tokens, …).
        refresh: Send rows already answered again.
        node_settings: Fields of :class:`~gaia_source.config.NodeSettings` (``base_url``, ``api_key``, ``timeout``, …);
            what is not given comes from ``[sources.gaia_source]`` config.

    Returns:
        A transformer yielding rows of ``{table}`` and ``failed_requests``.
    """
    return chat_from


chat_completions_from = _chat_from(stream=False)
chat_completions_stream_from = _chat_from(stream=True)


def embeddings_from(
    text_field: str = "text",
    id_field: Optional[str] = None,
    metadata_fields: Optional[Sequence[str]] = None,
    *,
    document_id_field: Optional[str] = None,
    chunk_size: Optional[int] = None,
    chunk_overlap: int = 0,
    embedding_model: Optional[str] = None,
    embedding_batch_size: int = DEFAULT_EMBEDDING_BATCH_SIZE,
    refresh: bool = False,
    **node_settings: Any,
) -> DltResource:
    """A transformer embedding each upstream row's text; one ``embeddings`` row per text, with its id and metadata.

    Args:
        text_field: The field holding the text.
        id_field: A field carried into ``text_id``, to join vectors back to the upstream rows.
        metadata_fields: Fields copied into the ``metadata`` JSON column.
        document_id_field: A field naming each row's document (see ``gaia_source(texts=…)``): chunks of a changed
            document replace its old ones.
        chunk_size: Split texts into chunks of at most this many characters.
        chunk_overlap: Characters each chunk shares with the previous one.
        embedding_model: Model; discovered when absent.
        embedding_batch_size: Texts per request.
        refresh: Embed texts already embedded again.
        node_settings: Fields of :class:`~gaia_source.config.NodeSettings` (``base_url``, ``api_key``, ``timeout``, …);
            what is not given comes from ``[sources.gaia_source]`` config.

    Returns:
        A transformer yielding rows of ``embeddings`` and ``failed_requests``.
    """
    if embedding_batch_size < 1:
        raise GaiaConfigError(f"embedding_batch_size must be >= 1, got {embedding_batch_size}")
    check_chunking(chunk_size, chunk_overlap)

    def plan_of(items: TDataItems) -> Plan:
        inputs: List[TextInput] = []
        for i, record in enumerate(records_of(items)):
            where = f"upstream row {i}"
            obj: Dict[str, Any] = {"text": _field(record, text_field, where)}
            if id_field and record.get(id_field) is not None:
                obj["id"] = str(record[id_field])
            if document_id_field and record.get(document_id_field) is not None:
                obj["document_id"] = str(record[document_id_field])
            if metadata_fields:
                obj["metadata"] = {name: record.get(name) for name in metadata_fields}
            inputs.append(text_input_from_object(obj, where))
        return Plan(texts=lambda: iter(inputs), embedding_model=embedding_model,
                    embedding_batch_size=embedding_batch_size, chunk_size=chunk_size, chunk_overlap=chunk_overlap,
                    refresh=refresh)

    return _transformer("embeddings", plan_of, refresh, node_settings)
