"""Airflow DAG: load a Gaia node every night, scaled out over Airflow's workers as mapped shard tasks.

For Airflow 3 (``airflow.sdk``). Setup:

* Install the project on the workers from a checkout: ``pip install -e ".[postgres]"``.
* Copy this file to the DAGs folder.
* Give the workers the node, the key and the warehouse as dlt environment variables:
  ``SOURCES__GAIA_SOURCE__BASE_URL`` (or ``…__NODE_ID``), ``SOURCES__GAIA_SOURCE__API_KEY`` and
  ``DESTINATION__POSTGRES__CREDENTIALS``.

Workers are ephemeral, and shards write at the same time, so load into a server destination (PostgreSQL, BigQuery,
Snowflake, …) and not a local DuckDB file, which takes one writer at a time. A task's pipeline state comes back from
the destination.

**The shape of a run.** ``prepare_dataset`` runs first, alone: it loads the node's snapshot (``models``, ``info``) and
creates every table of the dataset, so the shards that follow never race to create the same table (on PostgreSQL the
losers of that race fail with ``duplicate key value violates unique constraint "pg_type_typname_nsp_index"``). It
returns the shards, ``["0/4", "1/4", …]``, and ``load_gaia_shard`` is mapped over them (dynamic task mapping): one
task instance per shard, which Airflow's executor runs in parallel (``[core] parallelism`` and the pool's slots
permitting). Shard ``i/n`` loads partition ``i`` of ``n`` of the inputs (by request id): no overlap and no gaps, and a
failed shard is retried alone. The number of shards is read when a run starts, so changing it needs no new DAG file.

**Isolation.** Each shard is its own dlt pipeline (``gaia_pipeline_shard_<i>_of_<n>``: its own state), works in its
own pipelines directory for each task try (``<GAIA_PIPELINES_DIR>/<run id>/shard_<i>_of_<n>/try_<k>``), and stages its
merges in its own staging dataset (``<dataset>_staging_shard_<i>``), so no shard truncates what another staged. A try
starts from an empty directory: a package a killed try left behind is never loaded in place of a new run's data (dlt
loads pending packages *instead of* extracting), and its requests are simply sent again (rows are keyed, so nothing
doubles). The directory is deleted when the try ends. If a schema change still races (a column two shards add at
once), the load is repeated with dlt's ``retry_schema_update``, without sending anything again.

**Drift.** Every shard reads the answering node's ``/v1/info`` itself; the ledger keys drift by the node that answered
and its configuration hash, so shards agree on what is done without a shared baseline.

Settings a task reads when it runs. It looks for an Airflow Variable first (Airflow also finds ``AIRFLOW_VAR_<NAME>``
and secrets backends), then an environment variable of the same name, then the default:

======================  ==========================================================  ==================================
name                    what                                                        default
======================  ==========================================================  ==================================
``GAIA_INPUTS_DIR``     folder holding ``prompts.jsonl``, ``texts.jsonl``,          the ``examples/`` folder of the
                        ``queries.txt``                                             checkout the project is installed
                                                                                    from
``GAIA_PROMPTS_FILE``   chat prompts (formats: ``examples/README.md``)              ``<inputs dir>/prompts.jsonl``
``GAIA_TEXTS_FILE``     texts to embed                                              ``<inputs dir>/texts.jsonl``
``GAIA_QUERIES_FILE``   retrieval queries                                           ``<inputs dir>/queries.txt``
``GAIA_DESTINATION``    dlt destination                                             ``postgres``
``GAIA_DATASET_NAME``   dataset (schema) all shards load into                       ``gaia_data``
``GAIA_SHARDS``         shards (mapped task instances) per run                      ``4``
``GAIA_PIPELINES_DIR``  where each task try keeps its pipeline's working files      the system's temporary folder
======================  ==========================================================  ==================================

Give absolute paths: a worker's working directory is not the checkout. An empty ``GAIA_*_FILE`` skips that input. A
missing or malformed file fails the task before any request is sent.

``GAIA_TASK_RETRIES`` (default 2, five minutes apart) is part of the DAG's definition, so it is read from the
environment when the file is parsed.

**dlt's config inside a task.** Run inside an Airflow task, dlt also looks its configuration up in Airflow Variables
(its ``dlt_secrets_toml`` provider), and each lookup is a call to Airflow's Execution API: in the tests here that made
every shard of a small load about a minute slower. The tasks turn that provider off
(``PROVIDERS__ENABLE_AIRFLOW_SECRETS=false``) unless the workers' environment sets it: give dlt its configuration as
environment variables (above) or in the workers' ``.dlt/`` folder.

A shard task fails, and so is retried and alerted on, when its load ends with failing requests (``failed_requests``
rows written by its run, empty answers included). A retry sends those requests again. Its XCom is a record of the
try: the shard, the worker's process id, when it started and ended, its pipelines directory and the rows it loaded
per table.

This DAG does not use dlt's ``PipelineTasksGroup``. Its ``add_run(pipeline, source)`` needs the source object when the
scheduler parses the file, and ``gaia_source(...)`` reads and validates every input file and resolves the node and key
when it is called. The scheduler would then read the inputs at every parse (every 30 s by default), and a missing
file would break the whole DAG import. Its one-task-per-resource split does not scale a prompt set out either: shards
split the inputs by data. Here the parse builds only the DAG's shape: no input file is opened, no dlt config is
resolved, and no request is sent. Each task builds its pipeline and source on the worker when it runs.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Tuple

import pendulum
from airflow.sdk import Variable, dag, get_current_context, task

if TYPE_CHECKING:
    import dlt
    from dlt.common.pipeline import LoadInfo, NormalizeInfo
    from dlt.extract import DltSource

INPUTS = {
    "GAIA_PROMPTS_FILE": ("prompts.jsonl", "prompts_file"),
    "GAIA_TEXTS_FILE": ("texts.jsonl", "texts_file"),
    "GAIA_QUERIES_FILE": ("queries.txt", "queries_file"),
}
"""Input setting → (its file name in ``GAIA_INPUTS_DIR``, the ``gaia_source`` argument it sets)."""

SNAPSHOT = ("models", "info")
"""What ``prepare_dataset`` loads once per run, from every node; shards load the resources fed by inputs."""

SCHEMA_RETRY_ATTEMPTS = 4
"""Loads of a package at most, when a schema update fails (see ``_run``)."""

log = logging.getLogger(__name__)

default_task_args = {
    "owner": "data",
    "retries": int(os.environ.get("GAIA_TASK_RETRIES", "2")),
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
        ``GAIA_INPUTS_DIR``, the three ``GAIA_*_FILE`` paths (``""``: skip that input), ``GAIA_DESTINATION``,
        ``GAIA_DATASET_NAME``, ``GAIA_SHARDS`` and ``GAIA_PIPELINES_DIR``.
    """
    from gaia_source.settings import DATASET_NAME

    inputs_dir = lookup("GAIA_INPUTS_DIR") or str(examples_dir())
    settings = {"GAIA_INPUTS_DIR": inputs_dir}
    for name, (file_name, _) in INPUTS.items():
        value = lookup(name)
        settings[name] = os.path.join(inputs_dir, file_name) if value is None else value
    settings["GAIA_DESTINATION"] = lookup("GAIA_DESTINATION") or "postgres"
    settings["GAIA_DATASET_NAME"] = lookup("GAIA_DATASET_NAME") or DATASET_NAME
    settings["GAIA_SHARDS"] = lookup("GAIA_SHARDS") or "4"
    settings["GAIA_PIPELINES_DIR"] = lookup("GAIA_PIPELINES_DIR") or os.path.join(tempfile.gettempdir(),
                                                                                  "gaia-dlt-pipelines")
    return settings


