"""Embeddings at warehouse scale: a native FLOAT[dim] column, skip what is embedded, search in SQL, HNSW."""

from __future__ import annotations

import dlt
import pytest
from conftest import as_vector, query

from gaia_source import GaiaConfigError, gaia_source
from gaia_source.emulator import KNOWLEDGE_BASE, embed_text
from gaia_source.vectors import create_hnsw_index, load_vss, search

CORPUS = list(KNOWLEDGE_BASE)


def _embed(node, pipeline, texts, **kwargs):
    source = gaia_source(base_url=node.base_url, texts=texts, embedding_batch_size=3, **kwargs)
    pipeline.run(source.with_resources("embeddings")).raise_on_failed_jobs()


def test_native_array_column_and_self_similarity(make_node, make_pipeline) -> None:
    node = make_node("nexus")
    pipeline = make_pipeline()
    _embed(node, pipeline, CORPUS)
    [(kind,)] = query(pipeline, "SELECT DISTINCT typeof(embedding) FROM embeddings")
    assert kind == "FLOAT[768]"
    with pipeline.sql_client() as client:
        with client.with_staging_dataset():  # merges land through staging: it must hold FLOAT[768] too
            staging_schema = client.dataset_name
    assert query(pipeline, "SELECT data_type FROM information_schema.columns WHERE table_schema = ? "
                 "AND table_name = 'embeddings' AND column_name = 'embedding'", staging_schema) == [("FLOAT[768]",)]
    for text in CORPUS:
        [(top, score)] = query(pipeline, """
            SELECT b.text, array_cosine_similarity(b.embedding, a.embedding) AS s
            FROM embeddings a, embeddings b WHERE a.text = ? ORDER BY s DESC LIMIT 1""", text)
        assert top == text and score == pytest.approx(1.0, abs=1e-5)
    [(stored,)] = query(pipeline, "SELECT embedding FROM embeddings WHERE text = ?", CORPUS[0])
    assert as_vector(stored) == pytest.approx(embed_text(CORPUS[0], 768).astype(float), abs=1e-6)


def test_rerun_embeds_nothing_twice(make_node, make_pipeline) -> None:
    node = make_node("rag")
    pipeline = make_pipeline()
    _embed(node, pipeline, CORPUS)
    assert node.requests_to("/v1/embeddings") == 3  # 8 texts in batches of 3
    node.reset_stats()
    _embed(node, pipeline, CORPUS)
    assert node.requests_to("/v1/embeddings") == 0
    _embed(node, pipeline, [*CORPUS, "A brand new sentence.", "And another one."])
    assert node.requests_to("/v1/embeddings") == 1  # only the 2 new texts, in one batch
    node.reset_stats()
    _embed(node, pipeline, CORPUS, refresh=True)
    assert node.requests_to("/v1/embeddings") == 3
    assert query(pipeline, "SELECT count(*), count(DISTINCT embedding_id) FROM embeddings") == [(10, 10)]


def test_search_ranks_in_sql(make_node, make_pipeline) -> None:
    node = make_node("rag")
    pipeline = make_pipeline()
    _embed(node, pipeline, CORPUS)
    hits = search(pipeline, "Where is Paris located?", k=3, base_url=node.base_url)
    assert list(hits.columns) == ["text_id", "text", "metadata", "model", "score"]
    assert len(hits) == 3 and hits.iloc[0]["text"] == KNOWLEDGE_BASE[0]
    assert list(hits["score"]) == sorted(hits["score"], reverse=True)
    assert set(hits["model"]) == {"Nomic-embed-text-v1.5"}
    exact = search(pipeline, KNOWLEDGE_BASE[5], k=1, base_url=node.base_url)
    assert exact.iloc[0]["text"] == KNOWLEDGE_BASE[5] and exact.iloc[0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_hnsw_index_or_a_clear_reason(make_node, make_pipeline) -> None:
    node = make_node("rag", dim=16)
    pipeline = make_pipeline()
    _embed(node, pipeline, CORPUS)
    try:
        create_hnsw_index(pipeline)
    except GaiaConfigError as exc:  # offline machines cannot download the vss extension
        assert "vss extension is not available" in str(exc) and "INSTALL vss" in str(exc)
        return
    with pipeline.sql_client() as client:
        load_vss(client)  # the connection that searches loads it (vectors.search does the same)
        plan = str(client.execute_sql(
            f"EXPLAIN SELECT text FROM {client.make_qualified_table_name('embeddings')} "
            "ORDER BY array_cosine_distance(embedding, ?::FLOAT[16]) LIMIT 3", embed_text("Paris", 16).tolist()))
    assert "HNSW" in plan


def test_a_json_vector_column_is_converted_once(make_node, make_pipeline) -> None:
    node = make_node("rag", dim=8)
    pipeline = make_pipeline()
    old = {"embedding_id": "old-1", "text": "legacy", "dim": 8, "model": "Nomic-embed-text-v1.5", "embedding": [0.5] * 8}
    pipeline.run(dlt.resource([old], name="embeddings", columns={"embedding": {"data_type": "json"}},
                              write_disposition="merge", primary_key="embedding_id"))
    assert query(pipeline, "SELECT typeof(embedding) FROM embeddings") == [("JSON",)]
    _embed(node, pipeline, CORPUS[:2])
    assert query(pipeline, "SELECT DISTINCT typeof(embedding) FROM embeddings") == [("FLOAT[8]",)]
    [(legacy,)] = query(pipeline, "SELECT embedding FROM embeddings WHERE embedding_id = 'old-1'")
    assert list(legacy) == [0.5] * 8


def test_another_dimension_in_the_same_table_is_refused(make_node, make_pipeline) -> None:
    pipeline = make_pipeline()
    _embed(make_node("rag", dim=8), pipeline, CORPUS[:2])
    other = make_node("nexus", dim=12)
    with pytest.raises(Exception) as info:
        _embed(other, pipeline, ["something else"])
    assert "is FLOAT[8], but the model returns 12-dimensional vectors" in str(info.value)
    assert query(pipeline, "SELECT count(*) FROM embeddings") == [(2,)]


def test_search_prefilters_on_columns_and_metadata(make_node, make_pipeline) -> None:
    node = make_node("rag")
    pipeline = make_pipeline()
    texts = [{"text": t, "id": f"kb-{i}", "metadata": {"part": i % 2, "lang": "en" if i < 4 else "fr"}}
             for i, t in enumerate(CORPUS)]
    _embed(node, pipeline, texts)
    odd = search(pipeline, CORPUS[0], k=10, where={"part": 1}, base_url=node.base_url)
    assert sorted(odd["text_id"]) == sorted(f"kb-{i}" for i in range(1, len(CORPUS), 2))
    assert list(odd["score"]) == sorted(odd["score"], reverse=True)
    both = search(pipeline, CORPUS[0], k=10, where={"part": 0, "lang": "fr"}, base_url=node.base_url)
    assert sorted(both["text_id"]) == sorted(f"kb-{i}" for i in range(4, len(CORPUS), 2))
    assert list(search(pipeline, "x", k=5, where={"text_id": "kb-2"}, base_url=node.base_url)["text_id"]) == ["kb-2"]
    with pytest.raises(GaiaConfigError, match="not a column or metadata field name"):
        search(pipeline, "x", where={"lang'; DROP TABLE embeddings; --": "en"}, base_url=node.base_url)
