"""The DAG under Airflow's own executor: mapped shards run as parallel worker processes into one PostgreSQL dataset,
and a shard killed mid-run is made whole by the next run.

Airflow 3.3.2 as deployed on one machine: a fresh ``AIRFLOW_HOME`` (SQLite metadata, LocalExecutor, parallelism 4),
``airflow api-server`` in the background (the workers talk to its Execution API), and ``airflow dags test
--use-executor`` for each run. Run in the Airflow venv (``.ci/run``); skipped where Airflow is not installed (the
project's own venv), and where PostgreSQL is not running (in CI that is a failure).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Set, Tuple

import httpx
import psycopg2
import pytest
from conftest import POSTGRES, REPO_ROOT, free_port

DAG_FILE = REPO_ROOT / "deploy" / "airflow_dag.py"
DAG_ID = "gaia_node_load"
SHARDS = 4
AIRFLOW = Path(sys.executable).parent / "airflow"

pytestmark = pytest.mark.skipif(importlib.util.find_spec("airflow") is None,
                                reason="Apache Airflow is not installed here: this runs in the Airflow venv (.ci/run)")


README_MARKER = "`tests/test_airflow_executor.py` runs, block as written"
README_PORT = "8793"


def readme_block() -> Tuple[Dict[str, str], List[List[str]]]:
    """README's "Scale out on Airflow" block: the variables it exports, and the ``airflow`` commands it runs."""
    text = (REPO_ROOT / "README.md").read_text()
    after = text[text.index(README_MARKER):]
    start = after.index("```bash\n") + len("```bash\n")
    block = after[start:after.index("\n```", start)]
    exports: Dict[str, str] = {}
    commands: List[List[str]] = []
    for line in block.splitlines():
        code = line.split("  #", 1)[0].strip()
        if code.startswith("export "):
            exports.update(assignment.split("=", 1) for assignment in shlex.split(code[len("export "):]))
        elif code.startswith("airflow "):
            commands.append(shlex.split(code.rstrip("&").strip()))
    assert 'cp deploy/airflow_dag.py "$AIRFLOW_HOME/dags/"' in block
    return exports, commands


