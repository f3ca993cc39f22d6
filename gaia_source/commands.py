"""What the command line does besides loading: the ``runs``, ``search`` and ``report`` subcommands, and what a run
tells at its end (the evaluation summary on stdout and in ``--summary-json``, its row in ``gaia_runs``).

``gaia_pipeline.py`` parses its own flags and hands a first positional argument that names a subcommand to
:func:`main`. Imports here are light (argparse, Rich); dlt and the package's heavier modules load when a command
runs, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import logging
import re
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence

import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import GaiaConfigError, GaiaError
from .settings import DATASET_NAME, DEMO_PIPELINE_NAME, PIPELINE_NAME, SUBCOMMANDS

if TYPE_CHECKING:
    import dlt

    from .ledger import Ledger

logger = logging.getLogger("gaia_source")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
SHOWN = 5
"""Flaky and drifted prompts listed by name under the summary table (``--summary-json`` has all)."""


def console() -> Console:
    """A Rich console on stdout: as wide as the terminal, or 160 columns when stdout is a file or a pipe."""
    return Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def check_output(flag: str, path: Optional[str]) -> None:
    """Before anything is sent or read: the folder ``path`` (a file to write, given with ``flag``) goes into exists.
    Raises ``GaiaConfigError`` naming it, so that a run never loads and then fails to write what it was asked for."""
    if path is None:
        return
    import os.path

    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise GaiaConfigError(f"{flag} {path}: the folder {folder} does not exist; create it first")
    if os.path.isdir(path):
        raise GaiaConfigError(f"{flag} {path}: is a folder; give a file name")


def duckdb_elsewhere(pipeline: dlt.Pipeline) -> Optional[str]:
    """The DuckDB file of ``pipeline`` when it is dlt's default file of another folder than this one, else None.

    dlt keeps a pipeline's state once per user (``~/.dlt/pipelines/<name>``) and puts its default DuckDB file in the
    folder of the pipeline's first run, so the same command in another folder (another clone, a fresh folder to try
    the demo) loads into, and reads, that folder's file — or fails when that folder is gone."""
    import os

    import dlt

    try:
        first = pipeline.get_local_state_val("initial_cwd")
    except KeyError:
        return None
    here = dlt.current.run_context().local_dir  # where dlt puts local files now: this folder (or DLT_PROJECT_DIR)
    if pipeline.destination is None or pipeline.destination.destination_name != "duckdb" or (
            os.path.abspath(first) == os.path.abspath(here)):
        return None
    try:
        credentials: Any = pipeline.destination_client().config.credentials
        database = str(credentials.database)
    except Exception:
        return None
    default = os.path.join(first, f"{pipeline.pipeline_name}.duckdb")
    return database if os.path.abspath(database) == os.path.abspath(default) else None  # else a configured file


def duckdb_here(make: Callable[[], dlt.Pipeline], demo: bool) -> dlt.Pipeline:
    """Before a run: keep the run's default DuckDB file in this folder (see :func:`duckdb_elsewhere`) where that cannot
    lose anything — for the demo (its state is the script's), or when the other folder is gone — by dropping the
    pipeline's local state, which dlt then restores from this folder's file if it has one. A pending load package
    (an interrupted run's) keeps it where it is. Otherwise one note says where the file is. ``make`` makes the
    pipeline (again, after a drop: dlt binds the file's folder into the destination when it makes it)."""
    import os

    pipeline = make()
    elsewhere = duckdb_elsewhere(pipeline)
    if elsewhere is None:
        return pipeline
    gone = not os.path.isdir(os.path.dirname(elsewhere))
    if (demo or gone) and not pipeline.has_pending_data:
        pipeline.drop()
        return make()
    print(f"note: pipeline {pipeline.pipeline_name} loads into {elsewhere}, in the folder of its first run (dlt "
          f"keeps a pipeline's state per user, in {pipeline.pipelines_dir}); run it there, or give it another "
          "--pipeline-name here", file=sys.stderr)
    return pipeline


# --- the evaluation summary at the end of a run -------------------------------------------------------------------


def _rate(passed: int, graded: int) -> str:
    return f"{passed}/{graded} {passed / graded:.0%}" if graded else "—"


def _node(url: Optional[str]) -> str:
    return (url or "?").removeprefix("http://").removeprefix("https://")


