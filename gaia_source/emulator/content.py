"""Deterministic content of an emulated node: answers, token counts, word pieces, dense embeddings, the knowledge base.

Nothing here knows HTTP or a server generation. Answers are a function of the question and the model; embeddings are
dense, like a real model's: every stemmed word has its own deterministic Gaussian direction, and a text's vector is
the normalized sum of its words' (texts sharing words are similar). They are computed in numpy, a batch at a time, so
that the emulator is never the bottleneck of a benchmark.
"""

from __future__ import annotations

import re
import zlib
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:  # numpy itself is imported where it is used: see __main__ (one BLAS thread, set before numpy loads)
    import numpy as np
    import numpy.typing as npt

    Vector = npt.NDArray[np.float32]
    """One embedding (1-D) or several (2-D, one row per text)."""

KNOWLEDGE_BASE: tuple[str, ...] = (
    "Paris is located in northern central France, in a north-bending arc of the river Seine.\n",
    "The Paris region is the most active water transport area in France, "
    "with most cargo handled by the Ports of Paris.\n",
    "The Eiffel Tower was built for the 1889 World's Fair and is the most visited paid monument in Paris.\n",
    "Gaia nodes are OpenAI-compatible API servers that combine a fine-tuned LLM with a knowledge base.\n",
    "A Gaia domain load-balances requests across many nodes that run the same model and knowledge base.\n",
    "dlt is an open-source Python library that loads data from APIs into warehouses such as DuckDB and BigQuery.\n",
    "DuckDB is an in-process analytical database with native fixed-size array columns for embedding vectors.\n",
    "The Seine flows through Paris and into the English Channel at Le Havre.\n",
)
"""The passages a rag node retrieves from (Qdrant points with a ``source`` payload on a real node)."""

KNOWN_ANSWERS: dict[str, str] = {
    "what is the capital of france?": "Paris is the capital of France.",
    "what is a gaia node?": "A Gaia node is an OpenAI-compatible API server that runs an LLM with a knowledge base.",
    "what does dlt do?":
        "dlt loads data from APIs and files into warehouses such as DuckDB, with schemas inferred for you.",
}
"""Questions (lower-cased, stripped) with a fixed answer; any other question is echoed (see :func:`answer_for`)."""

_STOPWORDS = frozenset(
    "a an and are as at be by for from how in is it its of on or that the this to was what when where which who why "
    "with does do can you your i me my we our".split()
)
_WORD_RE = re.compile(r"[a-z0-9]+")
_PIECE_RE = re.compile(r"\S+\s*")


def _tokens(text: str) -> list[str]:
    words = [w for w in _WORD_RE.findall(text.lower()) if w not in _STOPWORDS]
    return [w[:5] for w in words]  # a crude stem: "located"/"location" → "locat"


@lru_cache(maxsize=65_536)
def _word_vector(token: str, dim: int) -> Vector:
    """The fixed direction of one (stemmed) word: ``dim`` standard normal floats seeded by the word's CRC-32."""
    import numpy as np

    seed = zlib.crc32(token.encode("utf-8"))
    vector: Vector = np.random.default_rng(seed).standard_normal(dim, dtype=np.float32)
    vector.flags.writeable = False  # shared by every text with this word
    return vector


def _text_tokens(text: str) -> list[str]:
    return _tokens(text) or [text or "<empty>"]


def embed_text(text: str, dim: int) -> Vector:
    """A deterministic dense unit vector for ``text`` in float32: the normalized sum of its words' directions."""
    vector: Vector = embed_texts([text], dim)[0]
    return vector


def embed_texts(texts: Sequence[str], dim: int) -> Vector:
    """Embed texts into a ``(len(texts), dim)`` matrix of dense unit rows (one matrix product per batch)."""
    import numpy as np

    if not texts:
        return np.zeros((0, dim), np.float32)
    index: dict[str, int] = {}
    rows: list[int] = []
    columns: list[int] = []
    for row, text in enumerate(texts):
        for token in _text_tokens(text):
            rows.append(row)
            columns.append(index.setdefault(token, len(index)))
    width = len(index)
    flat = np.asarray(rows, dtype=np.int64) * width + np.asarray(columns, dtype=np.int64)
    counts = np.bincount(flat, minlength=len(texts) * width).astype(np.float32).reshape(len(texts), width)
    words = np.stack([_word_vector(token, dim) for token in index])
    vectors: Vector = counts @ words
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def answer_for(question: str, model: str) -> str:
    """The emulator's deterministic answer to a question."""
    known = KNOWN_ANSWERS.get(question.strip().lower())
    if known:
        return known
    return f"{model} answers: {question.strip()}"


def last_user_text(messages: Sequence[dict[str, Any]]) -> str:
    """The text of the last ``user`` message (text parts joined by spaces), or ``""`` when there is none."""
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def count_tokens(text: str) -> int:
    """The emulator's token count of a text: its whitespace-separated words."""
    return len(text.split())


def prompt_tokens(messages: Sequence[dict[str, Any]]) -> int:
    """Prompt tokens of a chat request: 3 per message plus the words of each string content."""
    total = 0
    for message in messages:
        content = message.get("content")
        total += 3 + (count_tokens(content) if isinstance(content, str) else 0)
    return total


def word_pieces(text: str, min_chars: int = 0) -> list[str]:
    """Split ``text`` into word pieces that concatenate back to it exactly (grouped to ``min_chars`` if given)."""
    words: list[str] = _PIECE_RE.findall(text)
    if "".join(words) != text:
        return [text] if text else []
    if not min_chars:
        return words
    grouped: list[str] = []
    current = ""
    for word in words:
        current += word
        if len(current) >= min_chars:
            grouped.append(current)
            current = ""
    if current:
        grouped.append(current)
    return grouped


def tool_calls() -> list[dict[str, Any]]:
    """The one tool call a ``[[tool]]`` question gets: ``get_weather`` for Paris."""
    return [{"id": "call_0", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]


class KnowledgeBase:
    """The knowledge-base passages embedded at one dimension, scored against queries by cosine similarity."""

    def __init__(self, dim: int, passages: Sequence[str] = KNOWLEDGE_BASE) -> None:
        self.passages = tuple(passages)
        self._matrix = embed_texts(self.passages, dim)
        self._dim = dim

    def search(self, query: str, limit: int, threshold: float) -> list[dict[str, Any]]:
        """Points ``{"source", "score"}`` scoring at least ``threshold``, best first, at most ``limit``."""
        import numpy as np

        scores = self._matrix @ embed_text(query, self._dim)
        order = np.argsort(-scores)
        return [
            {"source": self.passages[i], "score": round(float(scores[i]), 8)}
            for i in order[:limit]
            if scores[i] >= threshold
        ]
