"""Fault soak at the default retry settings: consecutive runs against a node failing 30 % of requests at random.

Each run loads 500 prompts (plain and streamed) and 5,000 texts into a fresh DuckDB, with the fault seed of its
index, at the default ``max_attempts`` and ``retry_rounds`` (only timings are shortened: timeouts, backoff and the
final rounds' cool-down). A run is clean when every row is loaded exactly once and no cell is failing. Prints one line
per run and the count of clean runs::

    python bench/soak.py --runs 20
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
os.environ.setdefault("DATA_WRITER__DISABLE_COMPRESSION", "true")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dlt  # noqa: E402

from gaia_source import gaia_source  # noqa: E402
from gaia_source.emulator import NodeEmulator  # noqa: E402
from gaia_source.ledger import Ledger  # noqa: E402
from gaia_source.settings import DEFAULT_MAX_ATTEMPTS, DEFAULT_RETRY_ROUNDS  # noqa: E402

TIMINGS = {"timeout": 0.3, "retry_backoff": 0.01, "retry_max_wait": 0.05, "round_cooldown": 0.05,
           "max_concurrency": 8}
"""Shortened waits only; the retry budget (max_attempts, retry_rounds) stays at its defaults."""


def one_run(seed: int, prompts: int, texts: int) -> tuple[bool, str]:
    """One soak run with fault seed ``seed``; (clean, a line describing it)."""
    with NodeEmulator(flavor="nexus", fault_rate=0.3, fault_seed=seed, slow_ms=600) as node, \
            tempfile.TemporaryDirectory() as folder:
        pipeline = dlt.pipeline(f"soak{seed}", destination=dlt.destinations.duckdb(f"{folder}/data.duckdb"),
                                dataset_name="soak", pipelines_dir=folder)
        ledger = Ledger()
        started = time.perf_counter()
        source = gaia_source(base_url=node.base_url, prompts=[f"Question number {i}?" for i in range(prompts)],
                             texts=[f"Text number {i} about rivers and nodes." for i in range(texts)],
                             chat_model="Qwen3-4B", embedding_model="Nomic-embed-text-v1.5", ledger=ledger,
                             **TIMINGS)
        pipeline.run(source.with_resources("chat_completions", "chat_completions_stream", "embeddings"))
        seconds = time.perf_counter() - started
        with pipeline.sql_client() as client:
            counts = [client.execute_sql(f"SELECT count(*), count(DISTINCT {key}) FROM {table}")[0]
                      for table, key in (("chat_completions", "request_id"), ("chat_completions_stream", "request_id"),
                                         ("embeddings", "text"))]
        expected = [(prompts, prompts), (prompts, prompts), (texts, texts)]
        clean = counts == expected and ledger.failing == 0
        line = (f"seed {seed:>3}: {'clean' if clean else 'NOT CLEAN'}  rows {counts}  failing {ledger.failing}  "
                f"faults {node.faults()}  {seconds:.1f} s")
        return clean, line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--prompts", type=int, default=500)
    parser.add_argument("--texts", type=int, default=5000)
    args = parser.parse_args()
    print(f"fault soak: 30 % faults, max_attempts {DEFAULT_MAX_ATTEMPTS}, retry_rounds {DEFAULT_RETRY_ROUNDS} "
          f"(defaults), {args.prompts} prompts x 2 + {args.texts} texts per run")
    clean = 0
    for seed in range(args.runs):
        ok, line = one_run(seed, args.prompts, args.texts)
        clean += ok
        print(line, flush=True)
    print(f"clean runs: {clean} of {args.runs}")
    return 0 if clean == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
