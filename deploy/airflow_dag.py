"""Airflow DAG: load a Gaia node every night, in ``GAIA_SHARDS`` parallel tasks that build their pipeline when they run.

For Airflow 3 (``airflow.sdk``). Setup:

* Install the project on the workers from a checkout: ``pip install -e ".[postgres]"``.
* Copy this file to the DAGs folder.
* Give the workers the node, the key and the warehouse as dlt environment variables:
  ``SOURCES__GAIA_SOURCE__BASE_URL`` (or ``…__NODE_ID``), ``SOURCES__GAIA_SOURCE__API_KEY`` and
  ``DESTINATION__POSTGRES__CREDENTIALS``.

Workers are ephemeral, so load into a warehouse and not a local DuckDB file. Each task works in a temporary folder, and
its pipeline state comes back from the destination.

Settings a task reads when it runs. It looks for an Airflow Variable first (Airflow also finds ``AIRFLOW_VAR_<NAME>``
and secrets backends), then an environment variable of the same name, then the default:

=====================  ==========================================================  ===================================
name                   what                                                        default
=====================  ==========================================================  ===================================
``GAIA_INPUTS_DIR``    folder holding ``prompts.jsonl``, ``texts.jsonl``,          the ``examples/`` folder of the
                       ``queries.txt``                                             checkout the project is installed
                                                                                   from
``GAIA_PROMPTS_FILE``  chat prompts (formats: ``examples/README.md``)              ``<inputs dir>/prompts.jsonl``
``GAIA_TEXTS_FILE``    texts to embed                                              ``<inputs dir>/texts.jsonl``
``GAIA_QUERIES_FILE``  retrieval queries                                           ``<inputs dir>/queries.txt``
``GAIA_DESTINATION``   dlt destination                                             ``postgres``
``GAIA_DATASET_NAME``  dataset (schema) all shards load into                       ``gaia_data``
=====================  ==========================================================  ===================================

Give absolute paths: a worker's working directory is not the checkout. An empty ``GAIA_*_FILE`` skips that input. A
missing or malformed file fails the task before any request is sent.

``GAIA_SHARDS`` (default 4) is the DAG's shape: the number of tasks. The scheduler needs it to parse the file, so it
is read from the environment and never from an Airflow Variable, which would mean a database query at every parse.
Task ``gaia_shard_i`` loads partition ``i`` of ``n`` of the inputs (``shard="i/n"``, by request id) into the same
dataset: no overlap and no gaps, and a failed shard is retried alone. Shard 0 also loads ``models`` and ``info``.
Parallel shards need a destination that takes concurrent writers (PostgreSQL, BigQuery, Snowflake, …). Each shard
stages its merges in its own staging dataset (``<dataset>_staging_shard_<i>``), so that no shard truncates the rows
another one staged. On a first run the shards race to create the same tables; a shard whose table creation fails
loads its package again, without sending its requests again.

A task fails, and so is retried and alerted on, when its load ends with failing requests: rows of the
``failed_requests`` table written by its run. A retry sends those requests again.

This DAG does not use dlt's ``PipelineTasksGroup``. Its ``add_run(pipeline, source)`` needs the source object when the
scheduler parses the file, and ``gaia_source(...)`` reads and validates every input file and resolves the node and key
when it is called. The scheduler would then read the inputs at every parse (every 30 s by default), and a missing
file would break the whole DAG import. Here the parse builds only the DAG's shape: no input file is opened, no dlt
config is resolved, and no request is sent. Each task builds its pipeline and source on the worker when it runs. What
``PipelineTasksGroup`` added besides is done here too: a temporary working folder per run (state restored from the
destination), the load info in the task log, and a repeated load step when a load fails on table creation. Its
one-task-per-resource split is not kept; a shard task loads all its resources in one run.
"""

from __future__ import annotations

import logging
import os
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, Optional, Tuple

import pendulum
from airflow.sdk import Variable, dag, task

