"""Errors a user can act on: refused keys, missing endpoints, plain-text/HTML bodies, failing requests kept as data."""

from __future__ import annotations

import json

import pytest
from conftest import data_tables, query, table_rows
from dlt.pipeline.exceptions import PipelineStepFailed

from gaia_source import EndpointNotAvailable, GaiaAuthError, GaiaClient, gaia_source

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


def test_missing_endpoint_error_names_endpoint_and_node(make_node) -> None:
    node = make_node("amd")
    client = GaiaClient(node.base_url)
    with pytest.raises(EndpointNotAvailable) as info:
        client.post_json("embeddings", {"input": ["x"]})
    assert str(info.value).startswith(f"the node at {node.base_url} has no POST /v1/embeddings (HTTP 404: Not Found)")
    with pytest.raises(EndpointNotAvailable):  # remembered: not asked again
        client.post_json("embeddings", {"input": ["y"]})
    assert node.requests_to("/v1/embeddings") == 1


def test_html_and_plain_text_bodies_are_readable(make_node) -> None:
    nexus = make_node("nexus")
    client = GaiaClient(f"{nexus.root_url}/not-a-node/v1")
    with pytest.raises(EndpointNotAvailable) as info:
        client.get_json("models")
    assert "HTML page: 404 Not Found" in str(info.value) and "<" not in str(info.value)
    rag = make_node("rag", outage=500)
    client = GaiaClient(rag.base_url, max_attempts=1)
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
                             embedding_batch_size=2, max_attempts=2, retry_backoff=0.01, chat_model="Qwen3-4B",
                             embedding_model="Nomic-embed-text-v1.5")
        pipeline.run(source.with_resources("chat_completions", "embeddings")).raise_on_failed_jobs()

    run()
    failed = table_rows(pipeline, "failed_requests", "resource, request_id")
    assert [(f["resource"], f["http_status"], f["attempts"]) for f in failed] == [
        ("chat_completions", 503, 2), ("chat_completions", 503, 2), ("embeddings", 503, 2), ("embeddings", 503, 2)]
    assert all("emulated outage" in f["error_message"] for f in failed)
    assert all(f["error_type"] == "GaiaRequestError" for f in failed)
    prompts = sorted(json.loads(f["request_body"])["messages"][0]["content"] for f in failed if f["resource"] == "chat_completions")
    assert prompts == ["one", "two"]
    assert "chat_completions" not in data_tables(pipeline)
    assert node.requests_to("/v1/chat/completions") == 4  # 2 prompts x 2 attempts

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
    source = gaia_source(base_url=node.base_url, prompts=["tell me a long story [[cut]]"], max_attempts=2, retry_backoff=0.01)
    pipeline.run(source.with_resources("chat_completions_stream"))
    [row] = table_rows(pipeline, "chat_completions_stream", "request_id")
    assert row["status"] == "interrupted" and row["attempts"] == 2
    assert row["content"] and "Llama-3.2-3B-Instruct answers: tell me a long story [[cut]]".startswith(row["content"])
    assert "RemoteProtocolError" in row["error"]
    assert node.requests_to("/v1/chat/completions") == 2


def test_amd_inband_error_is_an_error_row(make_node, make_pipeline) -> None:
    node = make_node("amd")
    pipeline = make_pipeline()
    source = gaia_source(base_url=node.base_url, prompts=["run the agent [[inband-error]]"])
    pipeline.run(source.with_resources("chat_completions_stream"))
    [(status, error, chunks)] = query(pipeline, "SELECT status, error, chunk_count FROM chat_completions_stream")
    assert status == "error" and error == "Agent processing failed: emulated agent crash" and chunks == 3