@pytest.fixture
def airflow(tmp_path: Path) -> Iterator[Tuple[Dict[str, str], List[str]]]:
    """README's block as written, in a fresh Airflow home: the DAG copied in, ``airflow db migrate``, the API server
    in the background. Yields the environment its ``airflow`` commands (and the tasks they start) run with, and the
    ``dags test`` command line (a logical date to fill in)."""
    exports, commands = readme_block()
    migrate, api_server, dags_test = commands
    assert migrate == ["airflow", "db", "migrate"]
    assert api_server == ["airflow", "api-server", "--host", "127.0.0.1", "--port", README_PORT]
    assert dags_test == ["airflow", "dags", "test", DAG_ID, "2026-01-01", "--use-executor"]
    assert exports["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor" and exports["GAIA_SHARDS"] == str(SHARDS)
    port = str(free_port())
    home = tmp_path / "airflow"
    (home / "dags").mkdir(parents=True)
    shutil.copy(DAG_FILE, home / "dags" / DAG_FILE.name)
    env = {key: value for key, value in os.environ.items() if key != "PROVIDERS__ENABLE_AIRFLOW_SECRETS"}  # as shipped
    env.update({key: value.replace(README_PORT, port) for key, value in exports.items()})
    env["AIRFLOW_HOME"] = str(home)  # the test's own home, node, warehouse and inputs (set by the test)
    env["GAIA_TASK_RETRIES"] = "0"  # a killed shard stays failed in its run (the next run makes it whole)

    def argv(command: List[str]) -> List[str]:
        return [str(AIRFLOW), *(part.replace(README_PORT, port) for part in command[1:])]

    done = subprocess.run(argv(migrate), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    log = open(tmp_path / "api-server.log", "wb")
    server = subprocess.Popen(argv(api_server), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (tmp_path / "api-server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the Airflow API server did not start in 180 s"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        yield env, argv(dags_test)
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its workers: the process group started here
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        log.close()


def dag_run(env: Dict[str, str], command: List[str], logical_date: str) -> subprocess.Popen:
    """README's ``airflow dags test … --use-executor`` for ``logical_date``: one run, its tasks handed to the
    LocalExecutor's worker processes."""
    argv = [logical_date if part == "2026-01-01" else part for part in command]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finish(run: subprocess.Popen, timeout: float = 600) -> str:
    """Wait for a ``dags test`` to end; its output. One that hangs is stopped (with its workers) and fails the test."""
    try:
        return str(run.communicate(timeout=timeout)[0])
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)  # the process group started in dag_run
        output = run.communicate()[0]
        pytest.fail(f"airflow dags test did not end in {timeout:.0f} s: {output[-4000:]}")


def run_ids(env: Dict[str, str]) -> List[str]:
    """The DAG's runs, oldest first."""
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as db:
        return [r for (r,) in db.execute("SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id", (DAG_ID,))]


def shard_records(env: Dict[str, str], run_id: str) -> Dict[int, Dict[str, Any]]:
    """Map index → the XCom record of each shard that succeeded in ``run_id``."""
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as db:
        rows = db.execute("SELECT map_index, value FROM xcom WHERE dag_id = ? AND run_id = ? AND task_id = "
                          "'load_gaia_shard' AND key = 'return_value'", (DAG_ID, run_id)).fetchall()
    return {index: json.loads(value) for index, value in rows}


def task_states(env: Dict[str, str], run_id: str) -> Dict[str, str]:
    """``task_id[map_index]`` → state, for ``run_id``."""
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as db:
        rows = db.execute("SELECT task_id, map_index, state FROM task_instance WHERE dag_id = ? AND run_id = ?",
                          (DAG_ID, run_id)).fetchall()
    return {f"{task}[{index}]" if index >= 0 else task: state for task, index, state in rows}


def most_at_once(records: List[Dict[str, Any]]) -> int:
    """The most shard processes running at the same moment (from their start and end times)."""
    events = sorted([(r["started_at"], 1) for r in records] + [(r["ended_at"], -1) for r in records])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


SHARD_STARTED = re.compile(r"shard (\d+)/\d+: pid (\d+)")


def started_shards(env: Dict[str, str], seen: Set[Path]) -> Dict[int, int]:
    """Shard → pid of the shard tasks whose log (in a run not in ``seen``) says they started."""
    started: Dict[int, int] = {}
    for log in Path(env["AIRFLOW_HOME"], "logs").glob(f"dag_id={DAG_ID}/run_id=*/task_id=load_gaia_shard/*/*.log"):
        if log in seen:
            continue
        match = SHARD_STARTED.search(log.read_text(errors="replace"))
        if match:
            started[int(match.group(1))] = int(match.group(2))
    return started


def union(schema: str) -> Dict[str, List[str]]:
    """The ids each table of the dataset holds, sorted (duplicates kept: "exactly once" is checked on them)."""
    queries = {"chat_completions": "SELECT custom_id FROM {s}.chat_completions",
               "chat_completions_stream": "SELECT custom_id FROM {s}.chat_completions_stream",
               "embeddings": "SELECT text_id FROM {s}.embeddings"}
    with psycopg2.connect(POSTGRES) as con, con.cursor() as cur:
        result = {}
        for table, sql in queries.items():
            cur.execute(sql.format(s=schema))
            result[table] = sorted(value for (value,) in cur.fetchall())
        return result


def write_inputs(folder: Path, prompts: int, texts: int) -> Dict[str, List[str]]:
    """The inputs of a night: ``prompts`` prompts and ``texts`` texts (a later night's files extend the earlier)."""
    prompt_ids, text_ids = [f"p{i:03d}" for i in range(prompts)], [f"t{i:03d}" for i in range(texts)]
    (folder / "prompts.jsonl").write_text("".join(json.dumps({"custom_id": c, "prompt": f"Question {c}?"}) + "\n"
                                                  for c in prompt_ids))
    (folder / "texts.jsonl").write_text("".join(json.dumps({"id": t, "text": f"Passage {t} about gardens."}) + "\n"
                                                for t in text_ids))
    return {"chat_completions": prompt_ids, "chat_completions_stream": prompt_ids, "embeddings": text_ids}


def test_mapped_shards_run_in_parallel_on_the_executor_and_a_killed_shard_is_made_whole(
    airflow, make_node, tmp_path: Path, postgres_schema: str
) -> None:
    node = make_node("nexus", latency_ms=300)  # a node that takes its time: shards run for seconds, side by side
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    readme_env, dags_test = airflow
    env = {**readme_env, "SOURCES__GAIA_SOURCE__BASE_URL": node.base_url, "SOURCES__GAIA_SOURCE__MAX_CONCURRENCY": "1",
           "DESTINATION__POSTGRES__CREDENTIALS": POSTGRES, "GAIA_DATASET_NAME": postgres_schema,
           "GAIA_INPUTS_DIR": str(inputs), "GAIA_QUERIES_FILE": "",  # the nexus has no /v1/retrieve
           "GAIA_PIPELINES_DIR": str(tmp_path / "pipelines"), "RUNTIME__DLTHUB_TELEMETRY": "false"}

    # night 1: the snapshot and the tables, then four mapped shards at once
    expected = write_inputs(inputs, prompts=24, texts=16)
    output = finish(dag_run(env, dags_test, "2026-01-01"))
    [run] = run_ids(env)
    assert task_states(env, run) == {"prepare_gaia_dataset": "success",
                                     **{f"load_gaia_shard[{i}]": "success" for i in range(SHARDS)}}, output[-4000:]
    records = list(shard_records(env, run).values())
    assert sorted(r["shard"] for r in records) == [f"{i}/{SHARDS}" for i in range(SHARDS)]
    assert len({r["pid"] for r in records}) == SHARDS  # a worker process per shard
    overlapped = most_at_once(records)
    print(f"\nnight 1: at most {overlapped} of {SHARDS} shard processes ran at once; "
          + ", ".join(f"{r['shard']} pid {r['pid']} {r['ended_at'] - r['started_at']:.1f} s" for r in records))
    assert overlapped >= 2
    assert union(postgres_schema) == expected  # every input exactly once
    for table, ids in expected.items():  # and each by exactly one shard
        assert sum(r["rows"].get(table, 0) for r in records) == len(ids)
    assert all(r["pipelines_dir"].startswith(str(tmp_path / "pipelines")) and "try_1" in r["pipelines_dir"]
               and not Path(r["pipelines_dir"]).exists() for r in records)  # its own per try, gone when it ended
    with psycopg2.connect(POSTGRES) as con, con.cursor() as cur:  # the shards agree on the node's configuration
        cur.execute(f"SELECT count(DISTINCT info_hash), count(*) FROM {postgres_schema}.chat_completions")
        assert cur.fetchone() == (1, 24)
        cur.execute(f"SELECT count(*) FROM {postgres_schema}.info")
        assert cur.fetchone() == (1,)  # the snapshot, once per run

    # night 2: new inputs, and one shard is killed while it sends them (slowly now: 1.5 s a request)
    expected = write_inputs(inputs, prompts=48, texts=32)
    seen = set(Path(env["AIRFLOW_HOME"], "logs").rglob("*.log"))
    node.latency_ms = 1500
    sent_before = node.requests_to("/v1/chat/completions") + node.requests_to("/v1/embeddings")
    second = dag_run(env, dags_test, "2026-01-02")
    deadline = time.monotonic() + 300
    while True:  # shards have started, and the node is busy answering their new requests
        started = started_shards(env, seen)
        sent = node.requests_to("/v1/chat/completions") + node.requests_to("/v1/embeddings") - sent_before
        if started and sent >= 3:
            break
        assert second.poll() is None and time.monotonic() < deadline, second.communicate()[0][-4000:]
        time.sleep(0.1)
    killed_shard, killed_pid = min(started.items())
    try:
        os.kill(killed_pid, signal.SIGKILL)
    except ProcessLookupError:
        pytest.fail(f"shard {killed_shard} (pid {killed_pid}) ended before it could be killed mid-run")
    output = finish(second)
    node.latency_ms = 300
    run = run_ids(env)[-1]
    states = task_states(env, run)
    assert states[f"load_gaia_shard[{killed_shard}]"] == "failed", output[-4000:]
    assert sum(state == "success" for state in states.values()) == SHARDS  # prepare and the other shards
    assert killed_shard not in shard_records(env, run)  # it never finished
    # what the killed try left (nothing cleans up after a SIGKILL): its pipeline's working folder, which no later try
    # works in (a later try there would load a package it left instead of extracting that night's data)
    assert list(Path(env["GAIA_PIPELINES_DIR"]).glob(f"*/shard_{killed_shard}_of_{SHARDS}/try_1/*"))
    partial = union(postgres_schema)
    missing = {table: sorted(set(ids) - set(partial[table])) for table, ids in expected.items()}
    assert any(missing.values())  # the killed shard's new inputs are not there yet
    assert all(len(partial[t]) == len(set(partial[t])) for t in partial)  # and nothing is there twice

    # the re-run: the killed shard's inputs are sent and loaded (not a package its killed try left); nothing twice
    output = finish(dag_run(env, dags_test, "2026-01-03"))
    run = run_ids(env)[-1]
    assert set(task_states(env, run).values()) == {"success"}, output[-4000:]
    assert union(postgres_schema) == expected
    records = list(shard_records(env, run).values())
    reloaded = {table: sum(r["rows"].get(table, 0) for r in records) for table in expected}
    print(f"night 2 killed shard {killed_shard}/{SHARDS} (pid {killed_pid}); the re-run loaded {reloaded}, "
          f"union {[len(v) for v in union(postgres_schema).values()]}")
    assert reloaded == {table: len(ids) for table, ids in missing.items()}
