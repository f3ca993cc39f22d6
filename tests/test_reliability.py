"""Faults survived, bad node answers recorded, retries as documented, shards that add up, nothing lost or doubled."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from conftest import node_pool, query, table_rows

from gaia_source import GaiaRequestError, gaia_source
from gaia_source.emulator import FAULT_KINDS, MALFORMED, MALFORMED_STREAMS
from gaia_source.ledger import COMPLETED, FAILED, Ledger

SOAK = {"timeout": 0.3, "max_attempts": 10, "retry_backoff": 0.01, "retry_max_wait": 0.05, "max_concurrency": 8}


def test_500_prompts_and_5000_texts_through_a_30_percent_fault_rate(make_node, make_pipeline) -> None:
    node = make_node("nexus", fault_rate=0.3, fault_seed=7, slow_ms=600)
    pipeline = make_pipeline()
    prompts = [f"Question number {i}?" for i in range(500)]
    texts = [f"Text number {i} about rivers and nodes." for i in range(5000)]
    source = gaia_source(base_url=node.base_url, prompts=prompts, texts=texts, chat_model="Qwen3-4B",
                         embedding_model="Nomic-embed-text-v1.5", **SOAK)
    pipeline.run(source.with_resources("chat_completions", "chat_completions_stream", "embeddings")).raise_on_failed_jobs()
    kinds = {kind for kind in FAULT_KINDS if node.stats[f"fault {kind}"] > 0}
    assert kinds == set(FAULT_KINDS) and node.faults() > 400  # every kind of fault really happened
    for table in ("chat_completions", "chat_completions_stream"):
        rows = query(pipeline, f"SELECT count(*), count(DISTINCT request_id), count(*) FILTER (WHERE status = 'completed') "
                               f"FROM {table}")
        assert rows == [(500, 500, 500)], table
    contents = {c for c, in query(pipeline, "SELECT content FROM chat_completions_stream")}
    assert contents == {f"Qwen3-4B answers: {p}" for p in prompts}  # every stream complete, none truncated
    assert query(pipeline, "SELECT count(*), count(DISTINCT text) FROM embeddings") == [(5000, 5000)]
    tables = {t for t, in query(pipeline, "SELECT table_name FROM information_schema.tables")}
    assert "failed_requests" not in tables or query(pipeline, "SELECT count(*) FROM failed_requests") == [(0,)]
    [(sent,)] = query(pipeline, "SELECT sum(attempts) FROM chat_completions")
    assert sent > 500  # the faults cost retries: counted in the rows
    assert query(pipeline, "SELECT max(attempts) FROM chat_completions_stream")[0][0] > 1


CHAT_CASES = sorted(name for name in MALFORMED if not name.startswith(("emb-", "ret-")))
EMB_CASES = sorted(name for name in MALFORMED if name.startswith("emb-"))
RET_CASES = sorted(name for name in MALFORMED if name.startswith("ret-"))


def test_malformed_responses_are_recorded_errors_and_the_rest_loads(make_node, make_pipeline) -> None:
    assert len(MALFORMED) + len(MALFORMED_STREAMS) >= 30
    node = make_node("rag")
    pipeline = make_pipeline()
    source = gaia_source(
        base_url=node.base_url, max_attempts=1, embedding_batch_size=1,
        prompts=["What is the capital of France?", *(f"bad [[malformed:{c}]]" for c in [*CHAT_CASES, "huge"])],
        texts=["A good text.", *(f"bad [[malformed:{c}]]" for c in EMB_CASES)],
        queries=["Where is Paris located?", *(f"bad [[malformed:{c}]]" for c in RET_CASES)],
        max_response_mb=1,
    )
    pipeline.run(source.with_resources("chat_completions", "embeddings", "retrieve")).raise_on_failed_jobs()
    assert query(pipeline, "SELECT content FROM chat_completions") == [("Paris is the capital of France.",)]
    assert query(pipeline, "SELECT text FROM embeddings") == [("A good text.",)]
    assert query(pipeline, "SELECT query FROM retrieve") == [("Where is Paris located?",)]
    failed = table_rows(pipeline, "failed_requests", "resource, request_id")
    assert len(failed) == len(CHAT_CASES) + 1 + len(EMB_CASES) + len(RET_CASES)
    by_case = {}
    for row in failed:
        import json

        body = json.loads(row["request_body"])
        text = body["messages"][-1]["content"] if "messages" in body else body["input"][0]
        by_case[text.split("malformed:")[1].rstrip("]")] = row["error_message"]
    for case, message in by_case.items():
        assert node.base_url in message and "Traceback" not in message and len(message) < 700, (case, message)
    expectations = {
        "not-json": "not JSON", "empty-body": "not JSON", "truncated-json": "not JSON", "nan-number": "not JSON",
        "invalid-utf8": "not JSON", "deep-nesting": "not JSON", "json-array": "expected a JSON object",
        "html-200": "HTML page: Maintenance", "choices-null": "'choices' is None", "choices-empty": "'choices' is []",
        "choice-string": "choices[0].message is missing", "message-null": "choices[0].message is missing",
        "content-number": "choices[0].message.content is int 42, not text", "usage-strings": "usage.prompt_tokens is str",
        "usage-list": "usage is list", "model-number": "model is int 7, not text", "created-string": "created is str",
        "finish-number": "finish_reason is int", "error-200": "answered HTTP 200 with an error: model overloaded",
        "html-500": "HTTP 500", "text-400": "HTTP 400): 400 Bad Request: Fail to deserialize",
        "huge": "larger than max_response_mb = 1", "emb-data-null": "'data' list", "emb-too-few": "0 embeddings for 1 inputs",
        "emb-strings": "not equal-length lists of numbers", "emb-empty-vector": "non-empty lists of numbers",
        "emb-index-out-of-range": "data[0].index is 5", "ret-string": "expected a list or an object",
        "ret-points-string": "'points' is not a list", "ret-point-no-source": "a point has no 'source'",
    }
    for case, snippet in expectations.items():
        assert snippet in by_case[case], (case, by_case[case])
    assert "json_value" not in by_case["text-400"]  # the request echo is cut from 400 bodies


def test_malformed_streams_are_error_rows_with_their_partial_text(make_node, make_pipeline) -> None:
    node = make_node("rag")
    pipeline = make_pipeline()
    prompts = ["What is a Gaia node?", *(f"bad [[malformed:{c}]]" for c in MALFORMED_STREAMS), "bad [[malformed:not-json]]"]
    source = gaia_source(base_url=node.base_url, prompts=prompts, max_attempts=1)
    pipeline.run(source.with_resources("chat_completions_stream")).raise_on_failed_jobs()
    rows = {r["messages"].split("malformed:")[-1].split("]")[0] if "malformed" in r["messages"] else "good": r
            for r in table_rows(pipeline, "chat_completions_stream", "request_id")}
    assert rows["good"]["status"] == "completed"
    assert rows["sse-garbage"]["status"] == "error" and rows["sse-garbage"]["content"] == "Par"
    assert "chunk 2 is not JSON" in rows["sse-garbage"]["error"]
    assert "not a JSON object" in rows["sse-array"]["error"]
    assert "'choices' of type str" in rows["sse-choices-string"]["error"]
    assert "'delta' of type str" in rows["sse-delta-string"]["error"]
    assert rows["sse-no-done"]["status"] == "interrupted" and rows["sse-no-done"]["content"] == "Partial"
    failed = dict(query(pipeline, "SELECT cell_id, error_message FROM failed_requests"))
    streams = {name: row["cell_id"] for name, row in rows.items() if name != "good"}
    assert set(streams.values()) <= set(failed) and len(failed) == 6
    assert "chunk 2 is not JSON" in failed[streams["sse-garbage"]]  # every stream that did not complete is failing
    assert "stream ended before [DONE]" in failed[streams["sse-no-done"]]
    [other] = set(failed) - set(streams.values())  # the JSON answer to a streamed request has no partial row
    assert "expected an event stream, got application/json" in failed[other]


def test_retry_after_is_honoured_and_capped(make_node, caplog: pytest.LogCaptureFixture) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}]}
    for retry_after, cap, logged in [("0.2", 5.0, "retrying in 0.20 s"), ("3600", 0.05, "retrying in 0.05 s")]:
        node = make_node("nexus", fault_rate=1.0, fault_kinds=("429",), retry_after=retry_after)
        client = node_pool(node.base_url, max_attempts=2, retry_max_wait=cap)
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="gaia_source"), pytest.raises(GaiaRequestError) as info:
            client.post_json("chat/completions", body)
        assert info.value.status_code == 429 and info.value.attempts == 2
        assert any(logged in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize("flavor,path,body,status", [
    ("rag", "chat/completions", {"messages": [{"role": "user", "content": "x [[malformed:text-400]]"}]}, 400),
    ("nexus", "chat/completions", {"model": "no messages"}, 422),
    ("amd", "embeddings", {"input": ["x"]}, 404),
    ("nexus", "retrieve", {"messages": []}, 405),
    ("rag", "chat/completions", {"messages": [{"role": "user", "content": "x [[malformed:html-500]]"}]}, 500),
])
def test_what_is_retried(make_node, flavor, path, body, status) -> None:
    node = make_node(flavor)
    client = node_pool(node.base_url, max_attempts=3, retry_backoff=0.01)
    with pytest.raises(GaiaRequestError) as info:
        client.post_json(path, body)
    assert info.value.status_code == status
    expected = 3 if status >= 500 else 1  # 4xx are never retried
    assert node.requests_to(f"/v1/{path}") == expected == info.value.attempts


def test_shards_together_load_exactly_the_whole_input(make_node, make_pipeline) -> None:
    node = make_node("rag")
    pipeline = make_pipeline()
    prompts = [f"Prompt {i}" for i in range(40)]
    texts = [f"Text {i}" for i in range(60)]
    queries = [f"Where is Paris? {i}" for i in range(8)]
    sent = []
    for i in range(4):
        node.reset_stats()
        source = gaia_source(base_url=node.base_url, prompts=prompts, texts=texts, queries=queries, shard=f"{i}/4",
                             embedding_batch_size=1)
        pipeline.run(source)
        sent.append(node.requests_to("/v1/chat/completions"))
    assert sum(sent) == 80 and all(0 < n < 80 for n in sent)  # 40 plain + 40 streamed, split four ways
    counts = query(pipeline, """
        SELECT (SELECT count(DISTINCT request_id) FROM chat_completions), (SELECT count(*) FROM chat_completions),
               (SELECT count(*) FROM chat_completions_stream), (SELECT count(*) FROM embeddings),
               (SELECT count(DISTINCT text) FROM embeddings), (SELECT count(*) FROM retrieve), (SELECT count(*) FROM info)""")
    assert counts == [(40, 40, 40, 60, 60, 8, 1)]


def test_bad_shard_spec() -> None:
    with pytest.raises(Exception, match=r"shard must look like i/n"):
        gaia_source(base_url="http://127.0.0.1:9/v1", shard="4/4")


def test_sigkill_mid_extraction_then_rerun_gives_complete_data(make_node, tmp_path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import SCRIPT, counts, run_cli

    node = make_node("rag", latency_ms=10)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"Question {i}?\n" for i in range(150)))
    args = ["--base-url", node.base_url, "--prompts-file", str(prompts), "--resources",
            "chat_completions,chat_completions_stream,models"]
    proc = subprocess.Popen([sys.executable, SCRIPT, *args], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while node.requests_to("/v1/chat/completions") < 80 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL  # killed in the middle of extraction
    assert node.requests_to("/v1/chat/completions") < 300
    result = run_cli(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    db = tmp_path / "gaia_pipeline.duckdb"
    assert counts(db) == {"models": 2, "chat_completions": 150, "chat_completions_stream": 150}
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        for table in ("chat_completions", "chat_completions_stream"):
            assert con.execute(f"SELECT count(DISTINCT request_id), count(*) FILTER (WHERE status = 'completed') "
                               f"FROM gaia_data.{table}").fetchall() == [(150, 150)]


def test_the_key_never_leaks_even_at_debug_level(make_node, tmp_path) -> None:
    from conftest import run_cli

    key = "gaia-DEBUG-LEAK-CANARY-7f3e9a"
    node = make_node("rag", api_key=key)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What is the capital of France?\nplease fail [[malformed:echo-auth]]\n")
    result = run_cli(tmp_path, "--base-url", node.base_url, "--prompts-file", str(prompts), "-vv",
                     "--allow-failed-requests", env={"SOURCES__GAIA_SOURCE__API_KEY": key,
                                                     "SOURCES__GAIA_SOURCE__MAX_ATTEMPTS": "1"})
    assert result.returncode == 0, result.stderr
    assert "DEBUG" in result.stderr and "HTTP Request: POST" in result.stderr  # debug logging really was on
    assert key not in result.stdout + result.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "prompts.txt"]
    assert any(p.suffix == ".duckdb" for p in written) and any("trace" in p.name for p in written)
    for path in written:
        assert key.encode() not in path.read_bytes(), path
    import duckdb

    with duckdb.connect(str(tmp_path / "gaia_pipeline.duckdb"), read_only=True) as con:
        rows = con.execute("SELECT resource, error_message FROM gaia_data.failed_requests ORDER BY resource").fetchall()
    assert [r[0] for r in rows] == ["chat_completions", "chat_completions_stream"]
    assert all("Authorization: Bearer ***" in message for _, message in rows)  # the echoed key was redacted


def test_a_key_echoed_near_the_message_limit_is_redacted_before_it_is_cut(make_node, tmp_path) -> None:
    """A gateway page, a 200 page, an in-band error and an unreadable chunk that echo the key where an error message
    is shortened: no 8-character piece of the key reaches a table, the log or the output (redact, then shorten)."""
    import duckdb
    from conftest import run_cli

    from gaia_source.emulator.malformed import ECHO_AUTH_CASES

    key = "gaia-" + "Zq7RmX2pLw9KtV4nB8cYhJ3"
    assert len(key) == 28
    pieces = {key[i:i + 8] for i in range(len(key) - 7)}
    node = make_node("rag", api_key=key)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"please fail [[malformed:{case}]]\n" for case in ECHO_AUTH_CASES))
    result = run_cli(tmp_path, "--base-url", node.base_url, "--prompts-file", str(prompts), "-vv",
                     "--allow-failed-requests",
                     env={"SOURCES__GAIA_SOURCE__API_KEY": key, "SOURCES__GAIA_SOURCE__MAX_ATTEMPTS": "1",
                          "SOURCES__GAIA_SOURCE__RETRY_ROUNDS": "0"})
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "Bearer ***" in output and not {p for p in pieces if p in output}
    with duckdb.connect(str(tmp_path / "gaia_pipeline.duckdb"), read_only=True) as con:
        failed = con.execute("SELECT resource, request_body, error_message FROM gaia_data.failed_requests").fetchall()
        streams = con.execute("SELECT messages, status, content, error FROM gaia_data.chat_completions_stream"
                              ).fetchall()
    by_case = {(resource, body.split("malformed:")[1].split("]")[0]): message for resource, body, message in failed}
    assert set(by_case) == {(r, c) for r in ("chat_completions", "chat_completions_stream") for c in ECHO_AUTH_CASES}
    for (resource, case), message in by_case.items():
        assert not {p for p in pieces if p in message}, (resource, case, message)
        assert "Authorization: Bearer ***" in message, (resource, case, message)
    assert "HTTP 502" in by_case["chat_completions", "echo-auth-502"]
    assert "not JSON" in by_case["chat_completions", "echo-auth-200"]
    assert "expected an event stream, got text/html" in by_case["chat_completions_stream", "echo-auth-200"]
    assert "the node answered HTTP 200 with an error" in by_case["chat_completions", "echo-auth-inband"]
    assert "chunk 2 is not JSON" in by_case["chat_completions_stream", "echo-auth-garbage"]
    kept = {messages.split("malformed:")[1].split("]")[0]: (status, content, error)
            for messages, status, content, error in streams}
    assert set(kept) == {"echo-auth-inband", "echo-auth-garbage"}  # the partial answers of the two broken streams
    for status, content, error in kept.values():
        assert (status, content) == ("error", "Par") and "Authorization: Bearer ***" in error
        assert not {p for p in pieces if p in error}, error


def test_a_node_that_stops_mid_run_fails_the_rest_at_once_and_a_rerun_after_its_restart_completes(
    make_node, make_pipeline
) -> None:
    node = make_node("llamacpp", latency_ms=50)  # one node, one request at a time: as llama.cpp is run
    pipeline = make_pipeline()
    prompts = [f"Tell me fact number {i}." for i in range(20)]

    def run() -> Ledger:
        ledger = Ledger()
        source = gaia_source(base_url=node.base_url, prompts=prompts, max_concurrency=1, ledger=ledger,
                             round_cooldown=0.05, breaker_cooldown=60)  # it stays down for the rest of this run
        pipeline.run(source.with_resources("chat_completions"))
        return ledger

    def kill_after(answers: int) -> None:
        while node.requests_to("/v1/chat/completions") < answers:
            time.sleep(0.005)
        node.stop()  # SIGKILL's effect on the clients: every later connection is refused

    killer = threading.Thread(target=kill_after, args=(3,))
    killer.start()
    ledger = run()
    killer.join()

    completed, failed = ledger.count(COMPLETED), ledger.count(FAILED)
    assert completed + failed == 20 and failed >= 10  # every prompt ends one way or the other
    [tally] = ledger.tallies().values()
    # the node refused `breaker_failures` connections in a row: the rest fail at once instead of each waiting out
    # 4 sends and 2 final rounds (12 sends, about 13 s a prompt at concurrency 1 before this)
    assert tally.attempts - completed <= 3 + 1, tally.attempts
    rows = query(pipeline, "SELECT error_type, error_message, attempts FROM failed_requests")
    assert len(rows) == failed and sum(attempts for *_, attempts in rows) <= 4
    assert all("refused" in message and "next run" in message for _, message, _ in rows), rows[0]
    assert query(pipeline, "SELECT count(*) FROM chat_completions") == [(completed,)]

    node.start()  # the server is back (same address)
    sent = node.requests_to("/v1/chat/completions")
    again = run()

    assert again.count(COMPLETED) == failed and again.count(FAILED) == 0
    assert node.requests_to("/v1/chat/completions") - sent == failed  # only what had failed
    assert query(pipeline, "SELECT count(*), count(DISTINCT cell_id) FROM chat_completions") == [(20, 20)]
    tables = {t for t, in query(pipeline, "SELECT table_name FROM information_schema.tables")}
    assert query(pipeline, "SELECT count(*) FROM failed_requests") == [(0,)] or "failed_requests" not in tables
