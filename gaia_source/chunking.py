"""Documents → chunks to embed: each text with a ``document_id`` becomes its chunks, each with its character span.

Splitting is done by `semantic-text-splitter <https://pypi.org/project/semantic-text-splitter/>`_ (a Rust wheel with
no Python dependencies): it cuts at the largest semantic unit that fits (paragraphs, then sentences, then words), so
chunks do not end mid-word. ``chunk_size`` and ``chunk_overlap`` are counted in **characters** (not tokens: a
tokenizer would need the model's vocabulary, which a node does not serve). At about 4 characters a token, a
``chunk_size`` of 2,000 stays far below the 8,192-token context of Gaia's default embedding model.

A chunk's key (see :func:`~gaia_source.ledger.text_key`) covers its document, index and start, so an unchanged
document costs no request on a re-run, and a changed one leaves orphans (its old chunks), deleted once its new chunks
are loaded: see :func:`~gaia_source.destination.apply_chunk_sync`. A document may come as several rows (an upstream
table with one row per section, across pages): its chunks are numbered as one document, in the order they come.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Dict, Iterable, Iterator, Optional, Tuple

from .errors import GaiaConfigError
from .inputs import TextInput


def check_chunking(chunk_size: Optional[int], chunk_overlap: int) -> None:
    """Refuse chunk settings the splitter cannot honour.

    Raises:
        GaiaConfigError: ``chunk_size`` < 1, or ``chunk_overlap`` negative or not below ``chunk_size``.
    """
    if chunk_size is None:
        if chunk_overlap:
            raise GaiaConfigError("chunk_overlap needs chunk_size")
        return
    if chunk_size < 1:
        raise GaiaConfigError(f"chunk_size must be >= 1 (characters), got {chunk_size}")
    if not 0 <= chunk_overlap < chunk_size:
        raise GaiaConfigError(f"chunk_overlap must be >= 0 and below chunk_size ({chunk_size}), got {chunk_overlap}")


def chunk_texts(
    texts: Iterable[TextInput], chunk_size: Optional[int], chunk_overlap: int = 0,
    positions: Optional[Dict[str, Tuple[int, int]]] = None,
) -> Iterator[TextInput]:
    """Split each text into chunks of at most ``chunk_size`` characters (``chunk_overlap`` shared with the previous).

    A chunk keeps its text's ``document_id`` (the text's ``id`` when it has none), metadata and source, and gets
    ``chunk_index`` (0, 1, …), ``char_start`` and ``char_end`` (its span in the document) and the id
    ``<document_id>#<chunk_index>``. Without ``chunk_size`` a text with a ``document_id`` is one chunk, so a changed
    document still replaces its row; other texts pass through as they are.

    ``positions`` (document id -> next chunk index and character offset) continues a document's numbering across
    its rows: pass the same dict for every page of one run (see ``RunContext.chunk_positions``).
    """
    splitter = None
    if chunk_size is not None:
        from semantic_text_splitter import TextSplitter

        splitter = TextSplitter(chunk_size, overlap=chunk_overlap)
    positions = {} if positions is None else positions
    for text in texts:
        document_id = text.document_id or (text.id if splitter is not None else None)
        if document_id is None:
            yield text
            continue
        index, offset = positions.get(document_id, (0, 0))
        spans = [(0, text.text)] if splitter is None else list(splitter.chunk_indices(text.text))
        for start, chunk in spans:
            yield replace(
                text, text=chunk, id=(text.id if splitter is None and text.id else f"{document_id}#{index}"),
                document_id=document_id, chunk_index=index, char_start=offset + start,
                char_end=offset + start + len(chunk),
            )
            index += 1
        positions[document_id] = (index, offset + len(text.text))
