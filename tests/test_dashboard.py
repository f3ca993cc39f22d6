"""Where users look, used as users use it: dlt's dashboard and the marimo notebooks in a real headless Chromium (a query
run, buttons pressed, a dropdown and a slider changed, and the figures on screen checked against SQL on the same DuckDB
file), and the notebooks exported headless. Screenshots of each step go to ``GAIA_TEST_ARTIFACTS`` (CI's artifacts)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Sequence
from urllib.parse import urlsplit

import httpx
import pytest
from conftest import REPO_ROOT, free_port, query, run_cli

DEMO_PIPELINE = "gaia_demo_pipeline"
"""The pipeline `python gaia_pipeline.py --demo` loads; the tests find its dataset and DuckDB file through it."""
TABLES = ["chat_completions", "chat_completions_stream", "embeddings", "info", "models", "retrieve"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = os.environ.get("GAIA_TEST_ARTIFACTS")  # read at import: each test's environment is cleaned of GAIA_*


BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run"]

FAILURE_TEXT = re.compile(r"internal error|error executing|not able to read|has no attribute|fetch_arrow_table|"
                          r"traceback|stacktrace|an exception", re.IGNORECASE)
"""What a failed cell or query puts on a marimo page (in `marimo run` a cell that raises shows "An internal error
occurred"; dlt's dashboard shows "Error executing SQL query. …" with a stacktrace); never on a page that works."""

_TABLES_JS = """tables => tables.map(t => {
    const head = [...t.querySelectorAll('thead th')].map(c => c.innerText.trim().split('\\n')[0].trim());
    const rows = [...t.querySelectorAll('tbody tr')].map(r => Object.fromEntries(
        [...r.querySelectorAll('td')].map((c, i) => [head[i], c.innerText.trim()]).filter(([name]) => name)));
    return {head, rows};
})"""
"""Every table on the page (marimo's live in shadow roots, which Playwright's CSS locators pierce) as its header
(column names, without the dtype line marimo adds) and rows of ``{column: shown text}``."""


class _Kernel:
    """What a marimo page's kernel is doing, from its websocket: the status of every cell, and when it last said
    anything. A page that shows its tables is not done: the app runs a second time right after it loads, and a cell
    that runs again makes its widgets anew (text typed into the old editor is gone)."""

    def __init__(self, page: Any) -> None:
        self.cells: Dict[str, str] = {}
        self.heard = time.monotonic()
        page.on("websocket", lambda ws: ws.on("framereceived", self._frame))

    def _frame(self, payload: Any) -> None:
        self.heard = time.monotonic()
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            message = json.loads(payload)
            data = message.get("data") or {}
            if message.get("op") == "cell-op" and data.get("status"):
                self.cells[data["cell_id"]] = data["status"]

    def settle(self, page: Any, quiet: float = 1.0, timeout: float = 60) -> None:
        """Wait until every cell is idle and the kernel has been silent for ``quiet`` seconds."""
        deadline = time.monotonic() + timeout
        while not (self.cells and all(s == "idle" for s in self.cells.values())
                   and time.monotonic() - self.heard > quiet):
            assert time.monotonic() < deadline, f"the marimo kernel did not settle: {self.cells}"
            page.wait_for_timeout(100)  # Playwright delivers websocket events while it waits


def _require_chromium() -> None:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run installs Debian's chromium")
        pytest.skip("chromium is not installed (apt-get install chromium)")


def _artifacts(folder: Path) -> Path:
    """Where screenshots go: ``GAIA_TEST_ARTIFACTS`` (CI's artifacts), else the test's folder."""
    artifacts = Path(ARTIFACTS or folder)
    artifacts.mkdir(parents=True, exist_ok=True)
    return artifacts


def _failure_shot(page: Any, step: str) -> Path:
    """A screenshot of the page as a check failed, into the artifacts (CI keeps them), named after the step."""
    shot = _artifacts(Path(tempfile.gettempdir())) / f"failed-{re.sub(r'[^a-z0-9]+', '-', step.lower())}.png"
    page.screenshot(path=str(shot))
    return shot


def _assert_no_failure(page: Any, step: str) -> None:
    shown = page.get_by_text(FAILURE_TEXT)
    if shown.count():
        raise AssertionError(f"{step}: the page shows a failure: {shown.all_inner_texts()} ({_failure_shot(page, step)})")


def _press(page: Any, button: str) -> None:
    """Click a marimo button and see the click reach the kernel."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        with page.expect_request(lambda r: "set_ui_element_value" in r.url, timeout=10_000):
            page.get_by_role("button", name=button).click()
    except PlaywrightTimeout:
        raise AssertionError(f"clicking {button!r} sent nothing to the kernel ({_failure_shot(page, button)})") from None


def _shown_table(page: Any, columns: Sequence[str], step: str, until: Callable[[List[Dict[str, str]]], bool] = bool,
                 timeout: float = 30) -> List[Dict[str, str]]:
    """The rows of the table on the page that has ``columns``, once ``until(rows)`` holds; fails at once when the page
    shows a failure, and after ``timeout`` seconds with what it last saw."""
    deadline = time.monotonic() + timeout
    while True:
        _assert_no_failure(page, step)
        tables = page.locator("table").evaluate_all(_TABLES_JS)
        found = [t["rows"] for t in tables if set(columns) <= set(t["head"])]
        if found and until(found[0]):
            return found[0]
        if time.monotonic() > deadline:
            shot = _failure_shot(page, step)
            raise AssertionError(f"{step}: no table with columns {columns} as expected; saw {found} ({shot})")
        page.wait_for_timeout(200)


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


DASHBOARD_QUERY = "SELECT count(*) AS n_answers, min(content) AS first_answer FROM chat_completions"


def test_dashboard_runs_a_query_and_loads_row_counts_in_a_real_browser(demo_dir: Path) -> None:
    """dlt's dashboard on the demo's pipeline, used as a user does (see :func:`use_dashboard`)."""
    _require_chromium()
    import dlt
    import dlt._workspace.helpers.dashboard.dlt_dashboard as dashboard

    pipeline = dlt.attach(DEMO_PIPELINE)
    expected = dashboard_expectations(lambda sql: query(pipeline, sql))
    app = [dashboard.__file__, "--", "--pipeline", DEMO_PIPELINE, "--pipelines-dir", str(pipeline.pipelines_dir)]
    with _marimo_app(app, demo_dir) as url:
        use_dashboard(url, expected, _artifacts(demo_dir), "dashboard")


def dashboard_expectations(sql: Callable[[str], List[tuple]]) -> Dict[str, Any]:
    """What the dashboard must show, from the same SQL on the pipeline's dataset (``sql`` runs a statement there):
    DASHBOARD_QUERY's one row and every Gaia table's row count."""
    [(answers, first_answer)] = sql(DASHBOARD_QUERY)
    counts = {table: sql(f"SELECT count(*) FROM {table}")[0][0] for table in TABLES}
    assert answers > 0 and counts["embeddings"] > 0 and first_answer
    return {"row": {"n_answers": str(answers), "first_answer": first_answer}, "counts": counts}


def use_dashboard(url: str, expected: Dict[str, Any], artifacts: Path, shots: str) -> None:
    """Use dlt's dashboard at ``url`` (on the demo's pipeline) as a user does, in a real Chromium: the Gaia tables are
    listed; a SQL typed into the query editor runs with "Run Query" and its result is on screen; "Load row counts"
    shows each table's count. The values shown must be ``expected`` (see :func:`dashboard_expectations`), and no step
    may show a failure (DuckDB 2.0 broke both buttons with "'DuckDBPyConnection' object has no attribute
    'fetch_arrow_table'"). Screenshots go to ``artifacts`` as ``{shots}-N-….png``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 2200})  # marimo scrolls inside: one tall view
        kernel = _Kernel(page)
        page.goto(url, wait_until="domcontentloaded")
        # a JS app: wait for what it renders (locators reach into marimo's shadow DOM), then for its kernel to be done
        page.get_by_text(f"Pipeline {DEMO_PIPELINE}").first.wait_for(timeout=90_000)
        for table in TABLES:
            page.get_by_text(table, exact=True).first.wait_for(timeout=60_000)
        kernel.settle(page)

        # the query editor (CodeMirror) holds a default query: replace it, as a user types
        editor = page.locator(".cm-content").first
        editor.click()
        page.keyboard.press("Control+A")
        page.keyboard.insert_text(DASHBOARD_QUERY)
        with page.expect_response(lambda r: "set_ui_element_value" in r.url):  # the editor sends its text on blur
            editor.blur()
        kernel.settle(page)
        assert editor.inner_text() == DASHBOARD_QUERY
        page.screenshot(path=str(artifacts / f"{shots}-1-query-typed.png"))
        _press(page, "Run Query")
        [row] = _shown_table(page, ["n_answers", "first_answer"], "Run Query")
        page.get_by_text("Query History").first.wait_for()
        page.screenshot(path=str(artifacts / f"{shots}-2-query-result.png"))
        assert row == expected["row"]

        _press(page, "Load row counts")
        listed = _shown_table(page, ["name", "row_count"], "Load row counts")
        page.screenshot(path=str(artifacts / f"{shots}-3-row-counts.png"))
        shown = {r["name"]: r["row_count"] for r in listed}
        assert {t: shown.get(t) for t in TABLES} == {t: str(n) for t, n in expected["counts"].items()}
        _assert_no_failure(page, "after both buttons")
        browser.close()


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
    assert "3 prompts, 3 node/model targets" in html  # the 0.6 node's two models are two targets
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
    assert len(results[1]) == 3 and all(0 < rate < 1 for *_, rate, _ in results[1])  # per node and model answered
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


EVALUATION_PIPELINE = "gaia_pipeline"
"""The pipeline the notebooks open when ``GAIA_PIPELINE_NAME`` is not set."""
GRADED_PROMPTS = [  # the emulator's answers pass: by contains 2 of 4, by regex 3 of 4, exactly none
    {"custom_id": "capital", "prompt": "What is the capital of France?", "expected": "Paris"},
    {"custom_id": "dlt", "prompt": "What does dlt do?", "expected": "loads data"},
    {"custom_id": "river", "prompt": "Name the river of Paris", "expected": "^Seine$"},
    {"custom_id": "gaia", "prompt": "What is a Gaia node?", "expected": "^A Gaia node is an"},
]
GRADED_QUERIES = [  # an expected passage at rank 1, 2 and 3 of the emulator's knowledge base, and a miss
    {"custom_id": "located", "query": "Where is Paris located?", "expected_sources": ["northern central France"]},
    {"custom_id": "monuments", "query": "Tell me about Paris monuments", "expected_sources": ["Ports of Paris"]},
    {"custom_id": "transport", "query": "Paris river transport", "expected_sources": ["Le Havre"]},
    {"custom_id": "vectors", "query": "Which database stores vectors?", "expected_sources": ["Tokyo"]},
]


@pytest.fixture
def graded_run_dir(tmp_path: Path, make_node) -> Path:
    """A project folder holding one evaluation run whose figures move when a user changes a control: two nodes side
    by side, three sampled answers per prompt graded against expected answers, graded retrieval, and the embeddings of
    the sample texts (the explore notebook's similarity search)."""
    import dlt

    from gaia_source import gaia_source
    from gaia_source.samples import SAMPLE_TEXTS

    node_a, node_b = make_node("rag", sampling=True), make_node("node06", sampling=True)
    # the DuckDB file where a pipeline of this name looks by default: the notebooks open it by name only
    pipeline = dlt.pipeline(EVALUATION_PIPELINE, dataset_name="gaia_data",
                            destination=dlt.destinations.duckdb(str(tmp_path / f"{EVALUATION_PIPELINE}.duckdb")))
    source = gaia_source(base_url=[node_a.base_url, node_b.base_url], prompts=GRADED_PROMPTS, queries=GRADED_QUERIES,
                         texts=SAMPLE_TEXTS, compare_nodes=True, samples=3, temperature=0.7,
                         retry_backoff=0.01, retry_max_wait=0.05)  # node06 answers /v1/retrieve with a 405, retried
    pipeline.run(source.with_resources("chat_completions", "retrieve", "info", "embeddings")).raise_on_failed_jobs()
    return tmp_path


PASS_RATES_SQL = """
WITH latest AS (  -- the newest answer of each prompt, node and sample
    SELECT node_url, coalesce(trim(content), '') AS content, trim(expected) AS expected FROM chat_completions
    WHERE expected IS NOT NULL
    QUALIFY row_number() OVER (PARTITION BY prompt_id, node_url, sample_index ORDER BY requested_at DESC) = 1)
SELECT node_url, count(*),
       count(*) FILTER (WHERE contains(lower(content), lower(expected))),
       count(*) FILTER (WHERE regexp_matches(content, expected)),
       count(*) FILTER (WHERE lower(content) = lower(expected))
FROM latest GROUP BY node_url"""
MATCH_MODES = ("contains", "regex", "exact")


def _open_notebook(page: Any, url: str, heading: str) -> _Kernel:
    kernel = _Kernel(page)
    page.goto(url, wait_until="domcontentloaded")
    page.get_by_role("heading", name=heading).first.wait_for(timeout=90_000)
    kernel.settle(page)
    _assert_no_failure(page, f"opening the notebook at {heading!r}")
    return kernel


def _cell(page: Any, heading: str) -> Any:
    """The notebook cell whose output has this heading (for a screenshot of just that part of the page)."""
    return page.locator("div.marimo-cell").filter(has=page.get_by_role("heading", name=heading)).first


def _by_node(rows: List[Dict[str, str]], label: str, nodes: Sequence[str], *columns: str) -> Dict[str, tuple]:
    """Shown rows keyed by the node (base URL) whose host:port their ``label`` column names."""
    keyed: Dict[str, tuple] = {}
    for row in rows:
        named = [n for n in nodes if urlsplit(n).netloc in row[label]]
        assert len(named) == 1 and named[0] not in keyed, f"{row[label]!r} should name one node of {nodes}, once"
        keyed[named[0]] = tuple(float(row[c]) for c in columns)
    return keyed


def _close(shown: Dict[str, tuple], expected: Dict[str, tuple]) -> bool:
    return shown.keys() == expected.keys() and all(shown[k] == pytest.approx(expected[k]) for k in expected)


def test_evaluation_notebook_rerenders_pass_rates_and_hit_at_k_in_a_real_browser(graded_run_dir: Path) -> None:
    """notebooks/gaia_evaluate.py served with `marimo run`, used in Chromium: choosing another match mode in the pass
    rate dropdown (contains → regex → exact) and moving the hit@k slider (3 → 2 → 1) re-render the figures, each time
    to what SQL on the same DuckDB file says."""
    _require_chromium()
    import dlt
    from playwright.sync_api import sync_playwright

    pipeline = dlt.attach(EVALUATION_PIPELINE)
    graded = query(pipeline, PASS_RATES_SQL)
    nodes = sorted(node for node, *_ in graded)
    rates = {mode: {node: (answers, passed[i], passed[i] / answers) for node, answers, *passed in graded}
             for i, mode in enumerate(MATCH_MODES)}
    hit_at = {k: {node: (n, hits / n, mrr) for node, n, hits, mrr in query(
        pipeline, "SELECT node_url, count(*), count(*) FILTER (WHERE hit_rank <= ?), avg(coalesce(1.0 / hit_rank, 0)) "
                  "FROM retrieve WHERE hits IS NOT NULL GROUP BY node_url", k)} for k in (1, 2, 3)}
    assert len(nodes) == 2 and len({str(r) for r in rates.values()}) == 3  # every mode gives other figures
    assert hit_at[1] != hit_at[2] != hit_at[3]
    artifacts = _artifacts(graded_run_dir)

    notebook = REPO_ROOT / "notebooks" / "gaia_evaluate.py"
    with _marimo_app([str(notebook)], graded_run_dir) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1400})
        _open_notebook(page, url, "Retrieval hit@k and MRR")

        pass_cell = _cell(page, "Pass rate against expected answers")
        mode = page.locator("select", has=page.locator("option", has_text="regex"))
        for step, match_mode in enumerate(MATCH_MODES, 1):
            if match_mode != mode.input_value():
                mode.select_option(match_mode)
            expected = rates[match_mode]
            shown = _shown_table(page, ["target", "answers", "passed", "pass_rate"], f"pass rate by {match_mode}",
                                 until=lambda rows, want=expected: _by_node(rows, "target", nodes, "answers", "passed",
                                                                            "pass_rate") == want)
            assert _by_node(shown, "target", nodes, "answers", "passed", "pass_rate") == expected
            pass_cell.screenshot(path=str(artifacts / f"evaluate-{step}-pass-rate-{match_mode}.png"))

        retrieval_cell = _cell(page, "Retrieval hit@k and MRR")
        slider = page.get_by_role("slider").first
        assert slider.get_attribute("aria-valuenow") == "3"
        for step, k in enumerate((3, 2, 1), len(MATCH_MODES) + 1):
            if k != 3:
                slider.focus()
                page.keyboard.press("ArrowLeft")
            expected = hit_at[k]
            shown = _shown_table(page, ["node_url", "queries", "hit_at_k", "mrr"], f"hit@{k}",
                                 until=lambda rows, want=expected: _close(_by_node(rows, "node_url", nodes, "queries",
                                                                                   "hit_at_k", "mrr"), want))
            figures = _by_node(shown, "node_url", nodes, "queries", "hit_at_k", "mrr")
            assert _close(figures, expected), (figures, expected)
            assert slider.get_attribute("aria-valuenow") == str(k)
            retrieval_cell.screenshot(path=str(artifacts / f"evaluate-{step}-hit-at-{k}.png"))
        _assert_no_failure(page, "after the controls")
        browser.close()


