"""Streaming overhead: S streams x C chunks at zero latency, gaia_source vs a bare httpx-sse loop over the same streams.

    python bench/streaming.py                   # 200 streams x ~400 chunks, one stream at a time

Both sides read the same rag-flavour streams from the same emulator process, one stream at a time, so the emulator's
cost is in both; the difference is what the client adds per chunk (JSON parsing, folding, TTFT, rows, dlt).
The bare loop only iterates the SSE events; a second bare loop also parses each chunk's JSON, for reference.

Target (issue 7): gaia_source <= 1.5x the bare httpx-sse loop.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import Timer, bench_pipeline, emulator, parse_args, report, run_part, workdir  # noqa: E402


def _prompts(count: int, words: int) -> List[str]:
    return [f"stream {i} " + " ".join(f"w{j}" for j in range(words)) for i in range(count)]


def part_bare(args: Dict[str, Any]) -> None:
    """A bare httpx-sse loop (optionally parsing each chunk's JSON)."""
    import httpx
    import httpx_sse
    import orjson

    chunks = 0
    with httpx.Client() as client, Timer() as t:
        for prompt in _prompts(args["streams"], args["words"]):
            body = {"messages": [{"role": "user", "content": prompt}], "stream": True}
            with httpx_sse.connect_sse(client, "POST", f"{args['base_url']}/chat/completions", json=body) as source:
                for event in source.iter_sse():
                    if event.data == "[DONE]":
                        break
                    if args["parse"]:
                        orjson.loads(event.data)
                    chunks += 1
    report({"seconds": t.seconds, "chunks": chunks})


def part_gaia(args: Dict[str, Any]) -> None:
    """The chat_completions_stream resource, extraction only, one stream at a time."""
    from gaia_source import gaia_source

    pipeline = bench_pipeline("bench_stream", args["dir"])
    source = gaia_source(base_url=args["base_url"], prompts=_prompts(args["streams"], args["words"]),
                         chat_model="Llama-3.2-3B-Instruct", max_concurrency=1)
    source = source.with_resources("chat_completions_stream")
    with Timer() as t:
        pipeline.extract(source)
    pipeline.normalize()
    pipeline.load().raise_on_failed_jobs()
    with pipeline.sql_client() as client:
        rows, chunks = client.execute_sql(
            "SELECT count(*), sum(chunk_count) FROM chat_completions_stream WHERE status = 'completed'")[0]
    report({"seconds": t.seconds, "chunks": int(chunks), "rows": rows})


PARTS = {"bare": part_bare, "gaia": part_gaia}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--words", type=int, default=397, help="prompt words (the answer has ~3 more chunks)")
    args, was_part = parse_args(parser, PARTS)
    if was_part:
        return 0
    common = {"streams": args.streams, "words": args.words}
    with emulator("rag") as base_url:
        bare = run_part(__file__, "bare", {**common, "base_url": base_url, "parse": False})
        parsed = run_part(__file__, "bare", {**common, "base_url": base_url, "parse": True})
        gaia = run_part(__file__, "gaia", {**common, "base_url": base_url, "dir": str(workdir("gaia-bench-stream-"))})
    chunks = bare["chunks"]
    print(f"streaming: {args.streams} streams x {chunks / args.streams:.0f} chunks, rag emulator, zero latency, "
          "one stream at a time")
    for label, part in (("bare httpx-sse loop", bare), ("bare loop + orjson per chunk", parsed), ("gaia_source", gaia)):
        print(f"{label:<32}{part['seconds']:7.2f} s   {1e6 * part['seconds'] / part['chunks']:6.1f} us/chunk")
    assert gaia["rows"] == args.streams
    print(f"gaia_source / bare loop: {gaia['seconds'] / bare['seconds']:.2f}x (target <= 1.5x); "
          f"/ bare loop with JSON parsing: {gaia['seconds'] / parsed['seconds']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
