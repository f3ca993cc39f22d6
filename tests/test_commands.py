"""What the command line tells: the evaluation summary at the end of a run (stdout and --summary-json), and the runs,
search and report subcommands — through gaia_pipeline.py, on an evaluation run or demo data, values asserted."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Dict, List

import duckdb
import pytest
from conftest import EVAL_MODELS, EVAL_PROMPTS, EVAL_QUERIES, EVAL_TEXTS, EvaluationRun, free_port, passes, run_cli
from rich.console import Console

from gaia_source.commands import print_summary
from gaia_source.rows import source_matches
from gaia_source.samples import SAMPLE_TEXTS

GRADED = [p for p in EVAL_PROMPTS if "expected" in p]
SAMPLES = 3


def _node(url: str) -> str:
    return url.removeprefix("http://")


def _expected_retrieval(run: EvaluationRun) -> Dict[str, float]:
    """hit@1, hit@3 and MRR of EVAL_QUERIES as the emulator's knowledge base ranks them (the same on every node)."""
    ranks = []
    for q in EVAL_QUERIES:
        ranked = [p["source"] for p in run.a.retrieve(q["query"])]
        ranks.append(next((i for i, s in enumerate(ranked, 1) if any(source_matches(s, e) for e in q["expected_sources"])),
                          None))
    n = len(ranks)
    return {"hit_at_1": sum(1 for r in ranks if r == 1) / n, "hit_at_k": sum(1 for r in ranks if r and r <= 3) / n,
            "mrr": sum(1 / r for r in ranks if r) / n}


def _flaky_from_rows(run: EvaluationRun, table: str) -> Dict[tuple, int]:
    """(prompt custom_id, node) -> distinct answers among its samples under the node's current configuration, where
    more than one (computed here from the rows, independently of the summary's SQL)."""
    with duckdb.connect(str(run.db), read_only=True) as db:
        rows = db.sql(f"SELECT custom_id, node_url, info_hash, requested_at, content FROM gaia_data.{table} "
                      "WHERE status = 'completed'").fetchall()
    newest: Dict[str, Any] = {}
    for _, node, info_hash, at, _ in rows:
        if node not in newest or at > newest[node][1]:
            newest[node] = (info_hash, at)
    answers: Dict[tuple, set] = {}
    for custom_id, node, info_hash, _, content in rows:
        if info_hash == newest[node][0]:
            answers.setdefault((custom_id, node), set()).add(content)
    return {key: len(found) for key, found in answers.items() if len(found) > 1}


