"""The shipped schedules run as shipped: the workflow's command and the DAG's task load the example inputs, only them.

* The GitHub workflow's Load step is run as a runner would run it: its command line from a copy of the checkout, with
  its ``env`` (GitHub expressions evaluated for the repository's secrets and variables), against an emulated node, into
  the local PostgreSQL.
* The Airflow DAG builds nothing at parse time: its parse-time code is checked on the syntax tree, and where Airflow 3
  is installed the file is parsed by Airflow's ``DagBag``, with the inputs missing and file and socket access audited.
  Its task body runs for every shard against an emulated node: one after another into DuckDB (twice, as two nights),
  and all at once into one PostgreSQL dataset, as the DAG's tasks run.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Any, Dict, List, Mapping, Set

import duckdb
import psycopg2
import pytest
import yaml
from conftest import POSTGRES, REPO_ROOT, checkout, counts, run_cli

from gaia_source.emulator import answer_for

CRON = re.compile(r"^([\d*/,-]+\s+){4}[\d*/,-]+$")  # five cron fields
WORKFLOW = REPO_ROOT / ".github" / "workflows" / "gaia_pipeline.yml"
DAG_FILE = REPO_ROOT / "deploy" / "airflow_dag.py"
EXAMPLES = REPO_ROOT / "examples"
KEY = "gaia-SCHEDULE-SECRET-5e6f7a8b"
CHAT_TABLES = ("chat_completions", "chat_completions_stream")


# --- the example inputs, read here without the source's parsers (an independent oracle) --------------------------


def example_prompts() -> Dict[str, str]:
    """custom_id → the last user message of each line of examples/prompts.jsonl."""
    lines = [json.loads(line) for line in (EXAMPLES / "prompts.jsonl").read_text().splitlines() if line.strip()]
    return {line["custom_id"]: [m for m in line["body"]["messages"] if m["role"] == "user"][-1]["content"]
            for line in lines}


def example_answer(custom_id: str, model: str) -> str:
    """The emulator's answer to an example prompt, cut at the line's ``max_tokens`` (the emulator counts words)."""
    lines = [json.loads(line) for line in (EXAMPLES / "prompts.jsonl").read_text().splitlines() if line.strip()]
    [body] = [line["body"] for line in lines if line["custom_id"] == custom_id]
    words = answer_for(example_prompts()[custom_id], model).split()
    return " ".join(words[: body.get("max_tokens") or len(words)])


def example_texts() -> Dict[str, Dict[str, Any]]:
    """id → the line of examples/texts.jsonl."""
    lines = [json.loads(line) for line in (EXAMPLES / "texts.jsonl").read_text().splitlines() if line.strip()]
    return {line["id"]: line for line in lines}


def example_queries() -> List[str]:
    """The lines of examples/queries.txt."""
    return [line for line in (EXAMPLES / "queries.txt").read_text().splitlines() if line.strip()]


def test_examples_are_small_distinct_and_not_the_built_in_samples() -> None:
    from gaia_source.samples import SAMPLE_PROMPTS, SAMPLE_QUERIES, SAMPLE_TEXTS

    prompts, texts, queries = example_prompts(), example_texts(), example_queries()
    assert 3 <= len(prompts) <= 10 and 3 <= len(texts) <= 10 and 3 <= len(queries) <= 10
    assert len(queries) == len(set(queries)) and len({t["text"] for t in texts.values()}) == len(texts)
    # a load of the examples is told apart from one of the samples by content alone
    assert not set(prompts.values()) & set(SAMPLE_PROMPTS)
    assert not {t["text"] for t in texts.values()} & set(SAMPLE_TEXTS)
    assert not set(queries) & set(SAMPLE_QUERIES)
    readme = (EXAMPLES / "README.md").read_text()
    assert all(name in readme for name in ("prompts.jsonl", "texts.jsonl", "queries.txt"))


# --- the GitHub workflow ----------------------------------------------------------------------------------------


def load_workflow() -> Dict[str, Any]:
    """The workflow file, parsed."""
    return yaml.safe_load(WORKFLOW.read_text())  # type: ignore[no-any-return]


def load_step(workflow: Mapping[str, Any]) -> Dict[str, Any]:
    """The step that runs gaia_pipeline.py."""
    [step] = [s for s in workflow["jobs"]["load"]["steps"] if "gaia_pipeline.py" in s.get("run", "")]
    return step  # type: ignore[no-any-return]


_EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
_OPERAND = re.compile(r"^(?:'(?P<literal>[^']*)'|(?P<context>secrets|vars)\.(?P<name>[A-Za-z_][A-Za-z0-9_]*))$")


def github_expand(value: str, contexts: Mapping[str, Mapping[str, str]]) -> str:
    """Evaluate the ``${{ … }}`` expressions of a workflow value as GitHub does for ``secrets``/``vars``.

    Understands ``secrets.X``, ``vars.X``, ``'literal'`` and ``a || b`` (the first non-empty operand); an unset secret
    or variable is the empty string. Anything else is an error, so the test cannot silently misread the workflow.
    """

    def evaluate(match: re.Match[str]) -> str:
        result = ""
        for operand in match.group(1).split("||"):
            parsed = _OPERAND.match(operand.strip())
            if parsed is None:
                raise ValueError(f"workflow expression not understood by this test: {match.group(0)}")
            literal = parsed.group("literal")
            result = literal if literal is not None else contexts[parsed.group("context")].get(parsed.group("name"), "")
            if result:
                return result
        return result

    return _EXPRESSION.sub(evaluate, value)


def test_workflow_names_its_inputs_and_takes_the_key_from_secrets() -> None:
    text = WORKFLOW.read_text()
    workflow = load_workflow()
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` key as true
    [schedule] = triggers["schedule"]
    assert CRON.match(schedule["cron"])
    steps = workflow["jobs"]["load"]["steps"]
    assert any('pip install -e ".[postgres]"' in s.get("run", "") for s in steps)
    load = load_step(workflow)
    env = load["env"]
    assert env["SOURCES__GAIA_SOURCE__API_KEY"] == "${{ secrets.GAIA_API_KEY }}"
    assert env["DESTINATION__POSTGRES__CREDENTIALS"] == "${{ secrets.WAREHOUSE_CREDENTIALS }}"
    assert "--destination postgres" in load["run"]
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    defaults = github_expand(" ".join(str(v) for v in env.values()), {"secrets": {}, "vars": {}})
    for name in ("prompts.jsonl", "texts.jsonl", "queries.txt"):
        assert (EXAMPLES / name).is_file()
        assert f"examples/{name}" in header and f"examples/{name}" in defaults  # stated, and what is read by default
    for setting in ("GAIA_API_KEY", "WAREHOUSE_CREDENTIALS", "GAIA_BASE_URL", "GAIA_NODE_ID", "GAIA_PROMPTS_FILE",
                    "GAIA_TEXTS_FILE", "GAIA_QUERIES_FILE"):
        assert setting in header
    for flag in ("--prompts-file", "--texts-file", "--queries-file"):
        assert flag in load["run"]


def pg_rows(schema: str, sql: str) -> List[tuple]:
    """Rows of a query on the local PostgreSQL (``{s}`` in ``sql`` is the schema)."""
    with psycopg2.connect(POSTGRES) as con, con.cursor() as cur:
        cur.execute(sql.format(s=schema))
        return [tuple(row) for row in cur.fetchall()]


def test_workflow_command_as_shipped_loads_exactly_the_example_inputs(
    make_node, tmp_path: Path, postgres_schema: str
) -> None:
    node = make_node("rag", api_key=KEY)
    step = load_step(load_workflow())
    contexts = {
        "secrets": {"GAIA_API_KEY": KEY, "WAREHOUSE_CREDENTIALS": POSTGRES},
        "vars": {"GAIA_BASE_URL": node.base_url, "GAIA_DATASET_NAME": postgres_schema},  # other vars: unset
    }
    step_env = {name: github_expand(str(value), contexts) for name, value in step["env"].items()}
    assert step_env["SOURCES__GAIA_SOURCE__BASE_URL"] == node.base_url
    env = {k: v for k, v in os.environ.items() if k != "DLT_PROJECT_DIR"}  # the checkout's .dlt/, as on a runner
    env.update(step_env)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `python`: this venv's
    repo = checkout(tmp_path / "checkout")

    # GitHub runs a `run:` of an ubuntu runner as `bash -e {0}`
    result = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=repo, env=env, capture_output=True, text=True,
                            timeout=240)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "is LOADED and contains no failed jobs" in result.stdout
    assert "built-in sample" not in result.stdout + result.stderr
    assert KEY not in result.stdout + result.stderr
    tables = {t for (t,) in pg_rows(postgres_schema, "SELECT table_name FROM information_schema.tables "
                                                     "WHERE table_schema = '{s}' AND table_name NOT LIKE '\\_dlt%%'")}
    # no failures table; the run's own gaia_runs row says it ended cleanly
    assert tables - {"retrieve__points"} == {"models", "info", *CHAT_TABLES, "embeddings", "retrieve", "gaia_runs"}
    assert pg_rows(postgres_schema, "SELECT exit_code, failed, refused FROM {s}.gaia_runs") == [(0, 0, 0)]
    prompts, texts, queries = example_prompts(), example_texts(), example_queries()
    for table in CHAT_TABLES:  # one row per example prompt, answered with its own text, capped at its max_tokens
        rows = pg_rows(postgres_schema, f"SELECT custom_id, content, model, status FROM {{s}}.{table}")
        assert {r[0]: r[1] for r in rows} == {cid: example_answer(cid, rows[0][2]) for cid in prompts}
        assert len(rows) == len(prompts) and {r[3] for r in rows} == {"completed"}
    rows = pg_rows(postgres_schema, "SELECT text_id, text, metadata, dim FROM {s}.embeddings")
    assert {r[0]: (r[1], r[2]) for r in rows} == {i: (t["text"], t["metadata"]) for i, t in texts.items()}
    assert len(rows) == len(texts) and {r[3] for r in rows} == {768}
    assert sorted(q for (q,) in pg_rows(postgres_schema, "SELECT query FROM {s}.retrieve")) == sorted(queries)
    assert pg_rows(postgres_schema, "SELECT count(*) FROM {s}.info") == [(1,)]
    # and the node was asked for nothing else: each prompt plain and streamed, one embeddings batch, each query once
    assert node.requests_to("/v1/chat/completions", "POST") == 2 * len(prompts)
    assert node.requests_to("/v1/embeddings", "POST") == 1
    assert node.requests_to("/v1/retrieve", "POST") == len(queries)


# --- cron (README) and scheduled re-runs ------------------------------------------------------------------------


def test_readme_cron_line_and_progress_output(make_node, tmp_path) -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    [cron] = [line for line in readme.splitlines()
              if "gaia_pipeline.py" in line and CRON.match(" ".join(line.split()[:5]))]
    assert cron.split()[5:] and "gaia_pipeline.py" in cron
    node = make_node("nexus")
    result = run_cli(tmp_path, "--base-url", node.base_url, "--resources", "models,info", "--progress", "log")
    assert result.returncode == 0, result.stderr
    assert "Extract gaia_source" in result.stdout and "Load gaia_source" in result.stdout  # dlt's log collector


def test_scheduled_reruns_append_info_and_duplicate_nothing_else(make_node, tmp_path) -> None:
    node = make_node("rag")
    inputs = ["--prompts-file", str(EXAMPLES / "prompts.jsonl"), "--texts-file", str(EXAMPLES / "texts.jsonl"),
              "--queries-file", str(EXAMPLES / "queries.txt")]
    for _ in range(3):
        result = run_cli(tmp_path, "--base-url", node.base_url, *inputs)
        assert result.returncode == 0, result.stderr
    loaded = counts(tmp_path / "gaia_pipeline.duckdb")
    n_prompts, n_texts, n_queries = len(example_prompts()), len(example_texts()), len(example_queries())
    assert {t: loaded[t] for t in ("info", "models", *CHAT_TABLES, "embeddings", "retrieve")} == {
        "info": 3, "models": 2, "chat_completions": n_prompts, "chat_completions_stream": n_prompts,
        "embeddings": n_texts, "retrieve": n_queries}
    # answered prompts and embedded texts are not sent again
    assert node.requests_to("/v1/chat/completions", "POST") == 2 * n_prompts
    assert node.requests_to("/v1/embeddings", "POST") == 1


# --- the Airflow DAG --------------------------------------------------------------------------------------------

# Everything the DAG file may call while the scheduler parses it (module level, decorators, the @dag function body).
PARSE_TIME_CALLS = {"int", "os.environ.get", "logging.getLogger", "timedelta", "dag", "task", "pendulum.datetime",
                    "gaia_node_load", "load_gaia_shard.expand", "prepare_gaia_dataset"}


def _call_name(call: ast.Call) -> str:
    func = call.func
    return _call_name(func) + "(…)" if isinstance(func, ast.Call) else ast.unparse(func)


def _calls(nodes: List[ast.AST]) -> Set[str]:
    return {_call_name(n) for node in nodes for n in ast.walk(node) if isinstance(n, ast.Call)}


def _decorator_names(function: ast.FunctionDef) -> Set[str]:
    return {ast.unparse(d.func if isinstance(d, ast.Call) else d) for d in function.decorator_list}


def test_dag_builds_nothing_at_parse_time() -> None:
    tree = ast.parse(DAG_FILE.read_text(), str(DAG_FILE))
    compile(tree, str(DAG_FILE), "exec")
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    [dag_function] = [f for f in functions.values() if "dag" in _decorator_names(f)]
    tasks = {name: f for name, f in functions.items() if "task" in _decorator_names(f)}
    assert set(tasks) == {"prepare_gaia_dataset", "load_gaia_shard"}
    # what runs at parse time: module-level statements (decorators and defaults included, bodies excluded) and the
    # body of the @dag function
    module_level = [n for n in tree.body if not isinstance(n, ast.FunctionDef)]
    signatures = [part for f in functions.values() for part in [*f.decorator_list, *f.args.defaults]]
    parse_time = _calls([*module_level, *signatures, *dag_function.body])
    assert parse_time <= PARSE_TIME_CALLS, parse_time - PARSE_TIME_CALLS
    # the source and the pipelines are built in plain functions that only the tasks call
    builders = {name for name, f in functions.items() if {"gaia_source", "dlt.pipeline"} & _calls(f.body)}
    assert builders == {"_pipeline", "prepare_dataset", "load_shard"}
    assert {"prepare_dataset", "read_settings"} <= _calls(tasks["prepare_gaia_dataset"].body)
    assert {"load_shard", "read_settings"} <= _calls(tasks["load_gaia_shard"].body)
    assert not {"load_shard", "prepare_dataset", "read_settings"} & _calls([*module_level, *dag_function.body])
    # the shards are mapped over what the prepare task returns (dynamic task mapping), not fixed at parse time
    assert ast.unparse(dag_function.body[-1]) == "load_gaia_shard.expand(shard=prepare_gaia_dataset())"
    schedule = next(k.value for d in dag_function.decorator_list if isinstance(d, ast.Call) for k in d.keywords
                    if k.arg == "schedule")
    assert isinstance(schedule, ast.Constant) and CRON.match(schedule.value)
    assert "PipelineTasksGroup" in (ast.get_docstring(tree) or "")  # the docstring says why it is not used


def _binds(node: ast.stmt) -> Set[str]:
    """Names a top-level statement defines."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}


