"""Right on the servers running today: Gaia node 0.6 (gaia-nexus 0.8.2 + llama-api-server 0.27), llama-api-server 0.28,
llama-nexus, and amd-gaia 0.25 — each bullet of the protocol reference's §14, over HTTP into DuckDB."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import pytest
from conftest import counts, query, run_cli, table_rows

from gaia_source import GaiaAuthError, gaia_source
from gaia_source.emulator import answer_for
from gaia_source.ledger import Ledger
from gaia_source.rows import read_info

LONG = "Tell me everything about the river Seine and its bridges"
"""A prompt whose emulated answer has far more than three words."""


def _words(text: str) -> int:
    return len(text.split())


# --- output limits ------------------------------------------------------------------------------------------------


def test_node06_drops_max_tokens_unread(make_node) -> None:
    """The witness first: a node 0.6 reads only max_completion_tokens (llama-api-server >= 0.23 removed max_tokens)."""
    node = make_node("node06")
    body = {"messages": [{"role": "user", "content": LONG}]}
    ignored = httpx.post(f"{node.base_url}/chat/completions", json={**body, "max_tokens": 3}).json()
    honoured = httpx.post(f"{node.base_url}/chat/completions", json={**body, "max_completion_tokens": 3}).json()
    assert _words(ignored["choices"][0]["message"]["content"]) > 3
    assert _words(honoured["choices"][0]["message"]["content"]) == 3
    assert honoured["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("flavor", ["rag", "llama", "nexus", "node06", "amd"])
def test_max_tokens_caps_answers_on_every_generation(make_node, make_pipeline, flavor: str) -> None:
    node = make_node(flavor)
    pipeline = make_pipeline()
    source = gaia_source(base_url=node.base_url, prompts=[LONG, "What is the capital of France?"], max_tokens=3)
    pipeline.run(source.with_resources("chat_completions", "chat_completions_stream"))
    full = answer_for(LONG, node.default_chat_model).split()
    for table in ("chat_completions", "chat_completions_stream"):
        rows = {r["messages"]: r for r in table_rows(pipeline, table, "request_id")}
        assert len(rows) == 2
        long_row = next(r for m, r in rows.items() if "Seine" in m)
        # the first three words of the full answer, plain and streamed, whatever field the server reads
        assert long_row["content"].split() == full[:3], (table, long_row["content"])
        assert json.loads(long_row["params"]) == {"max_tokens": 3}  # what the user asked for, not the wire form
        if table == "chat_completions":
            assert long_row["finish_reason"] == "length"
        for row in rows.values():
            assert _words(row["content"]) <= 3


def test_a_prompt_cap_replaces_the_run_cap_and_conflicts_are_refused(make_node, make_pipeline, tmp_path: Path) -> None:
    node = make_node("node06")
    pipeline = make_pipeline()
    prompts = [{"messages": [{"role": "user", "content": LONG}], "max_completion_tokens": 2}, LONG]
    pipeline.run(gaia_source(base_url=node.base_url, prompts=prompts, max_tokens=4).with_resources("chat_completions"))
    lengths = sorted(_words(c) for (c,) in query(pipeline, "SELECT content FROM chat_completions"))
    assert lengths == [2, 4]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "x"}], "max_tokens": 5,
                               "max_completion_tokens": 7}) + "\n")
    result = run_cli(tmp_path, "--base-url", node.base_url, "--prompts-file", str(bad))
    assert result.returncode == 2
    assert "bad.jsonl:1: max_tokens=5 and max_completion_tokens=7 disagree" in result.stderr


# --- streams: live or replayed --------------------------------------------------------------------------------------


@pytest.mark.parametrize("flavor,mode", [("rag", "live"), ("llama", "live"), ("node06", "replayed"),
                                         ("nexus", "replayed")])
def test_stream_mode_says_whether_ttft_is_time_to_first_token(make_node, make_pipeline, flavor: str,
                                                              mode: str) -> None:
    node = make_node(flavor, chunk_delay_ms=15)
    pipeline = make_pipeline()
    pipeline.run(gaia_source(base_url=node.base_url, prompts=[LONG]).with_resources("chat_completions_stream"))
    [row] = table_rows(pipeline, "chat_completions_stream", "request_id")
    assert row["stream_mode"] == mode
    assert row["content"] == answer_for(LONG, node.default_chat_model)
    if mode == "replayed":  # the first chunk came after the whole generation: TTFT is nearly the whole stream
        assert row["ttft_ms"] >= 0.8 * row["duration_ms"]
    else:
        assert row["ttft_ms"] < 0.5 * row["duration_ms"]


# --- served_by behind a domain ------------------------------------------------------------------------------------


def test_served_by_names_the_node_behind_a_domain(make_node, make_pipeline) -> None:
    node = make_node("node06", node_domains=("0xaaa.gaia.domains", "0xbbb.gaia.domains"))
    pipeline = make_pipeline()
    prompts = [f"Question number {i}" for i in range(6)]
    pipeline.run(gaia_source(base_url=node.base_url, prompts=prompts, texts=["a text", "another text"]))
    names = {"0xaaa.gaia.domains", "0xbbb.gaia.domains"}
    for table in ("chat_completions", "chat_completions_stream", "embeddings", "models", "info"):
        served = [s for (s,) in query(pipeline, f"SELECT served_by FROM {table}")]
        assert served and set(served) <= names, table
    # round robin across 12 chat requests: both nodes answered, and the rows say which
    chat = [s for (s,) in query(pipeline, "SELECT served_by FROM chat_completions UNION ALL "
                                          "SELECT served_by FROM chat_completions_stream")]
    assert set(chat) == names and len(chat) == 12


def test_served_by_is_null_when_no_gateway_names_a_node(make_node, make_pipeline) -> None:
    node = make_node("rag")
    pipeline = make_pipeline()
    pipeline.run(gaia_source(base_url=node.base_url, prompts=["hi"]).with_resources("chat_completions"))
    assert query(pipeline, "SELECT served_by FROM chat_completions") == [(None,)]


# --- /v1/info shapes ------------------------------------------------------------------------------------------------


def test_the_stale_documented_info_shape_is_read_too() -> None:
    stale = {"version": "0.2.0", "plugin_version": "b2694", "port": "8080",
             "models": [{"name": "Phi-3-mini", "type": "chat"}, {"name": "nomic-embed", "type": "embedding"}]}
    read = read_info(stale)
    assert (read.shape, read.node_version, read.chat_model, read.embedding_model) == (
        "documented", "0.2.0", "Phi-3-mini", "nomic-embed")
    assert read_info({"something": "else"}).shape == "unknown"


def test_an_unknown_info_shape_is_kept_whole_and_said_once(make_node, make_pipeline, caplog) -> None:
    node = make_node("rag")
    node.stop()  # serve again as a server whose /v1/info no generation in the reference has
    node._handler = type("OddInfo", (node.flavor_class,), {
        "info_body": classmethod(lambda cls, n: {"uptime_s": 12, "gpu": "none"})})
    node.start()
    pipeline = make_pipeline()
    with caplog.at_level(logging.WARNING, logger="gaia_source"):
        pipeline.run(gaia_source(base_url=node.base_url).with_resources("info"))
    [row] = table_rows(pipeline, "info", "fetched_at")
    assert row["info_shape"] == "unknown" and row["chat_model"] is None
    assert json.loads(row["body"]) == {"uptime_s": 12, "gpu": "none"}
    warnings = [r.getMessage() for r in caplog.records if "info shape" in r.getMessage()]
    assert len(warnings) == 1 and node.base_url in warnings[0]


# --- AMD GAIA 0.25 ------------------------------------------------------------------------------------------------


def test_amd_discovers_gaia_and_refuses_what_the_server_would_refuse(make_node, tmp_path: Path) -> None:
    node = make_node("amd")
    prompts = tmp_path / "prompts.jsonl"
    lines = [
        {"custom_id": "ok", "messages": [{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": "What is the capital of France?"}]},
        {"custom_id": "assistant-last", "messages": [{"role": "user", "content": "hi"},
                                                     {"role": "assistant", "content": "hello"}]},
        {"custom_id": "image", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": "data:,"}}]}]},
    ]
    prompts.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = run_cli(tmp_path, "--base-url", node.base_url, "--prompts-file", "prompts.jsonl",
                     "--resources", "chat_completions,chat_completions_stream")
    assert result.returncode == 1, result.stderr  # refused prompts are failing requests
    assert counts(tmp_path / "gaia_pipeline.duckdb")["failed_requests"] == 4  # 2 prompts x 2 resources
    # only the valid prompt was sent: once plain, once streamed
    assert node.requests_to("/v1/chat/completions") == 2
    import duckdb

    with duckdb.connect(str(tmp_path / "gaia_pipeline.duckdb")) as db:
        failed = db.sql("SELECT custom_id, resource, error_type, error_message, attempts, http_status "
                        "FROM gaia_data.failed_requests ORDER BY custom_id, resource").fetchall()
        model = db.sql("SELECT DISTINCT model_requested, model FROM gaia_data.chat_completions").fetchall()
    assert model == [("gaia", "gaia")]
    assert [f[0] for f in failed] == ["assistant-last", "assistant-last", "image", "image"]
    for custom_id, _, error_type, message, attempts, status in failed:
        assert error_type == "GaiaInputRefused" and attempts == 0 and status is None
        line = 2 if custom_id == "assistant-last" else 3
        assert f"prompts.jsonl:{line}: not sent:" in message
    assert "last message is a 'assistant' message" in failed[0][3]
    assert "'image_url' content part" in failed[2][3]


def test_the_same_prompts_are_sent_to_a_gaia_node(make_node, make_pipeline) -> None:
    node = make_node("node06")
    pipeline = make_pipeline()
    prompts = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    pipeline.run(gaia_source(base_url=node.base_url, prompts=prompts).with_resources("chat_completions"))
    assert query(pipeline, "SELECT status FROM chat_completions") == [("completed",)]


def test_amd_key_is_enforced_and_health_is_the_info_snapshot(make_node, make_pipeline) -> None:
    node = make_node("amd", api_key="s3cret-amd", degraded=True)
    refused = httpx.post(f"{node.base_url}/chat/completions", json={"model": "gaia", "messages": [
        {"role": "user", "content": "hi"}]})
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    pipeline = make_pipeline()
    with pytest.raises(Exception) as caught:
        pipeline.run(gaia_source(base_url=node.base_url, api_key="wrong-key", prompts=["hi"]))
    assert isinstance(_cause(caught.value), GaiaAuthError) and "wrong-key" not in str(caught.value)
    pipeline.run(gaia_source(base_url=node.base_url, api_key="s3cret-amd").with_resources("models", "info"))
    [info] = table_rows(pipeline, "info", "fetched_at")
    assert (info["status"], info["server_type"], info["info_shape"]) == ("degraded", "amd-gaia", "amd-gaia-health")
    assert json.loads(info["body"])["components"]["llm"]["status"] == "unavailable"
    assert query(pipeline, "SELECT id FROM models") == [("gaia",)]


def _cause(exc: BaseException) -> BaseException:
    while getattr(exc, "__cause__", None) is not None or getattr(exc, "exception", None) is not None:
        exc = getattr(exc, "exception", None) or exc.__cause__  # type: ignore[assignment]
    return exc


# --- /v1/responses --------------------------------------------------------------------------------------------------


def test_responses_rows_are_keyed_by_our_id_not_the_servers(make_node, make_pipeline) -> None:
    node = make_node("llama", fixed_response_id=True)  # llama-api-server 0.28.0: one id for every reply
    pipeline = make_pipeline()
    prompts = [{"custom_id": "a", "messages": [{"role": "system", "content": "Answer briefly."},
                                               {"role": "user", "content": "What is the capital of France?"}]},
               {"custom_id": "b", "prompt": LONG, "max_tokens": 3}]
    for _ in range(2):  # the re-run sends nothing
        pipeline.run(gaia_source(base_url=node.base_url, prompts=prompts, resources=["responses"]))
    assert node.requests_to("/v1/responses") == 2
    rows = {r["custom_id"]: r for r in table_rows(pipeline, "responses", "custom_id")}
    assert set(rows) == {"a", "b"} and len({r["request_id"] for r in rows.values()}) == 2
    assert rows["a"]["response_id"] == rows["b"]["response_id"]  # the server's id is not unique: never the key
    assert rows["a"]["content"] == answer_for("What is the capital of France?", node.default_chat_model)
    assert rows["a"]["instructions"] == "Answer briefly." and rows["a"]["response_status"] == "completed"
    assert rows["b"]["content"].split() == answer_for(LONG, node.default_chat_model).split()[:3]
    assert rows["b"]["response_status"] == "incomplete" and json.loads(rows["b"]["params"]) == {"max_output_tokens": 3}
    for row in rows.values():
        assert row["usage_estimated"] is False and row["output_tokens"] == len(row["content"].split())
        assert row["model"] == node.default_chat_model


def test_responses_usage_is_marked_estimated_on_llama_nexus(make_node, make_pipeline) -> None:
    node = make_node("nexus")
    pipeline = make_pipeline()
    pipeline.run(gaia_source(base_url=node.base_url, prompts=[LONG], resources=["responses"]))
    [row] = table_rows(pipeline, "responses", "request_id")
    assert row["usage_estimated"] is True and row["output_tokens"] == len(row["content"]) // 4


def test_responses_is_skipped_once_where_the_server_lacks_it(make_node, make_pipeline, caplog) -> None:
    node = make_node("node06")
    pipeline = make_pipeline()
    with caplog.at_level(logging.WARNING, logger="gaia_source"):
        pipeline.run(gaia_source(base_url=node.base_url, prompts=["a", "b", "c"], resources=["responses"],
                                 required_resources=False))
    assert node.requests_to("/v1/responses") == 1
    warnings = [r.getMessage() for r in caplog.records if "responses" in r.getMessage()]
    assert len(warnings) == 1 and "Skipping resource 'responses'" in warnings[0]


def test_a_named_resource_the_server_lacks_fails_every_input_once(make_node, make_pipeline) -> None:
    node = make_node("node06")
    pipeline = make_pipeline()
    ledger = Ledger()
    pipeline.run(gaia_source(base_url=node.base_url, prompts=["a", "b", "c"], resources=["responses"], ledger=ledger))
    assert node.requests_to("/v1/responses") == 1  # the probe; the others are refused without being sent
    assert ledger.count("refused", "responses") == 3 and ledger.failing == 3
    failed = query(pipeline, "SELECT error_type, attempts FROM failed_requests ORDER BY attempts")
    assert failed == [("EndpointNotAvailable", 0), ("EndpointNotAvailable", 0), ("EndpointNotAvailable", 1)]


def test_responses_is_not_run_unless_asked_for(make_node, make_pipeline) -> None:
    node = make_node("llama")
    pipeline = make_pipeline()
    pipeline.run(gaia_source(base_url=node.base_url, prompts=["hi"]))
    assert node.requests_to("/v1/responses") == 0 and node.requests_to("/v1/chat/completions") == 2


# --- the demo -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flavor,tables", [
    ("node06", {"models", "info", "chat_completions", "chat_completions_stream", "embeddings"}),
    ("llama", {"models", "info", "chat_completions", "chat_completions_stream", "embeddings", "responses"}),
])
def test_demo_flavor_loads_every_table_that_server_has(tmp_path: Path, flavor: str, tables: set) -> None:
    result = run_cli(tmp_path, "--demo", "--demo-flavor", flavor)
    assert result.returncode == 0, result.stderr
    loaded = counts(tmp_path / "gaia_demo_pipeline.duckdb", "gaia_demo")
    assert set(loaded) == tables and all(n > 0 for n in loaded.values())