def test_an_evaluation_run_ends_with_its_summary_and_writes_it_as_json(evaluation_run: EvaluationRun) -> None:
    run = evaluation_run
    a, b = run.a.base_url, run.b.base_url
    summary = json.loads((run.folder / "summary.json").read_text())
    assert (summary["scope"], summary["evaluated"], summary["match"], summary["k"]) == (
        "run", True, "contains, case-insensitive", 3)
    # targets: the node and the model that ANSWERED (node B now serves Qwen), the name asked beside it; what each
    # node answers now counts (B's answers from before the swap are history: drift, below)
    expected = {(a, EVAL_MODELS[0]), (b, EVAL_MODELS[2])}
    flaky_count = {}
    for table in ("chat_completions", "chat_completions_stream"):
        targets = {(t["node_url"], t["model"]): t for t in summary["targets"] if t["table"] == table}
        assert set(targets) == expected
        for (_, model), t in targets.items():
            passed = SAMPLES * sum(passes(p, model) for p in GRADED)
            assert (t["graded"], t["passed"], t["samples"], t["model_requested"]) == (
                SAMPLES * len(GRADED), passed, SAMPLES, [EVAL_MODELS[0]])  # the first node's model was discovered
            assert t["pass_rate"] == passed / (SAMPLES * len(GRADED))
        assert targets[(a, EVAL_MODELS[0])]["passed"] == 6 and targets[(b, EVAL_MODELS[2])]["passed"] == 9
        # flaky: node A samples (a different ending per request); node B does not, and its model swap is not flakiness
        flaky = {(f["prompt"], f["node_url"]): f["distinct_answers"] for f in summary["flaky"] if f["table"] == table}
        assert flaky == _flaky_from_rows(run, table)
        assert all(node == a for _, node in flaky)
        assert targets[(a, EVAL_MODELS[0])]["flaky_prompts"] == flaky_count.setdefault(table, len(flaky))
        assert all(f["samples"] == SAMPLES for f in summary["flaky"])
        # drift: every answered prompt of node B, from its old model to the new one; none on node A
        drift = sorted((d["prompt"], d["node_url"], d["configurations"], tuple(d["models"]))
                       for d in summary["drift"] if d["table"] == table)
        assert drift == sorted((p["custom_id"], b, 2, (EVAL_MODELS[1], EVAL_MODELS[2])) for p in GRADED)
    # retrieval: every node answered the same three graded queries
    assert [(r["node_url"], r["queries"]) for r in summary["retrieval"]] == sorted([(a, 3), (b, 3)])
    for r in summary["retrieval"]:
        assert {k: r[k] for k in ("hit_at_1", "hit_at_k", "mrr")} == pytest.approx(_expected_retrieval(run))
    # the same on stdout, as a table
    out = run.runs[1].stdout
    assert "Evaluation of this run's prompts: an answer passes when it contains its expected answer (contains, " \
           "case-insensitive)" in out
    rows = [[cell.strip() for cell in line.strip("│ ").split("│")] for line in out.splitlines()
            if line.startswith("│ chat_completions ")]
    assert sorted(rows) == sorted([
        ["chat_completions", _node(a), EVAL_MODELS[0], EVAL_MODELS[0], "6/12 50%", "3",
         f"{flaky_count['chat_completions']}/4", "0"],
        ["chat_completions", _node(b), EVAL_MODELS[2], EVAL_MODELS[0], "9/12 75%", "3", "0/4", "4"]])
    assert f"drifted: capital on {_node(b)}: answered under 2 configurations ({EVAL_MODELS[1]} → {EVAL_MODELS[2]})" \
           in out
    retrieval = [[cell.strip() for cell in line.strip("│ ").split("│")] for line in out.splitlines()
                 if line.startswith("│ 127.0.0.1") and line.count("│") == 6]
    assert sorted(retrieval) == sorted([[_node(n), "3", "0.67", "0.67", "0.67"] for n in (a, b)])
    # the first run's summary: node B still answered with its first model
    assert re.search(rf"{re.escape(_node(b))} .*{EVAL_MODELS[1]}.* 6/12 50%", run.runs[0].stdout)


def test_flaky_and_drifted_lines_name_their_table_when_the_summary_has_two() -> None:
    target = {"node_url": "http://n:8080/v1", "model": "m", "model_requested": ["m"], "passed": 0, "graded": 0,
              "samples": 3, "sampled_prompts": 1, "flaky_prompts": 1, "drifted_prompts": 1}
    line = {"prompt": "rivers", "node_url": "http://n:8080/v1", "model": "m", "distinct_answers": 3, "samples": 3,
            "configurations": 2, "models": ["m", "q"]}
    tables = ("chat_completions", "chat_completions_stream")
    summary = {"scope": "run", "match": "contains, case-insensitive", "k": 3, "retrieval": [],
               "targets": [{**target, "table": t} for t in tables], "flaky": [{**line, "table": t} for t in tables],
               "drift": [{**line, "table": t} for t in tables]}
    out = Console(width=200, record=True)

    print_summary(summary, out)

    lines = [line for line in out.export_text().splitlines() if line.startswith(("flaky:", "drifted:"))]
    assert lines == [  # one line per table, each saying which: not the same line twice
        "flaky: rivers on n:8080/v1 · m: 3 distinct answers in 3 samples (chat_completions)",
        "flaky: rivers on n:8080/v1 · m: 3 distinct answers in 3 samples (chat_completions_stream)",
        "drifted: rivers on n:8080/v1: answered under 2 configurations (m → q) (chat_completions)",
        "drifted: rivers on n:8080/v1: answered under 2 configurations (m → q) (chat_completions_stream)"]


