"""Airflow DAG: load a Gaia node every night with dlt's Airflow helper (``PipelineTasksGroup``).

Copy this file to your DAGs folder, install the project (``pip install -e .``) on the workers, and set the node and the
key as Airflow variables or environment variables (``SOURCES__GAIA_SOURCE__NODE_ID``/``BASE_URL``,
``SOURCES__GAIA_SOURCE__API_KEY``) and the warehouse credentials as dlt expects them (e.g.
``DESTINATION__POSTGRES__CREDENTIALS``). Workers are ephemeral: load into a warehouse, not a local DuckDB file.

A large prompt set or corpus is split into ``GAIA_SHARDS`` tasks, each loading its own deterministic slice of the
inputs (``shard="i/n"``) into the same dataset: no overlap, no gaps, and a failed shard is retried alone.
"""

import os
from datetime import timedelta

import pendulum
from airflow.decorators import dag
from dlt.helpers.airflow_helper import PipelineTasksGroup

SHARDS = int(os.environ.get("GAIA_SHARDS", "4"))
DESTINATION = os.environ.get("GAIA_DESTINATION", "postgres")

default_task_args = {
    "owner": "data",
    "retries": 2,
    "retry_delay": timedelta(minutes=5),
    "execution_timeout": timedelta(hours=6),
}


@dag(
    schedule="0 3 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=default_task_args,
    tags=["gaia", "dlt"],
)
def gaia_node_load() -> None:
    """Nightly: models and info snapshots, then the prompt set and the corpus in ``SHARDS`` parallel slices."""
    import dlt

    from gaia_source import gaia_source

    for shard in range(SHARDS):
        tasks = PipelineTasksGroup(f"gaia_shard_{shard}", use_data_folder=False, wipe_local_data=True)
        pipeline = dlt.pipeline(
            pipeline_name=f"gaia_pipeline_shard_{shard}",  # one pipeline (state, working dir) per shard
            dataset_name="gaia_data",  # all shards load into the same dataset
            destination=DESTINATION,
        )
        tasks.add_run(
            pipeline,
            gaia_source(shard=f"{shard}/{SHARDS}"),
            decompose="serialize",  # one Airflow task per resource, in order
            trigger_rule="all_done",
            retries=0,
            provide_context=True,
        )


gaia_node_load()