def shard_specs(settings: Mapping[str, str]) -> List[str]:
    """The shards of a run, ``["0/n", …, "n-1/n"]``: what ``load_gaia_shard`` is mapped over."""
    shards = int(settings["GAIA_SHARDS"])
    if shards < 1:
        raise ValueError(f"GAIA_SHARDS must be an integer >= 1, got {settings['GAIA_SHARDS']!r}")
    return [f"{i}/{shards}" for i in range(shards)]


def try_dir(settings: Mapping[str, str], run_id: str, name: str, try_number: int) -> Path:
    """The pipelines directory of one task try: ``<GAIA_PIPELINES_DIR>/<run id>/<name>/try_<k>``."""
    safe_run = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id)
    return Path(settings["GAIA_PIPELINES_DIR"]) / safe_run / name / f"try_{try_number}"


def _dlt_config_without_variables() -> None:
    """Keep dlt from asking Airflow Variables for its configuration (one Execution API call per lookup), unless the
    environment says otherwise (see the module docstring)."""
    os.environ.setdefault("PROVIDERS__ENABLE_AIRFLOW_SECRETS", "false")


def _pipeline(settings: Mapping[str, str], name: str, workdir: Path, staging: str) -> dlt.Pipeline:
    _dlt_config_without_variables()  # before dlt builds its config providers
    import dlt
    from dlt.common.destination import Destination

    from gaia_source.settings import PIPELINE_NAME

    return dlt.pipeline(
        pipeline_name=f"{PIPELINE_NAME}_{name}",  # one pipeline state per shard
        pipelines_dir=str(workdir),  # one per task try, deleted after it: the state comes back from the destination
        # all shards load into the same dataset, each through its own staging dataset: merges stage their rows
        # there, and shards sharing one would truncate each other's staged rows
        destination=Destination.from_reference(settings["GAIA_DESTINATION"], staging_dataset_name_layout=staging),
        dataset_name=settings["GAIA_DATASET_NAME"],
    )