def test_a_run_that_evaluates_nothing_prints_no_summary(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "--demo", "--summary-json", "summary.json")
    assert result.returncode == 0, result.stderr
    assert "Evaluation of" not in result.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["evaluated"] is False and summary["flaky"] == summary["drift"] == summary["retrieval"] == []
    assert {(t["table"], t["answers"], t["graded"], t["pass_rate"]) for t in summary["targets"]} == {
        ("chat_completions", 3, 0, None), ("chat_completions_stream", 3, 0, None)}


def _runs(folder: Path, *args: str) -> List[Dict[str, Any]]:
    result = run_cli(folder, "runs", "--json", *args)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_runs_lists_past_runs_with_their_outcomes_and_exit_codes(evaluation_run: EvaluationRun) -> None:
    run = evaluation_run
    found = _runs(run.folder)
    assert [r["exit_code"] for r in found] == [0, 1]  # newest first; the first run had failing requests
    first, second = found[1], found[0]
    for entry, result in ((first, run.runs[0]), (second, run.runs[1])):
        assert entry["nodes"] == [run.a.base_url, run.b.base_url]
        assert entry["inputs"] == {"prompts": "prompts.jsonl", "texts": "texts.jsonl", "queries": "queries.jsonl"}
        assert "--compare-nodes" in entry["command"] and entry["started_at"] < entry["finished_at"]
        assert all(status == "loaded" for status in entry["loads"].values()) and len(entry["loads"]) == 1
        # the ledger's outcomes, as the run printed them
        printed = {m[0]: tuple(int(x) for x in (m[1], m[2], m[4], m[5], m[6])) for m in re.findall(
            r"^(\w+) +(\d+) +(\d+) +(\d+) +(\d+) +(\d+) +(\d+)$", result.stdout, re.M)}  # (empty) left out
        assert {o["resource"]: (o["completed"], o["failed"], o["refused"], o["skipped"], o["sends"])
                for o in entry["outcomes"]} == printed
        assert entry["failed"] == sum(v[1] for v in printed.values())
    # the broken prompt fails on both nodes, each sample, plain and streamed: 12 cells, in both runs
    assert first["failed"] == second["failed"] == 2 * 2 * SAMPLES
    # the first run loaded everything; the second only node B's answers under its new model (and the snapshots)
    assert first["row_counts"]["chat_completions"] == 2 * len(GRADED) * SAMPLES
    assert second["row_counts"]["chat_completions"] == len(GRADED) * SAMPLES
    assert first["row_counts"]["embeddings"] == len(EVAL_TEXTS) and "embeddings" not in second["row_counts"]
    assert first["rows"] == sum(first["row_counts"].values())
    # as a table
    table = run_cli(run.folder, "runs")
    assert table.returncode == 0, table.stderr
    rows = [line for line in table.stdout.splitlines() if "prompts: prompts.jsonl" in line]
    assert len(rows) == 2 and rows[0].rstrip(" │").endswith("0") and rows[1].rstrip(" │").endswith("1")
    assert "not recorded" not in table.stdout  # every load of this pipeline was a recorded run


def test_runs_also_lists_loads_that_no_command_line_run_recorded(evaluation_run: EvaluationRun) -> None:
    import dlt

    from gaia_source import gaia_source

    pipeline = dlt.pipeline("gaia_pipeline", destination=dlt.destinations.duckdb(str(evaluation_run.db)),
                            dataset_name="gaia_data")
    pipeline.run(gaia_source(base_url=evaluation_run.a.base_url).with_resources("models"))  # from Python
    found = _runs(evaluation_run.folder)
    assert [r["exit_code"] for r in found] == [None, 0, 1] and found[0]["run_id"] is None
    assert list(found[0]["loads"].values()) == ["loaded"]


