"""Where users look: dlt's dashboard in a real headless Chromium, and the marimo notebook run headless, on demo data."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, List

import httpx
import pytest
from conftest import REPO_ROOT, free_port, run_cli

TABLES = ["chat_completions", "chat_completions_stream", "embeddings", "info", "models", "retrieve"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = os.environ.get("GAIA_TEST_ARTIFACTS")  # read at import: each test's environment is cleaned of GAIA_*


BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run"]


@contextlib.contextmanager
def _marimo_app(app: List[str], cwd: Path) -> Iterator[str]:
    """``marimo run`` a notebook (``app``: its path, then its own arguments) headless; yields its URL once it answers."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "marimo", "run", app[0], "--host", "127.0.0.1", "--port",
                               str(port), "--headless", *app[1:]], cwd=cwd, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, f"marimo did not start {app[0]}"
            time.sleep(0.3)
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.terminate()
        server.wait(timeout=20)


@pytest.fixture
def demo_dir(tmp_path: Path) -> Path:
    """A folder where `python gaia_pipeline.py --demo` ran, as a user's project folder."""
    result = run_cli(tmp_path, "--demo")
    assert result.returncode == 0, result.stderr
    return tmp_path


def test_dashboard_shows_the_gaia_tables_in_a_real_browser(demo_dir: Path) -> None:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run installs Debian's chromium")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    import dlt._workspace.helpers.dashboard.dlt_dashboard as dashboard
    from playwright.sync_api import sync_playwright

    pipelines_dir = Path(os.environ["DLT_DATA_DIR"]) / "pipelines"
    app = [dashboard.__file__, "--", "--pipeline", "gaia_demo_pipeline", "--pipelines-dir", str(pipelines_dir)]
    with _marimo_app(app, demo_dir) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1200})
        page.goto(url, wait_until="domcontentloaded")
        # a JS app: wait for what it renders (locators reach into marimo's shadow DOM)
        page.get_by_text("Pipeline gaia_demo_pipeline").first.wait_for(timeout=90_000)
        for table in TABLES:
            page.get_by_text(table, exact=True).first.wait_for(timeout=60_000)
        shot = demo_dir / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 20_000