def prepare_dataset(settings: Mapping[str, str], workdir: Path) -> Dict[str, Any]:
    """Before the shards fan out: load the node snapshot (``models``, ``info``) and create every table of the dataset.

    Args:
        settings: What :func:`read_settings` returns.
        workdir: This try's pipelines directory (deleted afterwards).

    Returns:
        ``shards`` (see :func:`shard_specs`) and the snapshot's rows per table.
    """
    from gaia_source import create_tables, gaia_source

    shards = shard_specs(settings)  # a bad GAIA_SHARDS fails here, before anything is sent
    try:
        pipeline = _pipeline(settings, "prepare", workdir, "%s_staging_prepare")
        source = gaia_source(resources=list(SNAPSHOT), required_resources=False)
        _, loaded = _run(pipeline, source, "prepare")
        created = create_tables(pipeline)  # every table the source declares, not only those the snapshot filled
        log.info("prepare: dataset %s has its tables; created now: %s", settings["GAIA_DATASET_NAME"],
                 ", ".join(created) or "none")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {"shards": shards, "rows": loaded}


def load_shard(shard: int, shards: int, settings: Mapping[str, str], workdir: Path) -> Dict[str, Any]:
    """Load shard ``shard`` of ``shards``: build the pipeline and the source now, run them, fail on failing requests.

    The node, key and warehouse credentials come from dlt config (environment variables or ``.dlt/`` on the worker).

    Args:
        shard: This task's partition, ``0 <= shard < shards``.
        shards: How many partitions the inputs are split into.
        settings: What :func:`read_settings` returns.
        workdir: This try's pipelines directory: empty when it starts, deleted when it ends.

    Returns:
        The try's record (the task's XCom): ``shard``, ``pid``, ``started_at`` and ``ended_at`` (epoch seconds),
        ``pipelines_dir``, and ``rows`` loaded per table.

    Raises:
        GaiaConfigError: No node configured, or an input file missing or malformed (before any request is sent).
        RuntimeError: The load finished, but some of this run's requests are still failing.
    """
    from gaia_source import gaia_source
    from gaia_source.ledger import Ledger
    from gaia_source.settings import DEFAULT_RESOURCE_NAMES, FAILED_REQUESTS_TABLE

    started = time.time()
    label = f"shard {shard}/{shards}"
    log.info("%s: pid %d, pipelines dir %s", label, os.getpid(), workdir)
    inputs: Dict[str, Any] = {arg: settings[name] for name, (_, arg) in INPUTS.items() if settings[name]}
    resources = [name for name in DEFAULT_RESOURCE_NAMES if name not in SNAPSHOT]  # the snapshot: prepare_dataset's
    try:
        pipeline = _pipeline(settings, f"shard_{shard}_of_{shards}", workdir, f"%s_staging_shard_{shard}")
        ledger = Ledger()  # how every cell of this run ended: the task fails while any is failing
        source = gaia_source(shard=f"{shard}/{shards}", ledger=ledger, resources=resources, required_resources=False,
                             **inputs)
        _, loaded = _run(pipeline, source, label)
        failing = ledger.failing
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if failing:
        raise RuntimeError(
            f"{label}: {failing} request(s) are still failing after their retries; see "
            f"SELECT * FROM {settings['GAIA_DATASET_NAME']}.{FAILED_REQUESTS_TABLE}. A retry of this task sends them "
            "again."
        )
    return {"shard": f"{shard}/{shards}", "pid": os.getpid(), "started_at": started, "ended_at": time.time(),
            "pipelines_dir": str(workdir), "rows": loaded}