@pytest.mark.parametrize("args", [["runs", "-n", "0"], ["report", "-k", "0"], ["search", "x", "-k", "-1"],
                                  ["runs", "-n", "many"]])
def test_counts_below_one_are_argument_errors(tmp_path: Path, args: List[str]) -> None:
    result = run_cli(tmp_path, *args)
    assert result.returncode == 2 and "expected a whole number >= 1" in result.stderr, result.stderr


def test_runs_of_a_pipeline_that_never_ran_here_is_an_error(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "runs", "--pipeline-name", "nothing_here")
    assert result.returncode == 2 and "has not loaded anything from this folder" in result.stderr
    # looking for the demo's runs where no demo ran does not make a later error say that --demo loaded something
    assert run_cli(tmp_path, "runs", "--demo").returncode == 2
    again = run_cli(tmp_path, "runs")
    assert again.returncode == 2 and "--demo" not in again.stderr, again.stderr


def test_runs_lists_the_runs_that_stopped_before_loading_and_says_why(make_node, tmp_path: Path) -> None:
    """A wrong URL and a closed port stop a run before its first load: `runs` still lists them, each with the line
    it stopped with; a right run after them is listed too."""
    node = make_node("rag")
    (tmp_path / "p.txt").write_text("one\ntwo\n")
    closed = f"http://127.0.0.1:{free_port()}/v1"
    stopped = [run_cli(tmp_path, "--base-url", url, "--prompts-file", "p.txt")
               for url in (closed, f"{node.root_url}/api")]
    errors = []
    for result in stopped:
        assert result.returncode == 1, result.stdout + result.stderr
        [line] = result.stderr.splitlines()
        errors.append(line.removeprefix("error: "))
    listed = _runs(tmp_path)  # before any load: the pipeline has no tables yet
    assert [(r["exit_code"], r["error"], r["nodes"], r["completed"]) for r in listed] == [
        (1, errors[1], [f"{node.root_url}/api/v1"], 0), (1, errors[0], [closed], 0)]
    assert errors[0].startswith(f"cannot connect to {closed}") and "is not an OpenAI-compatible API" in errors[1]
    table = run_cli(tmp_path, "runs")
    assert table.returncode == 0, table.stderr
    stopped = [line for line in table.stdout.splitlines() if " stopped: " in line]  # under the table, one line each
    assert [line.split(" stopped: ", 1)[1] for line in stopped] == [errors[1], errors[0]]
    right = run_cli(tmp_path, "--base-url", node.base_url, "--prompts-file", "p.txt")
    assert right.returncode == 0, right.stderr
    assert [(r["exit_code"], r["error"]) for r in _runs(tmp_path)] == [(0, None), (1, errors[1]), (1, errors[0])]


def test_a_runs_table_of_an_older_version_gets_the_error_column(make_node, tmp_path: Path) -> None:
    node = make_node("rag")
    with duckdb.connect(str(tmp_path / "gaia_pipeline.duckdb")) as db:  # gaia_runs as the first version wrote it
        db.execute("CREATE SCHEMA gaia_data")
        db.execute("CREATE TABLE gaia_data.gaia_runs (run_id varchar, started_at timestamp with time zone, "
                   "finished_at timestamp with time zone, command varchar, exit_code bigint)")
    result = run_cli(tmp_path, "--base-url", f"{node.root_url}/api", "--resources", "models")
    assert result.returncode == 1
    with duckdb.connect(str(tmp_path / "gaia_pipeline.duckdb"), read_only=True) as db:
        assert db.execute("SELECT exit_code, error FROM gaia_data.gaia_runs").fetchall() == [
            (1, result.stderr.strip().removeprefix("error: "))]


