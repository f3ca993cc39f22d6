"""Start-up: `--help`, and a node snapshot (`--resources models,info`) against a raw httpx -> DuckDB script.

    python bench/startup.py                     # 7 runs each, after a warm-up

Whole processes, as cron runs them: wall time from start to exit. `--help` is timed next to a bare `python -c pass`
(the interpreter's own start-up, context only). The snapshot and its raw baseline (bench/baselines/raw_snapshot.py:
the same two GETs, rows into DuckDB) run in turn, A B A B ..., each in its own folder that it keeps between runs (as a
scheduled snapshot does), against one emulator process; the ratio is taken pair by pair.

Targets (issue 14): `--help` <= 0.3 s; snapshot <= 1.0 s and <= 1.5x the raw script; issue 21: <= 2x the raw script.
Then one snapshot in a child process, timed phase by phase (imports, pipeline, dlt's extract/normalize/load steps, the
summary): where the fixed cost of a run goes.

Last, a new user's first commands (issue 19): `--demo` in a fresh folder each time (its emulated node, every resource,
the summary), then `runs --demo`, `search "…" --demo` (which starts its own emulated node to embed the query) and
`report --demo` on its data, each a whole process, beside `python -c "import dlt"` (the floor of any command that
touches a pipeline). Targets: `--demo` <= 4 s; `runs`, `search`, `report` <= 2 s each.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, emulator, paired, run_process, summary, workdir  # noqa: E402

CLI = str(REPO / "gaia_pipeline.py")
RAW = str(REPO / "bench" / "baselines" / "raw_snapshot.py")
PHASES = r"""
import sys, time, json, os
started = time.perf_counter()
marks = {}
def mark(name):
    marks[name] = time.perf_counter()
import dlt
mark("import dlt")
sys.path.insert(0, sys.argv[2])
from gaia_source import gaia_source
from gaia_source.lifecycle import avoid_sqlalchemy_import, run_pipeline
from gaia_source.ledger import Ledger
avoid_sqlalchemy_import("duckdb")
mark("import gaia_source")
pipeline = dlt.pipeline("gaia_pipeline", destination="duckdb", dataset_name="gaia_data")
mark("dlt.pipeline()")
ledger = Ledger()
source = gaia_source(base_url=sys.argv[1], resources=["models", "info"], ledger=ledger)
mark("gaia_source()")
info = run_pipeline(pipeline, source, ledger)
mark("run (extract, normalize, load)")
str(info)
mark("load info text")
steps = {s.step: (s.finished_at - s.started_at).total_seconds() for s in pipeline.last_trace.steps}
previous, out = started, {}
for name, at in marks.items():
    out[name] = at - previous
    previous = at
