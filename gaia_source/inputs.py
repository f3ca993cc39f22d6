"""Inputs: prompts, texts and queries from config lists or files, read lazily and validated with file:line messages.

Prompt files, by extension:

* ``.jsonl`` / ``.json`` — one JSON value per line, any of:
  an OpenAI Batch input line ``{"custom_id", "method", "url", "body": {"messages": […], …}}``;
  ``{"messages": […], "custom_id"?: …, <chat params>?}``; ``{"prompt": "…", "custom_id"?: …}``; or a JSON string.
  Any object may carry ``expected`` (the reference answer, a string) and ``metadata`` (an object of labels).
* ``.csv`` — a header row with a ``prompt`` column (optional ``custom_id``, ``system`` and ``expected`` columns; every
  other column becomes ``metadata``).
* anything else — one plain prompt per non-empty line.

Text files (embeddings) follow the same rule with ``text`` (JSONL ``{"text", "id"?, "metadata"?}``, CSV ``text``
column with optional ``id``); query files (retrieve) with ``query`` (JSONL may also give ``messages``, and
``expected_sources``: the passages or ids a good retrieval finds; CSV: an ``expected_sources`` column, ``|``-separated).

Files are streamed, never loaded whole. :func:`validate` reads an input once without sending anything, so that a
malformed line stops the run before the first request.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, TypeVar, Union

import orjson

from .errors import GaiaConfigError
from .settings import CHAT_PARAM_NAMES, OUTPUT_LIMIT_FIELDS

T = TypeVar("T")
Message = Dict[str, Any]
PromptLike = Union[str, Sequence[Message], Dict[str, Any]]
_ROLES = {"system", "user", "assistant", "tool", "developer"}
_JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")


@dataclass(frozen=True)
class ChatInput:
    """One chat request to make: its messages, the caller's id, and per-input parameter overrides."""

    messages: List[Message]
    custom_id: Optional[str] = None
    params: Dict[str, Any] = field(default_factory=dict)
    model: Optional[str] = None
    source: str = ""
    expected: Optional[str] = None
    """The reference answer (for pass rates in SQL or the notebook)."""
    metadata: Optional[Dict[str, Any]] = None
    """Free labels carried into the row (category, difficulty, …)."""


@dataclass(frozen=True)
class TextInput:
    """One text to embed, with the caller's id and metadata carried into its row; a document's chunk also knows its
    document, its index in it and its character span (see :mod:`gaia_source.chunking`)."""

    text: str
    id: Optional[str] = None
    metadata: Optional[Dict[str, Any]] = None
    source: str = ""
    document_id: Optional[str] = None
    chunk_index: Optional[int] = None
    char_start: Optional[int] = None
    char_end: Optional[int] = None

    @property
    def position(self) -> Tuple[Any, ...]:
        """What besides (model, text) tells this text's row apart: a chunk's document, index and start."""
        return () if self.document_id is None else (self.document_id, self.chunk_index, self.char_start)


@dataclass(frozen=True)
class QueryInput:
    """One retrieval query."""

    query: str
    custom_id: Optional[str] = None
    source: str = ""
    expected_sources: Optional[Tuple[str, ...]] = None
    """Passages (or ids that appear in them) a good retrieval returns: each row gets ``hit_rank`` and ``hits``."""


# --------------------------------------------------------------------------------------------------------------
# line readers


def _file_kind(path: str) -> str:
    lower = path.lower()
    if lower.endswith(_JSON_SUFFIXES):
        return "jsonl"
    if lower.endswith(".csv"):
        return "csv"
    return "text"


def _open(path: str, setting: str) -> Any:
    if not os.path.isfile(path):
        raise GaiaConfigError(f"{setting}: file not found: {path}")
    return open(path, "r", encoding="utf-8-sig", errors="strict", newline="")


