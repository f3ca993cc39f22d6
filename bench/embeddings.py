"""Embeddings benchmark: N texts x 768 dims from the emulator into DuckDB, against baselines measured in the same run.

    python bench/embeddings.py                      # 100,000 texts, 2,000-text slice for dlt's default
    python bench/embeddings.py --texts 20000 --slice 500

Figures (each part runs in its own process, so peak RSS is that part's own; the emulator runs in another):

* raw baseline — httpx → orjson → numpy → pyarrow → DuckDB ``INSERT`` into ``FLOAT[768]``: the practical limit;
* gaia_source — the dlt pipeline (texts file → embeddings resource → DuckDB ``FLOAT[768]``);
* dlt default — the same vectors yielded as dicts with no hints: dlt makes a child table with a row per float;
* second run — gaia_source over the same texts again: content-hash skip, zero embedding requests;
* peer — ``llm embed-multi`` (simonw/llm, the ``bench`` extra) against ``gaia_pipeline.py --resources embeddings``,
  whole processes, batch 32, on a fresh store then again on the same texts (both skip what they hold). Skipped, with
  a message, when ``llm`` is not installed.

The emulator's vectors are dense float32, as a real model's (its JSON and the stored vectors cost what they would).

Targets (issue 4): ≥ 50× faster per row than dlt's default; peak RSS < 1.5 GB; second run ≤ 10 % of the first.
Targets (issue 14, dense vectors): gaia ≤ 1.3× raw; ≥ 10× faster than ``llm embed-multi``, first run and re-run.
Targets (issue 21): gaia ≤ 1.1× raw, whole process; ≥ 20× faster than ``llm embed-multi``, first run and re-run.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, Iterator, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import (  # noqa: E402
    REPO,
    Timer,
    bench_pipeline,
    emulator,
    emulator_requests,
    fmt_row,
    parse_args,
    ratio,
    report,
    run_part,
    run_process,
    workdir,
)

WORDS = ("paris seine river france tower gaia node model vector warehouse duckdb arrow table query index search "
         "embedding token latency stream answer prompt corpus document chapter section").split()


def make_texts(path: Path, count: int) -> None:
    """Deterministic, distinct texts of about 15 words, one per line."""
    with path.open("w", encoding="utf-8") as fh:
        for i in range(count):
            words = " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(12))
            fh.write(f"Document {i}: {words} end {i % 977}\n")


def _batches(path: str, size: int, limit: int) -> Iterator[List[str]]:
    batch: List[str] = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh):
            if n >= limit:
                break
            batch.append(line.rstrip("\n"))
            if len(batch) == size:
                yield batch
                batch = []
    if batch:
        yield batch


def part_raw(args: Dict[str, Any]) -> None:
    """httpx → numpy → pyarrow → DuckDB FLOAT[dim], with the same batch size and concurrency as the pipeline."""
    import duckdb
    import httpx
    import numpy as np
    import orjson
    import pyarrow as pa

    dim = args["dim"]
    client = httpx.Client(limits=httpx.Limits(max_connections=args["concurrency"] + 2))
    con = duckdb.connect(str(Path(args["dir"]) / "raw.duckdb"))
    con.execute(f"CREATE TABLE embeddings (text VARCHAR, model VARCHAR, embedding FLOAT[{dim}])")

    def embed(texts: List[str]) -> pa.Table:
        body = orjson.loads(client.post(f"{args['base_url']}/embeddings", content=orjson.dumps({"input": texts}),
                                        headers={"Content-Type": "application/json"}).content)
        vectors = np.asarray([d["embedding"] for d in body["data"]], dtype=np.float32)
        return pa.table({"text": texts, "model": [body["model"]] * len(texts),
                         "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim)})

    with Timer() as t, ThreadPoolExecutor(args["concurrency"]) as pool:
        pending: List[pa.Table] = []
        for table in pool.map(embed, _batches(args["texts_file"], args["batch_size"], args["texts"])):
            pending.append(table)
            if sum(p.num_rows for p in pending) >= 10_000:
                chunk = pa.concat_tables(pending)  # noqa: F841 - read by DuckDB's replacement scan
                con.execute("INSERT INTO embeddings SELECT * FROM chunk")
                pending = []
        if pending:
            chunk = pa.concat_tables(pending)  # noqa: F841
            con.execute("INSERT INTO embeddings SELECT * FROM chunk")
    rows = con.execute("SELECT count(*) FROM embeddings").fetchone()[0]
    column_type = con.execute("SELECT typeof(embedding) FROM embeddings LIMIT 1").fetchone()[0]
    report({"seconds": t.seconds, "rows": rows, "type": column_type})


def part_gaia(args: Dict[str, Any]) -> None:
    """The gaia_source pipeline, as a user runs it."""
    from gaia_source import gaia_source, run_pipeline

    pipeline = bench_pipeline("bench_embeddings", args["dir"])
    source = gaia_source(base_url=args["base_url"], texts_file=args["texts_file"],
                         embedding_batch_size=args["batch_size"], max_concurrency=args["concurrency"])
    with Timer() as t:  # as the script runs it: DuckDB's load settings held, checkpoint at close included
        run_pipeline(pipeline, source.with_resources("embeddings")).raise_on_failed_jobs()
    with pipeline.sql_client() as client:
        rows, kind = client.execute_sql("SELECT count(*), any_value(typeof(embedding)) FROM embeddings")[0]
    trace = pipeline.last_trace
    steps = {s.step: round((s.finished_at - s.started_at).total_seconds(), 2) for s in trace.steps}
    report({"seconds": t.seconds, "rows": rows, "type": kind, "steps": steps})


def part_dlt_default(args: Dict[str, Any]) -> None:
    """The same vectors as plain dicts with dlt's defaults (gzip on, no hints): a child row per float."""
    import dlt
    import httpx
    import orjson

    client = httpx.Client()
    for key in ("DATA_WRITER__DISABLE_COMPRESSION",):  # dlt's defaults, as a new user gets them
        __import__("os").environ.pop(key, None)

    @dlt.resource(name="embeddings", write_disposition="replace")
    def embeddings() -> Iterator[List[Dict[str, Any]]]:
        for texts in _batches(args["texts_file"], args["batch_size"], args["slice"]):
            body = orjson.loads(client.post(f"{args['base_url']}/embeddings", content=orjson.dumps({"input": texts}),
                                            headers={"Content-Type": "application/json"}).content)
            yield [{"text": texts[d["index"]], "model": body["model"], "embedding": d["embedding"]}
                   for d in body["data"]]

    pipeline = bench_pipeline("bench_default", args["dir"])
    with Timer() as t:
        pipeline.run(embeddings())
    with pipeline.sql_client() as sql:
        rows = sql.execute_sql("SELECT count(*) FROM embeddings")[0][0]
        floats = sql.execute_sql("SELECT count(*) FROM embeddings__embedding")[0][0]
    report({"seconds": t.seconds, "rows": rows, "child_rows": floats})


