"""What a run finds that an earlier run left: a package killed in the load step, a kill at normalize's commit, a
LanceDB dataset whose schema changed. Each run is the CLI in a subprocess, killed with a real SIGKILL at a point
dlt reaches deterministically (a dlt method replaced, in that subprocess only, by one that kills its own process)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, List, Optional

import dlt
import duckdb
import pytest
from conftest import REPO_ROOT, SCRIPT, run_cli

from gaia_source import gaia_source
from gaia_source.lifecycle import run_pipeline

DB = "gaia_pipeline.duckdb"
PROMPTS = ["What is the capital of France?", "What does dlt do?"]
NEW_PROMPT = "Where is Paris located?"

KILLER = textwrap.dedent("""
    import importlib, os, signal, sys
    sys.path.insert(0, {repo!r})
    module, cls_name, method, when = sys.argv[1:5]
    cls = getattr(importlib.import_module(module), cls_name)
    original = getattr(cls, method)

    def killed(self, *args, **kwargs):
        if when == "after":
            original(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)

    setattr(cls, method, killed)
    import gaia_pipeline
    sys.exit(gaia_pipeline.main(sys.argv[5:]))
""")

KILL_POINTS = {
    # the package is normalized; the load step dies before its first job
    "load, before any job": ("dlt.load.load", "Load", "load_single_package", "before"),
    # every job is loaded; the load step dies before it marks the package loaded
    "load, before the package commit": ("dlt.load.load", "Load", "complete_package", "before"),
    # normalize renamed load/new/<id> to load/normalized/<id>, then died before deleting normalize/extracted/<id>
    "normalize commit": ("dlt.common.storages.load_storage", "LoadStorage", "commit_new_load_package", "after"),
}


def _killed_cli(cwd: Path, point: str, *args: str) -> None:
    """Run the CLI and SIGKILL it at ``point``."""
    proc = subprocess.run([sys.executable, "-c", KILLER.format(repo=str(REPO_ROOT)), *KILL_POINTS[point], *args],
                          cwd=cwd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def _prompts(folder: Path, prompts: List[str]) -> str:
    path = folder / "prompts.txt"
    path.write_text("".join(f"{p}\n" for p in prompts))
    return str(path)


ANSWERS = {
    PROMPTS[0]: "Paris is the capital of France.",
    PROMPTS[1]: "dlt loads data from APIs and files into warehouses such as DuckDB, with schemas inferred for you.",
    NEW_PROMPT: "Llama-3.2-3B-Instruct answers: Where is Paris located?",  # the rag emulator echoes the unknown
}


def _answers(db: Path) -> Dict[str, int]:
    """How many completed rows each prompt has in chat_completions; every answer is the node's."""
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute("SELECT messages, content, status FROM gaia_data.chat_completions").fetchall()
    by_prompt: Dict[str, int] = {}
    for messages, content, status in rows:
        prompt = next(p for p in ANSWERS if p in messages)
        assert status == "completed" and content == ANSWERS[prompt], (prompt, content, status)
        by_prompt[prompt] = by_prompt.get(prompt, 0) + 1
    return by_prompt


def _pipeline_dir(tmp_path: Path) -> Path:
    return tmp_path / "dlt_data" / "pipelines" / "gaia_pipeline"


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_run_killed_before_its_load_finished_is_loaded_and_the_next_run_does_its_own_work(
    make_node, tmp_path: Path, point: str,
) -> None:
    node = make_node("rag")
    args = ["--base-url", node.base_url, "--resources", "chat_completions"]
    # a recurring job: the first run loads (without a dataset, dlt's run() itself drops a pending package's state)
    assert run_cli(tmp_path, *args, "--prompts-file", _prompts(tmp_path, PROMPTS[:1])).returncode == 0
    node.reset_stats()
    _killed_cli(tmp_path, point, *args, "--prompts-file", _prompts(tmp_path, PROMPTS))
    assert node.requests_to("/v1/chat/completions") == 1
    jobs_loaded = point == "load, before the package commit"  # its rows are in, the package is not marked loaded
    assert _answers(tmp_path / DB) == ({PROMPTS[0]: 1, PROMPTS[1]: 1} if jobs_loaded else {PROMPTS[0]: 1})
    if point == "normalize commit":  # the state of dlt-hub/dlt#4446: the package is in both places
        [load_id] = os.listdir(_pipeline_dir(tmp_path) / "normalize" / "extracted")
        assert (_pipeline_dir(tmp_path) / "load" / "normalized" / load_id / "schema.json").exists()
    node.reset_stats()

    result = run_cli(tmp_path, *args, "--prompts-file", _prompts(tmp_path, [*PROMPTS, NEW_PROMPT]))
    assert result.returncode == 0, result.stderr
    assert "loaded 1 pending load package(s) left by an interrupted run" in result.stderr
    if point == "normalize commit":
        assert f"deleted normalize/extracted/{load_id}" in result.stderr
    assert node.requests_to("/v1/chat/completions") == 1  # only the new prompt: the others were in the package
    assert _answers(tmp_path / DB) == {PROMPTS[0]: 1, PROMPTS[1]: 1, NEW_PROMPT: 1}
    assert not os.listdir(_pipeline_dir(tmp_path) / "normalize" / "extracted")

    node.reset_stats()  # and the run after that has nothing left over, nothing to send
    result = run_cli(tmp_path, *args, "--prompts-file", _prompts(tmp_path, [*PROMPTS, NEW_PROMPT]))
    assert result.returncode == 0, result.stderr
    assert "pending" not in result.stderr and node.requests_to("/v1/chat/completions") == 0
    assert _answers(tmp_path / DB) == {PROMPTS[0]: 1, PROMPTS[1]: 1, NEW_PROMPT: 1}


