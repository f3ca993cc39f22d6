"""Documents → chunks to embed: each text with a ``document_id`` becomes its chunks, each with its character span.

Splitting is done by `semantic-text-splitter <https://pypi.org/project/semantic-text-splitter/>`_ (a Rust wheel with
no Python dependencies): it cuts at the largest semantic unit that fits (paragraphs, then sentences, then words), so
chunks do not end mid-word. ``chunk_size`` and ``chunk_overlap`` are counted in **characters** (not tokens: a
tokenizer would need the model's vocabulary, which a node does not serve). At about 4 characters a token, a
``chunk_size`` of 2,000 stays far below the 8,192-token context of Gaia's default embedding model.

A chunk's key (see :func:`~gaia_source.payloads.embedding_id`) covers its document, index and start, so an unchanged
document costs no request on a re-run, and a changed one leaves orphans (its old chunks) to delete: see
:meth:`~gaia_source.context.RunContext.remove_orphans`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable, Iterator, Optional

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


def chunk_texts(texts: Iterable[TextInput], chunk_size: Optional[int], chunk_overlap: int = 0) -> Iterator[TextInput]:
    """Split each text into chunks of at most ``chunk_size`` characters (``chunk_overlap`` shared with the previous).

    A chunk keeps its text's ``document_id`` (the text's ``id`` when it has none), metadata and source, and gets
    ``chunk_index`` (0, 1, …), ``char_start`` and ``char_end`` (its span in the document) and the id
    ``<document_id>#<chunk_index>``. Without ``chunk_size`` a text with a ``document_id`` is its own chunk 0, so a
    changed document still replaces its row; other texts pass through as they are.
    """
    splitter = None
    if chunk_size is not None:
        from semantic_text_splitter import TextSplitter

        splitter = TextSplitter(chunk_size, overlap=chunk_overlap)
    for text in texts:
        document_id = text.document_id or (text.id if splitter is not None else None)
        if splitter is None:
            if document_id is None:
                yield text
            else:
                yield replace(text, id=text.id or f"{document_id}#0", chunk_index=0, char_start=0,
                              char_end=len(text.text))
            continue
        for index, (start, chunk) in enumerate(splitter.chunk_indices(text.text)):
            yield replace(
                text, text=chunk, id=f"{document_id}#{index}" if document_id else None, document_id=document_id,
                chunk_index=index, char_start=start, char_end=start + len(chunk),
            )
