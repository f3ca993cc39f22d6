"""Loaded completions → OpenAI Batch output JSONL, so results move on to any tool that speaks that format.

One line per request: ``{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}``. A completed
row's body is rebuilt as a ``chat.completion`` object (every choice, usage, model); an interrupted or failed request
gets an ``error`` (and no body), as OpenAI's own output does. Lines are joined by ``custom_id``; requests that had
none use their request id, so a round trip from Batch input keeps every id.
"""

from __future__ import annotations

import contextlib
import re
from collections import Counter
from datetime import datetime
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple

import dlt
import orjson
from dlt.destinations.exceptions import DatabaseUndefinedRelation

from .settings import CHAT_TABLES, FAILED_REQUESTS_TABLE


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


Target = Tuple[Optional[str], Optional[str], Optional[str]]
"""(node URL, model that answered, model requested): one side of a comparison. A Gaia node answers any model name
with its own, so the model that answered says what was compared; the name asked stays beside it. A request that
got no answer takes the model its node answers the same name with (its newest), and None when the node answered
none (a node that failed every request)."""

Answered = Dict[Tuple[Optional[str], Optional[str]], Optional[str]]
"""(node URL, model requested) -> the model that node answered that name with, newest first."""


def _answered_models(pipeline: dlt.Pipeline, table: str) -> Answered:
    with pipeline.sql_client() as client:
        qualified = client.make_qualified_table_name(table)
    newest: Dict[Tuple[Optional[str], Optional[str]], Tuple[Any, Optional[str]]] = {}
    with contextlib.suppress(DatabaseUndefinedRelation):
        sql = (f"SELECT node_url, model_requested, model, max(requested_at) AS at FROM {qualified} "
               "WHERE model IS NOT NULL GROUP BY node_url, model_requested, model")
        for row in _rows(pipeline, sql):
            key = (row["node_url"], row["model_requested"])
            at = row["at"] or datetime.min
            if key not in newest or (at, row["model"]) > newest[key]:
                newest[key] = (at, row["model"])
    return {key: model for key, (_, model) in newest.items()}


def _target(node_url: Optional[str], model: Optional[str], requested: Optional[str], answered: Answered) -> Target:
    return node_url, model or answered.get((node_url, requested)), requested


def batch_output_lines(
    pipeline: dlt.Pipeline, table: str = "chat_completions", target: Optional[Target] = None,
    cells: Optional[Set[str]] = None,
) -> Iterator[Dict[str, Any]]:
    """Yield Batch output objects for the requests of ``table`` (answered ones, then failing ones), or only for those
    of one ``target`` (see :data:`Target`).

    One line per cell and node: a cell answered again (drift, an edited run) gives its newest answer, and a failing
    cell that has an answer from that node gives the answer. ``cells``: only these ``cell_id``s (the cells a run asked
    for, ``Ledger.cells``), so a prompt edited under the same ``custom_id`` exports its answer, not the old one's.
    """
    if table not in CHAT_TABLES:
        raise ValueError(f"table must be one of {CHAT_TABLES}, got {table!r}")
    with pipeline.sql_client() as client:
        qualified = client.make_qualified_table_name(table)
        failed = client.make_qualified_table_name(FAILED_REQUESTS_TABLE)
    answered = _answered_models(pipeline, table) if target is not None else {}
    emitted: Set[Tuple[Any, Any]] = set()
    lines: List[Dict[str, Any]] = []
    with contextlib.suppress(DatabaseUndefinedRelation):
        for row in _rows(pipeline, f"SELECT * FROM {qualified} ORDER BY requested_at DESC, request_id"):
            if target is not None and _target(row.get("node_url"), row.get("model"), row.get("model_requested"),
                                              answered) != target:
                continue
            cell_id = row.get("cell_id")
            if cells is not None and cell_id not in cells:
                continue
            key = (cell_id or row["request_id"], row.get("node_url"))
            if key in emitted:  # an older answer of the same cell from the same node
                continue
            emitted.add(key)
            request_id = row["request_id"]
            line: Dict[str, Any] = {"id": f"batch_req_{request_id}", "custom_id": row.get("custom_id") or request_id}
            if row.get("status") == "completed":
                line["response"] = {"status_code": 200, "request_id": request_id, "body": _completion_body(row)}
                line["error"] = None
            else:
                line["response"] = None
                line["error"] = {"code": row.get("status"), "message": row.get("error")}
            lines.append(line)
    yield from sorted(lines, key=lambda line: (str(line["custom_id"]), line["id"]))
    with contextlib.suppress(DatabaseUndefinedRelation):
        sql = f"SELECT * FROM {failed} WHERE resource = '{table}' ORDER BY custom_id, request_id"
        for row in _rows(pipeline, sql):
            model = (_json(row.get("request_body")) or {}).get("model")
            if target is not None and _target(row.get("node_url"), None, model, answered) != target:
                continue
            cell_id = row.get("cell_id")
            if cells is not None and cell_id not in cells:
                continue
            if cell_id is not None and (cell_id, row.get("node_url")) in emitted:
                continue  # answered by that node: the answer's line stands for it
            request_id = row["request_id"]
            status = row.get("http_status")
            yield {
                "id": f"batch_req_{request_id}",
                "custom_id": row.get("custom_id") or request_id,
                "response": {"status_code": status, "request_id": request_id, "body": None} if status else None,
                "error": {"code": row.get("error_type"), "message": row.get("error_message")},
            }


