"""What an evaluation found, in SQL over the loaded tables: pass rates, flaky prompts, retrieval hit@k, drift.

The unit is the **target**: a node (``node_url``) × the model that *answered* (``model``), with the model names that
were asked (``model_requested``) beside it, never in its place — a Gaia node answers any model name with its own.

* **Pass rate** per target against each prompt's ``expected``: an answer passes when it *contains* the expected text,
  case-insensitive (:data:`MATCH_RULE`). One answer per cell and target counts: the newest, when a cell was answered
  more than once by the same node and model.
* **Flaky prompts**: a prompt's samples on one target under one node configuration (``prompt_id`` × ``node_url`` ×
  ``model_requested`` × ``model`` × ``info_hash``) that gave more than one distinct answer. Grouping by cell, never by
  a label, keeps a parameter change (another ``prompt_id``) or a model swap (another ``info_hash``) from looking like
  sampling noise.
* **Retrieval** per node: hit@1, hit@k and MRR over the queries with ``expected_sources`` (a miss counts 0).
* **Drift**: a prompt answered under more than one ``info_hash`` by one node.

:func:`summarize` computes all of it for the cells one run asked for (``scope``, from the run's
:class:`~gaia_source.ledger.Ledger`) or for the whole dataset. The result is plain JSON data (its schema is in
README, "Evaluating nodes and models"): the CLI prints it as a table, writes it with ``--summary-json``, and
``report`` renders it as HTML.
"""

from __future__ import annotations

import contextlib
import json
from collections import defaultdict
from datetime import datetime
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple

import dlt

from .ledger import Ledger

SUMMARY_VERSION = 1
MATCH_RULE = "contains, case-insensitive"
"""How an answer is graded against its ``expected`` text."""
HIT_K = 3
"""The k of hit@k in summaries (the evaluation page's default)."""
ANSWER_TABLES: Tuple[str, ...] = ("chat_completions", "chat_completions_stream", "responses")
"""Tables of answers to prompts, each evaluated on its own."""
RETRIEVAL_TABLE = "retrieve"
_ANSWER_COLUMNS = ("cell_id", "prompt_id", "sample_index", "info_hash", "expected", "model", "model_requested",
                   "messages", "content")  # responses keeps its prompt in `input`: not graded here
_RETRIEVAL_COLUMNS = ("cell_id", "hit_rank", "hits")
_SCOPE_TABLE = "gaia_evaluation_scope"
_LABEL_CHARS = 70

Scope = Mapping[str, Set[Tuple[str, Optional[str]]]]
"""Per table, the cells a run asked for: (``cell_id``, pinned node or None); see :meth:`Ledger.cells`."""


def run_scope(ledger: Ledger) -> Dict[str, Set[Tuple[str, Optional[str]]]]:
    """The cells of every evaluated table that a run asked for (completed, failed, refused or already done)."""
    return {table: ledger.cells(table) for table in (*ANSWER_TABLES, RETRIEVAL_TABLE)}


def prompt_label(custom_id: Optional[str], messages: Any) -> str:
    """How a prompt is named to a reader: its ``custom_id``, else its last user message (shortened)."""
    if custom_id:
        return custom_id
    parsed = json.loads(messages) if isinstance(messages, (str, bytes)) else messages
    users = [m.get("content") for m in parsed or [] if isinstance(m, dict) and m.get("role") == "user"]
    text = users[-1] if users else ""
    text = text if isinstance(text, str) else json.dumps(text)
    text = " ".join(text.split())
    return text if len(text) <= _LABEL_CHARS else text[: _LABEL_CHARS - 1] + "…"


def _query(client: Any, sql: str, *params: Any) -> List[Dict[str, Any]]:
    with client.execute_query(sql, *params) as cursor:
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _float(value: Any) -> Optional[float]:
    return None if value is None else float(value)


def _loaded(pipeline: dlt.Pipeline, table: str, columns: Sequence[str]) -> bool:
    """Whether ``table`` has been loaded with ``columns`` (datasets from older versions lack the evaluation ones)."""
    schema = pipeline.default_schema
    if table not in schema.data_table_names(seen_data_only=True):
        return False
    present = schema.get_table_columns(table)
    return all(column in present for column in columns)