def test_report_into_a_folder_that_is_not_there_is_a_clear_error(tmp_path: Path) -> None:
    assert run_cli(tmp_path, "--demo").returncode == 0
    result = run_cli(tmp_path, "report", "--demo", "-o", "out/report.html")
    assert result.returncode == 2 and result.stderr.startswith("error: -o out/report.html: the folder "), result.stderr
    assert not (tmp_path / "out").exists()


def test_search_before_any_text_is_embedded_says_so_without_asking_the_node(make_node, tmp_path: Path) -> None:
    node = make_node("rag")
    (tmp_path / "p.txt").write_text("What is the capital of France?\n")
    assert run_cli(tmp_path, "--base-url", node.base_url, "--prompts-file", "p.txt").returncode == 0
    before = node.total_requests()
    result = run_cli(tmp_path, "search", "Paris", "--base-url", node.base_url)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        "error: no texts are embedded in dataset 'gaia_data' of pipeline 'gaia_pipeline' yet: load some first "
        "(gaia_pipeline.py --texts-file FILE, or texts=[…] in Python), then search them"]
    assert node.total_requests() == before  # the query was not embedded for nothing


def test_search_through_a_node_of_another_embedding_model_says_which_models_are_loaded(tmp_path: Path) -> None:
    """The demo's texts are embedded by the rag server's model; a query embedded by the llama server's (another name,
    the same dimension) is compared with none of them: the search says so, and names what the table holds."""
    assert run_cli(tmp_path, "--demo").returncode == 0
    result = run_cli(tmp_path, "search", "Where is Paris located?", "--demo", "--demo-flavor", "llama")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "No loaded texts were embedded by nomic-embed-text-v1.5 (768 dimensions), the model the query was embedded "
        "with; the embeddings table holds Nomic-embed-text-v1.5 (768 dimensions, 6 texts). Search through a node "
        "that serves one of them (--base-url, --node-id)."]
    filtered = run_cli(tmp_path, "search", "Where is Paris located?", "--demo", "--where", "lang=en")
    assert filtered.returncode == 0 and filtered.stdout == "No loaded texts match the --where filter.\n"


def test_search_prints_the_loaded_texts_nearest_to_a_query(tmp_path: Path) -> None:
    assert run_cli(tmp_path, "--demo").returncode == 0
    result = run_cli(tmp_path, "search", "Where is Paris located?", "-k", "3", "--demo", "--json")
    assert result.returncode == 0, result.stderr
    hits = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(hits) == 3 and hits[0]["text"] == SAMPLE_TEXTS[0] == "Paris is located in northern central France, " \
                                                                  "on the river Seine."
    assert hits[0]["score"] > hits[1]["score"] >= hits[2]["score"]
    table = run_cli(tmp_path, "search", "Where is Paris located?", "-k", "1", "--demo")
    assert table.returncode == 0, table.stderr
    assert SAMPLE_TEXTS[0] in table.stdout and f"{hits[0]['score']:.3f}" in table.stdout


def test_after_the_demo_runs_and_report_look_at_it_with_demo(tmp_path: Path) -> None:
    """A new user's next commands after `--demo`: without --demo, `runs` says where the demo's data is; with it,
    `runs` lists the demo's run and `report` writes its page."""
    assert run_cli(tmp_path, "--demo").returncode == 0
    plain = run_cli(tmp_path, "runs")
    assert plain.returncode == 2 and "add --demo to look at it" in plain.stderr
    listed = run_cli(tmp_path, "runs", "--demo", "--json")
    assert listed.returncode == 0, listed.stderr
    [run] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (run["exit_code"], run["completed"], run["failed"]) == (0, 3 + 3 + 6 + 3 + 1 + 1, 0), run
    report = run_cli(tmp_path, "report", "--demo", "-o", "demo.html")
    assert report.returncode == 0, report.stderr
    assert report.stdout == ("wrote demo.html: 1 node/model target(s) (0 graded), 0 node(s) with graded retrieval; "
                             "flaky prompts: none; drifted prompts: none\n")
    assert "Pass rate" in (tmp_path / "demo.html").read_text(encoding="utf-8")