def _imports_airflow(node: ast.stmt) -> Set[str]:
    """Names a statement imports from ``airflow`` (its imports nested in try/if included)."""
    names: Set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == "airflow":
            names |= {a.asname or a.name for a in n.names}
        elif isinstance(n, ast.Import):
            names |= {a.asname or a.name.split(".")[0] for a in n.names if a.name.split(".")[0] == "airflow"}
    return names


def dag_module() -> types.ModuleType:
    """The DAG file as a module, to call its task body (``load_shard``) directly.

    Where Airflow is installed it is imported as it is. Where it is not (this project does not depend on it), the
    statements that import from ``airflow`` or use what they import (the ``@task``/``@dag`` definitions and the DAG
    call) are left out; the plain functions the task calls are run unchanged.
    """
    if importlib.util.find_spec("airflow") is not None:
        spec = importlib.util.spec_from_file_location("gaia_airflow_dag", DAG_FILE)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    tree = ast.parse(DAG_FILE.read_text(), str(DAG_FILE))
    airflow_names: Set[str] = set()
    kept = []
    for node in tree.body:
        imported = _imports_airflow(node)
        used = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
        if imported or used & airflow_names:
            airflow_names |= imported | _binds(node)
            continue
        kept.append(node)
    assert {"dag", "task", "load_gaia_shard", "prepare_gaia_dataset", "gaia_node_load"} <= airflow_names  # left out
    module = types.ModuleType("gaia_airflow_dag")
    module.__file__ = str(DAG_FILE)
    exec(compile(ast.Module(body=kept, type_ignores=[]), str(DAG_FILE), "exec"), module.__dict__)
    return module