def export_batch_output(
    pipeline: dlt.Pipeline, path: str, table: str = "chat_completions", target: Optional[Target] = None,
    cells: Optional[Set[str]] = None,
) -> int:
    """Write ``table`` (or one target's rows of it; only ``cells`` when given) as OpenAI Batch output JSONL to
    ``path``; return the line count."""
    count = 0
    with open(path, "wb") as fh:
        for line in batch_output_lines(pipeline, table, target, cells):
            fh.write(orjson.dumps(line) + b"\n")
            count += 1
    return count


def _target_order(target: Target) -> Tuple[Tuple[bool, str], ...]:
    return tuple((part is None, part or "") for part in target)


def _failed_targets(pipeline: dlt.Pipeline, table: str, answered: Answered,
                    cells: Optional[Set[str]] = None) -> Set[Target]:
    """The targets of the requests of ``table``'s resource that are failing (node URL None: a request that reached
    no node, such as an input refused before it was sent); with ``cells``, of those cells only."""
    with pipeline.sql_client() as client:
        failed = client.make_qualified_table_name(FAILED_REQUESTS_TABLE)
    found: Set[Target] = set()
    with contextlib.suppress(DatabaseUndefinedRelation):
        sql = f"SELECT * FROM {failed} WHERE resource = '{table}'"
        found = {_target(row["node_url"], None, (_json(row.get("request_body")) or {}).get("model"), answered)
                 for row in _rows(pipeline, sql) if cells is None or row.get("cell_id") in cells}
    return found


def targets(pipeline: dlt.Pipeline, table: str = "chat_completions", cells: Optional[Set[str]] = None) -> List[Target]:
    """The targets (node URL, model that answered, model requested) of ``table``: those it has rows for, and those
    that only have failing requests (in ``failed_requests``), such as a compared node that failed every request. With
    ``cells``, only the targets of those cells (a run's: not every node the dataset ever heard from)."""
    with pipeline.sql_client() as client:
        qualified = client.make_qualified_table_name(table)
    answered = _answered_models(pipeline, table)
    found: Set[Target] = {target for target in _failed_targets(pipeline, table, answered, cells)
                          if target[0] is not None}
    with contextlib.suppress(DatabaseUndefinedRelation):
        columns = "node_url, model, model_requested" + ("" if cells is None else ", cell_id")
        found.update(_target(row["node_url"], row["model"], row["model_requested"], answered)
                     for row in _rows(pipeline, f"SELECT DISTINCT {columns} FROM {qualified}")
                     if cells is None or row["cell_id"] in cells)
    return sorted(found, key=_target_order)


def target_path(path: str, target: Target, with_requested: bool = False) -> str:
    """``out.jsonl`` → ``out.<node>.<model that answered>.jsonl`` (a node that answered nothing: the model requested),
    and ``out.<node>.<model>.<model requested>.jsonl`` with ``with_requested`` (one model answered several names)."""
    def slug(value: Optional[str]) -> str:
        text = re.sub(r"^https?://", "", value or "default")
        return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "default"

    node, model, requested = target
    parts = [slug(node), slug(model or requested)]
    if with_requested:
        parts.append(slug(requested))
    stem, dot, ext = path.rpartition(".")
    base, suffix = (stem, f".{ext}") if dot and "/" not in ext else (path, "")
    return f"{base}.{'.'.join(parts)}{suffix}"


def export_batch_output_per_target(
    pipeline: dlt.Pipeline, path: str, table: str = "chat_completions", cells: Optional[Set[str]] = None
) -> Dict[str, int]:
    """One Batch output file per target of ``table`` (of ``cells`` when given; see :func:`targets` and
    :func:`target_path`), each with its answers and an error line for each of its failing requests; returns lines per
    file.

    Failing requests that reached no node (inputs refused before they were sent) go to a file of their own per model,
    ``out.default.<model>.jsonl``."""
    answered = _answered_models(pipeline, table)
    unsent = {target for target in _failed_targets(pipeline, table, answered, cells) if target[0] is None}
    every = [*targets(pipeline, table, cells), *sorted(unsent, key=_target_order)]
    shared = Counter((node, model or requested) for node, model, requested in every)
    written: Dict[str, int] = {}
    for target in every:
        file = target_path(path, target, with_requested=shared[(target[0], target[1] or target[2])] > 1)
        written[file] = export_batch_output(pipeline, file, table, target, cells)
    return written
