"""Memory: peak RSS of a chat run over 10,000 vs 100,000 prompts read from a file (inputs are streamed, not loaded).

    python bench/memory.py                      # 10,000 and 100,000 prompts, nexus emulator, zero latency
    python bench/memory.py --large 300000 --rows-per-load 0   # one load for the whole run, as before issue 21

Target (issue 7): peak RSS at 100,000 prompts <= 1.3x that at 10,000; issue 21: <= 1.2x.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import Timer, bench_pipeline, emulator, parse_args, peak_rss_mb, report, run_part, workdir  # noqa: E402

from gaia_source.settings import DEFAULT_ROWS_PER_LOAD  # noqa: E402


def part_gaia(args: Dict[str, Any]) -> None:
    """Load chat_completions for a prompts file as the script does (``run_pipeline``, in parts of ``rows_per_load``
    rows); report time, rows, loads, this process's peak RSS, and its peak after each step of the first part."""
    from gaia_source import gaia_source
    from gaia_source.lifecycle import run_pipeline

    pipeline = bench_pipeline("bench_memory", args["dir"])
    source = gaia_source(base_url=args["base_url"], prompts_file=args["prompts_file"], chat_model="Qwen3-4B",
                         max_concurrency=16).with_resources("chat_completions")
    peaks: Dict[str, float] = {}
    def peak_after(step: str) -> None:  # the inputs, requests and rows in flight live in extract
        run = getattr(pipeline, step)

        def after(*a: Any, **k: Any) -> Any:
            out = run(*a, **k)
            peaks.setdefault(step, round(peak_rss_mb(), 1))
            return out

        setattr(pipeline, step, after)

    peak_after("extract")
    peak_after("normalize")
    with Timer() as t:
        result = run_pipeline(pipeline, source, rows_per_load=args["rows_per_load"] or None)
        result.raise_on_failed_jobs()
    with pipeline.sql_client() as client:
        rows = client.execute_sql("SELECT count(*) FROM chat_completions")[0][0]
    report({"seconds": t.seconds, "rows": rows, "loads": len(result.loads), "extract_peak_mb": peaks["extract"],
            "normalize_peak_mb": peaks["normalize"]})


PARTS = {"gaia": part_gaia}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--rows-per-load", type=int, default=DEFAULT_ROWS_PER_LOAD,
                        help=f"rows per load, as the script's flag (default {DEFAULT_ROWS_PER_LOAD:,}; 0: one load)")
    args, was_part = parse_args(parser, PARTS)
    if was_part:
        return 0
    results = {}
    with emulator("nexus") as base_url:
        for count in (args.small, args.large):
            prompts = workdir("gaia-bench-memory-") / "prompts.txt"
            prompts.write_text("".join(f"Prompt {i}: tell me about the number {i}.\n" for i in range(count)))
            results[count] = run_part(__file__, "gaia", {"base_url": base_url, "prompts_file": str(prompts),
                                                         "rows_per_load": args.rows_per_load,
                                                         "dir": str(workdir("gaia-bench-memory-"))})
            assert results[count]["rows"] == count, results[count]
    for count, part in results.items():
        print(f"{count:>9,} prompts: {part['seconds']:7.2f} s   {count / part['seconds']:7.0f} prompts/s   "
              f"peak RSS {part['peak_rss_mb']:6.0f} MB (after the first extraction {part['extract_peak_mb']:6.0f} MB), "
              f"{part['loads']} load(s)")
    large, small = results[args.large], results[args.small]
    ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
    extraction = large["extract_peak_mb"] / small["extract_peak_mb"]
    normalized = large["normalize_peak_mb"] / small["normalize_peak_mb"]
    print(f"peak RSS {args.large:,} / {args.small:,}: {ratio:.2f}x (target <= 1.2x)  {large['peak_rss_mb']:.0f} MB vs "
          f"{small['peak_rss_mb']:.0f} MB; after the first part's extraction: {extraction:.2f}x, after its normalize: "
          f"{normalized:.2f}x (the rest is the loads); rows per load {args.rows_per_load or 'all (one load)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
