"""The source against each server flavour, over HTTP, into DuckDB: what lands in each table, value by value."""

from __future__ import annotations

import json
import logging

import httpx
import numpy as np
import pytest
from conftest import as_vector, data_tables, query, table_rows

from gaia_source import gaia_source
from gaia_source.emulator import KNOWLEDGE_BASE, answer_for, embed_text
from gaia_source.ledger import Cell, row_id

PROMPTS = ["What is the capital of France?", "Name a river [[context-full]]", "[[empty]]"]
TEXTS = ["Paris is on the Seine.", "DuckDB has array columns.", "Gaia nodes serve models."]
QUERIES = ["Where is Paris located?", "zebra quantum xylophone"]

SUPPORTED = {  # failed_requests: the [[empty]] prompt, plain and streamed (an empty answer is never a success)
    "rag": {"models", "info", "chat_completions", "chat_completions_stream", "embeddings", "retrieve", "retrieve__points",
            "failed_requests"},
    "llama": {"models", "info", "chat_completions", "chat_completions_stream", "embeddings", "failed_requests"},
    "nexus": {"models", "info", "chat_completions", "chat_completions_stream", "embeddings", "failed_requests"},
    "node06": {"models", "info", "chat_completions", "chat_completions_stream", "embeddings", "failed_requests"},
    "amd": {"models", "info", "chat_completions", "chat_completions_stream", "failed_requests"},  # info: GET /health
}
MISSING = {"rag": [], "llama": ["/v1/retrieve"], "nexus": ["/v1/retrieve"], "node06": ["/v1/retrieve"],
           "amd": ["/v1/embeddings", "/v1/retrieve"]}


def _load(make_node, make_pipeline, flavor: str, **kwargs):
    node = make_node(flavor)
    pipeline = make_pipeline()
    source = gaia_source(base_url=node.base_url, prompts=PROMPTS, texts=TEXTS, queries=QUERIES, **kwargs)
    info = pipeline.run(source)
    info.raise_on_failed_jobs()
    return node, pipeline


def test_each_flavour_loads_what_it_supports_and_warns_once_per_missing_endpoint(
    make_node, make_pipeline, flavor: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="gaia_source"):
        node, pipeline = _load(make_node, make_pipeline, flavor)
    assert data_tables(pipeline) == SUPPORTED[flavor]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == len(MISSING[flavor])
    for path in MISSING[flavor]:
        [message] = [w for w in warnings if path in w]
        assert node.base_url in message and "Skipping resource" in message
    # an endpoint the node lacks is asked once, not once per input
    for path in MISSING[flavor]:
        assert node.requests_to(path) == 1


def test_chat_rows_hold_the_answer_usage_and_request(make_node, make_pipeline, flavor: str) -> None:
    node, pipeline = _load(make_node, make_pipeline, flavor, temperature=0.2, stop="###")
    model = node.default_chat_model
    rows = table_rows(pipeline, "chat_completions", "requested_at")
    assert len(rows) == 3
    by_prompt = {json.loads(r["messages"])[-1]["content"]: r for r in rows}
    paris = by_prompt["What is the capital of France?"]
    expected = answer_for("What is the capital of France?", model) + ("\n" if flavor == "amd" else "")
    assert paris["content"] == expected
    assert paris["status"] == "completed" and paris["finish_reason"] == "stop" and paris["role"] == "assistant"
    assert paris["model_requested"] == model and paris["model"] == model  # discovered from the node
    assert paris["completion_tokens"] > 0 and paris["total_tokens"] == paris["prompt_tokens"] + paris["completion_tokens"]
    assert paris["usage_reported"] is True and paris["latency_ms"] > 0
    assert paris["response_id"].startswith("chatcmpl-")
    assert json.loads(paris["params"]) == {"temperature": 0.2, "stop": ["###"]}  # a single stop string became a list
    body = {"messages": [{"role": "user", "content": "What is the capital of France?"}], "model": model,
            "temperature": 0.2, "stop": ["###"]}
    # the row is its cell (prompt as asked, no model named) answered by this node under its configuration
    asked = {k: v for k, v in body.items() if k != "model"}
    assert paris["cell_id"] == Cell("chat_completions", {"body": asked, "custom_id": None}).cell_id
    assert paris["request_id"] == row_id(paris["cell_id"], paris["node_url"], paris["info_hash"])
    assert json.loads(paris["choices"])[0]["message"]["content"] == expected
    assert by_prompt["Name a river [[context-full]]"]["finish_reason"] == "length"
    empty = by_prompt["[[empty]]"]
    assert empty["content"] == "" and empty["status"] == "empty" and empty["finish_reason"] == "stop"
    assert empty["error"].startswith("no content and no tool call (finish_reason 'stop'")
    # the empty answer is a failing cell: one failed_requests row per chat table, keyed by its cell
    failed = {(r[0], r[1]) for r in query(pipeline, "SELECT resource, request_id FROM failed_requests "
                                                    "WHERE error_type = 'GaiaEmptyAnswer'")}
    assert ("chat_completions", empty["cell_id"]) in failed and len(failed) == 2