if TYPE_CHECKING:
    import dlt
    from dlt.common.pipeline import LoadInfo, NormalizeInfo
    from dlt.extract import DltSource

SHARDS = int(os.environ.get("GAIA_SHARDS", "4"))
"""Tasks per run: the DAG's shape, so read at parse time (from the environment only)."""

INPUTS = {
    "GAIA_PROMPTS_FILE": ("prompts.jsonl", "prompts_file"),
    "GAIA_TEXTS_FILE": ("texts.jsonl", "texts_file"),
    "GAIA_QUERIES_FILE": ("queries.txt", "queries_file"),
}
"""Input setting → (its file name in ``GAIA_INPUTS_DIR``, the ``gaia_source`` argument it sets)."""

SCHEMA_RACE_ATTEMPTS = 4
"""Loads of a shard's package at most, when creating tables fails (see ``_run``)."""

log = logging.getLogger(__name__)

default_task_args = {
    "owner": "data",
    "retries": 2,
    "retry_delay": timedelta(minutes=5),
    "execution_timeout": timedelta(hours=6),
}


# --- what a task does (plain functions: nothing here runs when the file is parsed) ----------------------------------


def examples_dir() -> Path:
    """The ``examples/`` folder of the checkout the project is installed from (``pip install -e``)."""
    import gaia_source

    return Path(gaia_source.__file__).resolve().parent.parent / "examples"


def read_settings(lookup: Callable[[str], Optional[str]]) -> Dict[str, str]:
    """The ``GAIA_*`` settings of one run: the value ``lookup`` finds for each name, else its default.

    Args:
        lookup: Returns a setting's value, or ``None`` when it is not set (in a task: an Airflow Variable, then the
            environment).

    Returns:
        ``GAIA_INPUTS_DIR``, the three ``GAIA_*_FILE`` paths (``""``: skip that input), ``GAIA_DESTINATION`` and
        ``GAIA_DATASET_NAME``.
    """
    from gaia_source.settings import DATASET_NAME

    inputs_dir = lookup("GAIA_INPUTS_DIR") or str(examples_dir())
    settings = {"GAIA_INPUTS_DIR": inputs_dir}
    for name, (file_name, _) in INPUTS.items():
        value = lookup(name)
        settings[name] = os.path.join(inputs_dir, file_name) if value is None else value
    settings["GAIA_DESTINATION"] = lookup("GAIA_DESTINATION") or "postgres"
    settings["GAIA_DATASET_NAME"] = lookup("GAIA_DATASET_NAME") or DATASET_NAME
    return settings


def load_shard(shard: int, shards: int, settings: Mapping[str, str]) -> Dict[str, int]:
    """Load shard ``shard`` of ``shards``: build the pipeline and the source now, run them, fail on failing requests.

    The node, key and warehouse credentials come from dlt config (environment variables or ``.dlt/`` on the worker).

    Args:
        shard: This task's partition, ``0 <= shard < shards``.
        shards: How many partitions the inputs are split into.
        settings: What :func:`read_settings` returns.

    Returns:
        Rows loaded by this run, per table (the task's XCom).

    Raises:
        GaiaConfigError: No node configured, or an input file missing or malformed (before any request is sent).
        RuntimeError: The load finished, but some of this run's requests are still failing.
    """
    # Imported here, not at the top: the scheduler parses this file often, and dlt is only needed when a task runs.
    import dlt
    from dlt.common.destination import Destination

    from gaia_source import gaia_source
    from gaia_source.ledger import Ledger
    from gaia_source.settings import FAILED_REQUESTS_TABLE, PIPELINE_NAME

    inputs: Dict[str, Any] = {arg: settings[name] for name, (_, arg) in INPUTS.items() if settings[name]}
    with tempfile.TemporaryDirectory(prefix=f"gaia_shard_{shard}_") as workdir:
        pipeline = dlt.pipeline(
            pipeline_name=f"{PIPELINE_NAME}_shard_{shard}",  # one pipeline state per shard
            pipelines_dir=workdir,  # wiped after the run: the state is restored from the destination
            # all shards load into the same dataset, each through its own staging dataset: merges stage their rows
            # there, and shards sharing one would truncate each other's staged rows
            destination=Destination.from_reference(
                settings["GAIA_DESTINATION"], staging_dataset_name_layout=f"%s_staging_shard_{shard}"
            ),
            dataset_name=settings["GAIA_DATASET_NAME"],
        )
        ledger = Ledger()  # how every cell of this run ended: the task fails while any is failing
        source = gaia_source(shard=f"{shard}/{shards}", ledger=ledger, **inputs)
        load_info, loaded = _run(pipeline, source, f"shard {shard}/{shards}")
        failing = ledger.failing
    if failing:
        raise RuntimeError(
            f"shard {shard}/{shards}: {failing} request(s) are still failing after their retries; see "
            f"SELECT * FROM {settings['GAIA_DATASET_NAME']}.{FAILED_REQUESTS_TABLE}. A retry of this task sends them "
            "again."
        )
    return loaded


