"""Built-in sample inputs: what ``gaia_pipeline.py --demo`` loads, and what a run with no configured inputs sends."""

from typing import Dict, List

SAMPLE_PROMPTS: List[str] = [
    "What is the capital of France?",
    "What is a Gaia node?",
    "What does dlt do?",
]

SAMPLE_TEXTS: List[str] = [
    "Paris is located in northern central France, on the river Seine.",
    "The Eiffel Tower was built for the 1889 World's Fair.",
    "Gaia nodes serve an LLM and a knowledge base behind an OpenAI-compatible API.",
    "A Gaia domain spreads requests across many nodes that run the same model.",
    "dlt loads data from APIs into warehouses such as DuckDB, BigQuery and Snowflake.",
    "DuckDB stores embedding vectors in fixed-size FLOAT arrays.",
]

SAMPLE_TEXT_ROWS: List[Dict[str, str]] = [{"id": f"doc-{i}", "text": text} for i, text in enumerate(SAMPLE_TEXTS, 1)]
"""The sample texts as a corpus has them, with ids (``doc-1`` …): what ``--demo`` loads, so README's SQL on ``text_id``
works on the demo's data."""

SAMPLE_QUERIES: List[str] = [
    "Where is Paris located?",
    "What is a Gaia domain?",
    "How does dlt load data into DuckDB?",
]
