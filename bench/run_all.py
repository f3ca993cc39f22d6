"""Run every benchmark and print its figures: ``python bench/run_all.py`` (``--quick`` for smaller sizes)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FULL = {
    "embeddings.py": [],
    "chat_fanout.py": [],
    "streaming.py": [],
    "memory.py": [],
    "nodes.py": [],
    "vectors.py": ["pgvector"],  # the HNSW part needs the [vss] venv: python bench/vectors.py hnsw (README)
}
QUICK = {
    "embeddings.py": ["--texts", "20000", "--slice", "300"],
    "chat_fanout.py": ["--slice", "50"],
    "streaming.py": ["--streams", "50"],
    "memory.py": ["--small", "2000", "--large", "20000"],
    "nodes.py": ["--prompts", "100"],
    "vectors.py": ["pgvector", "--texts", "20000"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (minutes instead of ~10 minutes)")
    args = parser.parse_args()
    failed = []
    for script, extra in (QUICK if args.quick else FULL).items():
        print(f"\n=== {script} {' '.join(extra)}", flush=True)
        if subprocess.run([sys.executable, str(HERE / script), *extra]).returncode != 0:
            failed.append(script)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