def test_an_incomplete_committed_package_is_not_trusted_and_the_error_names_the_directory(make_node, tmp_path) -> None:
    node = make_node("rag")
    args = ["--base-url", node.base_url, "--resources", "chat_completions"]
    assert run_cli(tmp_path, *args, "--prompts-file", _prompts(tmp_path, PROMPTS[:1])).returncode == 0
    _killed_cli(tmp_path, "normalize commit", *args, "--prompts-file", _prompts(tmp_path, PROMPTS))
    [load_id] = os.listdir(_pipeline_dir(tmp_path) / "normalize" / "extracted")
    committed = _pipeline_dir(tmp_path) / "load" / "normalized" / load_id
    (committed / "schema.json").unlink()  # as if the commit had moved the package file by file and stopped short
    node.reset_stats()
    new_args = [*args, "--prompts-file", _prompts(tmp_path, [*PROMPTS, NEW_PROMPT])]
    result = run_cli(tmp_path, *new_args)
    assert result.returncode == 1
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: load package {load_id} is both in ") and f"Delete {committed} and run again" in error
    assert node.requests_to("/v1/chat/completions") == 0
    shutil.rmtree(committed)  # what the message says to do
    result = run_cli(tmp_path, *new_args)
    assert result.returncode == 0, result.stderr
    assert "loaded 1 pending load package(s) left by an interrupted run" in result.stderr
    assert node.requests_to("/v1/chat/completions") == 1
    assert _answers(tmp_path / DB) == {PROMPTS[0]: 1, PROMPTS[1]: 1, NEW_PROMPT: 1}



def test_a_pending_package_that_cannot_be_loaded_stops_the_run_and_says_what_to_do(make_node, tmp_path: Path) -> None:
    node = make_node("rag")
    args = ["--base-url", node.base_url, "--resources", "chat_completions"]
    assert run_cli(tmp_path, *args, "--prompts-file", _prompts(tmp_path, PROMPTS[:1])).returncode == 0
    _killed_cli(tmp_path, "load, before any job", *args, "--prompts-file", _prompts(tmp_path, PROMPTS))
    node.reset_stats()
    new_args = [*args, "--prompts-file", _prompts(tmp_path, [*PROMPTS, NEW_PROMPT])]
    with duckdb.connect(str(tmp_path / DB)):  # another process holds the DuckDB file (a dashboard, a notebook)
        result = run_cli(tmp_path, *new_args)
    assert result.returncode == 1, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: 1 load package(s) left by an interrupted run could not be loaded"), error
    assert "Could not set lock on file" in error and "gaia_pipeline.duckdb" in error
    assert "Nothing new was sent" in error and "dlt pipeline gaia_pipeline info" in error
    assert node.requests_to("/v1/chat/completions") == 0  # nothing new was extracted behind the pending package

    result = run_cli(tmp_path, *new_args)  # the lock is gone: the package loads, then the run does its own work
    assert result.returncode == 0, result.stderr
    assert node.requests_to("/v1/chat/completions") == 1
    assert _answers(tmp_path / DB) == {PROMPTS[0]: 1, PROMPTS[1]: 1, NEW_PROMPT: 1}


def test_run_pipeline_reports_failed_jobs_of_the_pending_package_too(make_node, make_pipeline, monkeypatch) -> None:
    node = make_node("rag")
    pipeline = make_pipeline()
    pipeline.extract(gaia_source(base_url=node.base_url, prompts=PROMPTS).with_resources("chat_completions"))
    pipeline.normalize()  # a run that ended here: one package pending
    [load_id] = pipeline.list_normalized_load_packages()
    jobs = Path(pipeline.working_dir) / "load" / "normalized" / load_id / "new_jobs"
    [job] = [p for p in jobs.iterdir() if p.name.startswith("chat_completions.")]
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(job)  # its one data job cannot load: a count no number column takes (a terminal error)
    table = table.set_column(table.schema.get_field_index("prompt_tokens"), "prompt_tokens",
                             pa.array(["many"] * table.num_rows))
    pq.write_table(table, job)
    monkeypatch.setenv("LOAD__RAISE_ON_FAILED_JOBS", "false")  # a user who inspects failed jobs instead

    result = run_pipeline(pipeline, gaia_source(base_url=node.base_url, prompts=[NEW_PROMPT])
                          .with_resources("chat_completions"))
    assert result.pending is not None and result.pending.has_failed_jobs
    assert not result.load_info.has_failed_jobs and result.has_failed_jobs
    assert [info.loads_ids for info in result.load_infos] == [[load_id], result.load_info.loads_ids]
    assert "failed" in str(result) and load_id in str(result)
    with pipeline.sql_client() as client:  # the new prompt loaded; the pending package's rows did not
        contents = [r[0] for r in client.execute_sql("SELECT content FROM chat_completions")]
    assert contents == [ANSWERS[NEW_PROMPT]]


