"""Run every benchmark and print its figures, each next to its baseline from the same run.

    python bench/run_all.py            # the sizes BENCHMARKS.md quotes (about 45 minutes on 2 cores)
    python bench/run_all.py --quick    # smaller sizes, a smoke run (a few minutes)

Every script starts its own emulator process and runs each part in a fresh process; see each script's docstring for
what it measures. The last lines repeat every figure that has a target, with its target and its baseline.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

HERE = Path(__file__).resolve().parent
FULL: Dict[str, List[str]] = {
    "startup.py": [],
    "chat_fanout.py": [],
    "embeddings.py": ["--slice", "500"],
    "streaming.py": [],
    "memory.py": [],
    "nodes.py": [],
    "vectors.py": ["pgvector"],  # the HNSW part needs the [vss] venv: python bench/vectors.py hnsw (README)
    "real_server.py": [],  # needs GAIA_TEST_REAL_PYTHON (the real-server venv); skipped with a message without it
    "scale.py": [],  # 100,000 then 1,000,000 texts: about 20 minutes more
}
QUICK: Dict[str, List[str]] = {
    "startup.py": ["--runs", "3"],
    "chat_fanout.py": ["--slice", "30", "--runs", "2", "--cpu-prompts", "400"],
    "embeddings.py": ["--texts", "5000", "--slice", "200", "--peer-texts", "2000"],
    "streaming.py": ["--streams", "30"],
    "memory.py": ["--small", "1000", "--large", "10000"],
    "nodes.py": ["--prompts", "60"],
    "vectors.py": ["pgvector", "--texts", "5000"],
    "real_server.py": ["--prompts", "6", "--pairs", "1"],
    "scale.py": ["--small", "2000", "--large", "20000"],
}
SUMMARY = re.compile(r"target [<>]=")
"""Lines that state a figure against its target: repeated at the end."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes: a smoke run of every script")
    args = parser.parse_args()
    failed, summary = [], []
    for script, extra in (QUICK if args.quick else FULL).items():
        print(f"\n=== {script} {' '.join(extra)}", flush=True)
        proc = subprocess.Popen([sys.executable, str(HERE / script), *extra], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            if SUMMARY.search(line):
                summary.append(f"{script:<16}{line.strip()}")
        if proc.wait() != 0:
            failed.append(script)
    print("\n=== every figure against its target (ratios are to baselines measured in the same run)")
    print("\n".join(summary))
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