def run_dag_tasks(dag: types.ModuleType, settings: Dict[str, str], folder: Path, run: str) -> List[Dict[str, Any]]:
    """What a DAG run does, one task after another (a DuckDB file takes one writer): prepare, then every shard, each
    try in its own pipelines directory. Returns the shards' records."""
    prepared = dag.prepare_dataset(settings, dag.try_dir(settings, run, "prepare", 1))
    records = []
    for spec in prepared["shards"]:
        index, count = (int(part) for part in spec.split("/"))
        workdir = dag.try_dir(settings, run, f"shard_{index}_of_{count}", 1)
        records.append(dag.load_shard(index, count, settings, workdir))
    return [prepared, *records]


def test_dag_tasks_load_every_shard_of_the_example_inputs(make_node, tmp_path, monkeypatch) -> None:
    node = make_node("rag")
    db = tmp_path / "warehouse.duckdb"
    monkeypatch.setenv("SOURCES__GAIA_SOURCE__BASE_URL", node.base_url)
    monkeypatch.setenv("GAIA_DESTINATION", "duckdb")
    monkeypatch.setenv("DESTINATION__DUCKDB__CREDENTIALS", str(db))
    monkeypatch.setenv("GAIA_SHARDS", "3")
    monkeypatch.setenv("GAIA_PIPELINES_DIR", str(tmp_path / "pipelines"))
    dag = dag_module()
    settings = dag.read_settings(os.environ.get)  # no GAIA_INPUTS_DIR: the documented default, examples/
    assert settings["GAIA_INPUTS_DIR"] == str(EXAMPLES), "gaia_source is not imported from this checkout"
    assert settings["GAIA_PROMPTS_FILE"] == str(EXAMPLES / "prompts.jsonl")
    assert dag.shard_specs(settings) == ["0/3", "1/3", "2/3"]

    prepared, *per_shard = run_dag_tasks(dag, settings, tmp_path, "scheduled__2026-01-01")

    prompts, texts, queries = example_prompts(), example_texts(), example_queries()
    expected = {"models": 2, "info": 1, "chat_completions": len(prompts), "chat_completions_stream": len(prompts),
                "embeddings": len(texts), "retrieve": len(queries)}
    loaded = counts(db)
    assert {t: loaded.get(t) for t in expected} == expected
    assert loaded["failed_requests"] == 0  # created by prepare with every other table, before any shard ran
    assert prepared["rows"] == {"models": 2, "info": 1}  # the snapshot, once
    for table in ("chat_completions", "chat_completions_stream", "embeddings", "retrieve"):  # no overlap, no gaps
        assert sum(record["rows"].get(table, 0) for record in per_shard) == expected[table]
    assert not any("info" in r["rows"] or "models" in r["rows"] for r in per_shard)
    for record in per_shard:  # each try its own pipelines dir, gone when it ended
        assert record["pid"] == os.getpid() and record["started_at"] <= record["ended_at"]
        index, count = record["shard"].split("/")
        assert record["pipelines_dir"].endswith(f"shard_{index}_of_{count}/try_1")
        assert not Path(record["pipelines_dir"]).exists()
    with duckdb.connect(str(db), read_only=True) as con:
        chat = con.execute("SELECT custom_id FROM gaia_data.chat_completions").fetchall()
        assert {r[0] for r in chat} == set(prompts)
        assert {r[0] for r in con.execute("SELECT text_id FROM gaia_data.embeddings").fetchall()} == set(texts)
        assert sorted(r[0] for r in con.execute("SELECT query FROM gaia_data.retrieve").fetchall()) == sorted(queries)
        # the shards read the node's configuration each, and agree on it (drift needs no shared baseline)
        assert con.execute("SELECT count(DISTINCT info_hash) FROM gaia_data.chat_completions").fetchone() == (1,)

    # the next night: each task starts from an empty working folder (state comes back from the destination), so
    # answered prompts and embedded texts are not sent again; info gets its second snapshot
    sent = (node.requests_to("/v1/chat/completions"), node.requests_to("/v1/embeddings"))
    run_dag_tasks(dag, settings, tmp_path, "scheduled__2026-01-02")
    assert (node.requests_to("/v1/chat/completions"), node.requests_to("/v1/embeddings")) == sent
    assert counts(db)["info"] == 2 and counts(db)["chat_completions"] == len(prompts)


