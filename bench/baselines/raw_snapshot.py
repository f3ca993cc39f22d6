"""Raw baseline for a node snapshot: the same two GETs as ``--resources models,info``, rows into a DuckDB file.

    python bench/baselines/raw_snapshot.py BASE_URL DB_PATH

What a user writes by hand with httpx and duckdb: no retries, no schema evolution, no state. Used by bench/startup.py.
"""

import sys
from datetime import datetime, timezone

import duckdb
import httpx
import orjson


def main(base_url: str, db_path: str) -> int:
    with httpx.Client(timeout=30) as client:
        models = orjson.loads(client.get(f"{base_url}/models").content)["data"]
        info = client.get(f"{base_url}/info").content.decode()
    now = datetime.now(timezone.utc)
    with duckdb.connect(db_path) as con:
        con.execute("CREATE TABLE IF NOT EXISTS models (node_url VARCHAR, id VARCHAR, created BIGINT, "
                    "owned_by VARCHAR, loaded_at TIMESTAMPTZ, PRIMARY KEY (node_url, id))")
        con.execute("CREATE TABLE IF NOT EXISTS info (node_url VARCHAR, info JSON, loaded_at TIMESTAMPTZ)")
        con.executemany("INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?)",
                        [(base_url, m["id"], m.get("created"), m.get("owned_by"), now) for m in models])
        con.execute("INSERT INTO info VALUES (?, ?, ?)", (base_url, info, now))
        print(con.execute("SELECT (SELECT count(*) FROM models), (SELECT count(*) FROM info)").fetchall())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