def print_summary(summary: Mapping[str, Any], out: Optional[Console] = None) -> None:
    """Print an evaluation summary (:func:`~gaia_source.evaluation.summarize`) as compact Rich tables."""
    out = out or console()
    targets, several = summary["targets"], len({t["table"] for t in summary["targets"]}) > 1
    scope = "this run's prompts" if summary["scope"] == "run" else "the dataset"
    if targets:
        table = Table(title=f"Evaluation of {scope}: an answer passes when it contains its expected answer "
                            f"({summary['match']})", title_justify="left")
        if several:
            table.add_column("table")
        for name in ("node", "model (answered)", "model requested"):
            table.add_column(name)
        for name in ("passed", "samples", "flaky", "drifted"):
            table.add_column(name, justify="right")
        for t in targets:
            sampled = t.get("sampled_prompts", 0)
            table.add_row(*([t["table"]] if several else []), escape(_node(t["node_url"])), escape(t["model"] or "?"),
                          escape(", ".join(t["model_requested"]) or "—"), _rate(t["passed"], t["graded"]),
                          str(t["samples"]),
                          f"{t['flaky_prompts']}/{sampled}" if sampled else "—", str(t["drifted_prompts"]))
        out.print(table)
    if summary["retrieval"]:
        k = summary["k"]
        table = Table(title="Retrieval (queries with expected_sources)", title_justify="left")
        table.add_column("node")
        for name in ("queries", "hit@1", f"hit@{k}", "MRR"):
            table.add_column(name, justify="right")
        for r in summary["retrieval"]:
            table.add_row(escape(_node(r["node_url"])), str(r["queries"]), f"{r['hit_at_1']:.2f}",
                          f"{r['hit_at_k']:.2f}", f"{r['mrr']:.2f}")
        out.print(table)

    def which(line: Mapping[str, Any]) -> str:  # the same prompt in two tables: two lines that say which
        return f" ({line['table']})" if several else ""

    for f in summary["flaky"][:SHOWN]:
        out.print(f"flaky: {f['prompt']} on {_node(f['node_url'])} · {f['model']}: {f['distinct_answers']} distinct "
                  f"answers in {f['samples']} samples{which(f)}", markup=False)
    for d in summary["drift"][:SHOWN]:
        out.print(f"drifted: {d['prompt']} on {_node(d['node_url'])}: answered under {d['configurations']} "
                  f"configurations ({' → '.join(m or '?' for m in d['models'])}){which(d)}", markup=False)
    hidden = max(0, len(summary["flaky"]) - SHOWN) + max(0, len(summary["drift"]) - SHOWN)
    if hidden:
        out.print(f"… and {hidden} more (--summary-json PATH writes them all)", markup=False)


def evaluate_run(pipeline: dlt.Pipeline, ledger: Ledger, summary_json: Optional[str]) -> Optional[Dict[str, Any]]:
    """The end of a run: its evaluation summary printed when it evaluates something (expected answers, samples,
    graded queries, drift), and written to ``summary_json`` when asked. Never changes the run's outcome: a summary
    that cannot be computed is a warning."""
    from .evaluation import run_scope, summarize

    try:
        summary = summarize(pipeline, run_scope(ledger))
    except Exception as exc:  # the summary reads the destination; the run's exit code does not depend on it
        logger.warning("could not compute the evaluation summary: %s", " ".join(str(exc).split())[:300])
        return None
    if summary["evaluated"]:
        print()
        print_summary(summary)
    if summary_json:
        with open(summary_json, "wb") as fh:
            fh.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
    return summary


def run_row_counts(pipeline: dlt.Pipeline, ledger: Optional[Ledger]) -> Dict[str, int]:
    """Rows the run normalized per table: over every part it loaded (the ledger's), else from dlt's last trace (a run
    stopped before its first load ended)."""
    if ledger is not None and ledger.load_ids:
        return dict(ledger.row_counts)
    trace = pipeline.last_trace
    normalized = trace.last_normalize_info if trace is not None else None
    try:
        counts = normalized.row_counts if normalized else {}
    except AssertionError:  # dlt 1.31: a normalize stopped midway (Ctrl-C) left two metrics for its load id
        counts = {}
    return {table: count for table, count in counts.items() if not table.startswith("_dlt")}


