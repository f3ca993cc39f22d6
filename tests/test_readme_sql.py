"""Every ```sql block of README.md runs as printed on an evaluation run's data (two nodes with different models,
three samples, expected answers, graded queries, a model swap), and one value of each statement is checked: the SQL a
reader copies says what the README says it does."""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Tuple

import duckdb
import numpy as np
import pytest
from conftest import EVAL_MODELS, EVAL_PROMPTS, EVAL_TEXTS, REPO_ROOT, EvaluationRun, passes

from gaia_source.emulator import KNOWLEDGE_BASE, answer_for, embed_text

GRADED = [p for p in EVAL_PROMPTS if "expected" in p]
SAMPLES = 3
QUERY = "Where is Paris located?"


def readme_statements() -> List[Tuple[str, str]]:
    """(the comment line that introduces it, the statement) for every statement of every ```sql block."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    found = []
    for block in re.findall(r"^```sql\n(.*?)^```", readme, re.S | re.M):
        for statement in re.split(r";[ \t]*$", block, flags=re.M):  # a statement ends with ; at the end of a line
            lines = [line for line in statement.strip().splitlines() if line.strip()]
            if not lines:
                continue
            assert lines[0].startswith("-- "), f"a README SQL statement without a comment saying what it is: {lines}"
            found.append((lines[0][3:].strip(), statement.strip()))
    return found


Check = Callable[[List[tuple], EvaluationRun], None]


def _answers_per_model(rows: List[tuple], run: EvaluationRun) -> None:
    assert {model: answers for model, answers, *_ in rows} == {model: len(GRADED) * SAMPLES for model in EVAL_MODELS}


def _live_ttft(rows: List[tuple], run: EvaluationRun) -> None:
    # the live streams of the 36 answers (a stream too quick to tell from a replay has no stream_mode), slowest first
    ttfts = [ttft for _, ttft, *_ in rows]
    assert 0 < len(rows) <= 3 * len(GRADED) * SAMPLES and ttfts == sorted(ttfts, reverse=True)
    assert all(0 < ttft <= duration for _, ttft, duration, _ in rows)


def _retrieval_points(rows: List[tuple], run: EvaluationRun) -> None:
    assert {source for query, rank, _, source in rows if query == QUERY and rank == 1} == {KNOWLEDGE_BASE[0]}


def _nearest_texts(rows: List[tuple], run: EvaluationRun) -> None:
    assert rows[0][0] == EVAL_TEXTS[0]["text"] and rows[0][1] == pytest.approx(1.0)


def _side_by_side(rows: List[tuple], run: EvaluationRun) -> None:
    by_id = {custom_id: (node_a, node_b) for custom_id, node_a, node_b in rows}
    assert set(by_id) == {p["custom_id"] for p in GRADED}
    question = next(p["prompt"] for p in GRADED if p["custom_id"] == "model")
    # node A samples (an ending may follow); node B answers with the model it serves now
    assert by_id["model"][0].startswith(answer_for(question, EVAL_MODELS[0]))
    assert by_id["model"][1] == answer_for(question, EVAL_MODELS[2])


def _pass_rates(rows: List[tuple], run: EvaluationRun) -> None:
    assert {(node, model): (asked, rate, answers) for node, model, asked, rate, answers in rows} == {
        (node.base_url, model): (EVAL_MODELS[0], sum(passes(p, model) for p in GRADED) / len(GRADED),
                                 len(GRADED) * SAMPLES)
        for node, model in ((run.a, EVAL_MODELS[0]), (run.b, EVAL_MODELS[1]), (run.b, EVAL_MODELS[2]))}
    assert rows[0][1] == EVAL_MODELS[2]  # the best: only Qwen names itself


def _flaky(rows: List[tuple], run: EvaluationRun) -> None:
    # only node A samples; node B's model swap is not flakiness (another info_hash), whatever its answers
    assert rows and {(node, model, samples) for _, _, node, model, samples, _ in rows} == {
        (run.a.base_url, EVAL_MODELS[0], SAMPLES)}
    with duckdb.connect(str(run.db), read_only=True) as db:
        distinct = dict(db.sql("SELECT prompt_id, count(DISTINCT content) FROM gaia_data.chat_completions "
                               f"WHERE node_url = '{run.a.base_url}' GROUP BY prompt_id").fetchall())
    assert {prompt_id: n for prompt_id, _, _, _, _, n in rows} == {p: n for p, n in distinct.items() if n > 1}


def _retrieval(rows: List[tuple], run: EvaluationRun) -> None:
    # each node, the same three queries once (node B's were sent again after its swap: the newest counts)
    assert {node: (queries, hit_1, hit_3, mrr) for node, hit_1, hit_3, mrr, queries in rows} == {
        node.base_url: (3, pytest.approx(2 / 3), pytest.approx(2 / 3), pytest.approx(2 / 3)) for node in (run.a, run.b)}


def _drift(rows: List[tuple], run: EvaluationRun) -> None:
    assert len(rows) == len(GRADED) * SAMPLES
    assert {(before, after) for _, before, after, _, _ in rows} == {(EVAL_MODELS[1], EVAL_MODELS[2])}
    question = next(p["prompt"] for p in GRADED if p["custom_id"] == "river")
    assert {(old, new) for custom_id, _, _, old, new in rows if custom_id == "river"} == {
        (answer_for(question, EVAL_MODELS[1]), answer_for(question, EVAL_MODELS[2]))}


def _top_k(rows: List[tuple], run: EvaluationRun) -> None:
    assert rows[0][0] == "doc-1" and len(rows) == len(EVAL_TEXTS)


CHECKS: Dict[str, Check] = {
    "answers, tokens and speed per model": _answers_per_model,
    "time to first token, slowest first": _live_ttft,
    "retrieval results for RAG evaluation": _retrieval_points,
    "nearest texts to a stored vector": _nearest_texts,
    "answers side by side": _side_by_side,
    "pass rate against expected": _pass_rates,
    "flaky prompts": _flaky,
    "retrieval hit@1, hit@3 and MRR per node": _retrieval,
    "drift": _drift,
    "DuckDB: top 5 for a query vector": _top_k,
}
"""One check per README statement, by the start of its comment line."""
POSTGRES = "PostgreSQL + pgvector"


def _check_for(comment: str) -> Check:
    matching = [check for start, check in CHECKS.items() if comment.startswith(start)]
    assert len(matching) == 1, f"README SQL statement '-- {comment}' has no check in {__file__}: add one"
    return matching[0]


def test_every_readme_sql_statement_runs_on_an_evaluation_run(evaluation_run: EvaluationRun) -> None:
    statements = [(c, s) for c, s in readme_statements() if not c.startswith(POSTGRES)]
    assert len(statements) == len(CHECKS)
    vector = embed_text(QUERY, 768).astype(np.float64).tolist()
    with duckdb.connect(str(evaluation_run.db), read_only=True) as db:
        for comment, statement in statements:
            check = _check_for(comment)
            sql = statement.replace("http://node-a:8080/v1", evaluation_run.a.base_url).replace(
                "http://node-b:8080/v1", evaluation_run.b.base_url)  # the README's example URLs: the user's nodes
            params: List[Any] = [vector] * sql.count("?")
            check(db.execute(sql, params).fetchall(), evaluation_run)


def test_the_readme_pgvector_statement_runs_on_postgresql(make_node, pgvector_pipeline) -> None:
    from gaia_source import gaia_source

    [(_, statement)] = [(c, s) for c, s in readme_statements() if c.startswith(POSTGRES)]
    node = make_node("rag")
    pipeline = pgvector_pipeline
    pipeline.run(gaia_source(base_url=node.base_url, texts=EVAL_TEXTS).with_resources("embeddings"))
    vector = str(embed_text(QUERY, 768).astype(np.float64).tolist())
    sql = statement.replace("gaia_data.", f"{pipeline.dataset_name}.")  # the test's own dataset
    with pipeline.sql_client() as client:
        rows = client.execute_sql(sql, vector, vector)
    assert len(rows) == len(EVAL_TEXTS) and rows[0][:2] == ("doc-1", EVAL_TEXTS[0]["text"])
    scores = [float(r[2]) for r in rows]
    assert scores == sorted(scores, reverse=True) and scores[0] == pytest.approx(
        float(np.dot(embed_text(QUERY, 768), embed_text(EVAL_TEXTS[0]["text"], 768))), abs=1e-5)
