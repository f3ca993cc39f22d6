"""A run loaded in parts (``rows_per_load``, the script's ``--rows-per-load``): several dlt loads, one run.

Each test drives what a user does (the script, or ``run_pipeline`` from Python) against emulated nodes, into DuckDB,
and checks after every run that each input has exactly one row, that nothing was sent twice, and that the run's
record (``gaia_runs``, the ledger, the printed counts) names every part.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import duckdb
import pytest
from conftest import SCRIPT, query, run_cli, table_rows

from gaia_source import gaia_source
from gaia_source.ledger import Ledger
from gaia_source.lifecycle import run_pipeline


def _runs(db: Path) -> List[Dict[str, Any]]:
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute("SELECT exit_code, load_ids, row_counts FROM gaia_data.gaia_runs ORDER BY started_at")
        return [{"exit_code": code, "load_ids": json.loads(ids), "row_counts": json.loads(counts or "{}")}
                for code, ids, counts in rows.fetchall()]


def _loads_of(db: Path, table: str) -> Dict[str, int]:
    """Rows of ``table`` per dlt load id."""
    with duckdb.connect(str(db), read_only=True) as con:
        return dict(con.execute(f"SELECT _dlt_load_id, count(*) FROM gaia_data.{table} GROUP BY 1").fetchall())


def test_the_script_loads_a_run_in_parts_and_records_every_part(make_node, tmp_path: Path) -> None:
    node = make_node("nexus", dim=8)
    prompts = [f"Question number {i}?" for i in range(23)]
    (tmp_path / "p.txt").write_text("".join(p + "\n" for p in prompts))
    (tmp_path / "t.txt").write_text("".join(f"Text number {i}\n" for i in range(70)))
    args = ["--base-url", node.base_url, "--prompts-file", "p.txt", "--texts-file", "t.txt",
            "--resources", "chat_completions,embeddings", "--rows-per-load", "10", "--progress", "none"]
    run = run_cli(tmp_path, *args, env={"SOURCES__GAIA_SOURCE__EMBEDDING_BATCH_SIZE": "8"})
    assert run.returncode == 0, run.stderr
    db = tmp_path / "gaia_pipeline.duckdb"
    [record] = _runs(db)
    chat_loads = _loads_of(db, "chat_completions")
    # 93 rows in parts of 10: the chat rows come one per answer; the 70 vectors come as one Arrow table
    assert len(record["load_ids"]) >= 3 and set(chat_loads) <= set(record["load_ids"]), (record, chat_loads)
    assert sum(chat_loads.values()) == 23 and len(chat_loads) >= 2
    assert record["row_counts"] == {"chat_completions": 23, "embeddings": 70}  # every part, not the last one
    assert re.search(r"^chat_completions +23 +23$", run.stdout, re.M), run.stdout  # this run / in dataset
    assert re.search(r"^embeddings +70 +70$", run.stdout, re.M), run.stdout
    assert f"Part {len(record['load_ids'])} of {len(record['load_ids'])}:" in run.stdout
    with duckdb.connect(str(db), read_only=True) as con:
        asked = [json.loads(m)[-1]["content"] for (m,) in con.execute(
            "SELECT messages FROM gaia_data.chat_completions").fetchall()]
        texts = [t for (t,) in con.execute("SELECT text FROM gaia_data.embeddings").fetchall()]
    assert sorted(asked) == sorted(prompts) and sorted(texts) == sorted(f"Text number {i}" for i in range(70))
    assert node.requests_to("/v1/chat/completions") == 23 and node.requests_to("/v1/embeddings") == 9  # 70 / 8

    again = run_cli(tmp_path, *args, env={"SOURCES__GAIA_SOURCE__EMBEDDING_BATCH_SIZE": "8"})
    assert again.returncode == 0, again.stderr
    assert node.requests_to("/v1/chat/completions") == 23 and node.requests_to("/v1/embeddings") == 9  # nothing sent
    assert sum(_loads_of(db, "chat_completions").values()) == 23
    listed = run_cli(tmp_path, "runs", "--json")
    assert listed.returncode == 0, listed.stderr
    entries = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [e["exit_code"] for e in entries] == [0, 0]  # two runs; no load listed apart as a run nobody recorded
    assert set(entries[1]["loads"]) == set(record["load_ids"]) and set(entries[1]["loads"].values()) == {"loaded"}


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stopped_run_keeps_the_parts_loaded_and_the_next_run_sends_the_rest(make_node, tmp_path, stop) -> None:
    """Ctrl-C, or a scheduler's SIGTERM, while the run extracts or loads a part."""
    node = make_node("rag", latency_ms=100)  # one request at a time: 40 prompts take 4 s or more
    prompts = [f"Question {i}?" for i in range(40)]
    (tmp_path / "p.txt").write_text("".join(p + "\n" for p in prompts))
    args = ["--base-url", node.base_url, "--prompts-file", "p.txt", "--resources", "chat_completions",
            "--rows-per-load", "5", "--max-concurrency", "1", "--progress", "none"]
    run = subprocess.Popen([sys.executable, SCRIPT, *args], cwd=tmp_path, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while node.requests_to("/v1/chat/completions") < 17 and time.monotonic() < deadline:  # parts 1 and 2 loaded
        time.sleep(0.02)
    interrupted = time.monotonic()
    run.send_signal(stop)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 130, out + err
    assert time.monotonic() - interrupted < 10
    db = tmp_path / "gaia_pipeline.duckdb"
    [record] = _runs(db)
    loaded = _loads_of(db, "chat_completions")
    # the parts that finished are recorded; one more may have been loading (its rows in, not yet marked loaded)
    assert record["exit_code"] == 130 and len(record["load_ids"]) >= 2, record
    assert set(record["load_ids"]) <= set(loaded) and len(loaded) - len(record["load_ids"]) <= 1, (record, loaded)
    assert all(loaded[load_id] == 5 for load_id in record["load_ids"])  # whole parts
    sent = node.requests_to("/v1/chat/completions")

    again = run_cli(tmp_path, *args)
    assert again.returncode == 0, again.stderr
    pending = re.findall(r"left by an interrupted run \(([\d., ]+)\)", again.stderr)
    [_, second] = _runs(db)
    own = set(second["load_ids"]) - {i.strip() for ids in pending for i in ids.split(",")}
    added = sum(n for load_id, n in _loads_of(db, "chat_completions").items() if load_id in own)
    assert node.requests_to("/v1/chat/completions") - sent == added == 40 - sum(loaded.values()) - 5 * len(pending)
    with duckdb.connect(str(db), read_only=True) as con:  # every prompt once
        rows = con.execute("SELECT count(*), count(DISTINCT cell_id), count(DISTINCT request_id) "
                           "FROM gaia_data.chat_completions").fetchone()
    assert rows == (40, 40, 40)


def test_run_pipeline_in_parts_then_in_one_load_from_python(make_node, make_pipeline) -> None:
    node = make_node("nexus")
    pipeline = make_pipeline()
    prompts = [f"Prompt {i}" for i in range(12)]
    ledger = Ledger()
    result = run_pipeline(pipeline, gaia_source(base_url=node.base_url, prompts=prompts, ledger=ledger,
                                                resources=["chat_completions"]), ledger, rows_per_load=5)
    assert [sum(info.loads_ids.__len__() for info in [load]) for load in result.loads] == [1, 1, 1]
    assert ledger.load_ids == result.load_ids and len(set(ledger.load_ids)) == 3
    per_load = dict(query(pipeline, "SELECT _dlt_load_id, count(*) FROM chat_completions GROUP BY 1"))
    assert [per_load[load_id] for load_id in ledger.load_ids] == [5, 5, 2]
    assert ledger.row_counts == {"chat_completions": 12} and ledger.tallies()["chat_completions"].outcomes[
        "completed"] == 12
    # the same source object, run again by dlt itself: one load, everything in it (a refresh sends all again)
    source = gaia_source(base_url=node.base_url, prompts=prompts, refresh=True, resources=["chat_completions"])
    info = pipeline.run(source)
    assert len(info.loads_ids) == 1 and node.requests_to("/v1/chat/completions") == 24
    assert query(pipeline, "SELECT count(*), count(DISTINCT request_id) FROM chat_completions") == [(12, 12)]
    assert query(pipeline, "SELECT count(*) FROM chat_completions WHERE _dlt_load_id = ?", info.loads_ids[0]) == [
        (12,)]


def test_a_cut_answer_sent_again_in_a_later_part_replaces_its_row(make_node, make_pipeline) -> None:
    node = make_node("rag", fault_rate=1.0, fault_kinds=("truncate",))
    pipeline = make_pipeline()
    cut_prompt = "What is a Gaia node?"
    settings: Dict[str, Any] = {"max_attempts": 1, "retry_rounds": 0, "max_concurrency": 1}
    pipeline.run(gaia_source(base_url=node.base_url, prompts=[cut_prompt], **settings)
                 .with_resources("chat_completions_stream"))
    [cut] = table_rows(pipeline, "chat_completions_stream", "request_id")
    assert cut["status"] == "interrupted"
    node.fault_rate = 0.0
    prompts = [f"Question {i}?" for i in range(7)] + [cut_prompt] + [f"Question {i}?" for i in range(7, 10)]
    ledger = Ledger()
    source = gaia_source(base_url=node.base_url, prompts=prompts, ledger=ledger, **settings)
    result = run_pipeline(pipeline, source.with_resources("chat_completions_stream"), ledger, rows_per_load=3)
    assert len(result.loads) == 4  # 3 + 3 + 3 + 2: the cut prompt is re-sent in the third part
    rows = table_rows(pipeline, "chat_completions_stream", "request_id")
    assert len(rows) == len({r["request_id"] for r in rows}) == 11
    [done] = [r for r in rows if r["request_id"] == cut["request_id"]]
    assert done["status"] == "completed" and done["content"].startswith("A Gaia node is")
    assert query(pipeline, "SELECT count(*) FROM failed_requests") == [(0,)]
    assert pipeline.default_schema.get_table("chat_completions_stream")["write_disposition"] == "merge"


def test_documents_whose_chunks_span_two_parts_are_synced_as_one(make_node, make_pipeline) -> None:
    """Chunk sync runs once, after the last part: a document cut between two parts keeps every chunk of this run
    and loses every chunk of the last one."""
    node = make_node("nexus", dim=4)
    pipeline = make_pipeline()

    def documents(version: str, chunks: int) -> List[Dict[str, Any]]:  # 100 documents of `chunks` chunks each
        return [{"text": " ".join(f"{version}{d}w{c}" for c in range(chunks)), "document_id": f"doc{d}"}
                for d in range(100)]

    def run(version: str, chunks: int) -> Any:
        ledger = Ledger()
        source = gaia_source(base_url=node.base_url, texts=documents(version, chunks), chunk_size=8,
                             embedding_batch_size=64, ledger=ledger, resources=["embeddings"])
        return run_pipeline(pipeline, source, ledger, rows_per_load=5_000)

    first = run("a", 120)  # 12,000 chunks; the vectors come in Arrow tables of 5,056 rows (79 requests of 64)
    assert len(first.loads) == 3
    assert query(pipeline, "SELECT count(*), count(DISTINCT document_id) FROM embeddings") == [(12_000, 100)]
    second = run("b", 60)  # every document edited: 60 new chunks each, the old 120 deleted after the last part
    assert len(second.loads) == 2
    assert query(pipeline, "SELECT count(*), count(DISTINCT document_id), min(chunk_index), max(chunk_index) "
                           "FROM embeddings") == [(6_000, 100, 0, 59)]
    assert query(pipeline, "SELECT count(*) FROM embeddings WHERE text LIKE 'a%'") == [(0,)]
    assert query(pipeline, "SELECT count(*) FROM embeddings WHERE document_id = 'doc42' AND text LIKE 'b42w%'") == [
        (60,)]


def test_failures_found_in_a_later_part_are_deleted_once_their_cells_complete(
        make_node, make_pipeline, monkeypatch) -> None:
    """The cells failing since an earlier run are kept in dlt's source state, which each part's load commits anew:
    a failure written, or found in the destination, while a later part extracts must reach that part's state, and
    a cell completed in a later part must delete its failure row."""
    from gaia_source import destination

    monkeypatch.setattr(destination, "LOOKUP_BATCH", 4)  # lookups a batch of 4 prompts at a time: spread over parts
    node = make_node("nexus", outage=503)
    pipeline = make_pipeline()
    prompts = [f"Question {i}?" for i in range(12)]
    settings: Dict[str, Any] = {"max_attempts": 1, "retry_rounds": 0, "max_concurrency": 1}

    def run() -> Ledger:
        ledger = Ledger()
        source = gaia_source(base_url=node.base_url, prompts=prompts, ledger=ledger, resources=["chat_completions"],
                             **settings)
        run_pipeline(pipeline, source, ledger, rows_per_load=3)
        return ledger

    failed = run()
    assert failed.tallies()["chat_completions"].outcomes["failed"] == 12
    assert query(pipeline, "SELECT count(*) FROM failed_requests") == [(12,)]
    assert sorted(pipeline.state["sources"]["gaia_source"]["failed_requests"]) == sorted(
        r for (r,) in query(pipeline, "SELECT request_id FROM failed_requests"))  # every part's failures kept
    node.outage = None
    fixed = run()
    assert fixed.tallies()["chat_completions"].outcomes["completed"] == 12
    assert node.requests_to("/v1/chat/completions") == 24
    assert query(pipeline, "SELECT count(*), count(DISTINCT cell_id) FROM chat_completions") == [(12, 12)]
    assert query(pipeline, "SELECT count(*) FROM failed_requests") == [(0,)]  # no row left for a completed cell
    assert pipeline.state["sources"]["gaia_source"].get("failed_requests") == {}


def test_a_negative_rows_per_load_is_a_clear_error_before_anything_is_sent(make_node, make_pipeline,
                                                                           tmp_path: Path) -> None:
    node = make_node("nexus")
    (tmp_path / "p.txt").write_text("One?\nTwo?\n")
    run = run_cli(tmp_path, "--base-url", node.base_url, "--prompts-file", "p.txt", "--resources", "chat_completions",
                  "--rows-per-load", "-5", "--progress", "none")
    assert run.returncode == 2, run.stderr
    assert "--rows-per-load: must be 0 (one load) or more, got -5" in run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "gaia_pipeline.duckdb").exists()
    assert sum(node.stats.values()) == 0
    pipeline = make_pipeline()
    source = gaia_source(base_url=node.base_url, prompts=["One?"], resources=["chat_completions"])
    try:
        run_pipeline(pipeline, source, rows_per_load=-1)
        raise AssertionError("a negative rows_per_load was accepted")
    except ValueError as exc:
        assert "rows_per_load must be >= 1" in str(exc)
    assert sum(node.stats.values()) == 0 and not pipeline.has_pending_data


