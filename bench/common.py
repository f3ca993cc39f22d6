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
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gaia_source.settings import dlt_defaults  # noqa: E402

BENCH_ENV = {"RUNTIME__DLTHUB_TELEMETRY": "false", **dlt_defaults("duckdb")}
"""What the script sets for a DuckDB run: the library parts measure what a user of the script gets."""


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
    env = {**BENCH_ENV, **os.environ}  # what the caller set wins, as over the script's defaults
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


def run_process(cmd: List[str], cwd: Optional[str] = None, env: Optional[Dict[str, str]] = None) -> Dict[str, float]:
    """Run a command as a whole process; its wall time, user + sys CPU and peak RSS from the kernel's accounting."""
    full_env = {**os.environ, **BENCH_ENV, **(env or {})}
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd or str(REPO), env=full_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    assert proc.stderr is not None
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{stderr.decode(errors='replace')[-2000:]}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024.0}


Command = Tuple[List[str], Optional[str], Optional[Dict[str, str]]]
"""A command to run as a whole process: argv, working directory, extra environment."""


def paired(a: Callable[[], Command], b: Callable[[], Command], runs: int, warmup: int = 1) -> Dict[str, Any]:
    """Run ``a()`` and ``b()`` in turn (A B A B ...) after a warm-up of each: medians and the pair-by-pair ratio A/B.

    Each call returns the command to run (so each run can have a fresh folder). The machine is shared and noisy: a
    ratio taken within each pair holds when its speed drifts between pairs.
    """
    for _ in range(warmup):
        run_process(*a())
        run_process(*b())
    runs_a, runs_b = [], []
    for _ in range(runs):
        runs_a.append(run_process(*a()))
        runs_b.append(run_process(*b()))
    ratios = sorted(x["wall_s"] / y["wall_s"] for x, y in zip(runs_a, runs_b, strict=True))
    return {"a": summary(runs_a), "b": summary(runs_b), "ratio_median": median(ratios), "ratio_min": ratios[0],
            "ratio_max": ratios[-1]}


def median(values: List[float]) -> float:
    """The median of a non-empty list."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def summary(runs: List[Dict[str, float]]) -> Dict[str, float]:
    """min and median of each figure of several runs."""
    out: Dict[str, float] = {}
    for key in runs[0]:
        values = [r[key] for r in runs]
        out[f"{key}_min"], out[f"{key}_median"] = min(values), median(values)
    return out