def _nearest(vectors: Dict[str, Any], anchor: str, limit: int = 5) -> List[tuple]:
    """The texts most similar to ``anchor`` by cosine, computed here in numpy from the stored vectors."""
    import numpy as np

    a = vectors[anchor]
    scores = {text: float(np.dot(a, v) / (np.linalg.norm(a) * np.linalg.norm(v))) for text, v in vectors.items()}
    return sorted(scores.items(), key=lambda item: -item[1])[:limit]


def _similar_shown(rows: List[Dict[str, str]]) -> List[tuple]:
    return [(row["text"], float(row["similarity"])) for row in rows]


def _matches(shown: List[tuple], expected: List[tuple]) -> bool:
    return [t for t, _ in shown] == [t for t, _ in expected] and all(
        abs(s - e) <= 2e-4 for (_, s), (_, e) in zip(shown, expected, strict=True))  # DuckDB's float32, rounded to 4


def test_explore_notebook_rerenders_similarity_search_in_a_real_browser(graded_run_dir: Path) -> None:
    """notebooks/gaia_explore.py served with `marimo run`, used in Chromium: choosing another text in the similarity
    search dropdown re-renders the nearest texts and their cosine similarity, each time to what the stored vectors
    give (computed here in numpy from the same DuckDB file)."""
    _require_chromium()
    import dlt
    from conftest import as_vector
    from playwright.sync_api import sync_playwright

    pipeline = dlt.attach(EVALUATION_PIPELINE)
    stored = query(pipeline, "SELECT text, embedding FROM embeddings ORDER BY text")
    vectors = {text: as_vector(embedding) for text, embedding in stored}
    first, other = stored[0][0], stored[len(stored) // 2][0]  # the dropdown starts at the first text in SQL's order
    assert len(vectors) == len(stored) >= 6 and _nearest(vectors, first) != _nearest(vectors, other)
    artifacts = _artifacts(graded_run_dir)

    notebook = REPO_ROOT / "notebooks" / "gaia_explore.py"
    with _marimo_app([str(notebook)], graded_run_dir) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        _open_notebook(page, url, "Embedding similarity search (cosine, in SQL)")
        cell = _cell(page, "Embedding similarity search (cosine, in SQL)")
        anchor = page.locator("select", has=page.locator("option", has_text=other))
        for step, text in enumerate((first, other), 1):
            if step > 1:
                anchor.select_option(label=text)
            expected = _nearest(vectors, text)
            shown = _shown_table(page, ["text", "similarity"], f"texts most similar to {text!r}",
                                 until=lambda rows, want=expected: _matches(_similar_shown(rows), want))
            assert _matches(_similar_shown(shown), expected), (shown, expected)
            assert shown[0]["text"] == text and float(shown[0]["similarity"]) == pytest.approx(1.0)
            cell.screenshot(path=str(artifacts / f"explore-{step}-most-similar.png"))
        _assert_no_failure(page, "after the dropdown")
        browser.close()
