"""The same load into PostgreSQL and into parquet files: vectors, usage and nested fields land in usable columns."""

from __future__ import annotations

from pathlib import Path

import dlt
import pyarrow.parquet as pq
import pytest
from conftest import POSTGRES

from gaia_source import gaia_source
from gaia_source.emulator import answer_for, embed_text

PROMPTS = ["What is the capital of France?", "What does dlt do?"]
TEXTS = ["Paris is on the Seine.", "DuckDB has array columns."]
QUERIES = ["Where is Paris located?"]


def test_postgres(make_node, tmp_path: Path, postgres_schema: str, caplog: pytest.LogCaptureFixture) -> None:
    """The machine's PostgreSQL has no pgvector: vectors stay jsonb, and one note says why."""
    node = make_node("rag")
    pipeline = dlt.pipeline("gaia_pg", destination=dlt.destinations.postgres(POSTGRES), dataset_name=postgres_schema,
                            pipelines_dir=str(tmp_path / "pipelines"))
    source = gaia_source(base_url=node.base_url, prompts=PROMPTS, texts=TEXTS, queries=QUERIES)
    with caplog.at_level("WARNING", logger="gaia_source"):
        pipeline.run(source).raise_on_failed_jobs()
    notes = [r.getMessage() for r in caplog.records if "pgvector" in r.getMessage()]
    assert len(notes) == 1 and "not installed on this server" in notes[0] and "stays jsonb" in notes[0]
    with pipeline.sql_client() as client:
        chat = {row[0]: row[1:] for row in client.execute_sql(
            "SELECT content, prompt_tokens, completion_tokens, messages->0->>'content', jsonb_typeof(choices) "
            "FROM chat_completions")}
        assert chat["Paris is the capital of France."] == (9, 6, "What is the capital of France?", "array")
        assert len(chat) == 2
        streamed = client.execute_sql("SELECT status, ttft_ms IS NOT NULL, usage_reported FROM chat_completions_stream")
        assert streamed == [("completed", True, True)] * 2
        vectors = client.execute_sql("SELECT text, dim, embedding FROM embeddings ORDER BY text")
        assert [(t, d, len(v)) for t, d, v in vectors] == [(t, 768, 768) for t in sorted(TEXTS)]
        assert vectors[1][2] == pytest.approx(embed_text(vectors[1][0], 768).tolist(), abs=1e-6)
        types = dict(client.execute_sql(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = %s "
            "AND table_name = 'embeddings' AND column_name IN ('embedding', 'metadata')", postgres_schema))
        assert types == {"embedding": "jsonb", "metadata": "jsonb"}
        points = client.execute_sql("SELECT p.rank, p.score FROM retrieve__points p ORDER BY p.rank")
        assert [p[0] for p in points] == list(range(1, len(points) + 1)) and len(points) >= 2
    node.reset_stats()
    pipeline.run(gaia_source(base_url=node.base_url, prompts=PROMPTS, texts=TEXTS).with_resources(
        "chat_completions", "embeddings")).raise_on_failed_jobs()
    assert node.requests_to("/v1/chat/completions") == 0 and node.requests_to("/v1/embeddings") == 0  # skip works here


def test_filesystem_parquet(make_node, tmp_path: Path) -> None:
    node = make_node("nexus")
    bucket = tmp_path / "lake"
    pipeline = dlt.pipeline("gaia_fs", destination=dlt.destinations.filesystem(bucket.as_uri()), dataset_name="gaia_data",
                            pipelines_dir=str(tmp_path / "pipelines"))
    source = gaia_source(base_url=node.base_url, prompts=PROMPTS, texts=TEXTS)
    pipeline.run(source, loader_file_format="parquet").raise_on_failed_jobs()
    [embeddings_file] = (bucket / "gaia_data" / "embeddings").glob("*.parquet")
    table = pq.read_table(embeddings_file)
    assert str(table.schema.field("embedding").type) == "fixed_size_list<element: float>[768]"
    rows = {r["text"]: r for r in table.to_pylist()}
    assert rows[TEXTS[0]]["embedding"] == pytest.approx(embed_text(TEXTS[0], 768).tolist(), abs=1e-6)
    chat = pipeline.dataset()("SELECT content, total_tokens, usage_reported FROM chat_completions").df()
    assert sorted(chat["content"]) == sorted(answer_for(p, "Qwen3-4B") for p in PROMPTS)
    assert all(chat["total_tokens"] > 0) and all(chat["usage_reported"])
    node.reset_stats()
    pipeline.run(gaia_source(base_url=node.base_url, prompts=PROMPTS, texts=TEXTS), loader_file_format="parquet")
    assert node.requests_to("/v1/chat/completions") == 0 and node.requests_to("/v1/embeddings") == 0