def test_search_prefilters_with_where(evaluation_run: EvaluationRun) -> None:
    def search(*args: str) -> List[Dict[str, Any]]:
        result = run_cli(evaluation_run.folder, "search", "When was the Eiffel Tower built?", "--base-url",
                         evaluation_run.a.base_url, "--json", *args)
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()]

    assert [h["text_id"] for h in search("-k", "1")] == ["doc-2"]
    assert [h["text_id"] for h in search("-k", "5", "--where", "lang=fr")] == ["doc-4"]
    assert [h["text_id"] for h in search("-k", "5", "--where", "lang=en", "--where", "text_id=doc-3")] == ["doc-3"]
    table = run_cli(evaluation_run.folder, "search", "dlt", "--base-url", evaluation_run.a.base_url, "--where",
                    "text_id=doc-3")
    assert table.returncode == 0 and EVAL_TEXTS[2]["text"] in table.stdout  # "[guide]" is text, not Rich markup
    bad = run_cli(evaluation_run.folder, "search", "x", "--where", "lang")
    assert bad.returncode == 2 and "expected NAME=VALUE" in bad.stderr


def test_report_is_a_static_offline_page_with_the_pass_rates(evaluation_run: EvaluationRun) -> None:
    run = evaluation_run
    result = run_cli(run.folder, "report", "-o", "evaluation.html")
    assert result.returncode == 0, result.stderr
    # what it says it wrote counts node/model targets and prompts, not their rows in each chat table
    said = re.fullmatch(r"wrote evaluation\.html: 3 node/model target\(s\) \(3 graded\), 2 node\(s\) with graded "
                        r"retrieval; flaky prompts: (.+); drifted prompts: 4 in chat_completions, 4 in "
                        r"chat_completions_stream\n", result.stdout)  # B's four answered prompts, in both tables
    assert said, result.stdout
    flaky = dict(reversed(part.split(" in ")) for part in said[1].split(", "))  # node A samples: drawn, at most 4
    assert set(flaky) <= {"chat_completions", "chat_completions_stream"} and all(int(n) <= 4 for n in flaky.values())
    html = (run.folder / "evaluation.html").read_text(encoding="utf-8")
    # over the whole dataset: node B's old model is a target of its own
    for node, model, passed in ((run.a, EVAL_MODELS[0], 6), (run.b, EVAL_MODELS[1], 6), (run.b, EVAL_MODELS[2], 9)):
        row = re.search(rf"<tr><td>chat_completions</td><td>{re.escape(node.base_url)}</td><td>{model}</td>"
                        rf"<td>{EVAL_MODELS[0]}</td><td class=\"num\">12</td><td class=\"num\">(\d+)</td>"
                        r"<td class=\"num\">([\d.]+%)</td>", html)
        assert row and (int(row[1]), row[2]) == (passed, f"{passed / 12:.1%}"), model
    for heading in ("Pass rate against expected answers", "Answers side by side", "Flaky prompts",
                    "Retrieval hit@1, hit@3 and MRR", "Drift: prompts answered under more than one node configuration"):
        assert heading in html
    assert "<em>No " not in html  # every section had data
    assert f"<td>{EVAL_MODELS[1]}</td><td>{EVAL_MODELS[2]}</td>" in html  # drift: model before, model after
    # nothing from the network, no script, no code
    assert not re.search(r"<script|<link|<iframe|<img|@import|url\(|src=|href=", html, re.I), "external reference"
    assert "SELECT" not in html and "import " not in html
    render_offline(run.folder / "evaluation.html", "evaluation-report.png")


