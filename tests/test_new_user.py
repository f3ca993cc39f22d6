"""A new user's path, end to end, as README tells it, from a copy of the checkout on a machine that has only Python:

1. README's Quick start block, as printed: a venv of its own with the `demo` extra (not `dev`), then `--demo`;
2. `dlt pipeline gaia_demo_pipeline show`, as printed, used in Chromium: Run Query and Load row counts;
3. README's "Querying" SQL on the demo's data;
4. `search` on the demo's vectors;
5. an evaluation of two nodes serving different models (expected answers, samples, graded queries), with its summary
   on stdout and as JSON;
6. `report`, opened offline in Chromium.

Every command runs in the user's venv, never in the test's. Screenshots of the dashboard and the report go to
``GAIA_TEST_ARTIFACTS``. The values checked come from the emulator's deterministic answers and from SQL on the DuckDB
file, not from the loader's own code.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, Dict, Iterator, List

import duckdb
import pytest
from conftest import EVAL_PROMPTS, EVAL_QUERIES, EVAL_TEXTS, REPO_ROOT, checkout, passes
from test_commands import render_offline
from test_dashboard import DEMO_PIPELINE, _artifacts, _require_chromium, dashboard_expectations, use_dashboard

from gaia_source.emulator import NodeEmulator

GRADED = [p for p in EVAL_PROMPTS if "expected" in p]
MODELS = ("Llama-3.2-3B-Instruct", "Qwen3-4B-Q5_K_M")
SAMPLES = 2


def readme_section_blocks(heading: str, language: str) -> List[str]:
    """The ```language blocks of README's section ``heading`` (up to the next heading of the same level)."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    level = heading.split(" ")[0]
    section = readme.split(f"\n{heading}\n", 1)[1]
    section = re.split(rf"\n{level} ", section, maxsplit=1)[0]
    return re.findall(rf"^```{language}\n(.*?)^```", section, re.S | re.M)


def user_env(home: Path) -> Dict[str, str]:
    """The environment of a user's shell: this test's venv is not on PATH, no project dir is forced (the folder's own
    `.dlt/` counts), dlt's data dir is the test's, and no browser opens."""
    ours = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k not in ("DLT_PROJECT_DIR", "VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != ours)
    env["BROWSER"] = "true"  # `dlt pipeline … show` opens a browser when it can: here, the test drives one
    env["DLT_DATA_DIR"] = str(home / "dlt_data")
    return env


def in_venv(env: Dict[str, str], venv: Path) -> Dict[str, str]:
    """``env`` after `. .venv/bin/activate`."""
    return {**env, "VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}{os.pathsep}{env['PATH']}"}


def shell(command: str, cwd: Path, env: Dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", "-e", "-c", command], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@contextlib.contextmanager
def background(command: str, cwd: Path, env: Dict[str, str], ready: Callable[[str], bool],
               timeout: float = 120) -> Iterator[str]:
    """Start ``command`` in its own process group; yields its output so far once a line of it is ``ready``; stops the
    whole group after."""
    process = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: List[str] = []
    found = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if ready(line):
                found.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert found.wait(timeout), f"{command} did not start: {''.join(lines)[-3000:]}"
        yield "".join(lines)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


@pytest.mark.timeout(1200)  # a venv installed from the registries (pip's cache makes it about a minute)
def test_a_new_users_path_from_install_to_an_offline_report(tmp_path: Path, make_node) -> None:
    _require_chromium()
    repo = checkout(tmp_path / "gaia-dlt")
    env = user_env(tmp_path)
    artifacts = _artifacts(tmp_path)

    # 1. Quick start's first block, line by line as printed; the dashboard's line blocks, so it starts in step 2
    [quick_start, *_] = readme_section_blocks("## Quick start", "bash")
    lines = quick_start.strip().splitlines()
    [show] = [line for line in lines if line.startswith("dlt pipeline ")]
    installed = shell("\n".join(line for line in lines if line != show), repo, env, timeout=900)
    assert '".[demo]"' in quick_start and "[dev]" not in quick_start  # the smallest install that runs both
    assert "Traceback" not in installed.stderr
    venv = repo / ".venv"
    user = in_venv(env, venv)
    assert not (venv / "bin" / "pytest").exists()  # the demo extra, not the test tools
    db = repo / f"{DEMO_PIPELINE}.duckdb"
    assert db.is_file() and "is LOADED and contains no failed jobs" in installed.stdout

    def sql(statement: str) -> List[tuple]:
        with duckdb.connect(str(db), read_only=True) as con:
            con.execute("SET search_path = 'gaia_demo'")
            return con.execute(statement).fetchall()

    # 2. the dashboard, as README starts it, used in a real browser
    expected = dashboard_expectations(sql)
    with background(show, repo, user, ready=lambda line: "http://" in line) as started:
        [url] = re.findall(r"https?://[\w.:-]+/?", started)[:1]
        use_dashboard(url.replace("localhost", "127.0.0.1"), expected, artifacts, "new-user-dashboard")

    # 3. README's "Querying" SQL on the demo's dataset (README: the demo loads `gaia_demo`)
    [querying] = readme_section_blocks("## Querying", "sql")
    statements = [s.strip() for s in re.split(r";[ \t]*$", querying, flags=re.M) if s.strip()]
    results = {s.splitlines()[0]: sql(s.replace("gaia_data.", "gaia_demo.")) for s in statements}
    assert len(results) == 4 and all(results.values()), results
    [per_model] = [rows for comment, rows in results.items() if "per model" in comment]
    assert sum(answers for _, answers, *_ in per_model) == sql(
        "SELECT count(*) FROM chat_completions WHERE status = 'completed'")[0][0]
    [nearest] = [rows for comment, rows in results.items() if "nearest texts" in comment]
    assert nearest[0][0] == sql("SELECT text FROM embeddings WHERE text_id = 'doc-1'")[0][0]
    assert nearest[0][1] == pytest.approx(1.0)

    # 4. search, as README's synopsis shows it after --demo
    found = shell('python gaia_pipeline.py search "Where is Paris located?" -k 3 --demo --json', repo, user)
    hits = [json.loads(line) for line in found.stdout.splitlines()]
    assert [h["text"] for h in hits][0] == "Paris is located in northern central France, on the river Seine."
    assert len(hits) == 3 and hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]

    # 5. an evaluation of two nodes serving different models
    a: NodeEmulator = make_node("rag", loaded_model=MODELS[0])
    b: NodeEmulator = make_node("rag", loaded_model=MODELS[1])
    for name, rows in (("prompts.jsonl", GRADED), ("queries.jsonl", EVAL_QUERIES), ("texts.jsonl", EVAL_TEXTS)):
        (repo / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    evaluated = shell(f"python gaia_pipeline.py --base-url {a.base_url},{b.base_url} --compare-nodes "
                      f"--samples {SAMPLES} --temperature 0.7 --seed 7 --prompts-file prompts.jsonl "
                      "--queries-file queries.jsonl --texts-file texts.jsonl --summary-json summary.json", repo, user)
    summary = json.loads((repo / "summary.json").read_text())
    rates = {(t["table"], t["node_url"], t["model"]): (t["graded"], t["passed"]) for t in summary["targets"]}
    assert rates == {(table, node.base_url, model): (SAMPLES * len(GRADED), SAMPLES * sum(passes(p, model)
                                                                                           for p in GRADED))
                     for table in ("chat_completions", "chat_completions_stream")
                     for node, model in ((a, MODELS[0]), (b, MODELS[1]))}
    assert "Evaluation of this run's prompts" in evaluated.stdout
    for _, model in ((a, MODELS[0]), (b, MODELS[1])):  # the stdout table names each target by what answered
        passed = SAMPLES * sum(passes(p, model) for p in GRADED)
        assert re.search(rf"│ chat_completions .*{re.escape(model)} .* {passed}/{SAMPLES * len(GRADED)} ",
                         evaluated.stdout), (model, evaluated.stdout)
    # retrieval: each node answered every graded query (pinned to it, not spread over the pool)
    assert sorted((r["node_url"], r["queries"]) for r in summary["retrieval"]) == sorted(
        [(a.base_url, len(EVAL_QUERIES)), (b.base_url, len(EVAL_QUERIES))])

    # 6. the report, opened offline
    shell("python gaia_pipeline.py report -o evaluation.html", repo, user)
    html = (repo / "evaluation.html").read_text(encoding="utf-8")
    for node, model in ((a, MODELS[0]), (b, MODELS[1])):
        assert re.search(rf"<td>{re.escape(node.base_url)}</td><td>{re.escape(model)}</td>", html), model
    render_offline(repo / "evaluation.html", "new-user-report.png")