def record_run(
    pipeline: dlt.Pipeline,
    ledger: Optional[Ledger],
    load_ids: Sequence[str],
    *,
    started_at: datetime,
    argv: Sequence[str],
    source_args: Mapping[str, Any],
    resources: Sequence[str],
    exit_code: int,
    error: Optional[str] = None,
) -> None:
    """Write the run's row into ``gaia_runs`` (see :mod:`gaia_source.runs`); ``error``: the line it stopped with."""
    from .config import resolve_node_settings
    from .runs import run_row, write_run

    try:
        nodes = resolve_node_settings(base_url=source_args.get("base_url"), node_id=source_args.get("node_id")).urls()
    except GaiaError:
        nodes = []
    inputs: Dict[str, Any] = {}
    for kind in ("prompts", "texts", "queries"):
        if source_args.get(f"{kind}_file"):
            inputs[kind] = source_args[f"{kind}_file"]
        elif source_args.get(kind):
            inputs[kind] = f"{len(source_args[kind])} given"
    row_counts = run_row_counts(pipeline, ledger)
    # the command line as typed, but never a URL's user:password (the node URLs never keep it either)
    command = re.sub(r"(://)[^/@\s]*@", r"\1***@", shlex.join(["gaia_pipeline.py", *argv]))
    row = run_row(ledger, started_at=started_at, command=command, nodes=nodes,
                  resources=resources, inputs=inputs, load_ids=load_ids, row_counts=row_counts, exit_code=exit_code,
                  error=error)
    write_run(pipeline, row)


# --- subcommands --------------------------------------------------------------------------------------------------


