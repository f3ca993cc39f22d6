"""The embedded LanceDB destination: the node's own vectors as a fixed-size float32 vector column (nothing
re-embedded), skip of what is loaded, search and prefilter in LanceDB, and documents whose orphans are deleted."""

from __future__ import annotations

import dlt
import numpy as np
import pyarrow as pa
import pytest
from semantic_text_splitter import TextSplitter

from gaia_source import gaia_source
from gaia_source.destination import apply_chunk_sync, lance_table
from gaia_source.emulator import KNOWLEDGE_BASE, embed_text
from gaia_source.ledger import Ledger
from gaia_source.vectors import search

pytest.importorskip("lancedb")
CORPUS = list(KNOWLEDGE_BASE)


@pytest.fixture
def pipeline(tmp_path):
    return dlt.pipeline("gaia_lance", destination=dlt.destinations.lancedb(lance_uri=str(tmp_path / "lance")),
                        dataset_name="gaia_data", pipelines_dir=str(tmp_path / "pipelines"))


def _run(node, pipeline, texts, **kwargs):
    ledger = Ledger()
    source = gaia_source(base_url=node.base_url, texts=texts, embedding_batch_size=3, ledger=ledger, **kwargs)
    pipeline.run(source.with_resources("embeddings")).raise_on_failed_jobs()
    apply_chunk_sync(pipeline, ledger)


def _rows(pipeline):
    return sorted(lance_table(pipeline, "embeddings").to_arrow().to_pylist(), key=lambda r: r["embedding_id"])


def test_vectors_search_and_filters(make_node, pipeline) -> None:
    node = make_node("rag")
    texts = [{"text": t, "id": f"kb-{i}", "metadata": {"part": i % 2}} for i, t in enumerate(CORPUS)]
    _run(node, pipeline, texts)
    table = lance_table(pipeline, "embeddings")
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 768)
    rows = {r["text_id"]: r for r in table.to_arrow().to_pylist()}
    assert set(rows) == {f"kb-{i}" for i in range(len(CORPUS))}
    assert np.asarray(rows["kb-2"]["embedding"]) == pytest.approx(embed_text(CORPUS[2], 768), abs=1e-6)

    hits = search(pipeline, "Where is Paris located?", k=3, base_url=node.base_url)
    assert list(hits.columns) == ["text_id", "text", "metadata", "model", "score"]
    assert hits.iloc[0]["text"] == KNOWLEDGE_BASE[0] and list(hits["score"]) == sorted(hits["score"], reverse=True)
    exact = search(pipeline, CORPUS[4], k=1, base_url=node.base_url)
    assert exact.iloc[0]["text_id"] == "kb-4" and exact.iloc[0]["score"] == pytest.approx(1.0, abs=1e-5)
    only = search(pipeline, CORPUS[0], k=5, where={"text_id": "kb-3"}, base_url=node.base_url)
    assert list(only["text_id"]) == ["kb-3"]
    odd = search(pipeline, CORPUS[0], k=10, where={"part": 1}, base_url=node.base_url)
    assert set(odd["text_id"]) == {f"kb-{i}" for i in range(1, len(CORPUS), 2)}

    node.reset_stats()  # asked in LanceDB itself: nothing is sent twice
    _run(node, pipeline, texts)
    assert node.requests_to("/v1/embeddings") == 0 and len(_rows(pipeline)) == len(CORPUS)


def test_documents_replace_their_chunks(make_node, pipeline) -> None:
    node = make_node("rag", embedding_ctx=12)
    doc = "Paris lies on the Seine river. " * 6 + "\n\nThe Louvre holds the Mona Lisa. " * 4
    _run(node, pipeline, [{"text": doc, "document_id": "d1"}, {"text": "A note.", "document_id": "d2"}],
         chunk_size=60, chunk_overlap=10)
    before = _rows(pipeline)
    assert {r["document_id"] for r in before} == {"d1", "d2"} and all(len(r["text"]) <= 60 for r in before)
    assert all(doc[r["char_start"]:r["char_end"]] == r["text"] for r in before if r["document_id"] == "d1")
    node.reset_stats()
    _run(node, pipeline, [{"text": doc, "document_id": "d1"}, {"text": "A note.", "document_id": "d2"}],
         chunk_size=60, chunk_overlap=10)
    assert node.requests_to("/v1/embeddings") == 0
    changed = "Paris lies on the Seine river. " * 2
    _run(node, pipeline, [{"text": changed, "document_id": "d1"}, {"text": "A note.", "document_id": "d2"}],
         chunk_size=60, chunk_overlap=10)
    after = _rows(pipeline)
    d1 = sorted((r["chunk_index"], r["char_start"], r["text"]) for r in after if r["document_id"] == "d1")
    expected = [(i, start, chunk) for i, (start, chunk) in enumerate(TextSplitter(60, overlap=10).chunk_indices(changed))]
    assert d1 == expected and not any("Mona Lisa" in r["text"] for r in after)  # the orphans are gone
    assert [r for r in after if r["document_id"] == "d2"] == [r for r in before if r["document_id"] == "d2"]


def test_a_completed_cell_leaves_no_failed_requests_row(make_node, pipeline) -> None:
    """dlt's LanceDB merge upserts a hard_delete tombstone instead of deleting: the row must still go."""
    from gaia_source import run_pipeline

    node = make_node("rag", outage=503)
    prompts = ["First?", "Second?"]
    for outage in (503, None):
        node.outage = outage
        ledger = Ledger()
        run_pipeline(pipeline, gaia_source(base_url=node.base_url, prompts=prompts, max_attempts=1, retry_rounds=0,
                                           ledger=ledger).with_resources("chat_completions"), ledger)
        assert ledger.count("failed" if outage else "completed") == 2
    assert lance_table(pipeline, "chat_completions").count_rows() == 2
    assert lance_table(pipeline, "failed_requests").count_rows() == 0


def test_a_cell_with_more_rows_than_a_lookup_page_is_found_whole(make_node, pipeline) -> None:
    """A compare run over many nodes gives a cell a row per node: the lookup finds all of them (LanceDB's search
    returns 10 rows unless told otherwise), so a re-run sends nothing and appends nothing."""
    from gaia_source import run_pipeline

    nodes = [make_node("nexus") for _ in range(12)]
    urls = ",".join(node.base_url for node in nodes)
    prompts = ["Which node answers?", "And this one?"]
    for expected in ({"completed": 24, "skipped": 0}, {"completed": 0, "skipped": 24}):
        ledger = Ledger()
        run_pipeline(pipeline, gaia_source(base_url=urls, compare_nodes=True, prompts=prompts,
                                           ledger=ledger).with_resources("chat_completions"), ledger)
        assert {outcome: ledger.count(outcome) for outcome in expected} == expected
    assert sum(node.requests_to("/v1/chat/completions") for node in nodes) == 24  # nothing sent twice
    rows = lance_table(pipeline, "chat_completions").to_arrow().column("request_id").to_pylist()
    assert len(rows) == len(set(rows)) == 24
