"""Shared benchmark plumbing: an emulator in its own process, child processes that report time and peak memory."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import httpx

REPO = Path(__file__).resolve().parent.parent
BENCH_ENV = {"RUNTIME__DLTHUB_TELEMETRY": "false", "DATA_WRITER__DISABLE_COMPRESSION": "true"}


@contextmanager
def emulator(flavor: str = "nexus", *extra: str) -> Iterator[str]:
    """Run ``python -m gaia_source.emulator`` on a free port in a child process; yield its /v1 base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gaia_source.emulator", "--flavor", flavor, "--port", "0", *extra],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if "listening on" not in line:
            raise RuntimeError(f"emulator did not start: {line!r}")
        yield line.rsplit(" ", 1)[-1].strip()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def emulator_requests(base_url: str, path: str) -> int:
    """Requests the emulator received on ``path`` (e.g. /v1/embeddings)."""
    stats = httpx.get(base_url.rsplit("/v1", 1)[0] + "/_emulator/stats").json()["requests"]
    return sum(n for key, n in stats.items() if key.split(" ", 1)[-1] == path)


def run_part(script: str, part: str, args: Dict[str, Any]) -> Dict[str, Any]:
    """Run one benchmark part in a fresh Python process; it prints one JSON line with its figures."""
    env = {**os.environ, **BENCH_ENV}
    out = subprocess.run(
        [sys.executable, script, "--part", part, "--args", json.dumps(args)],
        cwd=REPO, env=env, capture_output=True, text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"part {part} failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def report(figures: Dict[str, Any]) -> None:
    """Print the part's figures as the one JSON line :func:`run_part` reads."""
    figures.setdefault("peak_rss_mb", round(peak_rss_mb(), 1))
    print(json.dumps(figures), flush=True)


class Timer:
    """``with Timer() as t: ...; t.seconds``"""

    def __enter__(self) -> "Timer":
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.started


def parse_args(parser: "argparse.ArgumentParser", parts: Dict[str, Any]) -> Tuple[Any, bool]:
    """Parse the command line; when it names an internal ``--part``, run that part and say so (True)."""
    parser.add_argument("--part", choices=sorted(parts), help=argparse.SUPPRESS)
    parser.add_argument("--args", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        parts[args.part](json.loads(args.args))
        return args, True
    return args, False


def bench_pipeline(name: str, directory: str) -> Any:
    """A dlt pipeline loading into a DuckDB file in ``directory`` (its working dir there too)."""
    import dlt

    return dlt.pipeline(name, destination=dlt.destinations.duckdb(str(Path(directory) / f"{name}.duckdb")),
                        dataset_name="gaia_data", pipelines_dir=str(Path(directory) / "pipelines"))


def workdir(prefix: str) -> Path:
    """A fresh temp directory."""
    return Path(tempfile.mkdtemp(prefix=prefix))


def fmt_row(label: str, values: List[str]) -> str:
    """One aligned output line."""
    return f"{label:<58}" + "  ".join(values)


def ratio(a: float, b: Optional[float]) -> float:
    """a / b, guarding b = 0."""
    return a / b if b else float("inf")
