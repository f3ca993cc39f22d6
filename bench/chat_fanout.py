"""Chat fan-out: N prompts against a node with a set latency, vs the ideal and vs the naive one-by-one pipeline.

    python bench/chat_fanout.py                 # 1,000 prompts, 50 ms, concurrency 16; naive slice 100

* ideal = N x latency / concurrency (the node is the limit);
* gaia_source extraction and end-to-end (extract + normalize + load into DuckDB) against the ideal;
* naive baseline: a dlt ``rest_api`` source posting the prompts one by one (a parent resource of prompts and a
  POST child per prompt, as the dltHub Gaia page builds it), on a slice, per prompt.

Targets (issue 7): extraction <= 1.3x ideal, end to end <= 1.6x ideal, >= 10x faster per prompt than naive.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import Timer, bench_pipeline, emulator, parse_args, report, run_part, workdir  # noqa: E402


def part_gaia(args: Dict[str, Any]) -> None:
    """Extract, then normalize and load, the chat_completions resource over a prompts file."""
    from gaia_source import gaia_source

    pipeline = bench_pipeline("bench_chat", args["dir"])
    source = gaia_source(base_url=args["base_url"], prompts_file=args["prompts_file"], chat_model="Qwen3-4B",
                         max_concurrency=args["concurrency"]).with_resources("chat_completions")
    with Timer() as total:
        with Timer() as extract:
            pipeline.extract(source)
        with Timer() as normalize:
            pipeline.normalize()
        with Timer() as load:
            pipeline.load().raise_on_failed_jobs()
    with pipeline.sql_client() as client:
        rows = client.execute_sql("SELECT count(*) FROM chat_completions WHERE status = 'completed'")[0][0]
    report({"extract_s": extract.seconds, "normalize_s": normalize.seconds, "load_s": load.seconds,
            "total_s": total.seconds, "rows": rows})


def part_naive(args: Dict[str, Any]) -> None:
    """dlt rest_api: one POST per prompt, one after another."""
    import dlt
    from dlt.sources.rest_api import rest_api_source

    @dlt.resource(name="prompts", selected=False)
    def prompts() -> Any:  # no arguments: dlt would inject config into them (a `path` argument reads $PATH)
        with open(args["prompts_file"], encoding="utf-8") as fh:  # rest_api reads parent items by page: one list
            yield [{"prompt": line.rstrip("\n")} for _, line in zip(range(args["slice"]), fh, strict=False)]

    config: Dict[str, Any] = {
        "client": {"base_url": args["base_url"] + "/", "paginator": "single_page"},
        "resources": [
            prompts,
            {
                "name": "chat_completions",
                "endpoint": {
                    "path": "chat/completions",
                    "method": "POST",
                    "json": {
                        "model": "Qwen3-4B",
                        "messages": [{"role": "user", "content": "{resources.prompts.prompt}"}],
                    },
                    "data_selector": "choices",
                },
            },
        ],
    }
    pipeline = bench_pipeline("bench_naive", args["dir"])
    with Timer() as total:
        pipeline.run(rest_api_source(config)).raise_on_failed_jobs()
    with pipeline.sql_client() as client:
        rows = client.execute_sql("SELECT count(*) FROM chat_completions")[0][0]
    report({"total_s": total.seconds, "rows": rows})


PARTS = {"gaia": part_gaia, "naive": part_naive}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=1000)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--slice", type=int, default=100, help="prompts for the naive baseline")
    args, was_part = parse_args(parser, PARTS)
    if was_part:
        return 0
    prompts_file = workdir("gaia-bench-prompts-") / "prompts.txt"
    prompts_file.write_text("".join(f"Question number {i}: what is {i} squared?\n" for i in range(args.prompts)))
    ideal = args.prompts * args.latency_ms / 1000.0 / args.concurrency
    print(f"chat fan-out: {args.prompts:,} prompts, nexus emulator at {args.latency_ms:g} ms, concurrency "
          f"{args.concurrency}; ideal = N x latency / concurrency = {ideal:.2f} s")
    common = {"prompts_file": str(prompts_file), "concurrency": args.concurrency, "slice": args.slice}
    with emulator("nexus", "--latency-ms", str(args.latency_ms)) as base_url:
        gaia = run_part(__file__, "gaia", {**common, "base_url": base_url, "dir": str(workdir("gaia-bench-chat-"))})
        naive = run_part(__file__, "naive", {**common, "base_url": base_url, "dir": str(workdir("gaia-bench-naive-"))})
    assert gaia["rows"] == args.prompts and naive["rows"] == args.slice, (gaia, naive)
    per_gaia = gaia["total_s"] / gaia["rows"]
    per_naive = naive["total_s"] / naive["rows"]
    print(f"gaia_source extraction:        {gaia['extract_s']:7.2f} s   "
          f"{gaia['extract_s'] / ideal:5.2f}x ideal (target <= 1.3x)")
    print(f"gaia_source end to end:        {gaia['total_s']:7.2f} s   "
          f"{gaia['total_s'] / ideal:5.2f}x ideal (target <= 1.6x)"
          f"   [normalize {gaia['normalize_s']:.2f} s, load {gaia['load_s']:.2f} s]")
    print(f"naive rest_api, {naive['rows']} prompts:    {naive['total_s']:7.2f} s   {1000 * per_naive:6.1f} ms/prompt "
          f"vs gaia {1000 * per_gaia:5.1f} ms/prompt: {per_naive / per_gaia:5.1f}x faster (target >= 10x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
