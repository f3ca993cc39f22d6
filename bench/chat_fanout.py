"""Chat fan-out: N prompts against a node with a set latency, vs the ideal, a raw asyncio script and the naive pipeline.

    python bench/chat_fanout.py                 # 400 prompts, 50 ms, concurrency 16; naive slice 100

* ideal = N x latency / concurrency (the node is the limit);
* gaia_source extraction and end-to-end (extract + normalize + load into DuckDB) against the ideal, in one process;
* whole process: ``gaia_pipeline.py --resources chat_completions`` against the raw baseline
  (bench/baselines/raw_chat.py: asyncio + httpx post the same prompts, rows into DuckDB), A B A B, fresh folders;
* client CPU per request at 0 ms node latency: user + sys of the client process for N prompts minus that for 1
  prompt (its start-up), divided by N - 1, for gaia and for the raw baseline;
* naive baseline: a dlt ``rest_api`` source posting the prompts one by one (a parent resource of prompts and a
  POST child per prompt, as the dltHub Gaia page builds it), on a slice, per prompt.

Targets (issue 7): extraction <= 1.3x ideal, end to end <= 1.6x ideal, >= 10x faster per prompt than naive.
Targets (issue 14): whole process <= 1.2x the raw script; extraction <= 1.1x ideal; CPU per request <= 0.7x raw.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import (  # noqa: E402
    REPO,
    Timer,
    bench_pipeline,
    emulator,
    median,
    paired,
    parse_args,
    report,
    run_part,
    run_process,
    workdir,
)

CLI = str(REPO / "gaia_pipeline.py")
RAW = str(REPO / "bench" / "baselines" / "raw_chat.py")
MODEL = "Qwen3-4B"


def part_gaia(args: Dict[str, Any]) -> None:
    """Extract, then normalize and load, the chat_completions resource over a prompts file."""
    from gaia_source import gaia_source

    pipeline = bench_pipeline("bench_chat", args["dir"])
    source = gaia_source(base_url=args["base_url"], prompts_file=args["prompts_file"], chat_model=MODEL,
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


def write_prompts(count: int) -> Path:
    """A prompts file of ``count`` distinct questions."""
    path = workdir("gaia-bench-prompts-") / "prompts.txt"
    path.write_text("".join(f"Question number {i}: what is {i} squared?\n" for i in range(count)))
    return path


def gaia_command(base_url: str, prompts_file: Path, concurrency: int) -> Any:
    """The CLI as a user runs it, in a fresh folder (a re-run would skip prompts already answered)."""
    folder = workdir("gaia-bench-chatcli-")
    return ([sys.executable, CLI, "--base-url", base_url, "--prompts-file", str(prompts_file), "--resources",
             "chat_completions", "--chat-model", MODEL, "--max-concurrency", str(concurrency)], str(folder),
            {"DLT_DATA_DIR": str(folder / "dlt")})


def raw_command(base_url: str, prompts_file: Path, concurrency: int) -> Any:
    """The raw asyncio + httpx -> DuckDB script, in a fresh folder."""
    folder = workdir("gaia-bench-chatraw-")
    return ([sys.executable, RAW, base_url, str(prompts_file), str(concurrency), str(folder / "raw.duckdb"), MODEL],
            str(folder), None)


def cpu_per_request(make: Any, base_url: str, many: Path, one: Path, concurrency: int, runs: int) -> float:
    """Median over ``runs`` of (CPU for N prompts - CPU for 1 prompt) / (N - 1), in seconds."""
    count = sum(1 for _ in many.open())
    samples = []
    for _ in range(runs):
        full = run_process(*make(base_url, many, concurrency))["cpu_s"]
        start = run_process(*make(base_url, one, concurrency))["cpu_s"]
        samples.append((full - start) / (count - 1))
    return median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=400)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--slice", type=int, default=100, help="prompts for the naive baseline (0: skip it)")
    parser.add_argument("--runs", type=int, default=5, help="A/B pairs of whole processes")
    parser.add_argument("--cpu-prompts", type=int, default=2000, help="prompts for CPU per request at 0 ms")
    args, was_part = parse_args(parser, PARTS)
    if was_part:
        return 0
    prompts_file = write_prompts(args.prompts)
    ideal = args.prompts * args.latency_ms / 1000.0 / args.concurrency
    print(f"chat fan-out: {args.prompts:,} prompts, nexus emulator at {args.latency_ms:g} ms, concurrency "
          f"{args.concurrency}; ideal = N x latency / concurrency = {ideal:.2f} s")
    common = {"prompts_file": str(prompts_file), "concurrency": args.concurrency, "slice": args.slice}
    with emulator("nexus", "--latency-ms", str(args.latency_ms)) as base_url:
        gaia = run_part(__file__, "gaia", {**common, "base_url": base_url, "dir": str(workdir("gaia-bench-chat-"))})
        whole = paired(lambda: gaia_command(base_url, prompts_file, args.concurrency),
                       lambda: raw_command(base_url, prompts_file, args.concurrency), args.runs)
        naive = None
        if args.slice:
            naive = run_part(__file__, "naive", {**common, "base_url": base_url,
                                                 "dir": str(workdir("gaia-bench-naive-"))})
    many, one = write_prompts(args.cpu_prompts), write_prompts(1)
    with emulator("nexus") as base_url:  # 0 ms: the client is the limit
        cpu_gaia = cpu_per_request(gaia_command, base_url, many, one, args.concurrency, 3)
        cpu_raw = cpu_per_request(raw_command, base_url, many, one, args.concurrency, 3)
    assert gaia["rows"] == args.prompts, gaia
    per_gaia = gaia["total_s"] / gaia["rows"]
    print(f"gaia_source extraction:        {gaia['extract_s']:7.2f} s   "
          f"{gaia['extract_s'] / ideal:5.2f}x ideal (target <= 1.1x)")
    print(f"gaia_source end to end:        {gaia['total_s']:7.2f} s   "
          f"{gaia['total_s'] / ideal:5.2f}x ideal (target <= 1.6x)"
          f"   [normalize {gaia['normalize_s']:.2f} s, load {gaia['load_s']:.2f} s]")
    a, b = whole["a"], whole["b"]
    print(f"whole process, {args.runs} pairs (min / median):")
    print(f"  gaia_pipeline.py --resources chat_completions   {a['wall_s_min']:6.2f} / {a['wall_s_median']:6.2f} s"
          f"   peak RSS {a['peak_rss_mb_median']:.0f} MB")
    print(f"  raw asyncio + httpx -> DuckDB                   {b['wall_s_min']:6.2f} / {b['wall_s_median']:6.2f} s"
          f"   peak RSS {b['peak_rss_mb_median']:.0f} MB")
    print(f"  gaia / raw, pair by pair: median {whole['ratio_median']:.2f}x (min {whole['ratio_min']:.2f}x, "
          f"max {whole['ratio_max']:.2f}x)   (target <= 1.2x)")
    print(f"client CPU per request at 0 ms ({args.cpu_prompts:,} prompts minus 1, median of 3): gaia "
          f"{1e3 * cpu_gaia:.2f} ms, raw {1e3 * cpu_raw:.2f} ms: {cpu_gaia / cpu_raw:.2f}x   (target <= 0.7x)")
    if naive is not None:
        assert naive["rows"] == args.slice, naive
        per_naive = naive["total_s"] / naive["rows"]
        print(f"naive rest_api, {naive['rows']} prompts:    {naive['total_s']:7.2f} s   {1000 * per_naive:6.1f} "
              f"ms/prompt vs gaia {1000 * per_gaia:5.1f} ms/prompt: {per_naive / per_gaia:5.1f}x faster "
              "(target >= 10x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
