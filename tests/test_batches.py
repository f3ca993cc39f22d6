"""A batch that fails because of one of its texts is split until that text is alone: it alone becomes a
``failed_requests`` row (with its id), and every other text of the batch loads."""

from __future__ import annotations

import json

import pytest
from conftest import as_vector, query

from gaia_source import gaia_source
from gaia_source.emulator import embed_text


def test_one_too_long_text_is_isolated_and_the_rest_load(make_node, make_pipeline) -> None:
    node = make_node("rag", embedding_ctx=50)
    pipeline = make_pipeline()
    texts = [{"text": f"short text number {i} about Paris", "id": f"t{i}"} for i in range(32)]
    texts[13] = {"text": " ".join(["word"] * 60), "id": "too-long"}  # 60 tokens > the model's 50
    source = gaia_source(base_url=node.base_url, texts=texts, embedding_batch_size=32)
    pipeline.run(source.with_resources("embeddings")).raise_on_failed_jobs()
    loaded = dict(query(pipeline, "SELECT text_id, embedding FROM embeddings"))
    assert set(loaded) == {f"t{i}" for i in range(32) if i != 13}
    assert as_vector(loaded["t7"]) == pytest.approx(embed_text("short text number 7 about Paris", 768).astype(float), abs=1e-6)
    failed = query(pipeline, "SELECT custom_id, http_status, error_message, attempts, request_body FROM failed_requests")
    assert len(failed) == 1
    custom_id, status, message, attempts, body = failed[0]
    # not retried as it is (it would fail the same way): its sends are the splits it went through, 32 -> … -> 1
    assert custom_id == "too-long" and status == 500 and attempts == 6
    assert "Failed to compute embeddings" in message and "60 tokens" in message
    assert json.loads(body)["input"] == [texts[13]["text"]]  # the bad text alone
    # 32 -> 16+16 -> 8+8 -> 4+4 -> 2+2 -> 1+1: the whole batch, then two requests per level down to the bad text
    assert node.requests_to("/v1/embeddings") == 1 + 2 * 5
    # a re-run sends only the bad text again (alone), and still nothing is doubled or lost
    node.reset_stats()
    pipeline.run(gaia_source(base_url=node.base_url, texts=texts, embedding_batch_size=32).with_resources("embeddings"))
    assert node.requests_to("/v1/embeddings") == 1
    assert query(pipeline, "SELECT count(*), count(DISTINCT text_id) FROM embeddings") == [(31, 31)]
    assert query(pipeline, "SELECT custom_id FROM failed_requests") == [("too-long",)]


def test_a_batch_error_that_names_no_input_is_not_split(make_node, make_pipeline) -> None:
    node = make_node("rag", outage=503)
    pipeline = make_pipeline()
    source = gaia_source(base_url=node.base_url, texts=[f"text {i}" for i in range(8)], embedding_batch_size=8,
                         max_attempts=1, retry_rounds=0)
    pipeline.run(source.with_resources("embeddings"))
    # one request, not split (the error names no input); each of its texts is a failing cell of its own
    assert query(pipeline, "SELECT count(*), count(DISTINCT custom_id), max(http_status), max(attempts) "
                           "FROM failed_requests") == [(8, 0, 503, 1)]
    assert sorted(json.loads(b)["input"][0] for (b,) in query(pipeline, "SELECT request_body FROM failed_requests")) \
        == sorted(f"text {i}" for i in range(8))
    assert node.requests_to("/v1/embeddings") == 1