def test_filesystem_search_with_a_prefilter(make_node, tmp_path: Path) -> None:
    """On parquet files, search ranks in numpy after the metadata/column prefilter."""
    from gaia_source.emulator import KNOWLEDGE_BASE
    from gaia_source.vectors import search

    node = make_node("rag")
    pipeline = dlt.pipeline("gaia_fs_search", destination=dlt.destinations.filesystem((tmp_path / "lake").as_uri()),
                            dataset_name="gaia_data", pipelines_dir=str(tmp_path / "pipelines"))
    texts = [{"text": t, "id": f"kb-{i}", "metadata": {"part": i % 2}} for i, t in enumerate(KNOWLEDGE_BASE)]
    pipeline.run(gaia_source(base_url=node.base_url, texts=texts).with_resources("embeddings"),
                 loader_file_format="parquet").raise_on_failed_jobs()
    assert search(pipeline, "Where is Paris located?", k=1, base_url=node.base_url).iloc[0]["text_id"] == "kb-0"
    odd = search(pipeline, KNOWLEDGE_BASE[0], k=10, where={"part": 1}, base_url=node.base_url)
    assert sorted(odd["text_id"]) == sorted(f"kb-{i}" for i in range(1, len(KNOWLEDGE_BASE), 2))
    assert list(search(pipeline, "x", k=5, where={"text_id": "kb-3"}, base_url=node.base_url)["text_id"]) == ["kb-3"]


def test_postgres_escapes_nul_per_row_and_nothing_is_left_pending(make_node, tmp_path: Path, postgres_schema: str,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """PostgreSQL text and jsonb cannot hold U+0000: each one becomes the six characters \\u0000 (one warning per
    table), every other value loads as is, and the next run loads new inputs (no package left pending)."""
    node = make_node("rag")
    model = node.default_chat_model
    pipeline = dlt.pipeline("gaia_pg_nul", destination=dlt.destinations.postgres(POSTGRES),
                            dataset_name=postgres_schema, pipelines_dir=str(tmp_path / "pipelines"))
    prompts = ["What is the capital of France?", "Is A\x00B one word?", "bad\x00 [[fail]]"]
    texts = ["Paris is on the Seine.", "nul\x00text"]

    def run(prompts: list) -> None:
        source = gaia_source(base_url=node.base_url, prompts=prompts, texts=texts, max_attempts=1, retry_rounds=0)
        pipeline.run(source.with_resources("chat_completions", "chat_completions_stream", "embeddings")
                     ).raise_on_failed_jobs()
        assert not pipeline.has_pending_data

    with caplog.at_level("WARNING", logger="gaia_source"):
        run(prompts)
    escaped = "Is A\\u0000B one word?"
    with pipeline.sql_client() as client:
        for table in ("chat_completions", "chat_completions_stream"):
            rows = dict(client.execute_sql(f"SELECT messages->0->>'content', content FROM {table} WHERE status = "
                                           "'completed'"))
            assert rows == {"What is the capital of France?": "Paris is the capital of France.",
                            escaped: f"{model} answers: {escaped}"}, table  # the node's answer held a NUL too
        failed = client.execute_sql("SELECT resource, request_body->'messages'->0->>'content' FROM failed_requests "
                                    "ORDER BY resource")
        assert failed == [("chat_completions", "bad\\u0000 [[fail]]"), ("chat_completions_stream", "bad\\u0000 [[fail]]")]
        assert sorted(t for t, in client.execute_sql("SELECT text FROM embeddings")) == [
            "Paris is on the Seine.", "nul\\u0000text"]
    warnings = sorted(r.getMessage() for r in caplog.records if "U+0000" in r.getMessage())
    assert all("the postgres destination cannot store" in w and "as the six characters \\u0000" in w
               for w in warnings), warnings
    # one per table (and resource): the prompt in messages, the answer in content (and in choices, not streamed)
    assert [(w.split("'")[1], int(w.split(": ")[1].split()[0]), w.split("'")[-2]) for w in warnings] == [
        ("chat_completions", 3, "chat_completions"), ("chat_completions_stream", 2, "chat_completions_stream"),
        ("embeddings", 1, "embeddings"), ("failed_requests", 1, "chat_completions"),
        ("failed_requests", 1, "chat_completions_stream")]
    node.reset_stats()
    run([*prompts[:2], "A question for the second run?"])  # new prompts are extracted and land
    with pipeline.sql_client() as client:
        [(content,)] = client.execute_sql("SELECT content FROM chat_completions WHERE content LIKE '%second run%'")
    assert content == f"{model} answers: A question for the second run?"
    assert node.requests_to("/v1/chat/completions") == 2  # only the new prompt, plain and streamed
