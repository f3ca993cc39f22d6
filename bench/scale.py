"""Scale: the same embeddings pipeline at 100,000 and at 1,000,000 texts (768 dims, dense), one emulator, one run.

    python bench/scale.py                               # 100,000 then 1,000,000 texts (20-40 minutes on 2 cores)
    python bench/scale.py --small 10000 --large 100000  # a smaller pair

Each size runs in a fresh process into a fresh DuckDB file (the pipeline of bench/embeddings.py's ``gaia`` part,
in parts of ``--rows-per-load`` rows, with the settings the script uses: see ``gaia_source.settings.dlt_defaults``).
Cost should grow linearly: time at the large size over time at the small one close to the size ratio, peak RSS
nearly flat.

Targets (issue 21): 1,000,000 texts with peak RSS <= 1.5 GB and time <= 10.5x the 100,000 run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Timer, bench_pipeline, emulator, parse_args, peak_rss_mb, report, run_part, workdir  # noqa: E402
from embeddings import make_texts  # noqa: E402

from gaia_source.settings import DEFAULT_ROWS_PER_LOAD  # noqa: E402


def part_gaia(args: Dict[str, Any]) -> None:
    """bench/embeddings.py's gaia part as the script runs it (in parts of ``rows_per_load`` rows), with this
    process's peak RSS after each part and the time of each of dlt's steps, summed over the parts."""
    from gaia_source import gaia_source
    from gaia_source.lifecycle import run_pipeline

    pipeline = bench_pipeline("bench_scale", args["dir"])
    source = gaia_source(base_url=args["base_url"], texts_file=args["texts_file"],
                         embedding_batch_size=args["batch_size"], max_concurrency=args["concurrency"])
    peaks: List[float] = []
    steps: Dict[str, float] = {}
    run = pipeline.run

    def one_part(*a: Any, **k: Any) -> Any:  # each part of the run: its peak and its steps' times
        info = run(*a, **k)
        peaks.append(round(peak_rss_mb()))
        for step in pipeline.last_trace.steps:
            steps[step.step] = round(steps.get(step.step, 0.0) + (step.finished_at - step.started_at).total_seconds(),
                                     1)
        return info

    pipeline.run = one_part  # type: ignore[method-assign]
    with Timer() as t:
        run_pipeline(pipeline, source.with_resources("embeddings"),
                     rows_per_load=args["rows_per_load"] or None).raise_on_failed_jobs()
    with pipeline.sql_client() as client:
        rows = client.execute_sql("SELECT count(*) FROM embeddings")[0][0]
    report({"seconds": t.seconds, "rows": rows, "steps": steps, "peaks": peaks})


PARTS = {"gaia": part_gaia}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--duckdb-memory-limit", help="DuckDB's memory_limit for the loads (default: DuckDB's own)")
    parser.add_argument("--load-workers", type=int, help="dlt's parallel load jobs (default: 1, the script's)")
    parser.add_argument("--rows-per-load", type=int, default=DEFAULT_ROWS_PER_LOAD,
                        help=f"rows per load, as the script's flag (default {DEFAULT_ROWS_PER_LOAD:,}; 0: one load)")
    args, was_part = parse_args(parser, PARTS)
    if was_part:
        return 0
    if args.duckdb_memory_limit:
        os.environ["DESTINATION__DUCKDB__CREDENTIALS__GLOBAL_CONFIG"] = json.dumps(
            {"memory_limit": args.duckdb_memory_limit})
    if args.load_workers:
        os.environ["LOAD__WORKERS"] = str(args.load_workers)
    results = {}
    print(f"DuckDB memory_limit {args.duckdb_memory_limit or 'default (80 % of RAM)'}, load workers "
          f"{args.load_workers or 'default (the script sets 1 on DuckDB)'}, rows per load "
          f"{args.rows_per_load or 'all (one load)'}")
    print(f"scale: embeddings {args.small:,} then {args.large:,} texts x {args.dim} dims (dense), batch 64, "
          "concurrency 8, one emulator (nexus) in its own process", flush=True)
    with emulator("nexus", "--dim", str(args.dim)) as base_url:
        for count in (args.small, args.large):
            texts_file = workdir("gaia-bench-scale-") / "texts.txt"  # the gaia part embeds the whole file
            make_texts(texts_file, count)
            part = run_part(__file__, "gaia", {
                "texts_file": str(texts_file), "texts": count, "dim": args.dim, "batch_size": 64, "concurrency": 8,
                "slice": 0, "rows_per_load": args.rows_per_load, "base_url": base_url,
                "dir": str(workdir("gaia-bench-scale-")),
            })
            assert part["rows"] == count, part
            results[count] = part
            print(f"{count:>10,} texts: {part['seconds']:8.1f} s   {count / part['seconds']:6.0f} texts/s   "
                  f"{1000 * part['seconds'] / count:6.3f} s per 1,000   peak RSS {part['peak_rss_mb']:6.0f} MB   "
                  f"steps {part['steps']}, peak RSS after each part {part['peaks']}", flush=True)
    small, large = results[args.small], results[args.large]
    size_ratio = args.large / args.small
    print(f"time {args.large:,} / {args.small:,}: {large['seconds'] / small['seconds']:.2f}x for {size_ratio:.0f}x the "
          f"texts (target <= {1.05 * size_ratio:.1f}x)")
    print(f"peak RSS at {args.large:,} texts: {large['peak_rss_mb']:.0f} MB (target <= 1536 MB; "
          f"{large['peak_rss_mb'] / small['peak_rss_mb']:.2f}x the {args.small:,} run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