def test_runs_lists_the_status_of_every_part_of_a_run_with_many_parts(make_node, tmp_path: Path) -> None:
    """``runs`` reads the newest loads to find those no run recorded; a run's own parts are looked up whatever their
    number (here 12 parts, more than the 4 loads per listed run it reads for orphans)."""
    node = make_node("nexus")
    (tmp_path / "p.txt").write_text("".join(f"Question {i}?\n" for i in range(12)))
    run = run_cli(tmp_path, "--base-url", node.base_url, "--prompts-file", "p.txt", "--resources", "chat_completions",
                  "--rows-per-load", "1", "--progress", "none")
    assert run.returncode == 0, run.stderr
    [record] = _runs(tmp_path / "gaia_pipeline.duckdb")
    assert len(record["load_ids"]) == 12
    listed = run_cli(tmp_path, "runs", "--json", "--limit", "1")
    assert listed.returncode == 0, listed.stderr
    [entry] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert entry["exit_code"] == 0 and entry["loads"] == {load_id: "loaded" for load_id in record["load_ids"]}


def test_run_pipeline_leaves_the_pipelines_steps_as_it_found_them(make_node, make_pipeline) -> None:
    """It notes Ctrl-C around dlt's normalize and load steps, and puts back what was there: a caller's own wrapper."""
    node = make_node("nexus")
    pipeline = make_pipeline()
    normalize, calls = pipeline.normalize, []

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return normalize(*args, **kwargs)

    pipeline.normalize = counted  # type: ignore[method-assign]
    source = gaia_source(base_url=node.base_url, prompts=["a?", "b?", "c?"], resources=["chat_completions"])
    assert len(run_pipeline(pipeline, source, rows_per_load=2).loads) == 2
    assert len(calls) == 2 and pipeline.normalize is counted and "load" not in vars(pipeline)
    assert query(pipeline, "SELECT count(*) FROM chat_completions") == [(3,)]
