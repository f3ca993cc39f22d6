"""gaia_pipeline.py as a user runs it: a subprocess, a node on 127.0.0.1, a DuckDB file in the working directory."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, List

import duckdb
import pytest
from conftest import counts, run_cli
from conftest import run_cli as run_in

KEY = "gaia-CLI-SECRET-0a1b2c3d"


def test_demo_loads_all_six_tables(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "--demo")
    assert result.returncode == 0, result.stderr
    assert "demo: emulated Gaia node (rag)" in result.stdout and "is LOADED and contains no failed jobs" in result.stdout
    loaded = counts(tmp_path / "gaia_demo_pipeline.duckdb", "gaia_demo")
    assert loaded == {"models": 2, "info": 1, "chat_completions": 3, "chat_completions_stream": 3, "embeddings": 6,
                      "retrieve": 3, "retrieve__points": loaded["retrieve__points"]}
    assert loaded["retrieve__points"] >= 3
    with duckdb.connect(str(tmp_path / "gaia_demo_pipeline.duckdb"), read_only=True) as con:
        assert con.execute("SELECT content FROM gaia_demo.chat_completions WHERE content LIKE 'Paris%'").fetchall() == [
            ("Paris is the capital of France.",)]
    for table in ("chat_completions_stream", "embeddings", "retrieve"):  # the per-table counts are printed
        assert any(line.startswith(table) for line in result.stdout.splitlines())


EXPECTED = {
    "rag": ({"models", "info", "chat_completions", "chat_completions_stream", "embeddings", "retrieve", "retrieve__points"}, []),
    "nexus": ({"models", "info", "chat_completions", "chat_completions_stream", "embeddings"}, ["/v1/retrieve"]),
    "node06": ({"models", "info", "chat_completions", "chat_completions_stream", "embeddings"}, ["/v1/retrieve"]),
    "amd": ({"models", "info", "chat_completions", "chat_completions_stream"}, ["/v1/embeddings", "/v1/retrieve"]),
}


def _input_files(folder: Path) -> List[str]:
    (folder / "prompts.txt").write_text("What is the capital of France?\nWhat does dlt do?\n")
    (folder / "texts.txt").write_text("Paris is on the Seine.\nDuckDB stores vectors.\n")
    (folder / "queries.txt").write_text("Where is Paris located?\n")
    return ["--prompts-file", "prompts.txt", "--texts-file", "texts.txt", "--queries-file", "queries.txt"]


@pytest.mark.parametrize("flavor", ["rag", "nexus", "node06", "amd"])
def test_base_url_against_each_flavour(make_node, tmp_path: Path, flavor: str) -> None:
    node = make_node(flavor)
    result = run_cli(tmp_path, "--base-url", node.base_url, *_input_files(tmp_path))
    assert result.returncode == 0, result.stderr
    tables, missing = EXPECTED[flavor]
    loaded = counts(tmp_path / "gaia_pipeline.duckdb")
    assert set(loaded) == tables and all(n > 0 for n in loaded.values())
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING gaia_source")]
    assert len(warnings) == len(missing)
    for path in missing:
        assert sum(path in w and node.base_url in w for w in warnings) == 1


def test_no_node_configured_explains_what_to_do(tmp_path: Path) -> None:
    result = run_cli(tmp_path)
    assert result.returncode == 2
    assert "No Gaia node configured" in result.stderr and "--demo" in result.stderr
    assert "Traceback" not in result.stderr


def test_wrong_key_is_a_clear_error_after_one_request(make_node, tmp_path: Path) -> None:
    node = make_node("rag", api_key="right-key-right-key")
    result = run_cli(tmp_path, "--base-url", node.base_url, env={"SOURCES__GAIA_SOURCE__API_KEY": KEY})
    assert result.returncode == 3
    assert "HTTP 401" in result.stderr and node.base_url in result.stderr
    assert "SOURCES__GAIA_SOURCE__API_KEY" in result.stderr and "Traceback" not in result.stderr
    assert KEY not in result.stdout + result.stderr
    assert node.total_requests() == 1


def test_failing_requests_exit_non_zero_and_say_where_to_look(make_node, tmp_path: Path) -> None:
    node = make_node("nexus", outage=502)
    env = {"SOURCES__GAIA_SOURCE__MAX_ATTEMPTS": "1", "SOURCES__GAIA_SOURCE__CHAT_MODEL": "Qwen3-4B"}
    (tmp_path / "prompts.txt").write_text("one\ntwo\nthree\n")
    result = run_cli(tmp_path, "--base-url", node.base_url, "--resources", "chat_completions",
                     "--prompts-file", "prompts.txt", env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "3 request(s) of this run are failing: SELECT * FROM gaia_data.failed_requests" in result.stderr
    # dlt's "no failed jobs" (load jobs) does not read as if all were well
    assert "contains no failed jobs" not in result.stdout
    assert "contains no failed load jobs, but 3 request(s) of this run are failing" in result.stdout
    assert counts(tmp_path / "gaia_pipeline.duckdb") == {"failed_requests": 3}
    allowed = run_cli(tmp_path, "--base-url", node.base_url, "--resources", "chat_completions",
                      "--prompts-file", "prompts.txt", "--allow-failed-requests", env=env)
    assert allowed.returncode == 0


@pytest.mark.parametrize(
    "args,message",
    [
        (["--resources", "chat,models"], "--resources: unknown resource(s) ['chat']"),
        (["--prompts-file", "missing.jsonl"], "prompts_file: file not found: missing.jsonl"),
        # a file to write into a folder that is not there fails before anything is sent, not after the load
        (["--summary-json", "out/summary.json"], "--summary-json out/summary.json: the folder "),
        (["--export-batch-output", "out/batch.jsonl"], "--export-batch-output out/batch.jsonl: the folder "),
        (["--summary-json", "."], "--summary-json .: is a folder"),
    ],
)
def test_bad_arguments(make_node, tmp_path: Path, args: List[str], message: str) -> None:
    node = make_node("rag")
    result = run_cli(tmp_path, "--base-url", node.base_url, *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    assert node.total_requests() == 0


HEAVY = ("dlt", "pyarrow", "pandas", "numpy", "duckdb", "httpx", "sqlglot", "ibis", "marimo", "gaia_source.emulator",
         "gaia_source.source")
"""What `--help` and an argument error must not import (they answer before the run needs any of it)."""

IMPORTED_AT_EXIT = """
import atexit, json, os, runpy, sys
atexit.register(lambda: print("MODULES " + json.dumps(sorted(sys.modules)), file=sys.stderr))
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("args,code,allowed", [
    (["--help"], 0, ()),
    (["--resources", "nope"], 2, ()),
    (["--demo", "--demo-flavor", "nope"], 2, ("gaia_source.emulator", "numpy")),  # the flavours are the emulator's
])
def test_help_and_argument_errors_import_nothing_heavy(tmp_path: Path, args: List[str], code: int,
                                                       allowed: tuple) -> None:
    import json
    import subprocess
    import sys

    from conftest import SCRIPT

    result = subprocess.run([sys.executable, "-c", IMPORTED_AT_EXIT, SCRIPT, *args], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == code, result.stderr
    modules = json.loads(result.stderr.split("MODULES ", 1)[1])
    heavy = tuple(h for h in HEAVY if h not in allowed)
    assert [m for m in modules if (m.split(".")[0] in heavy or m.startswith(heavy)) and not m.startswith(allowed)] == []
    if code == 0:
        assert "--resources" in result.stdout and "chat_completions_stream" in result.stdout
    else:
        assert "nope" in result.stderr


def test_the_run_exits_with_its_code_and_all_its_output(make_node, tmp_path: Path) -> None:
    """The CLI ends its process without Python's slow teardown: the output and the exit code must still be whole."""
    node = make_node("nexus")
    result = run_cli(tmp_path, "--base-url", node.base_url, "--resources", "models,info")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.rstrip().splitlines()
    assert lines[-6:-4] == [f"{'info':<34}{1:>10}{1:>12}", f"{'models':<34}{2:>10}{2:>12}"]
    # the last lines: how every request of the run ended (one per node's info and models)
    # columns: completed, failed, (empty: of the failed), refused, skipped, sends
    assert lines[-2].split() == ["info", "1", "0", "0", "0", "0", "1"] and lines[-1].split() == ["models", "1", "0", "0", "0", "0", "1"]
    assert counts(tmp_path / "gaia_pipeline.duckdb") == {"info": 1, "models": 2}


def test_temperature_and_seed_flags_are_sent_and_samples_count_the_seed_up(make_node, tmp_path: Path) -> None:
    node = make_node("llama", record_bodies=True)
    (tmp_path / "p.txt").write_text("What does dlt do?\n")
    result = run_cli(tmp_path, "--base-url", node.base_url, "--prompts-file", "p.txt", "--resources",
                     "chat_completions", "--samples", "3", "--seed", "5", "--temperature", "0.7")
    assert result.returncode == 0, result.stderr
    bodies = node.bodies("/v1/chat/completions")
    assert sorted(b["seed"] for b in bodies) == [5, 6, 7] and [b["temperature"] for b in bodies] == [0.7] * 3
    with duckdb.connect(str(tmp_path / "gaia_pipeline.duckdb"), read_only=True) as con:
        rows = con.execute("SELECT sample_index, params->>'$.seed', params->>'$.temperature' "
                           "FROM gaia_data.chat_completions ORDER BY 1").fetchall()
    assert rows == [(0, "5", "0.7"), (1, "6", "0.7"), (2, "7", "0.7")]


LACKING = {"rag": "responses", "llama": "retrieve", "nexus": "retrieve", "node06": "retrieve, responses",
           "amd": "embeddings, retrieve, responses"}


@pytest.mark.parametrize("flavor", ["rag", "llama", "nexus", "node06", "amd"])
def test_the_demo_has_its_own_dataset_says_nothing_alarming_and_runs_again(tmp_path: Path, flavor: str) -> None:
    first = run_cli(tmp_path, "--demo", "--demo-flavor", flavor)
    assert first.returncode == 0, first.stderr
    assert not [line for line in first.stderr.splitlines() if "WARNING" in line or "ERROR" in line], first.stderr
    [lacking] = [line for line in first.stdout.splitlines() if "not run:" in line]  # one line says what is not run
    assert lacking.endswith("not run: " + LACKING[flavor])
    db = tmp_path / "gaia_demo_pipeline.duckdb"
    assert not (tmp_path / "gaia_pipeline.duckdb").exists()
    loaded = counts(db, "gaia_demo")
    assert loaded["chat_completions"] == 3 and loaded["models"] >= 1
    # the demo's node listens on a new port each time: a second demo finds its answers loaded and sends nothing
    again = run_cli(tmp_path, "--demo", "--demo-flavor", flavor)
    assert again.returncode == 0, again.stderr
    assert not [line for line in again.stderr.splitlines() if "WARNING" in line or "ERROR" in line], again.stderr
    after = counts(db, "gaia_demo")
    assert after["chat_completions"] == 3 and after["info"] == 2  # one node snapshot per run, answers once


def test_a_demo_of_another_flavour_in_the_same_folder_loads_that_servers_answers(tmp_path: Path) -> None:
    """`--demo`, then `--demo --demo-flavor node06` where it ran: the node06 server's answers are loaded beside the rag
    server's (its replayed streams, its model), not found "already loaded"; each flavour's demo again sends nothing."""
    from gaia_source.emulator import NodeEmulator, answer_for
    from gaia_source.samples import SAMPLE_PROMPTS

    rag, node06 = (NodeEmulator(flavor=f).default_chat_model for f in ("rag", "node06"))
    assert run_cli(tmp_path, "--demo").returncode == 0
    switched = run_cli(tmp_path, "--demo", "--demo-flavor", "node06")
    assert switched.returncode == 0, switched.stderr
    printed = {m[0]: (int(m[1]), int(m[2])) for m in re.findall(
        r"^(\w+) +(\d+) +\d+ +\d+ +\d+ +(\d+) +\d+$", switched.stdout, re.M)}  # resource: (completed, skipped)
    assert printed["chat_completions"] == printed["chat_completions_stream"] == (3, 0), switched.stdout
    db = tmp_path / "gaia_demo_pipeline.duckdb"
    with duckdb.connect(str(db), read_only=True) as con:
        answers = con.execute("SELECT model, model_requested, content FROM gaia_demo.chat_completions "
                              "ORDER BY 1, 3").fetchall()
        streams = con.execute("SELECT model, count(*), count(*) FILTER (WHERE stream_mode = 'replayed') "
                              "FROM gaia_demo.chat_completions_stream GROUP BY ALL ORDER BY 1").fetchall()
    assert answers == sorted([(m, m, answer_for(p, m)) for m in (rag, node06) for p in SAMPLE_PROMPTS])
    assert streams == sorted([(rag, 3, 0), (node06, 3, 3)])  # gaia-nexus replays its streams
    for flavor in ("node06", "rag"):  # a demo again sends no prompt, whichever flavour
        again = run_cli(tmp_path, "--demo", "--demo-flavor", flavor)
        assert again.returncode == 0, again.stderr
        assert re.search(r"^chat_completions +0 +0 +0 +0 +3 +0$", again.stdout, re.M), again.stdout


def test_each_folder_has_its_own_duckdb_file_for_the_demo_and_says_where_a_run_loads(make_node, tmp_path: Path
                                                                                      ) -> None:
    """dlt keeps a pipeline's state once per user and its DuckDB file in the folder of its first run. The demo in a
    second folder is a demo of that folder (not "already loaded" into the first one's file), and works after the
    first folder is deleted; a real run says where it loads when that is another folder, and runs in a new folder
    once the old one is gone."""
    import shutil

    first, second, third = (tmp_path / name for name in ("first", "second", "third"))
    for folder in (first, second, third):
        folder.mkdir()

    def run_cli(folder: Path, *args: str) -> Any:  # in that folder, as a user would: dlt's project dir is the folder
        return run_in(folder, *args, env={"DLT_PROJECT_DIR": str(folder)})
    assert run_cli(first, "--demo").returncode == 0
    demo = run_cli(second, "--demo")
    assert demo.returncode == 0, demo.stderr
    assert re.search(r"^chat_completions +3 +0 +0 +0 +0 +3$", demo.stdout, re.M), demo.stdout  # sent, here
    for folder in (first, second):
        assert counts(folder / "gaia_demo_pipeline.duckdb", "gaia_demo")["chat_completions"] == 3
    listed = run_cli(second, "runs", "--demo", "--json")
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 1 and listed.stderr == "", listed.stderr
    shutil.rmtree(second)  # the folder the demo's state points at is gone: a demo elsewhere still works
    lost = run_cli(third, "runs", "--demo")  # (what to look at is gone with it: one line, not a traceback)
    assert lost.returncode == 2 and lost.stderr.splitlines() == [
        "error: pipeline 'gaia_demo_pipeline' has not loaded anything from this folder (its last run loaded into "
        f"{second / 'gaia_demo_pipeline.duckdb'}, which is not there any more)"], lost.stderr
    again = run_cli(third, "--demo")
    assert again.returncode == 0, again.stderr
    assert counts(third / "gaia_demo_pipeline.duckdb", "gaia_demo")["chat_completions"] == 3

    node = make_node("rag")
    (tmp_path / "p.txt").write_text("What is the capital of France?\n")
    args = ("--base-url", node.base_url, "--prompts-file", str(tmp_path / "p.txt"), "--resources", "chat_completions")
    assert run_cli(first, *args).returncode == 0
    elsewhere = run_cli(third, *args)  # a real pipeline keeps its file: the run says where it is
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert (f"note: pipeline gaia_pipeline loads into {first / 'gaia_pipeline.duckdb'}, in the folder of its first "
            "run") in elsewhere.stderr
    assert not (third / "gaia_pipeline.duckdb").exists()
    runs = run_cli(third, "runs", "--json")
    assert runs.returncode == 0 and len(runs.stdout.splitlines()) == 2
    assert f"note: reading {first / 'gaia_pipeline.duckdb'}" in runs.stderr
    shutil.rmtree(first)  # gone: the next run loads here instead of failing to open a file in a missing folder
    moved = run_cli(third, *args)
    assert moved.returncode == 0, moved.stderr
    assert counts(third / "gaia_pipeline.duckdb")["chat_completions"] == 1 and "note:" not in moved.stderr


def test_ctrl_c_ends_the_run_with_one_line_and_exit_130_and_the_next_run_finishes_it(make_node, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    from conftest import SCRIPT

    node = make_node("rag", latency_ms=100)  # one request at a time: 40 prompts take 4 s or more
    (tmp_path / "p.txt").write_text("".join(f"Question {i}?\n" for i in range(40)))
    args = ["--base-url", node.base_url, "--prompts-file", "p.txt", "--resources", "chat_completions"]
    run = subprocess.Popen([sys.executable, SCRIPT, *args], cwd=tmp_path, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                                             signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while node.requests_to("/v1/chat/completions") < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 130, out + err
    assert [line for line in err.splitlines() if not line.startswith("chat_completions ")] == [
        "error: interrupted (Ctrl-C): the next run loads what this one got to keep and sends the rest again"], err
    with duckdb.connect(str(tmp_path / "gaia_pipeline.duckdb"), read_only=True) as con:
        assert con.execute("SELECT exit_code, error FROM gaia_data.gaia_runs").fetchall() == [
            (130, "interrupted (Ctrl-C): the next run loads what this one got to keep and sends the rest again")]
    again = run_cli(tmp_path, *args)
    assert again.returncode == 0, again.stderr
    assert counts(tmp_path / "gaia_pipeline.duckdb")["chat_completions"] == 40


def test_ctrl_c_while_requests_are_in_flight_ends_the_run_at_once(make_node, tmp_path: Path) -> None:
    """Ctrl-C does not wait for the answers in flight (up to a request's timeout on a slow node)."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import SCRIPT

    node = make_node("nexus", latency_ms=6000)  # every answer takes 6 s
    (tmp_path / "p.txt").write_text("".join(f"Slow question {i}?\n" for i in range(8)))
    args = ["--base-url", node.base_url, "--prompts-file", "p.txt", "--resources", "chat_completions",
            "--timeout", "60", "--max-concurrency", "4", "--progress", "none"]
    run = subprocess.Popen([sys.executable, SCRIPT, *args], cwd=tmp_path, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                                             signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while node.requests_to("/v1/chat/completions") < 5 and time.monotonic() < deadline:  # the probe, then 4 at once
        time.sleep(0.05)
    time.sleep(0.5)
    interrupted = time.monotonic()
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 130, out + err
    assert time.monotonic() - interrupted < 3, "the run waited for the answers in flight"
    assert err.strip().splitlines()[-1].startswith("error: interrupted (Ctrl-C)"), err
