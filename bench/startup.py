"""Start-up: `--help`, and a node snapshot (`--resources models,info`) against a raw httpx -> DuckDB script.

    python bench/startup.py                     # 7 runs each, after a warm-up

Whole processes, as cron runs them: wall time from start to exit. `--help` is timed next to a bare `python -c pass`
(the interpreter's own start-up, context only). The snapshot and its raw baseline (bench/baselines/raw_snapshot.py:
the same two GETs, rows into DuckDB) run in turn, A B A B ..., each in its own folder that it keeps between runs (as a
scheduled snapshot does), against one emulator process; the ratio is taken pair by pair.

Targets (issue 14): `--help` <= 0.3 s; snapshot <= 1.0 s and <= 1.5x the raw script.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, emulator, paired, run_process, summary, workdir  # noqa: E402

CLI = str(REPO / "gaia_pipeline.py")
RAW = str(REPO / "bench" / "baselines" / "raw_snapshot.py")


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
          f"(min {result['ratio_min']:.2f}x, max {result['ratio_max']:.2f}x)   (target <= 1.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