@contextlib.contextmanager
def _scoped_client(pipeline: dlt.Pipeline, scope: Optional[Scope]) -> Iterator[Any]:
    """The pipeline's SQL client, with the run's cells in a temporary table when ``scope`` is given."""
    with pipeline.sql_client() as client:
        if scope is not None:
            client.execute_sql(f"CREATE TEMPORARY TABLE {_SCOPE_TABLE} (tbl varchar, cell_id varchar, node varchar)")
            values = [(table, cell_id, node) for table, cells in scope.items() for cell_id, node in sorted(
                cells, key=lambda c: (c[0], c[1] or ""))]
            for start in range(0, len(values), 500):
                chunk = values[start:start + 500]
                client.execute_sql(f"INSERT INTO {_SCOPE_TABLE} VALUES " + ", ".join(["(%s, %s, %s)"] * len(chunk)),
                                   *[v for row in chunk for v in row])
        try:
            yield client
        finally:
            if scope is not None:
                with contextlib.suppress(Exception):
                    client.execute_sql(f"DROP TABLE {_SCOPE_TABLE}")


def _from(client: Any, table: str, scope: Optional[Scope]) -> str:
    """``FROM <table> t`` restricted to the scope's cells of ``table`` (a pinned cell: only its node's rows)."""
    qualified = client.make_qualified_table_name(table)
    if scope is None:
        return f"FROM {qualified} t"
    return (f"FROM {qualified} t JOIN {_SCOPE_TABLE} s ON s.tbl = '{table}' AND s.cell_id = t.cell_id "
            "AND (s.node IS NULL OR s.node = t.node_url)")


def _newest(client: Any, table: str, scope: Optional[Scope], columns: str) -> str:
    """SQL of the answers that count: the newest completed answer of each cell — per target over the whole dataset
    (an older model's answers stay its own), per cell (and pinned node) in a run (what the node answers now)."""
    per = "s.node" if scope is not None else "t.node_url, t.model"
    return (f"SELECT DISTINCT ON (t.cell_id, {per}) {columns} {_from(client, table, scope)} "
            f"WHERE t.status = 'completed' ORDER BY t.cell_id, {per}, t.requested_at DESC")


def _targets(client: Any, table: str, scope: Optional[Scope]) -> List[Dict[str, Any]]:
    """Per target: answers, graded ones, passed ones, and samples per prompt."""
    columns = "t.node_url, t.model, t.model_requested, t.sample_index, t.expected, t.content"
    rows = _query(client, f"""
        WITH newest AS ({_newest(client, table, scope, columns)})
        SELECT node_url, model, model_requested, count(*) AS answers, count(expected) AS graded,
               count(*) FILTER (WHERE expected IS NOT NULL
                                AND strpos(lower(coalesce(content, '')), lower(expected)) > 0) AS passed,
               max(sample_index) + 1 AS samples
        FROM newest GROUP BY node_url, model, model_requested""")
    merged: Dict[Tuple[Optional[str], Optional[str]], Dict[str, Any]] = {}
    for row in rows:  # one target per (node, model answered); the names asked are listed beside it
        target = merged.setdefault((row["node_url"], row["model"]), {
            "table": table, "node_url": row["node_url"], "model": row["model"], "model_requested": [],
            "answers": 0, "graded": 0, "passed": 0, "samples": 0})
        if row["model_requested"] is not None and row["model_requested"] not in target["model_requested"]:
            target["model_requested"] = sorted([*target["model_requested"], row["model_requested"]])
        for name in ("answers", "graded", "passed"):
            target[name] += int(row[name])
        target["samples"] = max(target["samples"], int(row["samples"] or 0))
    for target in merged.values():
        target["pass_rate"] = target["passed"] / target["graded"] if target["graded"] else None
    return sorted(merged.values(), key=lambda t: (t["node_url"] or "", t["model"] or ""))


def _sampled(client: Any, table: str, scope: Optional[Scope]) -> List[Dict[str, Any]]:
    """Every prompt sampled more than once on one target and configuration, with its distinct answers."""
    columns = ("t.prompt_id, t.node_url, t.model, t.model_requested, t.info_hash, t.custom_id, t.content, "
               "CAST(t.messages AS TEXT) AS messages")
    rows = _query(client, f"""
        WITH newest AS ({_newest(client, table, scope, columns)})
        SELECT prompt_id, node_url, model, model_requested, info_hash, min(custom_id) AS custom_id,
               min(messages) AS messages, count(*) AS samples, count(DISTINCT content) AS distinct_answers
        FROM newest GROUP BY prompt_id, node_url, model, model_requested, info_hash HAVING count(*) > 1""")
    return sorted(({"table": table, "prompt_id": r["prompt_id"], "prompt": prompt_label(r["custom_id"], r["messages"]),
                    "node_url": r["node_url"], "model": r["model"], "model_requested": r["model_requested"],
                    "info_hash": r["info_hash"], "samples": int(r["samples"]),
                    "distinct_answers": int(r["distinct_answers"])} for r in rows),
                  key=lambda r: (-r["distinct_answers"], r["prompt"], r["node_url"] or "", r["model"] or ""))