def _iter_lines(path: str, setting: str) -> Iterator[Tuple[int, str]]:
    """Yield (line_number, text) of non-empty lines; undecodable bytes are a clear error naming the line."""
    if not os.path.isfile(path):
        raise GaiaConfigError(f"{setting}: file not found: {path}")
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                raise GaiaConfigError(f"{path}:{lineno}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
            if line.strip():
                yield lineno, line


def _iter_json_lines(path: str, setting: str) -> Iterator[Tuple[int, Any]]:
    for lineno, line in _iter_lines(path, setting):
        try:
            yield lineno, orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise GaiaConfigError(f"{path}:{lineno}: not valid JSON ({exc})") from None


def _iter_csv_rows(path: str, setting: str, column: str) -> Iterator[Tuple[int, Dict[str, Any]]]:
    with _open(path, setting) as fh:
        try:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or column not in reader.fieldnames:
                found = ", ".join(reader.fieldnames or []) or "no header"
                raise GaiaConfigError(f"{path}: CSV has no '{column}' column (columns: {found})")
            for row in reader:
                yield reader.line_num, row
        except UnicodeDecodeError as exc:
            raise GaiaConfigError(f"{path}: not valid UTF-8 ({exc.reason})") from None
        except csv.Error as exc:
            raise GaiaConfigError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from None


# --------------------------------------------------------------------------------------------------------------
# prompts


def _check_messages(messages: Any, where: str) -> List[Message]:
    if not isinstance(messages, list) or not messages:
        raise GaiaConfigError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise GaiaConfigError(f"{where}: messages[{i}] is not an object")
        role = message.get("role")
        if role not in _ROLES:
            raise GaiaConfigError(f"{where}: messages[{i}] has role {role!r}; expected one of {sorted(_ROLES)}")
        content = message.get("content")
        if content is None and not message.get("tool_calls"):
            raise GaiaConfigError(f"{where}: messages[{i}] ({role}) has no content")
        if isinstance(content, str) and not content.strip() and role == "user":
            raise GaiaConfigError(f"{where}: messages[{i}] is an empty user prompt")
    return messages


def _prompt_text(text: Any, where: str) -> List[Message]:
    if not isinstance(text, str) or not text.strip():
        raise GaiaConfigError(f"{where}: empty prompt")
    return [{"role": "user", "content": text}]


def _custom_id(value: Any, where: str) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
        return str(value)
    raise GaiaConfigError(f"{where}: custom_id must be a non-empty string, got {value!r}")


def output_limit(params: Mapping[str, Any], where: str = "chat parameters") -> Optional[int]:
    """The token cap the parameters ask for (either name), or None.

    Raises:
        GaiaConfigError: a cap that is not a positive integer, or the two names with different values.
    """
    given = {name: params[name] for name in OUTPUT_LIMIT_FIELDS if params.get(name) is not None}
    for name, value in given.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise GaiaConfigError(f"{where}: {name} must be a positive integer, got {value!r}")
    if len(set(given.values())) > 1:
        raise GaiaConfigError(f"{where}: max_tokens={given['max_tokens']} and max_completion_tokens="
                              f"{given['max_completion_tokens']} disagree; give one of them")
    return next(iter(given.values()), None)


def _expected(value: Any, where: str) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise GaiaConfigError(f"{where}: 'expected' must be a string (the reference answer), got {type(value).__name__}")


def _metadata(value: Any, where: str) -> Optional[Dict[str, Any]]:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise GaiaConfigError(f"{where}: 'metadata' must be an object, got {type(value).__name__}")
    return value


def chat_input_from_object(obj: Any, where: str) -> ChatInput:
    """Interpret one JSON value / config item as a chat input."""
    item = _chat_input(obj, where)
    if isinstance(obj, dict) and ("expected" in obj or "metadata" in obj):
        return replace(item, expected=_expected(obj.get("expected"), where),
                       metadata=_metadata(obj.get("metadata"), where))
    return item


def _chat_input(obj: Any, where: str) -> ChatInput:
    if isinstance(obj, str):
        return ChatInput(_prompt_text(obj, where), source=where)
    if isinstance(obj, list):
        return ChatInput(_check_messages(obj, where), source=where)
    if not isinstance(obj, dict):
        raise GaiaConfigError(
            f"{where}: expected a prompt string, a message list or an object, got {type(obj).__name__}"
        )
    custom_id = _custom_id(obj.get("custom_id"), where)
    if "body" in obj:  # OpenAI Batch input line
        url = obj.get("url", "/v1/chat/completions")
        if not str(url).rstrip("/").endswith("chat/completions"):
            raise GaiaConfigError(f"{where}: batch line is for {url!r}; only /v1/chat/completions lines are prompts")
        method = str(obj.get("method", "POST")).upper()
        if method != "POST":
            raise GaiaConfigError(f"{where}: batch line method is {method}; expected POST")
        body = obj["body"]
        if not isinstance(body, dict):
            raise GaiaConfigError(f"{where}: batch line 'body' must be an object")
        params = {k: v for k, v in body.items() if k not in ("messages", "model", "stream", "stream_options")}
        output_limit(params, where)
        model = body.get("model")
        return ChatInput(_check_messages(body.get("messages"), where), custom_id, params, model, where)
    if "messages" in obj or "prompt" in obj:
        params = {k: obj[k] for k in CHAT_PARAM_NAMES if k in obj}
        output_limit(params, where)
        if "messages" in obj:
            messages = _check_messages(obj["messages"], where)
        else:
            messages = _prompt_text(obj["prompt"], where)
        return ChatInput(messages, custom_id, params, obj.get("model"), where)
    raise GaiaConfigError(f"{where}: object has none of 'body', 'messages' or 'prompt' (keys: {sorted(obj)})")


def with_system_prompt(item: ChatInput, system_prompt: Optional[str]) -> ChatInput:
    if not system_prompt or any(m.get("role") == "system" for m in item.messages):
        return item
    return replace(item, messages=[{"role": "system", "content": system_prompt}, *item.messages])


def _iter_inputs(
    name: str,
    items: Optional[Iterable[Any]],
    path: Optional[str],
    from_object: Callable[[Any, str], T],
    csv_column: str,
    from_csv_row: Callable[[Dict[str, Any], str], T],
) -> Iterator[T]:
    """Config list items first, then the file's lines; each parsed with its ``list[i]`` or ``file:line`` label."""
    if isinstance(items, (str, dict)):
        items = [items]
    for i, obj in enumerate(items or []):
        yield from_object(obj, f"{name}[{i}]")
    if not path:
        return
    setting = f"{name}_file"
    kind = _file_kind(path)
    if kind == "jsonl":
        for lineno, obj in _iter_json_lines(path, setting):
            yield from_object(obj, f"{path}:{lineno}")
    elif kind == "csv":
        for lineno, row in _iter_csv_rows(path, setting, csv_column):
            yield from_csv_row(row, f"{path}:{lineno}")
    else:  # one input per non-empty line, taken literally
        for lineno, line in _iter_lines(path, setting):
            yield from_object(line, f"{path}:{lineno}")


def iter_prompts(
    prompts: Optional[Iterable[PromptLike]] = None,
    prompts_file: Optional[str] = None,
    system_prompt: Optional[str] = None,
    prompt_column: str = "prompt",
) -> Iterator[ChatInput]:
    """Yield chat inputs from a config list and/or a file (see the module docstring for formats).

    Args:
        prompts: Prompt strings, message lists, or objects shaped like JSONL lines.
        prompts_file: Path of a .jsonl, .csv or plain-text prompt file.
        system_prompt: A system message put first in every input that has none.
        prompt_column: The CSV column holding the prompt.

    Raises:
        GaiaConfigError: naming the item or file:line that is malformed.
    """

    def from_csv_row(row: Dict[str, Any], where: str) -> ChatInput:
        messages = _prompt_text(row.get(prompt_column), where)
        if row.get("system"):
            messages = [{"role": "system", "content": row["system"]}, *messages]
        known = {prompt_column, "system", "custom_id", "expected"}
        labels = {k: v for k, v in row.items() if k not in known and k is not None and v not in (None, "")}
        return ChatInput(messages, _custom_id(row.get("custom_id") or None, where), source=where,
                         expected=row.get("expected") or None, metadata=labels or None)

    items = _iter_inputs("prompts", prompts, prompts_file, chat_input_from_object, prompt_column, from_csv_row)
    for item in items:
        yield with_system_prompt(item, system_prompt)


# --------------------------------------------------------------------------------------------------------------
# texts


def text_input_from_object(obj: Any, where: str) -> TextInput:
    if isinstance(obj, str):
        if not obj.strip():
            raise GaiaConfigError(f"{where}: empty text")
        return TextInput(obj, source=where)
    if isinstance(obj, dict):
        text = obj.get("text")
        if not isinstance(text, str) or not text.strip():
            raise GaiaConfigError(f"{where}: object needs a non-empty 'text' string (keys: {sorted(obj)})")
        metadata = obj.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise GaiaConfigError(f"{where}: 'metadata' must be an object")
        return TextInput(text, _custom_id(obj.get("id"), where), metadata, where,
                         document_id=_custom_id(obj.get("document_id"), where))
    raise GaiaConfigError(
        f"{where}: expected a text string or {{text, id?, document_id?, metadata?}}, got {type(obj).__name__}"
    )


def iter_texts(
    texts: Optional[Iterable[Any]] = None, texts_file: Optional[str] = None, text_column: str = "text"
) -> Iterator[TextInput]:
    """Yield texts to embed from a config list and/or a file (plain lines, JSONL, or CSV with a text column).

    Raises:
        GaiaConfigError: naming the item or file:line that is malformed.
    """

    def from_csv_row(row: Dict[str, Any], where: str) -> TextInput:
        return text_input_from_object({"text": row.get(text_column), "id": row.get("id") or None}, where)

    return _iter_inputs("texts", texts, texts_file, text_input_from_object, text_column, from_csv_row)


# --------------------------------------------------------------------------------------------------------------
# queries


def _query_from_object(obj: Any, where: str) -> QueryInput:
    if isinstance(obj, str):
        if not obj.strip():
            raise GaiaConfigError(f"{where}: empty query")
        return QueryInput(obj, source=where)
    if isinstance(obj, dict):
        custom_id = _custom_id(obj.get("custom_id"), where)
        expected = _expected_sources(obj.get("expected_sources"), where)
        if "query" in obj:
            return QueryInput(_query_from_object(obj["query"], where).query, custom_id, where, expected)
        if "messages" in obj:
            messages = _check_messages(obj["messages"], where)
            users = [m["content"] for m in messages if m.get("role") == "user" and isinstance(m.get("content"), str)]
            if not users:
                raise GaiaConfigError(f"{where}: no user message with text content to retrieve for")
            return QueryInput(users[-1], custom_id, where, expected)
    raise GaiaConfigError(f"{where}: expected a query string, {{query}} or {{messages}}")


def _expected_sources(value: Any, where: str) -> Optional[Tuple[str, ...]]:
    """``expected_sources``: a list of non-empty strings (a single string is a list of one)."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, (str, int)) and str(v).strip() for v in items):
        raise GaiaConfigError(f"{where}: 'expected_sources' must be a list of non-empty strings, got {value!r:.80}")
    return tuple(str(v).strip() for v in items)


def iter_queries(queries: Optional[Iterable[Any]] = None, queries_file: Optional[str] = None) -> Iterator[QueryInput]:
    """Yield retrieval queries from a config list and/or a file (plain lines, JSONL, or CSV with a query column).

    Raises:
        GaiaConfigError: naming the item or file:line that is malformed.
    """

    def from_csv_row(row: Dict[str, Any], where: str) -> QueryInput:
        sources = [v for v in (row.get("expected_sources") or "").split("|") if v.strip()] or None
        return _query_from_object({"query": row.get("query"), "custom_id": row.get("custom_id") or None,
                                   "expected_sources": sources}, where)

    return _iter_inputs("queries", queries, queries_file, _query_from_object, "query", from_csv_row)


def model_list(value: Any, setting: str = "chat_model") -> Tuple[str, ...]:
    """One model name, a comma-separated list, or a list of names → a tuple of names (empty: discover)."""
    if value is None:
        return ()
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise GaiaConfigError(f"{setting} must be a model name or a list of names, got {value!r:.80}")
    cleaned = tuple(dict.fromkeys(n.strip() for n in names if n.strip()))
    return cleaned


def validate(items: Iterable[Any]) -> int:
    """Read an input iterator to the end without keeping it; return how many items it has.

    Any malformed item raises :class:`GaiaConfigError` here, before a request is sent; so does a ``custom_id`` given
    to two different inputs (it names one request in Batch output: which one would it name?). The same input given
    twice with the same id is one request.
    """
    count = 0
    ids: Dict[str, Tuple[str, Any]] = {}
    for item in items:
        count += 1
        custom_id = getattr(item, "custom_id", None)
        if custom_id is None:
            continue
        identity = _identity(item)
        where = getattr(item, "source", "") or f"input {count}"
        first = ids.setdefault(custom_id, (where, identity))
        if first[1] != identity:
            raise GaiaConfigError(f"{where}: custom_id {custom_id!r} is already the id of another input ({first[0]}); "
                                  "give every input its own custom_id")
    return count


def _identity(item: Any) -> Any:
    """What makes an input the input it is (not where it was read)."""
    if isinstance(item, ChatInput):
        return (orjson.dumps(item.messages, option=orjson.OPT_SORT_KEYS),
                orjson.dumps(item.params, option=orjson.OPT_SORT_KEYS), item.model)
    if isinstance(item, QueryInput):
        return item.query
    return repr(replace(item, source=""))
