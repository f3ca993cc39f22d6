"""Several nodes: throughput of 4 rag-flavour nodes vs 1, each answering one request at a time at 50 ms.

    python bench/nodes.py                       # 200 prompts, 4 nodes, per-node concurrency 2

An old Gaia node serializes requests, so more connections to one node give nothing; a list of nodes does.
Both runs use the same per-node concurrency. Target (issue 7): 4 nodes >= 3.5x the throughput of 1.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Dict

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import Timer, bench_pipeline, emulator, emulator_requests, parse_args, report, run_part, workdir  # noqa: E402


def part_gaia(args: Dict[str, Any]) -> None:
    """Extract chat_completions for N prompts spread over the given nodes."""
    from gaia_source import gaia_source

    pipeline = bench_pipeline("bench_nodes", args["dir"])
    prompts = [f"Question {i} for the pool?" for i in range(args["prompts"])]
    source = gaia_source(base_url=args["nodes"], prompts=prompts, chat_model="Llama-3.2-3B-Instruct",
                         max_concurrency=args["concurrency"]).with_resources("chat_completions")
    with Timer() as t:
        pipeline.extract(source)
    pipeline.normalize()
    pipeline.load().raise_on_failed_jobs()
    with pipeline.sql_client() as client:
        rows = client.execute_sql("SELECT count(*) FROM chat_completions")[0][0]
    report({"seconds": t.seconds, "rows": rows})


PARTS = {"gaia": part_gaia}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--concurrency", type=int, default=2, help="per node")
    args, was_part = parse_args(parser, PARTS)
    if was_part:
        return 0
    with ExitStack() as stack:
        urls = [stack.enter_context(emulator("rag", "--latency-ms", str(args.latency_ms))) for _ in range(args.nodes)]
        common = {"prompts": args.prompts, "concurrency": args.concurrency}
        one = run_part(__file__, "gaia", {**common, "nodes": urls[:1], "dir": str(workdir("gaia-bench-nodes-"))})
        before = [emulator_requests(u, "/v1/chat/completions") for u in urls]
        many = run_part(__file__, "gaia", {**common, "nodes": urls, "dir": str(workdir("gaia-bench-nodes-"))})
        spread = [emulator_requests(u, "/v1/chat/completions") - b for u, b in zip(urls, before, strict=True)]
    assert one["rows"] == many["rows"] == args.prompts
    print(f"nodes: {args.prompts} prompts, rag emulators at {args.latency_ms:g} ms answering one at a time, "
          f"per-node concurrency {args.concurrency}")
    print(f"1 node:   {one['seconds']:6.2f} s   {args.prompts / one['seconds']:6.1f} prompts/s")
    print(f"{args.nodes} nodes:  {many['seconds']:6.2f} s   {args.prompts / many['seconds']:6.1f} prompts/s   "
          f"requests per node {spread}")
    print(f"speed-up: {one['seconds'] / many['seconds']:.2f}x (target >= 3.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
