"""Rows of any upstream dlt resource, or of a warehouse table, sent to the node through the transformers."""

from __future__ import annotations

import json
from typing import Iterator, List

import dlt
import numpy as np
from conftest import as_vector, query, table_rows

from gaia_source.emulator import embed_text
from gaia_source.transformers import chat_completions_from, chat_completions_stream_from, embeddings_from

QUESTIONS = [{"question_id": 10 + i, "question": q} for i, q in enumerate(
    ["What is the capital of France?", "What is a Gaia node?", "Is DuckDB fast?", "What does dlt do?", "Why?"])]


@dlt.resource(name="questions", selected=False)
def questions() -> Iterator[List[dict]]:
    yield QUESTIONS[:3]  # pages: each is sent concurrently
    yield QUESTIONS[3:]


def test_chat_from_an_upstream_resource(make_node, make_pipeline, monkeypatch) -> None:
    node = make_node("nexus")
    monkeypatch.setenv("SOURCES__GAIA_SOURCE__BASE_URL", node.base_url)  # the same config as the source
    pipeline = make_pipeline()
    pipeline.run(questions | chat_completions_from(prompt_field="question", id_field="question_id", max_concurrency=3))
    rows = {r["custom_id"]: r for r in table_rows(pipeline, "chat_completions", "custom_id")}
    assert set(rows) == {str(q["question_id"]) for q in QUESTIONS}
    assert rows["10"]["content"] == "Paris is the capital of France."
    assert rows["14"]["content"] == "Qwen3-4B answers: Why?" and rows["14"]["model"] == "Qwen3-4B"
    node.reset_stats()
    pipeline.run(questions | chat_completions_from(prompt_field="question", id_field="question_id"))
    assert node.requests_to("/v1/chat/completions") == 0  # all answered already


def test_streamed_chat_from_an_upstream_resource(make_node, make_pipeline) -> None:
    node = make_node("rag")
    pipeline = make_pipeline()
    pipeline.run(questions | chat_completions_stream_from(prompt_field="question", id_field="question_id",
                                                          base_url=node.base_url))
    assert query(pipeline, "SELECT count(*), count(ttft_ms) FROM chat_completions_stream WHERE status = 'completed'") == [(5, 5)]
    assert "chat_completions" not in {t for t, in query(pipeline, "SELECT table_name FROM information_schema.tables")}


def test_embeddings_from_a_table_already_in_the_warehouse(make_node, make_pipeline) -> None:
    node = make_node("rag", dim=32)
    pipeline = make_pipeline()
    docs = [{"doc_id": f"d{i}", "body": f"Document number {i} about Paris and the Seine", "title": f"T{i}", "n": i}
            for i in range(7)]
    pipeline.run(dlt.resource(docs, name="docs"))
    upstream = dlt.resource(pipeline.dataset()["docs"].iter_arrow(chunk_size=3), name="docs_pages", selected=False)
    pipeline.run(upstream | embeddings_from(text_field="body", id_field="doc_id", metadata_fields=["title", "n"],
                                            base_url=node.base_url, embedding_batch_size=2))
    rows = table_rows(pipeline, "embeddings", "text_id")
    assert [r["text_id"] for r in rows] == [d["doc_id"] for d in docs]
    assert json.loads(rows[3]["metadata"]) == {"title": "T3", "n": 3}
    np.testing.assert_allclose(as_vector(rows[3]["embedding"]), embed_text(docs[3]["body"], 32), rtol=1e-5, atol=1e-7)
    joined = query(pipeline, "SELECT d.title, e.dim FROM docs d JOIN embeddings e ON e.text_id = d.doc_id ORDER BY d.title")
    assert joined == [(f"T{i}", 32) for i in range(7)]
    assert node.requests_to("/v1/embeddings") == 5  # pages of 3, 3, 1 in batches of 2