def test_stream_assembles_the_same_text_as_the_plain_completion(make_node, make_pipeline, flavor: str) -> None:
    node, pipeline = _load(make_node, make_pipeline, flavor)
    plain = {r[0]: r[1] for r in query(pipeline, "SELECT CAST(messages AS VARCHAR), content FROM chat_completions")}
    streamed = table_rows(pipeline, "chat_completions_stream", "requested_at")
    assert len(streamed) == 3
    for row in streamed:
        assert row["content"] == plain[row["messages"]]
        empty = "[[empty]]" in row["messages"]
        assert row["status"] == ("empty" if empty else "completed") and (row["error"] is None) != empty
        assert row["duration_ms"] > 0
        assert row["params"] is None  # no chat parameters were given; stream switches are not parameters
    paris = next(r for r in streamed if "France" in r["messages"])
    assert paris["ttft_ms"] is not None and 0 < paris["ttft_ms"] <= paris["duration_ms"]
    assert paris["chunk_count"] >= 2 and paris["finish_reason"] == "stop"
    assert paris["model"] == node.default_chat_model
    if flavor == "amd":  # AMD GAIA streams carry no usage
        assert paris["usage_reported"] is False and paris["completion_tokens"] is None
    else:
        assert paris["usage_reported"] is True and paris["completion_tokens"] == len(paris["content"].split())
    river = next(r for r in streamed if "river" in r["messages"])
    # gaia-nexus re-streams a finished answer and always ends with "stop" (protocol reference §9B)
    assert river["finish_reason"] == ("stop" if flavor in ("nexus", "node06") else "length")
    assert "WASMEDGE" not in river["content"] and river["content"] == plain[river["messages"]]


def test_nexus_chunk_index_is_not_a_choice_index(make_node, make_pipeline) -> None:
    node, pipeline = _load(make_node, make_pipeline, "nexus")
    [(content, chunks)] = query(
        pipeline, "SELECT content, chunk_count FROM chat_completions_stream WHERE content LIKE 'Paris%'"
    )
    assert content == "Paris is the capital of France."
    assert chunks == 3  # ~10-char pieces, indexes 0, 1, 2: still one answer


@pytest.mark.parametrize("flavor", ["rag", "nexus"])  # AMD GAIA has no embeddings: see the warning test
def test_embeddings_one_row_per_text_with_the_vector_in_one_column(make_node, make_pipeline, flavor: str) -> None:
    node, pipeline = _load(make_node, make_pipeline, flavor, embedding_batch_size=2)
    rows = table_rows(pipeline, "embeddings", "text")
    assert [r["text"] for r in rows] == sorted(TEXTS)
    assert not any(t.startswith("embeddings__") for t in data_tables(pipeline))  # never a row per float
    for row in rows:
        vector = as_vector(row["embedding"])
        assert row["dim"] == 768 and vector.shape == (768,)
        np.testing.assert_allclose(vector, embed_text(row["text"], 768), rtol=1e-5, atol=1e-7)
        assert row["model"] == "Nomic-embed-text-v1.5" and row["model_requested"] == "Nomic-embed-text-v1.5"
    assert node.requests_to("/v1/embeddings") == 2  # 3 texts in batches of 2


def test_retrieve_points_ranked_and_empty_result_kept(make_node, make_pipeline) -> None:
    node, pipeline = _load(make_node, make_pipeline, "rag")
    parents = {r["query"]: r for r in table_rows(pipeline, "retrieve", "query")}
    assert set(parents) == set(QUERIES)
    empty = parents["zebra quantum xylophone"]
    assert empty["point_count"] == 0 and empty["response_shape"] == "list" and empty["collection_count"] == 0
    hit = parents["Where is Paris located?"]
    expected = node.retrieve("Where is Paris located?")
    assert hit["point_count"] == len(expected) >= 2 and hit["limit"] == 3 and hit["score_threshold"] == 0.2
    points = query(
        pipeline,
        "SELECT p.rank, p.source, p.score FROM retrieve__points p JOIN retrieve r ON p._dlt_parent_id = r._dlt_id "
        "WHERE r.query = ? ORDER BY p.rank",
        "Where is Paris located?",
    )
    assert [p[0] for p in points] == list(range(1, len(expected) + 1))
    assert [p[1] for p in points] == [e["source"] for e in expected]
    assert points[0][1] == KNOWLEDGE_BASE[0]
    assert [p[2] for p in points] == pytest.approx([e["score"] for e in expected])