def _positive(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gaia_pipeline.py", description="Look at what gaia_pipeline.py loaded.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")

    def pipeline_args(command: argparse.ArgumentParser) -> None:
        command.add_argument("--pipeline-name", default=PIPELINE_NAME, metavar="NAME",
                             help=f"dlt pipeline (default {PIPELINE_NAME})")
        command.add_argument("--dataset-name", metavar="NAME",
                             help=f"dataset (default: the pipeline's, else {DATASET_NAME})")
        command.add_argument("--destination", metavar="NAME",
                             help="dlt destination (default: the pipeline's, from its last run here)")

    runs = commands.add_parser("runs", help="list past runs: when, nodes, resources, inputs, rows, failures, exit code",
                               description="List past runs of the pipeline, newest first (from gaia_runs and dlt's "
                               "_dlt_loads).")
    runs.add_argument("-n", "--limit", type=_positive, default=20, metavar="N", help="how many (default 20)")
    runs.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    runs.add_argument("--demo", action="store_true", help=f"the runs of --demo (pipeline {DEMO_PIPELINE_NAME})")
    pipeline_args(runs)

    search = commands.add_parser("search", help="the loaded texts most similar to a query",
                                 description="Embed a query through the node and list the most similar loaded texts "
                                 "(gaia_source.vectors.search).")
    search.add_argument("query", help="the text to search for")
    search.add_argument("-k", type=_positive, default=5, help="how many hits (default 5)")
    search.add_argument("--where", action="append", default=[], metavar="NAME=VALUE",
                        help="prefilter: a column of embeddings (text_id, document_id, …) or a metadata field; "
                        "repeat for several (all must hold)")
    search.add_argument("--model", help="embedding model (default: the node's)")
    node = search.add_mutually_exclusive_group()
    node.add_argument("--base-url", metavar="URL",
                      help="node that embeds the query (default: [sources.gaia_source] config)")
    node.add_argument("--node-id", metavar="ID", help="hosted node id that embeds the query")
    node.add_argument("--demo", action="store_true",
                      help=f"search what --demo loaded (pipeline {DEMO_PIPELINE_NAME}), embedding with a local "
                      "emulated node as the demo did")
    search.add_argument("--demo-flavor", default="rag", metavar="FLAVOR",
                        help="server the --demo node emulates (default rag)")
    search.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    pipeline_args(search)

    report = commands.add_parser("report", help="the evaluation page as a static HTML file that works offline",
                                 description="Write the evaluation page (pass rates, answers side by side, flaky "
                                 "prompts, retrieval hit@k and MRR, drift) as one HTML file with no script and "
                                 "nothing loaded from the network.")
    report.add_argument("-o", "--output", default="evaluation.html", metavar="PATH",
                        help="file to write (default evaluation.html)")
    report.add_argument("-k", type=_positive, default=3, help="the k of hit@k (default 3)")
    report.add_argument("--demo", action="store_true", help=f"what --demo loaded (pipeline {DEMO_PIPELINE_NAME})")
    pipeline_args(report)
    return parser


def _has_loaded(name: str) -> bool:
    """Whether pipeline ``name`` has loaded something from here (without creating it, as ``dlt.pipeline`` would)."""
    import dlt
    from dlt.pipeline.exceptions import CannotRestorePipelineException

    try:
        return dlt.attach(name).default_schema_name is not None
    except CannotRestorePipelineException:
        return False


def _pipeline(args: argparse.Namespace, loaded: bool = True) -> dlt.Pipeline:
    """The pipeline as its last run here left it (destination and dataset from its state), or as the flags say.

    ``loaded``: it must have loaded tables (``search``, ``report``); else it needs only a destination (``runs``: a run
    stopped before its first load, by a wrong URL say, still has its ``gaia_runs`` row)."""
    import dlt

    if getattr(args, "demo", False) and args.pipeline_name == PIPELINE_NAME:  # what --demo loaded: its own pipeline
        args.pipeline_name = DEMO_PIPELINE_NAME
    pipeline = dlt.pipeline(args.pipeline_name, destination=args.destination, dataset_name=args.dataset_name)
    elsewhere = duckdb_elsewhere(pipeline)
    if elsewhere is not None and not Path(elsewhere).is_file():  # its last run was in a folder gone since
        raise GaiaConfigError(f"pipeline {args.pipeline_name!r} has not loaded anything from this folder (its last "
                              f"run loaded into {elsewhere}, which is not there any more)")
    if elsewhere is not None:
        print(f"note: reading {elsewhere}: pipeline {args.pipeline_name} last ran in that folder", file=sys.stderr)
    if pipeline.destination is None or (loaded and pipeline.default_schema_name is None):
        hint = (f" (--demo loaded pipeline {DEMO_PIPELINE_NAME}: add --demo to look at it)"
                if args.pipeline_name == PIPELINE_NAME and _has_loaded(DEMO_PIPELINE_NAME) else "")
        raise GaiaConfigError(
            f"pipeline {args.pipeline_name!r} has not loaded anything from this folder ({pipeline.working_dir}). Run "
            f"the command where gaia_pipeline.py ran, or name its --destination and --dataset-name{hint}")
    return pipeline


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if isinstance(value, datetime) else "—"


def _runs(args: argparse.Namespace) -> int:
    from .runs import list_runs

    found = list_runs(_pipeline(args, loaded=False), args.limit)
    if args.json:
        for run in found:
            print(orjson.dumps(run, default=str).decode())
        return EXIT_OK
    if not found:
        print(f"No runs of pipeline {args.pipeline_name!r} yet.")
        return EXIT_OK
    table = Table(title=escape(f"Runs of {args.pipeline_name}, newest first (UTC)"), title_justify="left")
    for name in ("started", "took", "nodes", "resources", "inputs"):
        table.add_column(name)
    for name in ("rows", "completed", "failing", "skipped", "exit"):
        table.add_column(name, justify="right")
    for run in found:
        if run["run_id"] is None:  # a load no command-line run recorded (Python, Airflow, an older version)
            table.add_row(_when(run["finished_at"]), "—", "(not recorded: a load from Python or an older version)",
                          "—", "—", "—", "—", "—", "—", "—", style="dim")
            continue
        took = (run["finished_at"] - run["started_at"]).total_seconds() if run["finished_at"] else None
        inputs = ", ".join(f"{kind}: {value}" for kind, value in (run["inputs"] or {}).items()) or "—"
        failing = (run["failed"] or 0) + (run["refused"] or 0)
        ran = [o["resource"] for o in run.get("outcomes") or []] or run["resources"] or []  # those that had cells
        table.add_row(_when(run["started_at"]), "—" if took is None else f"{took:.1f} s",
                      escape(" ".join(_node(n) for n in run["nodes"] or []) or "—"), " ".join(ran), escape(inputs),
                      str(run["rows"]), str(run["completed"]), str(failing), str(run["skipped"]),
                      str(run["exit_code"]), style=None if run["exit_code"] == 0 else "red")
    out = console()
    out.print(table)
    for run in found:  # why a run stopped, when one did: under the table, one line each (a column would wrap it)
        if run.get("error"):
            out.print(f"{_when(run['started_at'])} stopped: {' '.join(str(run['error']).split())}", markup=False,
                      highlight=False, soft_wrap=True)
    return EXIT_OK


def _where(pairs: Sequence[str]) -> Dict[str, Any]:
    where: Dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise GaiaConfigError(f"--where {pair!r}: expected NAME=VALUE, e.g. --where document_id=guide-7")
        where[name.strip()] = value
    return where


def _search(args: argparse.Namespace) -> int:
    from .vectors import search

    where = _where(args.where)
    pipeline = _pipeline(args)
    node: Dict[str, Any] = {"base_url": args.base_url, "node_id": args.node_id}
    if args.demo:
        from .emulator import NodeEmulator

        with NodeEmulator(flavor=args.demo_flavor) as emulator:
            hits = search(pipeline, args.query, args.k, where=where or None, model=args.model,
                          base_url=emulator.base_url)
    else:
        hits = search(pipeline, args.query, args.k, where=where or None, model=args.model,
                      **{key: value for key, value in node.items() if value is not None})
    rows: List[Dict[str, Any]] = hits.to_dict("records")
    if args.json:
        for row in rows:
            print(orjson.dumps(row, default=str, option=orjson.OPT_SERIALIZE_NUMPY).decode())
        return EXIT_OK
    if not rows:
        print(_no_hits(pipeline, hits.attrs.get("query_model"), hits.attrs.get("dim"), bool(where)))
        return EXIT_OK
    table = Table(title=escape(f"Nearest loaded texts to {args.query!r} (cosine similarity)"), title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("text_id")
    table.add_column("text")
    table.add_column("model")
    for rank, row in enumerate(rows, 1):
        table.add_row(str(rank), f"{row['score']:.3f}", escape(str(row.get("text_id") or "—")),
                      escape(str(row.get("text") or "")), escape(str(row.get("model") or "—")))
    console().print(table)
    return EXIT_OK


def _no_hits(pipeline: dlt.Pipeline, model: Optional[str], dim: Optional[int], filtered: bool) -> str:
    """Why a search found nothing: the filter, or no text embedded by the model the query was embedded with (vectors
    of two models are never compared), naming the models the table holds."""
    stored: List[Any] = []
    try:
        with pipeline.sql_client() as sql:
            table = sql.make_qualified_table_name("embeddings")
            stored = list(sql.execute_sql(f"SELECT model, model_requested, dim, count(*) FROM {table} "
                                          "GROUP BY model, model_requested, dim ORDER BY 4 DESC") or [])
    except Exception:  # a destination without SQL: say what is known
        pass
    if not stored:
        return "No loaded texts match" + (" the --where filter." if filtered else " (is the embeddings table empty?).")
    if any(model in (m, asked) and d == dim for m, asked, d, _ in stored):
        return "No loaded texts match the --where filter."
    held = ", ".join(f"{m} ({d} dimensions, {n} texts)" for m, _, d, n in stored)
    return (f"No loaded texts were embedded by {model} ({dim} dimensions), the model the query was embedded with; the "
            f"embeddings table holds {held}. Search through a node that serves one of them (--base-url, --node-id).")


def _report(args: argparse.Namespace) -> int:
    from .report import write_report

    check_output("-o", args.output)
    summary = write_report(_pipeline(args), args.output, args.k)
    targets = {(t["node_url"], t["model"]) for t in summary["targets"]}  # a target answers in each chat table
    graded = {(t["node_url"], t["model"]) for t in summary["targets"] if t["graded"]}

    def per_table(found: List[Dict[str, Any]]) -> str:  # a prompt of each chat table is a prompt of its own
        tables = sorted({f["table"] for f in found})
        return ", ".join(f"{len({f['prompt_id'] for f in found if f['table'] == t})} in {t}" for t in tables) or "none"

    print(f"wrote {args.output}: {len(targets)} node/model target(s) ({len(graded)} graded), "
          f"{len(summary['retrieval'])} node(s) with graded retrieval; flaky prompts: {per_table(summary['flaky'])}; "
          f"drifted prompts: {per_table(summary['drift'])}")
    return EXIT_OK


def main(argv: Sequence[str]) -> int:
    """Run one subcommand (``argv`` starts with its name); returns the exit code: 0, 1 when it failed, 2 for bad
    arguments or configuration."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    handlers = {"runs": _runs, "search": _search, "report": _report}
    from dlt.destinations.exceptions import DestinationConnectionError

    try:
        code = handlers[args.command](args)
    except DestinationConnectionError as exc:  # the destination cannot be reached or opened: one line, not a trace
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_FAILED
    except GaiaConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (GaiaError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    logger.debug("%s answered in %.2f s", args.command, time.perf_counter() - started)
    return code