def test_notebook_runs_headless_on_demo_data(demo_dir: Path) -> None:
    notebook = REPO_ROOT / "notebooks" / "gaia_explore.py"
    report = demo_dir / "report.html"
    env = {**os.environ, "GAIA_PIPELINE_NAME": "gaia_demo_pipeline"}  # the demo's own pipeline
    result = subprocess.run([sys.executable, "-m", "marimo", "export", "html", str(notebook), "-o", str(report)],
                            cwd=demo_dir, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr  # marimo exits 1 when any cell fails
    html = report.read_text(encoding="utf-8")
    for heading in ("Token usage per request", "Latency per model over time", "The slowest requests",
                    "Time to first token", "Embedding similarity search (cosine, in SQL)", "Retrieval score distribution"):
        assert heading in html, heading
    # rendered outputs are escaped JSON in the export (the notebook's source is in there too, so match outputs only)
    for table, rows in (("chat_completions", 3), ("embeddings", 6), ("retrieve", 3)):
        assert f"{table}\\u003C/code\\u003E: {rows} rows" in html, table
    assert "\\u003Cem\\u003ENo " not in html  # no section rendered its "no rows yet" notice
    script = subprocess.run([sys.executable, str(notebook)], cwd=demo_dir, capture_output=True, text=True, timeout=300,
                            env=env)
    assert script.returncode == 0, script.stderr


EVALUATION_PROMPTS = [
    {"custom_id": "capital", "prompt": "What is the capital of France?", "expected": "Paris"},
    {"custom_id": "dlt", "prompt": "What does dlt do?", "expected": "loads data"},
    {"custom_id": "river", "prompt": "Name the river of Paris", "expected": "^Seine$"},
]
EVALUATION_QUERIES = [
    {"custom_id": "where", "query": "Where is Paris located?", "expected_sources": ["northern central France"]},
    {"custom_id": "seine", "query": "Where does the Seine flow?", "expected_sources": ["Le Havre"]},
    {"custom_id": "eiffel", "query": "When was the Eiffel Tower built?", "expected_sources": ["Tokyo"]},
]


@pytest.fixture
def evaluation_dir(tmp_path: Path, make_node) -> Path:
    """A project folder holding an evaluation run that exercises every page of notebooks/gaia_evaluate.py: two nodes
    side by side, three sampled answers per prompt, expected answers, graded retrieval, and a model swapped between
    two runs (drift)."""
    import dlt

    from gaia_source import gaia_source

    old, new = make_node("rag", sampling=True), make_node("node06", sampling=True)
    pipeline = dlt.pipeline("gaia_pipeline", destination=dlt.destinations.duckdb(str(tmp_path / "gaia_pipeline.duckdb")),
                            dataset_name="gaia_data")

    def run() -> None:
        source = gaia_source(base_url=[old.base_url, new.base_url], prompts=EVALUATION_PROMPTS,
                             queries=EVALUATION_QUERIES, compare_nodes=True, samples=3, temperature=0.7)
        pipeline.run(source.with_resources("chat_completions", "retrieve", "info")).raise_on_failed_jobs()

    run()
    new.loaded_model = "Qwen3-8B-Q4_K_M"  # the operator of the 0.6 node swaps its model: its prompts are sent again
    run()
    return tmp_path


def test_evaluation_notebook_runs_headless_and_shows_the_comparison_page(evaluation_dir: Path) -> None:
    notebook = REPO_ROOT / "notebooks" / "gaia_evaluate.py"
    report = evaluation_dir / "evaluation.html"
    result = subprocess.run([sys.executable, "-m", "marimo", "export", "html", str(notebook), "-o", str(report)],
                            cwd=evaluation_dir, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    html = report.read_text(encoding="utf-8")
    for heading in ("Answers side by side", "Pass rate against expected answers", "Variance across samples",
                    "Retrieval hit@k and MRR", "Drift: 3 prompt(s) answered under more than one node configuration"):
        assert heading in html, heading
    assert "\\u003Cem\\u003ENo " not in html  # every page had data: none rendered its "no rows yet" notice
    assert "3 prompts, 2 node/model targets" in html
    # retrieval: 2 of the 3 graded queries find an expected source at rank 1 (the third expects a passage not there)
    import duckdb

    with duckdb.connect(str(evaluation_dir / "gaia_pipeline.duckdb")) as db:
        ranks = db.sql("SELECT custom_id, hit_rank FROM gaia_data.retrieve ORDER BY custom_id").fetchall()
        assert ranks == [("eiffel", None), ("seine", 1), ("where", 1)]
        # README's evaluation SQL runs as printed, on this data
        readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
        section = readme.split("## Evaluating nodes and models", 1)[1].split("\n## ", 1)[0]
        statements = [q for q in section.split("```sql", 1)[1].split("```", 1)[0].split(";") if q.strip()]
        assert len(statements) == 5
        results = [db.sql(statement).fetchall() for statement in statements]
    assert len(results[1]) == 2 and all(0 < rate < 1 for _, _, rate, _ in results[1])  # pass rate per node
    assert len(results[4]) == 3 * 3  # drift: 3 prompts x 3 samples on the swapped node, before and after
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run installs Debian's chromium")
        return
    _screenshot_comparison_page(notebook, evaluation_dir)


def _screenshot_comparison_page(notebook: Path, folder: Path) -> None:
    """Serve the notebook as an app and take a full-page screenshot in headless Chromium: a CI artifact
    (``GAIA_TEST_ARTIFACTS``, which .ci/run sets) to look at."""
    from playwright.sync_api import sync_playwright

    artifacts = Path(ARTIFACTS or folder)
    artifacts.mkdir(parents=True, exist_ok=True)
    with _marimo_app([str(notebook)], folder) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 4400})  # marimo scrolls inside: one tall view
        page.goto(url, wait_until="domcontentloaded")
        for text in ("Answers side by side", "Pass rate against expected", "Retrieval hit@k and MRR",
                     "Drift: 3 prompt(s)"):
            page.get_by_text(text).first.wait_for(timeout=90_000)
        page.wait_for_timeout(1500)  # charts render after their data arrives
        shot = artifacts / "evaluation-comparison.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 50_000