def render_offline(page: Path, shot_name: str) -> None:
    """Open the report in headless Chromium with every non-file request refused: it renders, and asks for nothing. Its
    screenshot goes to the artifacts as ``shot_name``."""
    from test_dashboard import ARTIFACTS, BROWSER_ARGS, CHROMIUM

    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run installs Debian's chromium")
        return
    from playwright.sync_api import sync_playwright

    asked: List[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        context = browser.new_context(offline=True)
        page_ = context.new_page()
        page_.route(re.compile(r"^(?!file:).*"), lambda route: (asked.append(route.request.url), route.abort()))
        page_.goto(page.as_uri())
        assert page_.get_by_text("Pass rate per node and model").first.is_visible()
        assert page_.locator("svg rect").count() >= 3
        shot = Path(ARTIFACTS or page.parent) / shot_name
        shot.parent.mkdir(parents=True, exist_ok=True)
        page_.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert asked == []


def test_subcommands_leave_the_load_flags_as_they_were(tmp_path: Path) -> None:
    helped = run_cli(tmp_path, "--help")
    assert helped.returncode == 0 and "--summary-json PATH" in helped.stdout and "runs, search, report" in helped.stdout
    for command in ("runs", "search", "report"):
        result = run_cli(tmp_path, command, "--help")
        assert result.returncode == 0 and f"gaia_pipeline.py {command}" in result.stdout
    wrong = run_cli(tmp_path, "--resources", "nope")
    assert wrong.returncode == 2 and "unknown resource" in wrong.stderr


def test_gaia_runs_is_written_on_postgresql(make_node, pgvector_server: str, tmp_path: Path) -> None:
    import psycopg2

    node = make_node("rag")
    dataset = "gaia_runs_pg"
    (tmp_path / "prompts.txt").write_text("What is the capital of France?\n")
    env = {"DESTINATION__POSTGRES__CREDENTIALS": pgvector_server}
    args = ("--destination", "postgres", "--dataset-name", dataset)
    try:
        result = run_cli(tmp_path, "--base-url", node.base_url, "--prompts-file", "prompts.txt", "--resources",
                         "chat_completions", *args, env=env)
        assert result.returncode == 0, result.stderr
        listed = run_cli(tmp_path, "runs", "--json", *args, env=env)
        assert listed.returncode == 0, listed.stderr
        [entry] = [json.loads(line) for line in listed.stdout.splitlines()]
        assert (entry["exit_code"], entry["completed"], entry["nodes"], entry["row_counts"]) == (
            0, 1, [node.base_url], {"chat_completions": 1})
    finally:
        with psycopg2.connect(pgvector_server) as con, con.cursor() as cur:
            cur.execute(f"DROP SCHEMA IF EXISTS {dataset} CASCADE")
            cur.execute(f"DROP SCHEMA IF EXISTS {dataset}_staging CASCADE")


def test_a_password_in_a_node_url_is_not_kept_in_the_runs_table(make_node, tmp_path: Path) -> None:
    node = make_node("rag")
    (tmp_path / "p.txt").write_text("hi\n")
    url = node.base_url.replace("http://", "http://gaia:S3cret-pw@")
    assert run_cli(tmp_path, "--base-url", url, "--prompts-file", "p.txt", "--resources", "chat_completions"
                   ).returncode == 0
    [run] = _runs(tmp_path)
    assert run["command"] == (f"gaia_pipeline.py --base-url {node.base_url.replace('http://', 'http://***@')} "
                              "--prompts-file p.txt --resources chat_completions")
    assert run["nodes"] == [node.base_url]
    with duckdb.connect(str(tmp_path / "gaia_pipeline.duckdb"), read_only=True) as db:
        tables = db.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'gaia_data'"
                            ).fetchall()
        assert not [t for (t,) in tables if "S3cret" in str(db.execute(f"SELECT * FROM gaia_data.{t}").fetchall())]
    assert "S3cret" not in run_cli(tmp_path, "runs").stdout
