"""Documents in chunks, kept in sync: spans, nothing re-sent for an unchanged document, a changed one replaces its
chunks and its orphans are deleted, a document longer than the model's context loads — on DuckDB and PostgreSQL."""

from __future__ import annotations

import pytest
from conftest import as_vector
from semantic_text_splitter import TextSplitter

from gaia_source import gaia_source
from gaia_source.destination import apply_chunk_sync
from gaia_source.emulator import embed_text
from gaia_source.ledger import Ledger

PARAGRAPHS = [
    "Paris is the capital of France. It lies on the Seine, in the north of the country.",
    "The Louvre is the most visited museum in the world. It holds the Mona Lisa.",
    "DuckDB is an in-process analytical database. It has native fixed-size array columns.",
    "PostgreSQL gains vector columns with pgvector. HNSW indexes make nearest-neighbour search fast.",
    "dlt loads data from any source into any destination, with schemas that evolve on their own.",
]
DOC_A = "\n\n".join(PARAGRAPHS)  # ~70 words: more than the emulated model's context of 40
DOC_B = "A short note about the Seine."
CHUNK_SIZE, OVERLAP = 120, 20


def _rows(pipeline):
    with pipeline.sql_client() as sql:
        rows = sql.execute_sql("SELECT document_id, chunk_index, char_start, char_end, text, text_id, embedding, "
                               "embedding_id, embedded_at FROM embeddings ORDER BY document_id, chunk_index")
    return [tuple(r) for r in rows]


def _run(node, pipeline, docs):
    texts = [{"text": text, "document_id": doc_id, "metadata": {"title": doc_id}} for doc_id, text in docs.items()]
    ledger = Ledger()
    source = gaia_source(base_url=node.base_url, texts=texts, chunk_size=CHUNK_SIZE, chunk_overlap=OVERLAP,
                         embedding_batch_size=4, ledger=ledger)
    pipeline.run(source.with_resources("embeddings")).raise_on_failed_jobs()
    apply_chunk_sync(pipeline, ledger)  # after the load: changed documents lose their old chunks


def _expected(text):
    return [(start, chunk) for start, chunk in TextSplitter(CHUNK_SIZE, overlap=OVERLAP).chunk_indices(text)]


@pytest.fixture(params=["duckdb", "postgres"])
def pipeline(request, make_pipeline):
    if request.param == "duckdb":
        return make_pipeline()
    return request.getfixturevalue("pgvector_pipeline")


def test_chunks_stay_in_sync_with_their_documents(make_node, pipeline) -> None:
    node = make_node("rag", embedding_ctx=40)
    assert len(DOC_A.split()) > 40
    _run(node, pipeline, {"doc-a": DOC_A, "doc-b": DOC_B})
    rows = _rows(pipeline)
    expected_a = _expected(DOC_A)
    assert len(expected_a) > 3
    a_rows = [r for r in rows if r[0] == "doc-a"]
    assert [(r[1], r[2], r[4]) for r in a_rows] == [(i, s, c) for i, (s, c) in enumerate(expected_a)]
    for document_id, index, start, end, text, text_id, vector, _, _ in rows:
        source = DOC_A if document_id == "doc-a" else DOC_B
        assert source[start:end] == text and text_id == f"{document_id}#{index}"
        assert as_vector(vector) == pytest.approx(embed_text(text, 768).astype(float), abs=1e-6)
    assert [(r[0], r[1], r[2], r[3], r[4]) for r in rows if r[0] == "doc-b"] == [("doc-b", 0, 0, len(DOC_B), DOC_B)]
    assert "failed_requests" not in pipeline.default_schema.data_table_names(seen_data_only=True)

    node.reset_stats()  # unchanged documents: not one request
    _run(node, pipeline, {"doc-a": DOC_A, "doc-b": DOC_B})
    assert node.requests_to("/v1/embeddings") == 0 and _rows(pipeline) == rows

    changed = "\n\n".join([*PARAGRAPHS[:2], "The Seine freezes rarely."])  # shorter: the last chunks are orphans
    node.reset_stats()
    _run(node, pipeline, {"doc-a": changed, "doc-b": DOC_B})
    after = _rows(pipeline)
    assert [(r[1], r[2], r[4]) for r in after if r[0] == "doc-a"] == [(i, s, c) for i, (s, c) in enumerate(_expected(changed))]
    kept = {r[7] for r in rows} & {r[7] for r in after}
    assert kept and all(r[8] == next(o[8] for o in rows if o[7] == r[7]) for r in after if r[7] in kept)  # untouched: not embedded again
    assert [r for r in after if r[0] == "doc-b"] == [r for r in rows if r[0] == "doc-b"]
    new_chunks = len({r[7] for r in after} - kept)
    assert 0 < new_chunks < len(_expected(changed)) + 1 and node.requests_to("/v1/embeddings") == -(-new_chunks // 4)
    assert not any(w in r[4] for r in after for w in ("DuckDB", "pgvector", "dlt loads"))  # no orphan left


def test_transformer_documents_and_long_text_without_chunking(make_node, make_pipeline) -> None:
    """embeddings_from takes the document id from a field; without chunk_size a text longer than the model's context
    fails alone (its id in failed_requests) and the run goes on."""
    import dlt

    from gaia_source.transformers import embeddings_from

    node = make_node("rag", embedding_ctx=40)
    pipeline = make_pipeline()
    pages = dlt.resource([[{"body": DOC_A, "doc": "a", "key": "k-a"}, {"body": DOC_B, "doc": "b", "key": "k-b"}]],
                         name="pages", selected=False)
    pipeline.run(pages | embeddings_from(text_field="body", id_field="key", document_id_field="doc",
                                         base_url=node.base_url)).raise_on_failed_jobs()
    with pipeline.sql_client() as sql:
        assert sql.execute_sql("SELECT document_id, text_id, chunk_index, char_end FROM embeddings") == [("b", "k-b", 0, len(DOC_B))]
        assert sql.execute_sql("SELECT custom_id, http_status FROM failed_requests") == [("k-a", 500)]
    chunked = embeddings_from(text_field="body", id_field="key", document_id_field="doc", chunk_size=CHUNK_SIZE,
                              base_url=node.base_url)
    pipeline.run(pages | chunked).raise_on_failed_jobs()
    with pipeline.sql_client() as sql:
        rows = sql.execute_sql("SELECT chunk_index, char_start, text FROM embeddings WHERE document_id = 'a' ORDER BY chunk_index")
        assert [tuple(r) for r in rows] == [(i, s, c) for i, (s, c) in enumerate(TextSplitter(CHUNK_SIZE).chunk_indices(DOC_A))]