PARTS = {"raw": part_raw, "gaia": part_gaia, "dlt_default": part_dlt_default}


def peer(base_url: str, texts_file: Path, count: int, batch_size: int) -> Dict[str, Any]:
    """``llm embed-multi`` and ``gaia_pipeline.py --resources embeddings`` on the same texts, each run twice (a fresh
    store, then the same texts again), whole processes; wall seconds and requests sent per run."""
    llm = shutil.which("llm") or str(Path(sys.executable).parent / "llm")
    folder = workdir("gaia-bench-peer-")
    lines = folder / "texts.txt"
    with texts_file.open(encoding="utf-8") as src, lines.open("w", encoding="utf-8") as dst:
        for _, line in zip(range(count), src, strict=False):
            dst.write(line)
    with (folder / "texts.csv").open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "content"])
        for n, line in enumerate(lines.open(encoding="utf-8")):
            writer.writerow([n, line.rstrip("\n")])
    llm_env = {"LLM_USER_PATH": str(folder / "llm"), "OPENAI_API_KEY": "not-checked", "OPENAI_BASE_URL": base_url}
    llm_cmd = [llm, "embed-multi", "texts", str(folder / "texts.csv"), "-m", "3-small", "--batch-size",
               str(batch_size), "-d", str(folder / "llm.db")]
    gaia_env = {"DLT_DATA_DIR": str(folder / "dlt"), "SOURCES__GAIA_SOURCE__EMBEDDING_BATCH_SIZE": str(batch_size)}
    gaia_cmd = [sys.executable, str(REPO / "gaia_pipeline.py"), "--base-url", base_url, "--texts-file", str(lines),
                "--resources", "embeddings"]
    out: Dict[str, Any] = {}
    for name, cmd, env in (("llm", llm_cmd, llm_env), ("gaia", gaia_cmd, gaia_env)):
        for run in ("first", "again"):
            before = emulator_requests(base_url, "/v1/embeddings")
            figures = run_process(cmd, str(folder), env)
            out[f"{name}_{run}"] = {**figures, "requests": emulator_requests(base_url, "/v1/embeddings") - before}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--slice", type=int, default=2_000, help="texts for dlt's default (it is slow)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--peer-texts", type=int, default=20_000, help="texts for the llm embed-multi comparison")
    parser.add_argument("--peer-batch-size", type=int, default=32)
    args, was_part = parse_args(parser, PARTS)
    if was_part:
        return 0

    print(f"embeddings benchmark: {args.texts:,} texts x {args.dim} dims, batch {args.batch_size}, "
          f"concurrency {args.concurrency}, emulator nexus flavour in its own process")
    texts_file = workdir("gaia-bench-texts-") / "texts.txt"
    make_texts(texts_file, args.texts)
    common = {"texts_file": str(texts_file), "texts": args.texts, "dim": args.dim, "batch_size": args.batch_size,
              "concurrency": args.concurrency, "slice": args.slice}
    with emulator("nexus", "--dim", str(args.dim)) as base_url:
        raw = run_part(__file__, "raw", {**common, "base_url": base_url, "dir": str(workdir("gaia-bench-raw-"))})
        gaia_dir = str(workdir("gaia-bench-gaia-"))
        gaia = run_part(__file__, "gaia", {**common, "base_url": base_url, "dir": gaia_dir})
        before = emulator_requests(base_url, "/v1/embeddings")
        again = run_part(__file__, "gaia", {**common, "base_url": base_url, "dir": gaia_dir})
        second_requests = emulator_requests(base_url, "/v1/embeddings") - before
        default = run_part(__file__, "dlt_default", {**common, "base_url": base_url,
                                                      "dir": str(workdir("gaia-bench-default-"))})
        have_llm = shutil.which("llm") or (Path(sys.executable).parent / "llm").exists()
        peers = peer(base_url, texts_file, args.peer_texts, args.peer_batch_size) if have_llm else None

    def line(label: str, part: Dict[str, Any]) -> str:
        return fmt_row(label, [f"{part['seconds']:8.2f} s", f"{part['rows'] / part['seconds']:9.0f} rows/s",
                               f"peak RSS {part['peak_rss_mb']:7.0f} MB"])

    assert raw["rows"] == gaia["rows"] == args.texts, (raw, gaia)
    print(line("raw baseline (httpx -> numpy/arrow -> DuckDB FLOAT[768])", raw) + f"  {raw['type']}")
    print(line("gaia_source pipeline -> DuckDB", gaia) + f"  {gaia['type']}  steps {gaia['steps']}")
    print(line(f"dlt default, dicts ({default['rows']:,}-text slice)", default)
          + f"  {default['child_rows']:,} child rows")
    print(line("gaia_source second run (same texts)", again) + f"  {second_requests} embedding requests")
    per_row_gaia = gaia["seconds"] / gaia["rows"]
    per_row_default = default["seconds"] / default["rows"]
    print()
    print(f"ratio gaia / raw time:                   {ratio(gaia['seconds'], raw['seconds']):6.2f}x   (target <= 1.1x)"
          f"  gaia {gaia['seconds']:.1f} s (extract {gaia['steps']['extract']}, load {gaia['steps']['load']}) vs raw "
          f"{raw['seconds']:.1f} s")
    print(f"speed-up per row vs dlt default:         {ratio(per_row_default, per_row_gaia):6.1f}x   (target >= 50x)")
    print(f"peak RSS of the gaia run:                {gaia['peak_rss_mb']:6.0f} MB  (target < 1536 MB)  raw loader "
          f"{raw['peak_rss_mb']:.0f} MB")
    print(f"second run / first run time:             {100 * ratio(again['seconds'], gaia['seconds']):6.1f} %   "
          f"(target <= 10 %), {second_requests} embedding requests (target 0)")
    print()
    if peers is None:
        print("peer: llm embed-multi skipped: `llm` is not installed (pip install -e \".[bench]\")")
        return 0
    print(f"peer: {args.peer_texts:,} texts x {args.dim}, batch {args.peer_batch_size}, whole processes "
          "(gaia at its default concurrency; llm sends one batch at a time)")
    for run, label in (("first", "first run, fresh store"), ("again", "re-run, same texts")):
        g, m = peers[f"gaia_{run}"], peers[f"llm_{run}"]
        print(f"  {label:<24} llm embed-multi {m['wall_s']:7.2f} s ({m['requests']} requests, peak RSS "
              f"{m['peak_rss_mb']:.0f} MB)   gaia {g['wall_s']:6.2f} s ({g['requests']} requests, peak RSS "
              f"{g['peak_rss_mb']:.0f} MB)   gaia {ratio(m['wall_s'], g['wall_s']):5.1f}x faster (target >= 20x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