def _run(pipeline: dlt.Pipeline, source: DltSource, label: str) -> Tuple[LoadInfo, Dict[str, int]]:
    """Run the pipeline; load its package again when a schema update failed (dlt's ``retry_schema_update``).

    A repeated ``run()`` loads the pending package and does not extract again, so no request is sent twice.

    Returns:
        The load info, and the rows normalized per table (dlt's tables left out).
    """
    from dlt.pipeline.helpers import retry_schema_update
    from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random

    normalized: Optional[NormalizeInfo] = None
    retrying = Retrying(
        stop=stop_after_attempt(SCHEMA_RETRY_ATTEMPTS), wait=wait_random(1, 10),
        retry=retry_if_exception(retry_schema_update()), reraise=True,
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


def airflow_setting(name: str) -> Optional[str]:
    """A setting when a task runs: the Airflow Variable ``name``, else the environment variable ``name``."""
    value = Variable.get(name, None)
    return str(value) if value is not None else os.environ.get(name)


def _this_try(settings: Mapping[str, str], name: str) -> Path:
    """The running task try's pipelines directory (from Airflow's task context)."""
    context = get_current_context()
    return try_dir(settings, str(context["run_id"]), name, int(context["ti"].try_number or 1))


# --- the DAG (what the scheduler parses: tasks and their order, nothing else) ---------------------------------------


@task
def prepare_gaia_dataset() -> List[str]:
    """Load the node snapshot and create every table, once, before the shards; returns the shards to map over."""
    settings = read_settings(airflow_setting)
    shards: List[str] = prepare_dataset(settings, _this_try(settings, "prepare"))["shards"]
    return shards


@task(map_index_template="{{ task.op_kwargs['shard'] }}", multiple_outputs=False)
def load_gaia_shard(shard: str) -> Dict[str, Any]:
    """Load one shard (``"i/n"``) of the configured inputs into the warehouse; reads settings and inputs only now."""
    settings = read_settings(airflow_setting)
    index, count = (int(part) for part in shard.split("/"))
    return load_shard(index, count, settings, _this_try(settings, f"shard_{index}_of_{count}"))


@dag(
    schedule="0 3 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=default_task_args,
    tags=["gaia", "dlt"],
)
def gaia_node_load() -> None:
    """Nightly: the snapshot and the tables first, then one mapped task per shard, in parallel."""
    load_gaia_shard.expand(shard=prepare_gaia_dataset())


gaia_node_load()
