"""Open table formats as destinations: Delta and Iceberg through dlt's filesystem destination (``table_format``), and
DuckLake. Each runs every resource into a real temp dir and checks, as README's "Vectors by destination" rows say: the
vector column's type and values, the "already loaded" lookup (a re-run sends nothing), merge on ``request_id`` (a
refresh replaces rows instead of doubling them; a request that failed and then completed leaves no
``failed_requests`` row), chunk sync's post-load deletes, and ``vectors.search`` with ``where=``. DuckDB reads these
tables with extensions installed from PyPI packages, never from the network."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List

import dlt
import numpy as np
import pyarrow as pa
import pytest
from conftest import run_cli
from semantic_text_splitter import TextSplitter

from gaia_source import gaia_source
from gaia_source.emulator import KNOWLEDGE_BASE, answer_for, embed_text
from gaia_source.ledger import Ledger
from gaia_source.lifecycle import run_pipeline
from gaia_source.vectors import search

FORMATS = ["delta", "iceberg", "ducklake"]
PROMPTS = ["What is the capital of France?", "What does dlt do?"]
QUERIES = ["Where is Paris located?"]
CORPUS = list(KNOWLEDGE_BASE)
DOC = "Paris lies on the Seine river. " * 6 + "\n\nThe Louvre holds the Mona Lisa. " * 4


def _needs(fmt: str) -> None:
    pytest.importorskip({"delta": "deltalake", "iceberg": "pyiceberg", "ducklake": "duckdb_extension_ducklake"}[fmt])


def _pipeline(fmt: str, tmp_path: Path) -> dlt.Pipeline:
    _needs(fmt)
    if fmt == "ducklake":
        destination: Any = dlt.destinations.ducklake(credentials=dlt.destinations.impl.ducklake.configuration.
                                                     DuckLakeCredentials("lake", catalog=f"sqlite:///{tmp_path}/lake.sqlite",
                                                                         storage=str(tmp_path / "lake_files")))
    else:
        destination = dlt.destinations.filesystem((tmp_path / "lake").as_uri())
    return dlt.pipeline(f"gaia_{fmt}", destination=destination, dataset_name="gaia_data",
                        pipelines_dir=str(tmp_path / "pipelines"))


def _run(pipeline: dlt.Pipeline, fmt: str, resources: List[str], **kwargs: Any) -> Ledger:
    ledger = Ledger()
    table_format = None if fmt == "ducklake" else fmt
    source = gaia_source(resources=resources, ledger=ledger, table_format=table_format, max_attempts=1,
                         retry_rounds=0, **kwargs)
    run_pipeline(pipeline, source, ledger).raise_on_failed_jobs()
    return ledger


def _rows(pipeline: dlt.Pipeline, sql: str, *args: Any) -> List[tuple]:
    with pipeline.sql_client() as client:
        return [tuple(r) for r in client.execute_sql(sql, *args)]


def _vector_type(pipeline: dlt.Pipeline, fmt: str, tmp_path: Path) -> str:
    """The type the format itself stores the vector column as (its own metadata, not DuckDB's view)."""
    if fmt == "delta":
        from dlt.common.libs.deltalake import get_delta_tables

        field = get_delta_tables(pipeline, "embeddings")["embeddings"].schema().to_arrow().field("embedding")
        return str(pa.field(field).type)
    if fmt == "iceberg":
        from dlt.common.libs.pyiceberg import get_iceberg_tables

        return str(get_iceberg_tables(pipeline, "embeddings")["embeddings"].schema().find_field("embedding").field_type)
    return str(_rows(pipeline, "SELECT data_type FROM information_schema.columns WHERE table_schema = 'gaia_data' "
                               "AND table_name = 'embeddings' AND column_name = 'embedding'")[0][0])


NATIVE_VECTOR = {"delta": "list<element: float>", "iceberg": "list<float>", "ducklake": "FLOAT[]"}
"""What each format stores: none of the three has a fixed-size list type (Delta ``array<float>``, Iceberg
``list<float>``, DuckLake ``FLOAT[]``); the parquet data files under Delta keep Arrow's fixed-size list."""


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_resource_loads_and_a_rerun_sends_nothing(fmt: str, make_node, tmp_path: Path) -> None:
    rag, llama = make_node("rag"), make_node("llama")
    pipeline = _pipeline(fmt, tmp_path)
    texts = [{"text": t, "id": f"kb-{i}", "metadata": {"part": i % 2}} for i, t in enumerate(CORPUS)]
    inputs = dict(prompts=PROMPTS, texts=texts, queries=QUERIES)
    _run(pipeline, fmt, ["models", "info", "chat_completions", "chat_completions_stream", "embeddings", "retrieve"],
         base_url=rag.base_url, **inputs)
    _run(pipeline, fmt, ["responses"], base_url=llama.base_url, prompts=PROMPTS)

    assert _vector_type(pipeline, fmt, tmp_path) == NATIVE_VECTOR[fmt]
    vectors = dict(_rows(pipeline, "SELECT text_id, embedding FROM embeddings"))
    assert set(vectors) == {f"kb-{i}" for i in range(len(CORPUS))}
    for i, text in enumerate(CORPUS):
        assert np.asarray(vectors[f"kb-{i}"], np.float32) == pytest.approx(embed_text(text, 768), abs=1e-6)
    model = rag.default_chat_model
    for table in ("chat_completions", "chat_completions_stream"):
        assert sorted(c for c, in _rows(pipeline, f"SELECT content FROM {table}")) == sorted(
            answer_for(p, model) for p in PROMPTS), table
    assert _rows(pipeline, "SELECT count(*) FROM retrieve__points")[0][0] >= 2
    assert len(_rows(pipeline, "SELECT content FROM responses WHERE status = 'completed'")) == 2
    assert {m for m, in _rows(pipeline, "SELECT id FROM models")} >= {model}
    assert [u for u, in _rows(pipeline, "SELECT node_url FROM info")] == [rag.base_url]

    rag.reset_stats()
    llama.reset_stats()  # looked up in the tables through DuckDB: nothing is sent again
    ledger = _run(pipeline, fmt, ["chat_completions", "chat_completions_stream", "embeddings", "retrieve"],
                  base_url=rag.base_url, **inputs)
    _run(pipeline, fmt, ["responses"], base_url=llama.base_url, prompts=PROMPTS)
    sent = {p: n.requests_to(p) for n in (rag, llama) for p in
            ("/v1/chat/completions", "/v1/embeddings", "/v1/retrieve", "/v1/responses")}
    assert sum(sent.values()) == 0, sent
    assert ledger.count("skipped") == 2 * len(PROMPTS) + len(CORPUS) + len(QUERIES)


@pytest.mark.parametrize("fmt", FORMATS)
def test_merge_on_request_id(fmt: str, make_node, tmp_path: Path) -> None:
    """A refresh sends everything again and the rows are replaced (upsert on Delta/Iceberg, delete-insert on
    DuckLake), not doubled; a request that failed and then completed leaves no failed_requests row."""
    node = make_node("rag", failing_paths=("/v1/chat/completions",))
    pipeline = _pipeline(fmt, tmp_path)
    _run(pipeline, fmt, ["chat_completions"], base_url=node.base_url, prompts=PROMPTS)
    assert sorted(r for r, in _rows(pipeline, "SELECT resource FROM failed_requests")) == ["chat_completions"] * 2
    node.failing_paths = ()
    _run(pipeline, fmt, ["chat_completions", "embeddings"], base_url=node.base_url, prompts=PROMPTS,
         texts=CORPUS[:3])
    assert _rows(pipeline, "SELECT count(*) FROM failed_requests") == [(0,)]  # merged away by the tombstones
    before = sorted(_rows(pipeline, "SELECT request_id, content FROM chat_completions"))
    assert len(before) == 2 and _rows(pipeline, "SELECT count(*) FROM embeddings") == [(3,)]

    node.reset_stats()
    _run(pipeline, fmt, ["chat_completions", "embeddings"], base_url=node.base_url, prompts=PROMPTS,
         texts=CORPUS[:3], refresh=True)
    assert node.requests_to("/v1/chat/completions") == 2 and node.requests_to("/v1/embeddings") == 1
    assert sorted(_rows(pipeline, "SELECT request_id, content FROM chat_completions")) == before
    assert _rows(pipeline, "SELECT count(*), count(DISTINCT embedding_id) FROM embeddings") == [(3, 3)]


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_changed_document_loses_its_old_chunks_after_the_load(fmt: str, make_node, tmp_path: Path) -> None:
    node = make_node("rag", embedding_ctx=12)
    pipeline = _pipeline(fmt, tmp_path)
    docs = [{"text": DOC, "document_id": "d1"}, {"text": "A note.", "document_id": "d2"}]
    chunking: Dict[str, Any] = dict(chunk_size=60, chunk_overlap=10, embedding_batch_size=3)
    _run(pipeline, fmt, ["embeddings"], base_url=node.base_url, texts=docs, **chunking)
    before = _rows(pipeline, "SELECT document_id, text FROM embeddings")
    assert any("Mona Lisa" in t for _, t in before) and {d for d, _ in before} == {"d1", "d2"}
    changed = "Paris lies on the Seine river. " * 2
    ledger = _run(pipeline, fmt, ["embeddings"], base_url=node.base_url,
                  texts=[{"text": changed, "document_id": "d1"}, docs[1]], **chunking)
    after = _rows(pipeline, "SELECT document_id, chunk_index, char_start, text FROM embeddings "
                            "ORDER BY document_id, chunk_index")
    expected = [("d1", i, start, chunk) for i, (start, chunk) in
                enumerate(TextSplitter(60, overlap=10).chunk_indices(changed))]
    assert [r for r in after if r[0] == "d1"] == expected  # the orphans are gone
    assert [r[3] for r in after if r[0] == "d2"] == ["A note."]
    assert not ledger.pending_chunk_syncs.get(("embeddings", None))


@pytest.mark.parametrize("fmt", FORMATS)
def test_search_with_a_prefilter(fmt: str, make_node, tmp_path: Path) -> None:
    node = make_node("rag")
    pipeline = _pipeline(fmt, tmp_path)
    texts = [{"text": t, "id": f"kb-{i}", "metadata": {"part": i % 2}} for i, t in enumerate(CORPUS)]
    _run(pipeline, fmt, ["embeddings"], base_url=node.base_url, texts=texts)
    hits = search(pipeline, "Where is Paris located?", k=3, base_url=node.base_url)
    assert hits.iloc[0]["text"] == KNOWLEDGE_BASE[0] and list(hits["score"]) == sorted(hits["score"], reverse=True)
    exact = search(pipeline, CORPUS[4], k=1, base_url=node.base_url)
    assert exact.iloc[0]["text_id"] == "kb-4" and exact.iloc[0]["score"] == pytest.approx(1.0, abs=1e-5)
    odd = search(pipeline, CORPUS[0], k=10, where={"part": 1}, base_url=node.base_url)
    assert sorted(odd["text_id"]) == sorted(f"kb-{i}" for i in range(1, len(CORPUS), 2))
    assert list(search(pipeline, "x", k=5, where={"text_id": "kb-3"}, base_url=node.base_url)["text_id"]) == ["kb-3"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_cli_installs_the_extensions_offline(fmt: str, make_node, tmp_path: Path) -> None:
    """In a fresh home (no DuckDB extension directory) the script installs what DuckDB needs from the PyPI packages:
    nothing is downloaded (the test machine has no network to download from)."""
    _needs(fmt)
    node = make_node("rag")
    home = tmp_path / "home"
    home.mkdir()
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(CORPUS) + "\n")
    args = ["--base-url", node.base_url, "--texts-file", str(texts), "--prompts-file", str(texts),
            "--resources", "models,info,chat_completions,embeddings", "--progress", "none"]
    if fmt == "ducklake":
        args += ["--destination", "ducklake"]
    else:
        args += ["--destination", "filesystem", "--table-format", fmt]
    env = {"HOME": str(home), "DESTINATION__FILESYSTEM__BUCKET_URL": (tmp_path / "lake").as_uri()}
    first = run_cli(tmp_path, *args, env=env)
    assert first.returncode == 0, first.stderr
    installed = {p.name for p in home.glob(".duckdb/extensions/*/*/*.duckdb_extension")}
    assert installed >= ({"ducklake.duckdb_extension", "sqlite_scanner.duckdb_extension"} if fmt == "ducklake"
                         else {f"{fmt}.duckdb_extension"})
    assert "embeddings" in first.stdout and "Failed to download" not in first.stderr
    node.reset_stats()
    again = run_cli(tmp_path, *args, env=env)
    assert again.returncode == 0, again.stderr
    assert node.requests_to("/v1/embeddings") == 0 and node.requests_to("/v1/chat/completions") == 0
    assert os.path.isdir(tmp_path / ("ducklake.files" if fmt == "ducklake" else "lake"))
