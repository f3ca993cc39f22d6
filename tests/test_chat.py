"""Completions a user can analyse: re-runs send nothing twice, cut streams are kept then completed, Batch round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import query, table_rows

from gaia_source import gaia_source
from gaia_source.batch import export_batch_output
from gaia_source.streaming import ChatStreamAccumulator

PROMPTS = ["What is the capital of France?", "What is a Gaia node?", "Tell me about rivers"]


def test_a_second_run_sends_no_chat_requests(make_node, make_pipeline, flavor: str) -> None:
    node = make_node(flavor)
    pipeline = make_pipeline()

    def run(**kwargs) -> None:
        kwargs.setdefault("prompts", PROMPTS)
        source = gaia_source(base_url=node.base_url, **kwargs)
        pipeline.run(source.with_resources("chat_completions", "chat_completions_stream"))

    run()
    assert node.requests_to("/v1/chat/completions") == 6
    first = dict(query(pipeline, "SELECT request_id, CAST(requested_at AS VARCHAR) FROM chat_completions"))
    node.reset_stats()
    run()
    assert node.requests_to("/v1/chat/completions") == 0
    assert dict(query(pipeline, "SELECT request_id, CAST(requested_at AS VARCHAR) FROM chat_completions")) == first
    run(prompts=[*PROMPTS, "One more question"])  # only the new prompt is sent, plain and streamed
    assert node.requests_to("/v1/chat/completions") == 2
    node.reset_stats()
    run(refresh=True)
    assert node.requests_to("/v1/chat/completions") == 6
    assert query(pipeline, "SELECT count(*) FROM chat_completions") == [(4,)]


def test_a_cut_stream_is_kept_then_completed_by_a_clean_rerun(make_node, make_pipeline) -> None:
    node = make_node("rag", fault_rate=1.0, fault_kinds=("truncate",))
    pipeline = make_pipeline()

    def run() -> None:
        source = gaia_source(base_url=node.base_url, prompts=["What is a Gaia node?"], max_attempts=2, retry_backoff=0.01, retry_rounds=1)
        pipeline.run(source.with_resources("chat_completions_stream"))

    run()
    [cut] = table_rows(pipeline, "chat_completions_stream", "request_id")
    full = "A Gaia node is an OpenAI-compatible API server that runs an LLM with a knowledge base."
    assert cut["status"] == "interrupted" and cut["attempts"] == 4  # 2 attempts, then 2 more in the final round
    assert cut["content"] and full.startswith(cut["content"]) and cut["content"] != full
    assert "RemoteProtocolError" in cut["error"] and cut["finish_reason"] is None
    assert query(pipeline, "SELECT cell_id, error_type FROM failed_requests") == [
        (cut["cell_id"], "GaiaStreamInterrupted")]
    assert pipeline.default_schema.get_table("chat_completions_stream")["write_disposition"] == "append"  # all new
    node.fault_rate = 0.0
    run()
    [done] = table_rows(pipeline, "chat_completions_stream", "request_id")
    assert done["request_id"] == cut["request_id"]  # the finished answer replaced the cut one: merged on its key
    assert pipeline.default_schema.get_table("chat_completions_stream")["write_disposition"] == "merge"
    assert (done["status"], done["content"], done["error"], done["finish_reason"]) == ("completed", full, None, "stop")
    assert query(pipeline, "SELECT count(*) FROM failed_requests") == [(0,)]  # completed: no longer failing
    source = gaia_source(base_url=node.base_url, prompts=["What is a Gaia node?", "What is the capital of France?"])
    pipeline.run(source.with_resources("chat_completions_stream"))  # one new prompt: appended, nothing replaced
    assert pipeline.default_schema.get_table("chat_completions_stream")["write_disposition"] == "append"
    rows = query(pipeline, "SELECT status, content FROM chat_completions_stream ORDER BY content")
    assert rows == [("completed", full), ("completed", "Paris is the capital of France.")]


def test_cumulative_usage_on_every_chunk_is_not_summed(make_node, make_pipeline) -> None:
    node = make_node("rag", cumulative_usage=True)
    pipeline = make_pipeline()
    pipeline.run(gaia_source(base_url=node.base_url, prompts=["What is a Gaia node?"]))
    [(plain,)] = query(pipeline, "SELECT completion_tokens FROM chat_completions")
    [(streamed, chunks)] = query(pipeline, "SELECT completion_tokens, chunk_count FROM chat_completions_stream")
    assert streamed == plain == 16 and chunks > 10


def test_streamed_tool_call_is_assembled(make_node, make_pipeline) -> None:
    node = make_node("rag")
    pipeline = make_pipeline()
    pipeline.run(gaia_source(base_url=node.base_url, prompts=["Weather in Paris? [[tool]]"]))
    [(content, finish, calls, usage)] = query(
        pipeline, "SELECT content, finish_reason, tool_calls, usage_reported FROM chat_completions_stream")
    assert content == "" and finish == "tool_calls" and usage is True
    [call] = json.loads(calls)
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'} and call["id"] == "call_0"
    [(plain_calls, plain_finish)] = query(pipeline, "SELECT tool_calls, finish_reason FROM chat_completions")
    assert json.loads(plain_calls)[0]["function"] == call["function"] and plain_finish == "tool_calls"


def test_nexus_empty_answer_is_only_done(make_node, make_pipeline) -> None:
    node = make_node("nexus")
    pipeline = make_pipeline()
    pipeline.run(gaia_source(base_url=node.base_url, prompts=["[[empty]]"]).with_resources("chat_completions_stream"))
    [(status, content, chunks, ttft)] = query(
        pipeline, "SELECT status, content, chunk_count, ttft_ms FROM chat_completions_stream")
    assert (status, content, chunks, ttft) == ("empty", "", 0, None)  # loaded, and failing: never a silent success
    [(error_type,)] = query(pipeline, "SELECT error_type FROM failed_requests")
    assert error_type == "GaiaEmptyAnswer"


def test_done_with_no_finish_reason_and_no_usage_asked_for_is_a_cut_stream() -> None:
    content = '{"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Once upon"}}]}'
    usage = '{"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}'

    def fold(usage_asked: bool, *chunks: str):
        accumulator = ChatStreamAccumulator(usage_asked=usage_asked)
        for chunk in (*chunks, "[DONE]"):
            accumulator.add(chunk)
        return accumulator.finish()

    cut = fold(True, content)  # llama.cpp, another request waiting: [DONE] mid-answer
    assert (cut.status, cut.cut_by_server, cut.finish_reason, cut.content) == ("interrupted", True, None, "Once upon")
    assert "--interrupt_requests false" in str(cut.error)
    ended = fold(True, content, usage)  # llama-core's normal end: its usage chunk, no finish_reason
    assert (ended.status, ended.cut_by_server, ended.finish_reason) == ("completed", False, "stop")
    unasked = fold(False, content)  # no usage asked for: [DONE] alone is a normal end there
    assert (unasked.status, unasked.cut_by_server, unasked.finish_reason) == ("completed", False, "stop")
    nothing = fold(True, '{"choices": [{"index": 0, "delta": {"role": "assistant"}}]}')  # cut before any content
    assert (nothing.status, nothing.cut_by_server, nothing.finish_reason) == ("completed", True, None)  # → empty
    assert fold(True).cut_by_server is False  # gaia-nexus's empty answer: [DONE] alone


@pytest.mark.parametrize("table", ["chat_completions", "chat_completions_stream"])
def test_batch_jsonl_round_trip_keeps_every_custom_id(make_node, make_pipeline, tmp_path: Path, table: str) -> None:
    node = make_node("nexus")
    batch_in = tmp_path / "in.jsonl"
    lines = [{"custom_id": f"task-{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "Qwen3-4B", "messages": [{"role": "user", "content": f"Question {i}?"}], "max_tokens": 50}}
             for i in range(5)]
    lines.append({"custom_id": "task-broken", "method": "POST", "url": "/v1/chat/completions",
                  "body": {"messages": [{"role": "user", "content": "explode [[fail]]"}]}})
    batch_in.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    pipeline = make_pipeline()
    pipeline.run(gaia_source(base_url=node.base_url, prompts_file=str(batch_in), max_attempts=1).with_resources(table))
    out = tmp_path / "out.jsonl"
    assert export_batch_output(pipeline, str(out), table) == 6
    results = {r["custom_id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(results) == {line["custom_id"] for line in lines}
    for i in range(5):
        result = results[f"task-{i}"]
        assert result["error"] is None and result["response"]["status_code"] == 200
        body = result["response"]["body"]
        assert body["object"] == "chat.completion" and body["model"] == "Qwen3-4B"
        assert body["choices"][0]["message"]["content"] == f"Qwen3-4B answers: Question {i}?"
        assert body["usage"]["completion_tokens"] == 4
    broken = results["task-broken"]
    assert broken["response"]["status_code"] == 500 and broken["error"]["code"] == "GaiaRequestError"
    assert "the model crashed" in broken["error"]["message"]