print(json.dumps({"phases": out, "steps": steps, "modules": len(sys.modules)}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    python = [sys.executable, "-c", "pass"]
    bare, helps = [], []
    run_process(python)  # warm-up
    run_process([sys.executable, CLI, "--help"])
    for _ in range(args.runs):
        bare.append(run_process(python))
        helps.append(run_process([sys.executable, CLI, "--help"]))
    bare_s, help_s = summary(bare), summary(helps)
    print(f"start-up, whole process, {args.runs} runs (min / median):")
    print(f"  python -c pass (the interpreter alone)   {bare_s['wall_s_min']:6.3f} / {bare_s['wall_s_median']:6.3f} s")
    print(f"  gaia_pipeline.py --help                  {help_s['wall_s_min']:6.3f} / {help_s['wall_s_median']:6.3f} s"
          f"   (target <= 0.3 s)")
    gaia_dir, raw_dir = workdir("gaia-bench-snapshot-"), workdir("gaia-bench-rawsnap-")
    dlt_env = {"DLT_DATA_DIR": str(gaia_dir / "dlt")}
    with emulator("nexus") as base_url:
        result = paired(
            lambda: ([sys.executable, CLI, "--base-url", base_url, "--resources", "models,info"], str(gaia_dir),
                     dlt_env),
            lambda: ([sys.executable, RAW, base_url, str(raw_dir / "raw.duckdb")], str(raw_dir), None),
            args.runs,
        )
    a, b = result["a"], result["b"]
    print(f"  snapshot --resources models,info         {a['wall_s_min']:6.3f} / {a['wall_s_median']:6.3f} s"
          f"   (target <= 1.0 s)  cpu {a['cpu_s_median']:.2f} s, peak RSS {a['peak_rss_mb_median']:.0f} MB")
    print(f"  raw httpx -> DuckDB, same two GETs       {b['wall_s_min']:6.3f} / {b['wall_s_median']:6.3f} s"
          f"                      cpu {b['cpu_s_median']:.2f} s, peak RSS {b['peak_rss_mb_median']:.0f} MB")
    print(f"  snapshot / raw, pair by pair: median {result['ratio_median']:.2f}x "
          f"(min {result['ratio_min']:.2f}x, max {result['ratio_max']:.2f}x)   (target <= 2x)")
    print(f"  snapshot / raw CPU (user + sys, medians): {a['cpu_s_median'] / b['cpu_s_median']:.2f}x "
          "(less sensitive to other processes than wall time on a shared machine)")
    phases(args.runs)
    first_commands(args.runs)
    return 0


def first_commands(runs: int) -> None:
    """A new user's first commands, whole processes: min / median over ``runs`` (see the module's docstring)."""
    floor = [sys.executable, "-c", "import dlt"]
    commands = {
        "gaia_pipeline.py --demo (fresh folder)": ["--demo"],
        "gaia_pipeline.py runs --demo": ["runs", "--demo"],
        'gaia_pipeline.py search "Where is Paris?" --demo': ["search", "Where is Paris?", "-k", "3", "--demo"],
        "gaia_pipeline.py report --demo": ["report", "--demo", "-o", "evaluation.html"],
    }
    seen: dict = {name: [] for name in ("import dlt", *commands)}
    run_process(floor)  # warm-up
    for _ in range(runs + 1):  # the first round warms the caches and is not counted
        folder = workdir("gaia-bench-demo-")
        env = {"DLT_DATA_DIR": str(folder / "dlt")}
        timed = {"import dlt": run_process(floor)}
        for name, argv in commands.items():
            timed[name] = run_process([sys.executable, CLI, *argv], str(folder), env)
        for name, figures in timed.items():
            seen[name].append(figures)
    print(f"  a new user's first commands, whole process, {runs} runs (min / median):")
    for name, figures in seen.items():
        result = summary(figures[1:])
        target = 4.0 if "--demo (fresh" in name else 2.0 if name in commands else None
        print(f"    {name:<52} {result['wall_s_min']:6.3f} / {result['wall_s_median']:6.3f} s"
              + (f"   (target <= {target:g} s)" if target else "   (the floor)"))


def phases(runs: int) -> None:
    """Where a snapshot's time goes: the median of each phase over ``runs`` runs, in a child process each."""
    import json
    import os
    import subprocess

    from common import BENCH_ENV, median

    folder = workdir("gaia-bench-phases-")
    seen: dict = {}
    with emulator("nexus") as base_url:
        for _ in range(runs):
            env = {**os.environ, **BENCH_ENV, "DLT_DATA_DIR": str(folder / "dlt")}
            out = subprocess.run([sys.executable, "-c", PHASES, base_url, str(REPO)], cwd=str(folder), env=env,
                                 capture_output=True, text=True, check=True)
            figures = json.loads(out.stdout.strip().splitlines()[-1])
            for name, value in {**figures["phases"], **{f"  dlt step {k}": v for k, v in figures["steps"].items()
                                                        if k != "run"}}.items():
                seen.setdefault(name, []).append(value)
    print(f"  where a snapshot's time goes (in-process, median of {runs}; dlt's steps are inside 'run'):")
    for name, values in seen.items():
        print(f"    {name:<34} {median(values):6.3f} s")


if __name__ == "__main__":
    sys.exit(main())