def _lance_pipeline(tmp_path: Path) -> dlt.Pipeline:
    return dlt.pipeline("gaia_lance", destination=dlt.destinations.lancedb(lance_uri=str(tmp_path / "lance")),
                        dataset_name="gaia_data", pipelines_dir=str(tmp_path / "pipelines"))


def _lance_rows(pipeline: dlt.Pipeline, table: str, column: str) -> List[Optional[str]]:
    from gaia_source.destination import lance_table

    return sorted(r[column] for r in lance_table(pipeline, table).to_arrow().to_pylist())


def test_lancedb_loads_again_after_the_schema_changed(make_node, tmp_path: Path) -> None:
    pytest.importorskip("lancedb")
    node = make_node("rag")
    pipeline = _lance_pipeline(tmp_path)
    first = gaia_source(base_url=node.base_url, prompts=PROMPTS[:1]).with_resources("chat_completions")
    assert not run_pipeline(pipeline, first).has_failed_jobs
    # run 2: a new table (a schema change: dlt 1.31 looked its hash up with a double-quoted literal and failed)
    second = gaia_source(base_url=node.base_url, prompts=PROMPTS, texts=["Paris is on the Seine."])
    assert not run_pipeline(pipeline, second.with_resources("chat_completions", "embeddings")).has_failed_jobs
    # run 3: another new table, and a new prompt into the existing one
    third = gaia_source(base_url=node.base_url, prompts=[NEW_PROMPT])
    assert not run_pipeline(pipeline, third.with_resources("chat_completions", "models")).has_failed_jobs
    assert _lance_rows(pipeline, "chat_completions", "content") == sorted(ANSWERS.values())
    assert _lance_rows(pipeline, "embeddings", "text") == ["Paris is on the Seine."]
    assert _lance_rows(pipeline, "models", "id") == ["Llama-3.2-3B-Instruct", "Nomic-embed-text-v1.5"]
    # the schema the destination stored last is the pipeline's (found by its hash, and by its name)
    with pipeline.destination_client() as client:
        stored = client.get_stored_schema(pipeline.default_schema_name)
        assert stored is not None and stored.version_hash == pipeline.default_schema.stored_version_hash
        assert client.get_stored_schema_by_hash(stored.version_hash).schema_name == pipeline.default_schema_name


def test_a_table_count_that_fails_is_shown_as_unknown_never_as_zero(make_node, make_pipeline, capsys, caplog) -> None:
    spec = importlib.util.spec_from_file_location("gaia_pipeline_cli", SCRIPT)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    node = make_node("rag")
    pipeline = make_pipeline()
    source = gaia_source(base_url=node.base_url, prompts=[PROMPTS[0], "bad [[malformed:not-json]]"], max_attempts=1)
    pipeline.run(source.with_resources("chat_completions")).raise_on_failed_jobs()
    capsys.readouterr()
    cli._print_counts(pipeline)
    counted = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()[2:]}
    assert counted == {"chat_completions": ["1", "1"], "failed_requests": ["1", "1"]}
    with pipeline.sql_client() as client:  # the table goes away behind dlt's back: no count can be made
        client.execute_sql("DROP TABLE failed_requests")
    cli._print_counts(pipeline)  # unknown, not 0 (the exit code comes from the run's ledger, not from counts)
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows == {"chat_completions": ["1", "?"], "failed_requests": ["1", "?"]}
    assert any("could not count the rows of chat_completions, failed_requests" in r.getMessage() for r in caplog.records)


def test_lancedb_table_counts_are_counted_in_lancedb_and_failing_requests_fail_the_run(make_node,
                                                                                      tmp_path: Path) -> None:
    pytest.importorskip("lancedb")
    prompts = _prompts(tmp_path, PROMPTS)
    failing = make_node("nexus", outage=502)  # every request fails
    result = run_cli(tmp_path, "--destination", "lancedb", "--base-url", failing.base_url, "--resources",
                     "chat_completions", "--prompts-file", prompts, "--chat-model", "m",
                     env={"SOURCES__GAIA_SOURCE__MAX_ATTEMPTS": "1", "SOURCES__GAIA_SOURCE__RETRY_ROUNDS": "0"})
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines() if line.startswith("failed_")}
    assert rows == {"failed_requests": ["2", "2"]}, result.stdout  # this run, in dataset: counted in LanceDB
    assert result.returncode == 1 and "2 request(s) of this run are failing" in result.stderr, result.stderr
