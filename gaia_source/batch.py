"""Loaded completions → OpenAI Batch output JSONL, so results move on to any tool that speaks that format.

One line per request: ``{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}``. A completed
row's body is rebuilt as a ``chat.completion`` object (every choice, usage, model); an interrupted or failed request
gets an ``error`` (and no body), as OpenAI's own output does. Lines are joined by ``custom_id``; requests that had
none use their request id, so a round trip from Batch input keeps every id.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any, Dict, Iterator, Optional

import dlt
import orjson
from dlt.destinations.exceptions import DatabaseUndefinedRelation

from .settings import FAILED_REQUESTS_TABLE

CHAT_TABLES = ("chat_completions", "chat_completions_stream")


def _json(value: Any) -> Any:
    """JSON columns come back as text from DuckDB and as objects from PostgreSQL."""
    if isinstance(value, (str, bytes)):
        return orjson.loads(value)
    return value


def _rows(pipeline: dlt.Pipeline, sql: str) -> Iterator[Dict[str, Any]]:
    with pipeline.sql_client() as client:
        with client.execute_query(sql) as cursor:
            names = [d[0] for d in cursor.description]
            while True:
                batch = cursor.fetchmany(1000)
                if not batch:
                    return
                for row in batch:
                    yield dict(zip(names, row, strict=True))


def _completion_body(row: Dict[str, Any]) -> Dict[str, Any]:
    choices = _json(row.get("choices"))
    if not choices:
        message: Dict[str, Any] = {"role": row.get("role") or "assistant", "content": row.get("content")}
        tool_calls = _json(row.get("tool_calls"))
        if tool_calls:
            message["tool_calls"] = tool_calls
        choices = [{"index": 0, "message": message, "finish_reason": row.get("finish_reason")}]
    created: Optional[datetime] = row.get("created_at")
    return {
        "id": row.get("response_id"),
        "object": "chat.completion",
        "created": int(created.timestamp()) if isinstance(created, datetime) else None,
        "model": row.get("model"),
        "choices": choices,
        "usage": _json(row.get("usage")),
    }


def batch_output_lines(pipeline: dlt.Pipeline, table: str = "chat_completions") -> Iterator[Dict[str, Any]]:
    """Yield Batch output objects for every request of ``table`` (answered ones, then failing ones)."""
    if table not in CHAT_TABLES:
        raise ValueError(f"table must be one of {CHAT_TABLES}, got {table!r}")
    with pipeline.sql_client() as client:
        qualified = client.make_qualified_table_name(table)
        failed = client.make_qualified_table_name(FAILED_REQUESTS_TABLE)
    with contextlib.suppress(DatabaseUndefinedRelation):
        for row in _rows(pipeline, f"SELECT * FROM {qualified} ORDER BY custom_id, request_id"):
            request_id = row["request_id"]
            line: Dict[str, Any] = {"id": f"batch_req_{request_id}", "custom_id": row.get("custom_id") or request_id}
            if row.get("status") == "completed":
                line["response"] = {"status_code": 200, "request_id": request_id, "body": _completion_body(row)}
                line["error"] = None
            else:
                line["response"] = None
                line["error"] = {"code": row.get("status"), "message": row.get("error")}
            yield line
    with contextlib.suppress(DatabaseUndefinedRelation):
        sql = f"SELECT * FROM {failed} WHERE resource = '{table}' ORDER BY custom_id, request_id"
        for row in _rows(pipeline, sql):
            request_id = row["request_id"]
            status = row.get("http_status")
            yield {
                "id": f"batch_req_{request_id}",
                "custom_id": row.get("custom_id") or request_id,
                "response": {"status_code": status, "request_id": request_id, "body": None} if status else None,
                "error": {"code": row.get("error_type"), "message": row.get("error_message")},
            }


def export_batch_output(pipeline: dlt.Pipeline, path: str, table: str = "chat_completions") -> int:
    """Write ``table`` as OpenAI Batch output JSONL to ``path``; return the number of lines written."""
    count = 0
    with open(path, "wb") as fh:
        for line in batch_output_lines(pipeline, table):
            fh.write(orjson.dumps(line) + b"\n")
            count += 1
    return count
