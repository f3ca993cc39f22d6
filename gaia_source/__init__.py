"""A dlt source for Gaia LLM nodes: GaiaNet nodes (<= 0.4 rag-api-server, >= 0.5 gaia-nexus, 0.6 gaia-nexus 0.8 +
llama-api-server 0.27) and AMD GAIA servers.

Seven resources, one table each (plus ``retrieve__points`` and ``failed_requests``), declared in the endpoint catalogue
(:mod:`gaia_source.endpoints`); ``responses`` runs only when asked for by name:

==========================  =========================  =================================================
resource                    request                    table
==========================  =========================  =================================================
``models``                  GET /v1/models             one row per model, merged by (node_url, id)
``info``                    GET /v1/info (AMD: /health) one snapshot per run, appended (a history)
``chat_completions``        POST /v1/chat/completions  one row per prompt, merged by request id
``chat_completions_stream`` POST … ``stream: true``    one row per prompt, with time to first token
``embeddings``              POST /v1/embeddings        one row per text, the vector in one column
``retrieve``                POST /v1/retrieve          one row per query; points in ``retrieve__points``
``responses``               POST /v1/responses         one row per prompt, merged by request id
==========================  =========================  =================================================

Usage::

    import dlt
    from gaia_source import gaia_source

    pipeline = dlt.pipeline("gaia_pipeline", destination="duckdb", dataset_name="gaia_data")
    pipeline.run(gaia_source(base_url="http://localhost:8080/v1", prompts=["What is the capital of France?"]))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    EndpointNotAvailable,
    GaiaAuthError,
    GaiaConfigError,
    GaiaEmptyAnswer,
    GaiaError,
    GaiaLookupError,
    GaiaNodeUnusable,
    GaiaPipelineStateError,
    GaiaRequestError,
    GaiaResponseError,
    GaiaRunStopped,
    GaiaStreamError,
    GaiaStreamInterrupted,
)
from .settings import DEFAULT_RESOURCE_NAMES, RESOURCE_NAMES

if TYPE_CHECKING:
    from .client import NodeClient, Reply
    from .config import NodeSettings, resolve_base_url, resolve_base_urls, resolve_node_settings
    from .lifecycle import RunResult, run_pipeline
    from .pool import NodePool
    from .resources import create_tables
    from .source import INPUT_SETTINGS, gaia_source

__all__ = [
    "gaia_source",
    "run_pipeline",
    "RunResult",
    "NodeSettings",
    "resolve_node_settings",
    "NodePool",
    "NodeClient",
    "Reply",
    "resolve_base_url",
    "resolve_base_urls",
    "GaiaError",
    "GaiaConfigError",
    "GaiaRequestError",
    "GaiaAuthError",
    "GaiaLookupError",
    "GaiaPipelineStateError",
    "GaiaRunStopped",
    "GaiaNodeUnusable",
    "GaiaStreamError",
    "GaiaStreamInterrupted",
    "EndpointNotAvailable",
    "GaiaResponseError",
    "GaiaEmptyAnswer",
    "RESOURCE_NAMES",
    "DEFAULT_RESOURCE_NAMES",
    "INPUT_SETTINGS",
    "Ledger",
    "apply_chunk_sync",
    "create_tables",
]

_LAZY = {
    "gaia_source": "source", "INPUT_SETTINGS": "source", "NodeSettings": "config", "resolve_node_settings": "config",
    "resolve_base_url": "config", "resolve_base_urls": "config", "NodePool": "pool", "NodeClient": "client",
    "Reply": "client", "Ledger": "ledger", "run_pipeline": "lifecycle", "apply_chunk_sync": "destination",
    "RunResult": "lifecycle", "create_tables": "resources",
}
"""Names imported on first use, with dlt, httpx and pyarrow behind them: importing the package (for its settings, errors
or emulator) stays cheap, so the command line answers ``--help`` at once."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
