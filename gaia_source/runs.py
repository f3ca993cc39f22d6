"""The runs table: one ``gaia_runs`` row per command-line run, written from the run's ledger, and the list of past
runs (``python gaia_pipeline.py runs``), read from it and dlt's own ``_dlt_loads``.

A row says when the run started and finished, the command line, the nodes, resources and inputs, dlt's load ids
and the rows each table got, how its cells ended (per outcome, and per resource), and the exit code. It is written
after the run's own load, in the run's dataset (see :func:`write_run`).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from datetime import datetime, timezone
from typing import Any, Dict, List, Mapping, Optional, Sequence

import dlt
import orjson
from dlt.common.schema.typing import TTableSchemaColumns
from dlt.destinations.exceptions import DatabaseUndefinedRelation

from .destination import capabilities_of
from .ledger import OUTCOMES, Ledger

logger = logging.getLogger("gaia_source")

RUNS_TABLE = "gaia_runs"
RUN_COLUMNS: TTableSchemaColumns = {
    "run_id": {"data_type": "text", "nullable": False},
    "started_at": {"data_type": "timestamp", "timezone": True},
    "finished_at": {"data_type": "timestamp", "timezone": True},
    "command": {"data_type": "text"},
    "nodes": {"data_type": "json"},
    "resources": {"data_type": "json"},
    "inputs": {"data_type": "json"},
    "load_ids": {"data_type": "json"},
    "rows": {"data_type": "bigint"},
    "row_counts": {"data_type": "json"},
    **{outcome: {"data_type": "bigint"} for outcome in OUTCOMES},
    "sends": {"data_type": "bigint"},
    "outcomes": {"data_type": "json"},
    "exit_code": {"data_type": "bigint"},
    "error": {"data_type": "text"},
}
"""What a ``gaia_runs`` row holds (``completed``, ``failed``, ``refused``, ``skipped``: cells of the run; ``outcomes``:
the same per resource, with its sends; ``error``: the line a run that stopped printed, why it stopped)."""


def utc_now() -> datetime:
    """Now, in UTC."""
    return datetime.now(timezone.utc)


def run_row(
    ledger: Optional[Ledger],
    *,
    started_at: datetime,
    command: str,
    nodes: Sequence[str],
    resources: Sequence[str],
    inputs: Mapping[str, Any],
    load_ids: Sequence[str],
    row_counts: Mapping[str, int],
    exit_code: int,
    error: Optional[str] = None,
) -> Dict[str, Any]:
    """One ``gaia_runs`` row for a run that ended with ``exit_code`` (its cells' outcomes from ``ledger``; ``error``:
    why it stopped, when it did)."""
    per_resource = ledger.summary_rows() if ledger is not None else []
    return {
        "run_id": uuid.uuid4().hex,
        "started_at": started_at,
        "finished_at": utc_now(),
        "command": command,
        "nodes": list(nodes),
        "resources": list(resources),
        "inputs": dict(inputs),
        "load_ids": list(load_ids),
        "rows": sum(row_counts.values()),
        "row_counts": dict(row_counts),
        **{outcome: sum(r[outcome] for r in per_resource) for outcome in OUTCOMES},
        "sends": sum(r["sends"] for r in per_resource),
        "outcomes": per_resource,
        "exit_code": exit_code,
        "error": error,
    }


_SQL_TYPES = {"text": "varchar", "bigint": "bigint", "timestamp": "timestamp with time zone", "json": "varchar"}
"""Column types DuckDB and PostgreSQL both read (JSON columns hold JSON text)."""


def write_run(pipeline: dlt.Pipeline, row: Mapping[str, Any]) -> bool:
    """Add ``row`` to ``gaia_runs``; False (with a warning saying why) when it could not be written.

    Where the destination speaks SQL (DuckDB, PostgreSQL, …) one ``INSERT`` through the pipeline's SQL client
    writes it (creating the table the first time): a few milliseconds, no load package, no entry in
    ``_dlt_loads``. Elsewhere (filesystem, LanceDB) dlt loads it, unless a load package is pending (a run whose load
    failed): ``pipeline.run`` would load that package instead, which is the next run's to do.
    """
    capabilities = capabilities_of(pipeline)
    try:
        if capabilities.lookup in ("duckdb", "postgres", "sql") and capabilities.name != "filesystem":
            _insert(pipeline, row)
            return True
        if pipeline.has_pending_data:
            logger.warning("this run is not recorded in %s: a load package is pending (the next run loads it "
                           "first)", RUNS_TABLE)
            return False
        pipeline.run(dlt.resource([dict(row)], name=RUNS_TABLE, write_disposition="append", columns=RUN_COLUMNS))
    except Exception as exc:  # bookkeeping: a run's outcome and exit code never depend on it
        logger.warning("this run could not be recorded in %s: %s", RUNS_TABLE, " ".join(str(exc).split())[:300])
        return False
    return True


def _insert(pipeline: dlt.Pipeline, row: Mapping[str, Any]) -> None:
    names = list(RUN_COLUMNS)
    values = [orjson.dumps(row[name]).decode() if RUN_COLUMNS[name]["data_type"] == "json" else row[name]
              for name in names]
    with pipeline.sql_client() as client:
        table = client.make_qualified_table_name(RUNS_TABLE)
        columns = ", ".join(f"{client.escape_column_name(name)} {_SQL_TYPES[str(RUN_COLUMNS[name]['data_type'])]}"
                            for name in names)
        client.execute_sql(f"CREATE SCHEMA IF NOT EXISTS {client.fully_qualified_dataset_name()}")
        client.execute_sql(f"CREATE TABLE IF NOT EXISTS {table} ({columns})")
        with client.execute_query(f"SELECT * FROM {table} WHERE 1 = 0") as cursor:  # a table from an older version
            present = {d[0] for d in cursor.description}
        for name in (n for n in names if n not in present):
            client.execute_sql(f"ALTER TABLE {table} ADD COLUMN {client.escape_column_name(name)} "
                               f"{_SQL_TYPES[str(RUN_COLUMNS[name]['data_type'])]}")
        client.execute_sql(f"INSERT INTO {table} ({', '.join(client.escape_column_name(n) for n in names)}) "
                           f"VALUES ({', '.join(['%s'] * len(names))})", *values)


def _json(value: Any) -> Any:
    """JSON columns come back as text from DuckDB and as objects from PostgreSQL."""
    if isinstance(value, (str, bytes)):
        return orjson.loads(value)
    return value


def _select(client: Any, sql: str) -> List[Dict[str, Any]]:
    with client.execute_query(sql) as cursor:
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def list_runs(pipeline: dlt.Pipeline, limit: int = 20) -> List[Dict[str, Any]]:
    """The newest ``limit`` runs, newest first: the ``gaia_runs`` rows (JSON columns decoded), each with its loads'
    dlt status (``loads``: load id → ``loaded`` or dlt's status number), and the loads no recorded run made (runs
    from Python, Airflow, or before this table existed) as entries with ``run_id`` None and no exit code."""
    runs: List[Dict[str, Any]] = []
    loads: Dict[str, Dict[str, Any]] = {}
    with pipeline.sql_client() as client:
        with contextlib.suppress(DatabaseUndefinedRelation):
            runs = _select(client, f"SELECT * FROM {client.make_qualified_table_name(RUNS_TABLE)} "
                                   f"ORDER BY started_at DESC LIMIT {int(limit)}")
        with contextlib.suppress(DatabaseUndefinedRelation):
            table = f"SELECT load_id, status, inserted_at FROM {client.make_qualified_table_name('_dlt_loads')}"
            loads = {r["load_id"]: r for r in _select(client, f"{table} ORDER BY inserted_at DESC "
                                                              f"LIMIT {int(limit) * 4}")}
            # the listed runs' own loads, however many parts they loaded in (a run in parts can have hundreds)
            missing = sorted({i for run in runs for i in _json(run.get("load_ids")) or [] if i not in loads})
            for start in range(0, len(missing), 1_000):
                listed_ids = ", ".join("'" + str(i).replace("'", "''") + "'" for i in missing[start:start + 1_000])
                loads.update({r["load_id"]: r for r in _select(client, f"{table} WHERE load_id IN ({listed_ids})")})
    own = {r.pop("_dlt_load_id", None) for r in runs}  # the loads that wrote gaia_runs rows are bookkeeping
    listed: List[Dict[str, Any]] = []
    claimed: set[str] = set()
    for run in runs:
        run.pop("_dlt_id", None)
        run.setdefault("error", None)  # a table from an older version
        for name in ("nodes", "resources", "inputs", "load_ids", "row_counts", "outcomes"):
            run[name] = _json(run.get(name))
        run["loads"] = {load_id: _status(loads[load_id]) if load_id in loads else None
                        for load_id in run["load_ids"] or []}
        claimed.update(run["load_ids"] or [])
        listed.append(run)
    for load_id, load in loads.items():
        if load_id in claimed or load_id in own:
            continue
        listed.append({"run_id": None, "started_at": None, "finished_at": load["inserted_at"], "command": None,
                       "nodes": None, "resources": None, "inputs": None, "load_ids": [load_id], "rows": None,
                       "exit_code": None, "error": None, "loads": {load_id: _status(load)},
                       **{outcome: None for outcome in OUTCOMES}})
    listed.sort(key=lambda r: r["started_at"] or r["finished_at"] or datetime.min.replace(tzinfo=timezone.utc),
                reverse=True)
    return listed[:limit]


def _status(load: Mapping[str, Any]) -> Any:
    return "loaded" if load.get("status") == 0 else load.get("status")

