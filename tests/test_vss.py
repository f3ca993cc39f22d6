"""DuckDB's vss extension from PyPI (``duckdb-extension-vss``, in the default install with the DuckDB it is built
for), loaded offline: a persistent HNSW index that DuckDB's plan uses, whose top-k matches exact search on a sample,
and that later loads keep up to date."""

from __future__ import annotations

import random

import dlt
import duckdb_extension_vss  # noqa: F401,E402  (the default install has it: fail, not skip)
import numpy as np
import pytest
from dlt.destinations.impl.duckdb.configuration import DuckDbCredentials

from gaia_source import gaia_source
from gaia_source.emulator import embed_text
from gaia_source.vectors import create_hnsw_index, search

DIM = 64
WORDS = [f"w{i}" for i in range(300)]


def _corpus(n: int, seed: int) -> list:
    rng = random.Random(seed)
    return [{"text": " ".join(rng.sample(WORDS, 6)), "id": f"s{seed}-{i}"} for i in range(n)]


def _pipeline(tmp_path, name="gaia_vss"):
    credentials = DuckDbCredentials(str(tmp_path / "vss.duckdb"), extensions=["vss"],
                                    global_config={"hnsw_enable_experimental_persistence": True})
    return dlt.pipeline(name, destination=dlt.destinations.duckdb(credentials), dataset_name="gaia_data",
                        pipelines_dir=str(tmp_path / "pipelines"))


def _plan(pipeline, vector) -> str:
    with pipeline.sql_client() as sql:
        rows = sql.execute_sql(
            f"EXPLAIN SELECT text_id FROM {sql.make_qualified_table_name('embeddings')} "
            f"ORDER BY array_cosine_distance(embedding, %s::FLOAT[{DIM}]) LIMIT 10", vector)
    return "\n".join(str(r[1]) for r in rows)


def _topk(pipeline, vector, k=10):
    with pipeline.sql_client() as sql:
        return [r[0] for r in sql.execute_sql(
            f"SELECT text_id FROM {sql.make_qualified_table_name('embeddings')} "
            f"ORDER BY array_cosine_distance(embedding, %s::FLOAT[{DIM}]) LIMIT {k}", vector)]


def test_hnsw_index_is_used_and_matches_exact_search(make_node, tmp_path) -> None:
    node = make_node("rag", dim=DIM)
    corpus = _corpus(600, seed=1)
    first = dlt.pipeline("gaia_vss", destination=dlt.destinations.duckdb(str(tmp_path / "vss.duckdb")),
                         dataset_name="gaia_data", pipelines_dir=str(tmp_path / "pipelines"))
    first.run(gaia_source(base_url=node.base_url, texts=corpus, embedding_batch_size=100)
              .with_resources("embeddings")).raise_on_failed_jobs()
    create_hnsw_index(first, metric="cosine")

    pipeline = _pipeline(tmp_path)  # later connections load vss (offline: installed from the package's file)
    with pipeline.sql_client() as sql:
        indexes = sql.execute_sql("SELECT index_name, sql FROM duckdb_indexes() WHERE table_name = 'embeddings'")
        assert [i[0] for i in indexes] == ["embeddings_hnsw"] and "HNSW" in indexes[0][1]
        stored = {r[0]: np.asarray(r[1], np.float32) for r in sql.execute_sql("SELECT text_id, embedding FROM embeddings")}
    assert "HNSW_INDEX_SCAN" in _plan(pipeline, embed_text("w1 w2 w3", DIM).tolist())

    ids = list(stored)
    matrix = np.stack([stored[i] for i in ids])
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    rng = random.Random(7)
    position = {text_id: i for i, text_id in enumerate(ids)}
    for _ in range(20):  # top-10 through the index = exact top-10 (numpy over every stored vector)
        query = embed_text(" ".join(rng.sample(WORDS, 4)), DIM)
        scores = matrix @ (query / np.linalg.norm(query))
        exact = np.sort(scores)[::-1][:10]
        found = _topk(pipeline, query.tolist())
        assert len(set(found)) == 10  # equal scores (texts sharing words) may swap places: compare the scores
        assert [float(scores[position[i]]) for i in found] == pytest.approx(exact.tolist(), abs=1e-5)

    # the index persists in the file and follows later loads (through dlt, which loads vss on its connections)
    more = _corpus(50, seed=2)
    pipeline.run(gaia_source(base_url=node.base_url, texts=more, embedding_batch_size=50)
                 .with_resources("embeddings")).raise_on_failed_jobs()
    target = more[17]
    assert _topk(pipeline, embed_text(target["text"], DIM).tolist(), k=1) == [target["id"]]
    hits = search(pipeline, target["text"], k=1, base_url=node.base_url)
    assert hits.iloc[0]["text_id"] == target["id"] and hits.iloc[0]["score"] == pytest.approx(1.0, abs=1e-5)
    plain = dlt.pipeline("gaia_vss", destination=dlt.destinations.duckdb(str(tmp_path / "vss.duckdb")),
                         dataset_name="gaia_data", pipelines_dir=str(tmp_path / "pipelines"))
    hits = search(plain, target["text"], k=3, base_url=node.base_url)  # search loads vss itself for the index
    assert hits.iloc[0]["text_id"] == target["id"] and len(hits) == 3