def _drift(client: Any, table: str, scope: Optional[Scope]) -> List[Dict[str, Any]]:
    """Prompts one node answered under more than one configuration (``info_hash``), oldest configuration first."""
    rows = _query(client, f"""
        SELECT t.node_url, t.prompt_id, t.info_hash, t.model, min(t.custom_id) AS custom_id,
               min(CAST(t.messages AS TEXT)) AS messages, min(t.requested_at) AS first_at
        {_from(client, table, scope)} WHERE t.info_hash IS NOT NULL AND t.status = 'completed'
        GROUP BY t.node_url, t.prompt_id, t.info_hash, t.model""")
    groups: Dict[Tuple[str, str], List[Dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["node_url"], row["prompt_id"])].append(row)
    drifted = []
    for (node_url, prompt_id), generations in groups.items():
        if len({g["info_hash"] for g in generations}) < 2:
            continue
        generations.sort(key=lambda g: g["first_at"] or datetime.min)
        models: List[str] = []
        for generation in generations:
            if generation["model"] not in models:
                models.append(generation["model"])
        drifted.append({"table": table, "prompt_id": prompt_id,
                        "prompt": prompt_label(generations[0]["custom_id"], generations[0]["messages"]),
                        "node_url": node_url, "configurations": len({g["info_hash"] for g in generations}),
                        "models": models})
    return sorted(drifted, key=lambda d: (d["node_url"] or "", d["prompt"]))


def _retrieval(client: Any, scope: Optional[Scope], k: int) -> List[Dict[str, Any]]:
    """Per node: graded queries (the newest answer of each), hit@1, hit@k and MRR."""
    rows = _query(client, f"""
        WITH newest AS (
            SELECT DISTINCT ON (t.cell_id, t.node_url) t.node_url, t.hit_rank
            {_from(client, RETRIEVAL_TABLE, scope)} WHERE t.hits IS NOT NULL
            ORDER BY t.cell_id, t.node_url, t.retrieved_at DESC)
        SELECT node_url, count(*) AS queries,
               avg(CASE WHEN hit_rank <= 1 THEN 1.0 ELSE 0.0 END) AS hit_at_1,
               avg(CASE WHEN hit_rank <= {int(k)} THEN 1.0 ELSE 0.0 END) AS hit_at_k,
               avg(coalesce(1.0 / hit_rank, 0.0)) AS mrr
        FROM newest GROUP BY node_url ORDER BY node_url""")
    return [{"node_url": r["node_url"], "queries": int(r["queries"]), "hit_at_1": _float(r["hit_at_1"]),
             "hit_at_k": _float(r["hit_at_k"]), "mrr": _float(r["mrr"])} for r in rows]


def summarize(pipeline: dlt.Pipeline, scope: Optional[Scope] = None, k: int = HIT_K) -> Dict[str, Any]:
    """What the evaluation found, as JSON-ready data (schema: README, "Evaluating nodes and models").

    Args:
        pipeline: The pipeline whose dataset holds the answers.
        scope: Only the cells a run asked for (see :func:`run_scope`); None: the whole dataset.
        k: The k of ``hit_at_k``.

    Returns:
        ``targets`` (one per table, node and model answered: answers, graded, passed, ``pass_rate``, samples,
        ``sampled_prompts``, ``flaky_prompts``, ``drifted_prompts``), ``flaky`` (sampled prompts with more than one
        distinct answer), ``retrieval`` (per node), ``drift`` (prompts answered under several configurations of one
        node), and ``evaluated``: whether any of them has something to say (expected answers, samples, graded
        queries, drift).
    """
    summary: Dict[str, Any] = {
        "version": SUMMARY_VERSION, "pipeline": pipeline.pipeline_name, "dataset": pipeline.dataset_name,
        "scope": "dataset" if scope is None else "run", "match": MATCH_RULE, "k": k,
        "targets": [], "flaky": [], "retrieval": [], "drift": [],
    }
    answer_tables = [t for t in ANSWER_TABLES if _loaded(pipeline, t, _ANSWER_COLUMNS)
                     and (scope is None or scope.get(t))]
    retrieval = _loaded(pipeline, RETRIEVAL_TABLE, _RETRIEVAL_COLUMNS) and (scope is None or scope.get(RETRIEVAL_TABLE))
    sampled: List[Dict[str, Any]] = []
    if answer_tables or retrieval:
        with _scoped_client(pipeline, scope) as client:
            for table in answer_tables:
                summary["targets"] += _targets(client, table, scope)
                sampled += _sampled(client, table, scope)
                summary["drift"] += _drift(client, table, scope)
            if retrieval:
                summary["retrieval"] = _retrieval(client, scope, k)
    summary["flaky"] = [s for s in sampled if s["distinct_answers"] > 1]
    for target in summary["targets"]:
        key = (target["table"], target["node_url"], target["model"])
        target["sampled_prompts"] = sum(1 for s in sampled if (s["table"], s["node_url"], s["model"]) == key)
        target["flaky_prompts"] = sum(1 for s in summary["flaky"] if (s["table"], s["node_url"], s["model"]) == key)
        target["drifted_prompts"] = sum(1 for d in summary["drift"] if (d["table"], d["node_url"]) == key[:2]
                                        and target["model"] in d["models"])
    summary["evaluated"] = bool(any(t["graded"] for t in summary["targets"]) or sampled or summary["retrieval"]
                                or summary["drift"])
    return summary