def test_retrieve_single_object_shape(make_node, make_pipeline) -> None:
    node = make_node("rag", retrieve_shape="object")
    pipeline = make_pipeline()
    pipeline.run(gaia_source(base_url=node.base_url, queries=QUERIES).with_resources("retrieve"))
    rows = {r[0]: r[1:] for r in query(pipeline, "SELECT query, response_shape, point_count FROM retrieve")}
    assert rows["Where is Paris located?"][0] == "object" and rows["Where is Paris located?"][1] >= 2
    assert rows["zebra quantum xylophone"] == ("object", 0)


def test_models_and_info(make_node, make_pipeline, flavor: str) -> None:
    node, pipeline = _load(make_node, make_pipeline, flavor)
    models = table_rows(pipeline, "models", "id")
    expected = sorted(node.models_body()["data"], key=lambda m: m["id"])
    assert [m["id"] for m in models] == [m["id"] for m in expected]
    assert all(m["node_url"] == node.base_url and m["last_seen_at"] is not None for m in models)
    assert models[0]["owned_by"] == expected[0]["owned_by"]
    [info] = table_rows(pipeline, "info", "fetched_at")
    columns = ("info_shape", "server_type", "node_version", "server_version", "chat_model", "embedding_model", "status")
    assert tuple(info[c] for c in columns) == INFO_READINGS[flavor]
    if flavor == "amd":  # no /v1/info: the row is a snapshot of GET /health
        assert models[0]["max_output_tokens"] == 8192 and models[0]["description"].startswith("GAIA agent")
        assert node.requests_to("/v1/info") == 1 and node.requests_to("/health") == 1
        assert json.loads(info["body"]) == httpx.get(f"{node.root_url}/health").json()
    else:
        assert json.loads(info["body"]) == node.info_body()


# what each server's info says, read off the protocol reference's four /v1/info shapes (§5, §14) and AMD's /health
INFO_READINGS = {
    "rag": ("rag-api-server", "rag", "0.4.27", "0.13.15", "Llama-3.2-3B-Instruct", "Nomic-embed-text-v1.5", None),
    "llama": ("llama-api-server", "llama", None, "0.28.1", "Llama-3.2-1B-Instruct", "nomic-embed-text-v1.5", None),
    "nexus": ("llama-nexus", "nexus", None, None, "Qwen3-4B", "Nomic-embed-text-v1.5", None),
    "node06": ("gaia-nexus", "nexus", "0.6.0", "0.27.0", "Qwen3-4B-Q5_K_M", "nomic-embed-text-v1.5", None),
    "amd": ("amd-gaia-health", "amd-gaia", None, None, "Qwen3-Coder-30B-A3B-Instruct-GGUF", None, "ok"),
}


def test_rerun_merges_chat_and_appends_info_snapshots(make_node, make_pipeline) -> None:
    node = make_node("rag")
    pipeline = make_pipeline()
    for _ in range(2):
        pipeline.run(gaia_source(base_url=node.base_url, prompts=PROMPTS, texts=TEXTS, queries=QUERIES))
    counts = dict(query(pipeline, """
        SELECT 'chat', count(*) FROM chat_completions UNION ALL SELECT 'stream', count(*) FROM chat_completions_stream
        UNION ALL SELECT 'emb', count(*) FROM embeddings UNION ALL SELECT 'ret', count(*) FROM retrieve
        UNION ALL SELECT 'points', count(*) FROM retrieve__points UNION ALL SELECT 'models', count(*) FROM models
        UNION ALL SELECT 'info', count(*) FROM info"""))
    points = len(node.retrieve(QUERIES[0]))
    assert counts == {"chat": 3, "stream": 3, "emb": 3, "ret": 2, "points": points, "models": 2, "info": 2}


def test_unknown_model_is_answered_by_the_loaded_model(make_node, make_pipeline) -> None:
    node = make_node("rag")
    pipeline = make_pipeline()
    source = gaia_source(base_url=node.base_url, prompts=["hi"], chat_model="gpt-4o")
    pipeline.run(source.with_resources("chat_completions"))
    [(requested, returned)] = query(pipeline, "SELECT model_requested, model FROM chat_completions")
    assert (requested, returned) == ("gpt-4o", "Llama-3.2-3B-Instruct")


def test_further_choices_are_kept(make_node, make_pipeline) -> None:
    node = make_node("nexus")
    pipeline = make_pipeline()
    pipeline.run(gaia_source(base_url=node.base_url, prompts=["hi"], chat_params={"n": 3}).with_resources("chat_completions"))
    [(choices,)] = query(pipeline, "SELECT choices FROM chat_completions")
    contents = [c["message"]["content"] for c in json.loads(choices)]
    assert contents == ["Qwen3-4B answers: hi", "Qwen3-4B answers: hi (variant 1)", "Qwen3-4B answers: hi (variant 2)"]
