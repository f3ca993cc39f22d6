"""The scheduling files are real: the Airflow DAG uses dlt's helper correctly, the workflow takes the key from secrets."""

from __future__ import annotations

import ast
import re

import yaml
from conftest import REPO_ROOT, run_cli

CRON = re.compile(r"^([\d*/,-]+\s+){4}[\d*/,-]+$")  # five cron fields


def test_airflow_dag_uses_pipeline_tasks_group() -> None:
    path = REPO_ROOT / "deploy" / "airflow_dag.py"
    source = path.read_text()
    tree = ast.parse(source)
    compile(tree, str(path), "exec")
    imports = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert ("dlt.helpers.airflow_helper", "PipelineTasksGroup") in imports and ("gaia_source", "gaia_source") in imports
    calls = {n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", None)
             for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert {"PipelineTasksGroup", "add_run", "gaia_source", "pipeline"} <= calls
    [decorator] = [d for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) for d in n.decorator_list
                   if isinstance(d, ast.Call) and getattr(d.func, "id", "") == "dag"]
    schedule = next(k.value.value for k in decorator.keywords if k.arg == "schedule")
    assert CRON.match(schedule)
    try:
        import airflow  # noqa: F401
    except ImportError:
        return  # parsed and compiled above; where Airflow is installed it is also imported
    import importlib.util

    spec = importlib.util.spec_from_file_location("gaia_dag", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]


def test_github_workflow_runs_the_pipeline_on_a_schedule_with_the_key_from_secrets() -> None:
    workflow = yaml.safe_load((REPO_ROOT / ".github" / "workflows" / "gaia_pipeline.yml").read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` key as true
    [schedule] = triggers["schedule"]
    assert CRON.match(schedule["cron"])
    steps = workflow["jobs"]["load"]["steps"]
    [load] = [s for s in steps if "gaia_pipeline.py" in s.get("run", "")]
    assert load["env"]["SOURCES__GAIA_SOURCE__API_KEY"] == "${{ secrets.GAIA_API_KEY }}"
    assert any("pip install -e" in s.get("run", "") for s in steps)


def test_readme_cron_line_and_progress_output(make_node, tmp_path) -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    [cron] = [line for line in readme.splitlines() if "gaia_pipeline.py" in line and CRON.match(" ".join(line.split()[:5]))]
    assert cron.split()[5:] and "gaia_pipeline.py" in cron
    node = make_node("nexus")
    result = run_cli(tmp_path, "--base-url", node.base_url, "--resources", "models,info", "--progress", "log")
    assert result.returncode == 0, result.stderr
    assert "Extract gaia_source" in result.stdout and "Load gaia_source" in result.stdout  # dlt's log collector


def test_scheduled_reruns_append_info_and_duplicate_nothing_else(make_node, tmp_path) -> None:
    node = make_node("rag")
    for _ in range(3):
        assert run_cli(tmp_path, "--base-url", node.base_url).returncode == 0
    import duckdb

    with duckdb.connect(str(tmp_path / "gaia_pipeline.duckdb"), read_only=True) as con:
        counts = dict(con.execute("""
            SELECT 'info', count(*) FROM gaia_data.info UNION ALL SELECT 'models', count(*) FROM gaia_data.models
            UNION ALL SELECT 'chat', count(*) FROM gaia_data.chat_completions
            UNION ALL SELECT 'emb', count(*) FROM gaia_data.embeddings
            UNION ALL SELECT 'ret', count(*) FROM gaia_data.retrieve""").fetchall())
    assert counts == {"info": 3, "models": 2, "chat": 3, "emb": 6, "ret": 3}