def target_label(node_url: Optional[str], model: Optional[str]) -> str:
    """A target as a reader sees it: ``host:port/v1 · model``."""
    node = (node_url or "?").removeprefix("http://").removeprefix("https://")
    return f"{node} · {model or '?'}"


def side_by_side(pipeline: dlt.Pipeline, table: str = "chat_completions",
                 limit: int = 200) -> Tuple[List[str], List[Dict[str, Any]]]:
    """Sample 0 of every prompt, one column per target (the newest answer of each), at most ``limit`` prompts.

    Returns:
        The target labels (columns), and one row per prompt: ``prompt``, ``expected`` and ``answers`` by label.
    """
    if not _loaded(pipeline, table, _ANSWER_COLUMNS):
        return [], []
    with pipeline.sql_client() as client:
        columns = ("t.prompt_id, t.node_url, t.model, t.sample_index, t.custom_id, t.expected, t.content, "
                   "CAST(t.messages AS TEXT) AS messages, t.requested_at")
        rows = _query(client, f"WITH newest AS ({_newest(client, table, None, columns)}) "
                              "SELECT * FROM newest WHERE sample_index = 0 ORDER BY requested_at")
    labels = sorted({target_label(r["node_url"], r["model"]) for r in rows})
    prompts: Dict[str, Dict[str, Any]] = {}
    for row in rows:
        prompt = prompts.setdefault(row["prompt_id"], {"prompt": prompt_label(row["custom_id"], row["messages"]),
                                                       "expected": row["expected"], "answers": {}})
        prompt["answers"][target_label(row["node_url"], row["model"])] = row["content"]
    return labels, sorted(prompts.values(), key=lambda p: str(p["prompt"]))[:limit]


def drift_changes(pipeline: dlt.Pipeline, table: str = "chat_completions") -> List[Dict[str, Any]]:
    """Sample 0 of each prompt a node answered under more than one configuration: its first and its newest answer."""
    if not _loaded(pipeline, table, _ANSWER_COLUMNS):
        return []
    with pipeline.sql_client() as client:
        qualified = client.make_qualified_table_name(table)
        rows = _query(client, f"""
            SELECT t.node_url, t.prompt_id, t.model, t.info_hash, t.custom_id, CAST(t.messages AS TEXT) AS messages,
                   t.content, t.requested_at
            FROM {qualified} t JOIN (
                SELECT node_url, prompt_id FROM {qualified} WHERE status = 'completed' AND info_hash IS NOT NULL
                GROUP BY node_url, prompt_id HAVING count(DISTINCT info_hash) > 1) d
              ON d.node_url = t.node_url AND d.prompt_id = t.prompt_id
            WHERE t.status = 'completed' AND t.sample_index = 0 ORDER BY t.requested_at""")
    pairs: Dict[Tuple[str, str], List[Dict[str, Any]]] = defaultdict(list)
    for row in rows:
        pairs[(row["node_url"], row["prompt_id"])].append(row)
    return [{"prompt": prompt_label(first["custom_id"], first["messages"]), "node_url": node_url,
             "model_before": first["model"], "model_after": last["model"], "before": first["content"],
             "after": last["content"], "changed": first["content"] != last["content"]}
            for (node_url, _), found in sorted(pairs.items()) for first, last in [(found[0], found[-1])]]