def _run(pipeline: dlt.Pipeline, source: DltSource, label: str) -> Tuple[LoadInfo, Dict[str, int]]:
    """Run the pipeline, and load its package again when the load lost a race to create tables.

    On a first run, parallel shards create the same tables at the same moment; on PostgreSQL the loser's DDL fails
    (``duplicate key value violates unique constraint "pg_type_typname_nsp_index"``). This follows dlt's retry pattern
    (``dlt.pipeline.helpers.retry_load``): a repeated ``run()`` loads the pending package and does not extract again,
    so no request is sent twice.

    Returns:
        The load info, and the rows normalized per table (dlt's tables left out).
    """
    from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random

    normalized: Optional[NormalizeInfo] = None
    retrying = Retrying(
        stop=stop_after_attempt(SCHEMA_RACE_ATTEMPTS), wait=wait_random(1, 10),
        retry=retry_if_exception(_lost_schema_race), reraise=True,
        before_sleep=lambda state: log.warning("%s: loading its package again after: %s", label,
                                               state.outcome.exception() if state.outcome else None),
    )
    for attempt in retrying:
        with attempt:
            try:
                load_info = pipeline.run(source)
            finally:  # the attempt that extracted and normalized has the row counts; a repeated load has none
                normalized = (pipeline.last_trace.last_normalize_info if pipeline.last_trace else None) or normalized
    log.info("%s", load_info)
    load_info.raise_on_failed_jobs()
    counts = normalized.row_counts if normalized else {}
    return load_info, {table: n for table, n in counts.items() if not table.startswith("_dlt")}


def _lost_schema_race(exc: BaseException) -> bool:
    """A load that failed to create or alter tables (see :func:`_run`)."""
    from dlt.common.destination.exceptions import SchemaUpdateError
    from dlt.pipeline.exceptions import PipelineStepFailed

    return isinstance(exc, PipelineStepFailed) and exc.step == "load" and isinstance(exc.exception, SchemaUpdateError)


def airflow_setting(name: str) -> Optional[str]:
    """A setting when a task runs: the Airflow Variable ``name``, else the environment variable ``name``."""
    value = Variable.get(name, None)
    return str(value) if value is not None else os.environ.get(name)


# --- the DAG (what the scheduler parses: tasks and their order, nothing else) ---------------------------------------


@task
def load_gaia_shard(shard: int, shards: int) -> Dict[str, int]:
    """Load one shard of the configured inputs into the warehouse; reads its settings and inputs only now."""
    return load_shard(shard, shards, read_settings(airflow_setting))


@dag(
    schedule="0 3 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=default_task_args,
    tags=["gaia", "dlt"],
)
def gaia_node_load() -> None:
    """Nightly: ``SHARDS`` parallel tasks, each loading its slice of the inputs (shard 0 also models and info)."""
    for shard in range(SHARDS):
        load_gaia_shard.override(task_id=f"gaia_shard_{shard}")(shard, SHARDS)


gaia_node_load()