SHARD_SCRIPT = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path

    sys.path.insert(0, sys.argv[1])  # tests/: the DAG module as the tests load it
    from test_deploy import dag_module

    dag = dag_module()
    settings = dag.read_settings(os.environ.get)
    workdir = dag.try_dir(settings, "manual__parallel", sys.argv[2], 1)
    if sys.argv[2] == "prepare":
        print(json.dumps(dag.prepare_dataset(settings, workdir)))
    else:
        index, count = (int(part) for part in sys.argv[2].split("/"))
        print(json.dumps(dag.load_shard(index, count, settings, workdir)))
""")


def _task(tmp_path: Path, env: Dict[str, str], what: str) -> subprocess.Popen:
    """One task's body in a process of its own, as a worker runs it."""
    return subprocess.Popen([sys.executable, "-c", SHARD_SCRIPT, str(Path(__file__).parent), what],
                            env={**env, "DLT_DATA_DIR": str(tmp_path / f"worker_{what.replace('/', '_')}")},
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_dag_shards_load_in_parallel_into_one_postgres_dataset(make_node, tmp_path, postgres_schema) -> None:
    node = make_node("rag")
    env = {**os.environ, "SOURCES__GAIA_SOURCE__BASE_URL": node.base_url, "GAIA_DESTINATION": "postgres",
           "DESTINATION__POSTGRES__CREDENTIALS": POSTGRES, "GAIA_DATASET_NAME": postgres_schema, "GAIA_SHARDS": "4",
           "GAIA_PIPELINES_DIR": str(tmp_path / "pipelines")}
    prepare = _task(tmp_path, env, "prepare")  # first, alone: the snapshot and every table of a fresh dataset
    out, err = prepare.communicate(timeout=240)
    assert prepare.returncode == 0, err[-2000:]
    shards = json.loads(out.strip().splitlines()[-1])["shards"]
    tables = {t for (t,) in pg_rows(postgres_schema, "SELECT table_name FROM information_schema.tables "
                                                     "WHERE table_schema = '{s}'")}
    assert {"models", "info", *CHAT_TABLES, "embeddings", "retrieve", "failed_requests", "_dlt_loads"} <= tables
    workers = [_task(tmp_path, env, spec) for spec in shards]  # then all at once, as the mapped tasks run
    outputs = [w.communicate(timeout=240) for w in workers]
    assert [w.returncode for w in workers] == [0] * len(shards), [err[-2000:] for _, err in outputs]

    prompts, texts, queries = example_prompts(), example_texts(), example_queries()
    def column(sql: str) -> List[str]:
        return sorted(value for (value,) in pg_rows(postgres_schema, sql))

    assert column("SELECT custom_id FROM {s}.chat_completions") == sorted(prompts)
    assert column("SELECT text_id FROM {s}.embeddings") == sorted(texts)
    assert column("SELECT query FROM {s}.retrieve") == sorted(queries)
    assert pg_rows(postgres_schema, "SELECT count(*) FROM {s}.info") == [(1,)]
    assert node.requests_to("/v1/chat/completions", "POST") == 2 * len(prompts)  # nothing sent twice
    assert node.requests_to("/v1/retrieve", "POST") == len(queries)


def test_dag_task_fails_while_requests_are_failing_and_skips_empty_inputs(make_node, tmp_path, monkeypatch) -> None:
    node = make_node("rag")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Which plan includes priority support?\nThis one breaks the node [[fail]]\n")
    monkeypatch.setenv("SOURCES__GAIA_SOURCE__BASE_URL", node.base_url)
    monkeypatch.setenv("SOURCES__GAIA_SOURCE__MAX_ATTEMPTS", "1")
    monkeypatch.setenv("GAIA_DESTINATION", "duckdb")
    monkeypatch.setenv("DESTINATION__DUCKDB__CREDENTIALS", str(tmp_path / "warehouse.duckdb"))
    monkeypatch.setenv("GAIA_PROMPTS_FILE", str(prompts))
    monkeypatch.setenv("GAIA_TEXTS_FILE", "")  # empty: no texts, no queries
    monkeypatch.setenv("GAIA_QUERIES_FILE", "")
    dag = dag_module()

    with pytest.raises(RuntimeError, match=r"shard 0/1: 2 request\(s\) are still failing"):
        dag.load_shard(0, 1, dag.read_settings(os.environ.get), tmp_path / "pipelines" / "try_1")
    assert not (tmp_path / "pipelines" / "try_1").exists()  # a failed try leaves no package for the next one

    loaded = counts(tmp_path / "warehouse.duckdb")
    assert loaded["failed_requests"] == 2  # the broken prompt, plain and streamed; the other prompt is loaded
    assert loaded["chat_completions"] == 1 and loaded["chat_completions_stream"] == 1
    assert node.requests_to("/v1/embeddings") == 0 and node.requests_to("/v1/retrieve") == 0


DAGBAG_SCRIPT = textwrap.dedent("""
    import json, os, sys

    watched = [os.path.abspath(p) for p in sys.argv[2:]]
    events = []

    def audit(event, args):
        if event in ("open", "os.listdir", "os.scandir") and args and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.path.abspath(os.fsdecode(args[0]))
            if any(path == w or path.startswith(w + os.sep) for w in watched):
                events.append(f"{event} {path}")
        elif event in ("socket.connect", "socket.getaddrinfo"):
            events.append(f"{event} {args[1:] if event == 'socket.connect' else args[:2]}")

    from airflow.dag_processing.dagbag import DagBag  # Airflow 3

    sys.addaudithook(audit)  # from here on: the parse
    bag = DagBag(dag_folder=sys.argv[1])  # no example DAGs: AIRFLOW__CORE__LOAD_EXAMPLES=false
    dag = bag.dags.get("gaia_node_load")
    print(json.dumps({
        "import_errors": {k: str(v) for k, v in bag.import_errors.items()},
        "task_ids": sorted(dag.task_ids) if dag else None,
        "retries": sorted({t.retries for t in dag.tasks}) if dag else None,
        "events": events,
    }))
""")


def test_dag_parses_in_airflow_without_touching_inputs_or_the_network(make_node, tmp_path) -> None:
    if importlib.util.find_spec("airflow") is None:
        pytest.skip("Apache Airflow is not installed (not a dependency of this project); the syntax-tree test above "
                    "checks the same rule")
    node = make_node("rag")
    missing = tmp_path / "inputs-that-do-not-exist"
    dags = tmp_path / "dags"
    dags.mkdir()
    shutil.copy(DAG_FILE, dags / DAG_FILE.name)  # the DAGs folder holds only this file, as the docstring says
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow_home"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
        "GAIA_SHARDS": "3",
        "GAIA_INPUTS_DIR": str(missing),
        **{name: str(missing / f"{name.lower()}.jsonl") for name in ("GAIA_PROMPTS_FILE", "GAIA_TEXTS_FILE",
                                                                      "GAIA_QUERIES_FILE")},
        "SOURCES__GAIA_SOURCE__BASE_URL": node.base_url,
        "DESTINATION__POSTGRES__CREDENTIALS": "postgresql://loader:pw@127.0.0.1:9/nowhere",
    }
    result = subprocess.run([sys.executable, "-c", DAGBAG_SCRIPT, str(dags), str(missing), str(EXAMPLES)], env=env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["import_errors"] == {}
    assert report["task_ids"] == ["load_gaia_shard", "prepare_gaia_dataset"]  # shards: mapped when a run starts
    assert report["retries"] == [2]
    assert report["events"] == []  # no input file or folder opened or listed, no connection made
    assert not missing.exists() and node.total_requests() == 0

