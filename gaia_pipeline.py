"""Load a Gaia node's models, info, chat completions, embeddings and retrieval results with dlt.

Examples::

    python gaia_pipeline.py --demo                                  # no account: a local emulated node
    python gaia_pipeline.py                                         # the node in .dlt/config.toml
    python gaia_pipeline.py --base-url http://localhost:8080/v1 --prompts-file prompts.jsonl
    python gaia_pipeline.py --resources models,info                 # a monitoring snapshot only
    python gaia_pipeline.py --prompts-file batch.jsonl --export-batch-output results.jsonl
    python gaia_pipeline.py runs                                    # past runs, their outcomes and exit codes
    python gaia_pipeline.py search "Where is Paris?" -k 5           # the loaded texts nearest to a query
    python gaia_pipeline.py report -o evaluation.html               # the evaluation page, static and offline
    dlt pipeline gaia_pipeline show                                 # browse what was loaded

The ``load_*`` functions below are the same steps as plain Python, to copy into your own code.
Exit codes: 0 loaded; 1 the load failed, requests are failing (see the failed_requests table) or no node is usable;
2 bad configuration or input; 3 the node refused the API key; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence

# Only light modules here: `--help` and argument errors answer before dlt, pyarrow or the emulator is imported.
from gaia_source.errors import GaiaAuthError, GaiaConfigError, GaiaError, GaiaLookupError, GaiaPipelineStateError
from gaia_source.settings import (
    CHAT_TABLES,
    CUT_STREAM_HINT,
    DATASET_NAME,
    DEFAULT_RESOURCE_NAMES,
    DEFAULT_ROWS_PER_LOAD,
    DEMO_DATASET_NAME,
    DEMO_PIPELINE_NAME,
    FAILED_REQUESTS_TABLE,
    MODEL_EMPTY_HINT,
    PIPELINE_NAME,
    RESOURCE_NAMES,
    SUBCOMMANDS,
    TABLE_FORMATS,
    dlt_defaults,
)

if TYPE_CHECKING:
    import dlt
    from dlt.common.pipeline import LoadInfo
    from dlt.extract.source import DltSource

    from gaia_source.emulator import NodeEmulator
    from gaia_source.ledger import Ledger

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_AUTH = 0, 1, 2, 3
EXIT_INTERRUPTED = 130  # as a shell reports a process ended by Ctrl-C
INTERRUPTED = "interrupted (Ctrl-C): the next run loads what this one got to keep and sends the rest again"
"""What a run stopped by Ctrl-C (SIGINT) or a scheduler's SIGTERM says, and records in gaia_runs."""

# --- the steps, as functions you can copy -------------------------------------------------------------------------


def load_all(pipeline: dlt.Pipeline, **source_args: Any) -> LoadInfo:
    """Load every default resource (all but ``responses``) from the node configured in .dlt/ (or ``source_args``)."""
    from gaia_source import gaia_source

    return pipeline.run(gaia_source(**source_args))


def load_node_snapshot(pipeline: dlt.Pipeline, **source_args: Any) -> LoadInfo:
    """Load only ``models`` and ``info``: a cheap snapshot to schedule for monitoring a node over time."""
    from gaia_source import gaia_source

    return pipeline.run(gaia_source(**source_args).with_resources("models", "info"))


def load_prompt_set(pipeline: dlt.Pipeline, prompts_file: str, **source_args: Any) -> LoadInfo:
    """Run a prompt file (OpenAI Batch JSONL, messages JSONL, CSV or plain lines) through chat, plain and streamed."""
    from gaia_source import gaia_source

    source = gaia_source(prompts_file=prompts_file, **source_args)
    return pipeline.run(source.with_resources("chat_completions", "chat_completions_stream"))


def load_embeddings(pipeline: dlt.Pipeline, texts_file: str, **source_args: Any) -> LoadInfo:
    """Embed a text file (plain lines, JSONL with id/text/metadata, or CSV with a text column)."""
    from gaia_source import gaia_source

    return pipeline.run(gaia_source(texts_file=texts_file, **source_args).with_resources("embeddings"))


# --- the command line ----------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gaia_pipeline.py",
        description="Load a Gaia node's data (models, info, chat completions, streamed completions, embeddings, "
        "retrieval) into DuckDB or any dlt destination. Settings not given here come from .dlt/config.toml, "
        ".dlt/secrets.toml and SOURCES__GAIA_SOURCE__* environment variables.",
        epilog=f"Subcommands: {', '.join(SUBCOMMANDS)} (python gaia_pipeline.py runs --help, and so on). Exit codes: "
        "0 loaded; 1 load failed, requests failing or no usable node; 2 bad configuration/input; 3 key refused; "
        "130 interrupted.",
    )
    node = parser.add_argument_group("node")
    node.add_argument("--demo", action="store_true",
                      help=f"start a local emulated node and load built-in sample data (pipeline {DEMO_PIPELINE_NAME}, "
                      f"dataset {DEMO_DATASET_NAME}: apart from real runs)")
    # --demo-flavor is checked against the emulator's flavours when it starts
    node.add_argument("--demo-flavor", default="rag", metavar="FLAVOR",
                      help="server the demo emulates: rag (Gaia <= 0.4 with a knowledge base, every endpoint but "
                      "responses; default), llama (llama-api-server 0.28), nexus (llama-nexus), node06 (Gaia node 0.6: "
                      "gaia-nexus 0.8.2 + llama-api-server 0.27), amd (AMD GAIA 0.25)")
    node.add_argument("--base-url", metavar="URL", help="node URL, e.g. http://localhost:8080/v1 (overrides config)")
    node.add_argument("--node-id", metavar="ID", help="hosted node id: https://{node_id}.gaia.domains/v1")
    node.add_argument("--chat-model", metavar="MODEL",
                      help="chat model, or models a,b (every prompt goes to each; default: discovered)")
    node.add_argument("--embedding-model", metavar="MODEL", help="embedding model (default: discovered from the node)")
    node.add_argument("--timeout", type=float, metavar="SECONDS", help="seconds to wait for a response")
    node.add_argument("--max-concurrency", type=int, metavar="N", help="requests in flight at once")
    data = parser.add_argument_group("inputs")
    data.add_argument("--prompts-file", metavar="FILE",
                      help="prompts: .jsonl (Batch or messages lines), .csv (prompt column) or text")
    data.add_argument("--texts-file", metavar="FILE",
                      help="texts to embed: text lines, .jsonl (text/id/document_id/metadata) or .csv (text column)")
    data.add_argument("--chunk-size", type=int, metavar="CHARS",
                      help="split texts into chunks of at most CHARS characters (documents: see README)")
    data.add_argument("--chunk-overlap", type=int, metavar="CHARS", help="characters a chunk shares with the previous")
    data.add_argument("--queries-file", metavar="FILE",
                      help="retrieval queries: text lines, .jsonl or .csv (query column)")
    data.add_argument("--system-prompt", metavar="TEXT", help="system message for every prompt that has none")
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--compare-nodes", action="store_true",
                            help="send every prompt to every --base-url node (rows per node) instead of spreading them")
    evaluation.add_argument("--samples", type=int, metavar="N",
                            help="send every prompt N times (rows carry sample_index; a re-run fills missing ones)")
    evaluation.add_argument("--temperature", type=float, metavar="T",
                            help="sampling temperature of every chat request (a prompt's own wins)")
    evaluation.add_argument("--seed", type=int, metavar="N",
                            help="sampling seed of every chat request; with --samples, sample i is sent with N + i")
    evaluation.add_argument("--no-drift", action="store_true",
                            help="never send an answered prompt again, even after the node's configuration changed")
    data.add_argument("--max-tokens", type=int, metavar="N",
                      help="cap every answer at N tokens (sent as max_tokens and max_completion_tokens, so that every "
                      "server generation honours it)")
    load = parser.add_argument_group("load")
    load.add_argument("--resources", metavar="NAMES", help=f"comma-separated subset of: {','.join(RESOURCE_NAMES)}")
    load.add_argument("--destination", default="duckdb", metavar="NAME",
                      help="dlt destination (default duckdb; also ducklake)")
    load.add_argument("--table-format", choices=TABLE_FORMATS,
                      help="with --destination filesystem: write every table as a Delta or Iceberg table")
    load.add_argument("--dataset-name", metavar="NAME",
                      help=f"dataset / schema name (default {DATASET_NAME}; {DEMO_DATASET_NAME} with --demo)")
    load.add_argument("--pipeline-name", metavar="NAME",
                      help=f"dlt pipeline name (default {PIPELINE_NAME}; {DEMO_PIPELINE_NAME} with --demo)")
    load.add_argument("--progress", choices=("rich", "log", "tqdm", "enlighten", "alive_progress", "none"),
                      default="rich",
                      help="rich (default): a line per resource with done/total, rate and ETA, redrawn in place on "
                      "a terminal, else only a final line per resource (on stderr); log, tqdm, enlighten, "
                      "alive_progress: dlt's collectors of its own extract/normalize/load steps instead (log prints a "
                      "block of counters every second); none: nothing")
    load.add_argument("--allow-failed-requests", action="store_true",
                      help="exit 0 even when some requests are in the failed_requests table")
    load.add_argument("--shard", metavar="I/N",
                      help="load partition I of N of the inputs (by request id): N workers share one job, no overlap")
    load.add_argument("--rows-per-load", type=int, default=DEFAULT_ROWS_PER_LOAD, metavar="N",
                      help="load the run in parts of N rows, each a dlt load of its own, after which DuckDB lets go "
                      f"of what it cached (default {DEFAULT_ROWS_PER_LOAD:,}; 0: one load)")
    load.add_argument("--refresh", action="store_true",
                      help="send every prompt and embed every text again, even those already loaded")
    out = parser.add_argument_group("output")
    out.add_argument("--export-batch-output", metavar="PATH",
                     help="after loading, write the completions as OpenAI Batch output JSONL (joined by custom_id)")
    out.add_argument("--export-table", choices=CHAT_TABLES, default="chat_completions",
                     help="table to export with --export-batch-output (default chat_completions)")
    out.add_argument("--summary-json", metavar="PATH",
                     help="write the run's evaluation summary (pass rates, flaky prompts, hit@k, drift) as JSON")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="-v: log every HTTP request, retry and failed request; -vv: debug logs of every library")
    return parser


def _source_args(args: argparse.Namespace, base_url: Optional[str], demo: Optional[NodeEmulator] = None
                 ) -> Dict[str, Any]:
    """Only what the command line sets: everything else keeps coming from dlt config. ``demo``: the demo's emulated
    node, whose chat model is named (the one it would be found to serve), so that each flavour's answers are their
    own cells: a demo of another flavour in the same folder answers its prompts instead of finding them done."""
    given = {
        "base_url": base_url or args.base_url,
        "node_id": args.node_id,
        "chat_model": args.chat_model,
        "embedding_model": args.embedding_model,
        "timeout": args.timeout,
        "max_concurrency": args.max_concurrency,
        "prompts_file": args.prompts_file,
        "texts_file": args.texts_file,
        "queries_file": args.queries_file,
        "system_prompt": args.system_prompt,
        "max_tokens": args.max_tokens,
        "compare_nodes": True if args.compare_nodes else None,
        "samples": args.samples,
        "temperature": args.temperature,
        "seed": args.seed,
        "drift": False if args.no_drift else None,
        "chunk_size": args.chunk_size,
        "chunk_overlap": args.chunk_overlap,
        "refresh": True if args.refresh else None,
        "shard": args.shard,
        "table_format": args.table_format,
    }
    source_args = {k: v for k, v in given.items() if v is not None}
    loaded = demo.flavor_class.chat_models(demo) if demo is not None else ()
    if loaded and "chat_model" not in source_args:
        source_args["chat_model"] = loaded[0]
    if args.demo:  # the built-in samples go to the emulated node only, and only where no file was given
        from gaia_source.samples import SAMPLE_PROMPTS, SAMPLE_QUERIES, SAMPLE_TEXT_ROWS

        samples = {"prompts": SAMPLE_PROMPTS, "texts": SAMPLE_TEXT_ROWS, "queries": SAMPLE_QUERIES}
        for key, sample in samples.items():
            if f"{key}_file" not in source_args:
                source_args[key] = sample
    return source_args


def _idle(source: DltSource, wanted: Sequence[str]) -> List[str]:
    """The wanted resources the source deselected: they have no inputs."""
    return [name for name, resource in source.resources.items() if name in wanted and not resource.selected]


def _resources(spec: Optional[str], demo: bool = False) -> List[str]:
    if not spec:  # a demo shows every table; a real run leaves out what sends prompts a third time (responses)
        return list(RESOURCE_NAMES if demo else DEFAULT_RESOURCE_NAMES)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in RESOURCE_NAMES]
    if unknown or not names:
        raise GaiaConfigError(
            f"--resources: unknown resource(s) {unknown or spec!r}; choose from {', '.join(RESOURCE_NAMES)}"
        )
    return names


def _nothing_sent(ledger: Ledger, ran: Sequence[str]) -> Optional[str]:
    """Why none of the inputs a run was given could be sent, when that is so: every resource that had inputs was
    skipped because no node has its endpoint (prompts given to an embeddings-only server, say). ``models`` and
    ``info`` are the node's own, not inputs. None when some input resource sent, or found done, a cell."""
    given = [name for name in ran if name not in ("models", "info")]
    tallies = ledger.tallies()
    if not given or any(name not in ledger.unserved or (name in tallies and sum(tallies[name].outcomes.values()))
                        for name in given):
        return None
    lacking: Dict[tuple, List[str]] = {}
    for name in given:
        for node, endpoint in ledger.unserved[name].items():
            lacking.setdefault((node, endpoint), []).append(name)
    found = "; ".join(f"{node} has no {endpoint} ({', '.join(names)})" for (node, endpoint), names in lacking.items())
    return f"none of this run's inputs could be sent: {found}. Is it the node you meant, or the inputs for it?"


def _gaia_cause(exc: BaseException, kind: Any = GaiaError) -> Optional[BaseException]:
    """The GaiaError (or ``kind``) inside dlt's wrappers (PipelineStepFailed → ResourceExtractionError → …), if any."""
    seen = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kind):
            return current
        stack.extend([getattr(current, "exception", None), current.__cause__, current.__context__])
    return None


def _print_load_info(load_info: Any, failing: int) -> None:
    """dlt's load info. Its "contains no failed jobs" speaks of load jobs: beside failing requests it must not read as
    if all were well."""
    text = str(load_info)
    if failing:
        text = text.replace("contains no failed jobs",
                            f"contains no failed load jobs, but {failing} request(s) of this run are failing")
    print(text)


def _print_counts(pipeline: dlt.Pipeline, ledger: Optional[Ledger] = None) -> None:
    """Print rows loaded now (over every part of the run: the ledger's; without one, dlt's last trace) and rows in
    each table."""
    from gaia_source.commands import run_row_counts

    loaded = run_row_counts(pipeline, ledger)
    seen = pipeline.default_schema.data_table_names(seen_data_only=True)
    tables = sorted(t for t in seen if not t.startswith("_dlt"))
    totals = _row_counts(pipeline, tables)
    print(f"\n{'table':<34}{'this run':>10}{'in dataset':>12}")
    for table in tables:
        total = totals.get(table)
        print(f"{table:<34}{loaded.get(table, 0):>10}{'?' if total is None else total:>12}")


def _print_outcomes(ledger: Ledger) -> None:
    """How every cell of this run ended, per resource (the run's ledger: what the exit code is made of)."""
    rows = ledger.summary_rows()
    if rows:
        print(f"\n{'requests of this run':<26}{'completed':>10}{'failed':>8}{'(empty)':>9}{'refused':>9}{'skipped':>9}"
              f"{'sends':>8}")
        for row in rows:
            print(f"{row['resource']:<26}{row['completed']:>10}{row['failed']:>8}{row['empty']:>9}{row['refused']:>9}"
                  f"{row['skipped']:>9}{row['sends']:>8}")
    for name, tally in sorted(ledger.tallies().items()):
        if tally.model_empty:
            print(f"note: {name}: {tally.model_empty} answer(s) came back with nothing in them (no content, no tool "
                  f"call) and are counted as failed: {MODEL_EMPTY_HINT}")
        if tally.cut:
            cut_empty = tally.empty - tally.model_empty
            print(f"note: {name}: {tally.cut} stream(s) were cut by the server before their end and are counted as "
                  f"failed ({cut_empty} came back with nothing in them, {tally.cut - cut_empty} interrupted "
                  f"mid-answer); {CUT_STREAM_HINT}")
    for note in ledger.notes:
        print(f"note: {note}")


def _row_counts(pipeline: dlt.Pipeline, tables: List[str]) -> Dict[str, Optional[int]]:
    """Rows in each table: in LanceDB itself on LanceDB (dlt's SQL client there needs DuckDB's lance extension, from the
    network), else one SQL query where the destination speaks SQL (no query compiler to import), else dlt's dataset
    (which also reads filesystem destinations). A count that fails is None (shown as "?"), with a warning saying why."""
    if not tables:
        return {}
    if pipeline.destination.destination_name == "lancedb":
        from gaia_source.destination import lance_table

        counts: Dict[str, Optional[int]] = {}
        for table in tables:
            try:
                counts[table] = int(lance_table(pipeline, table).count_rows())
            except Exception as exc:
                logging.getLogger("gaia_source").warning("could not count the rows of %s: %s", table, exc)
                counts[table] = None
        return counts
    try:
        with pipeline.sql_client() as client:
            query = " UNION ALL ".join(
                f"SELECT '{table}', count(*) FROM {client.make_qualified_table_name(table)}" for table in tables
            )
            return {str(name): int(count) for name, count in client.execute_sql(query)}
    except Exception as sql_exc:
        try:
            return dict(pipeline.dataset().row_counts(table_names=tables).fetchall())
        except Exception as exc:
            logging.getLogger("gaia_source").warning("could not count the rows of %s: %s (SQL: %s)", ", ".join(tables),
                                                     " ".join(str(exc).split()), " ".join(str(sql_exc).split()))
            return {}


def _progress_view(kind: str, ledger: Ledger) -> contextlib.AbstractContextManager[Any]:
    """The run's own progress view (``--progress rich``), read from its ledger; dlt's collectors need none."""
    if kind != "rich":
        return contextlib.nullcontext()
    from gaia_source.progress import LedgerProgress

    return LedgerProgress(ledger)


def _served(resources: List[str], emulator: NodeEmulator) -> List[str]:
    """The resources whose endpoint the demo's server has (an endpoint with a fallback, as ``info`` on AMD GAIA's
    ``/health``, counts); one line names those left out, which a real run would warn about."""
    from gaia_source.endpoints import ENDPOINT_BY_NAME
    from gaia_source.settings import API_PREFIX

    paths = emulator.api_paths()
    lacking = [name for name in resources if ENDPOINT_BY_NAME[name].fallback_path is None
               and f"{API_PREFIX}/{ENDPOINT_BY_NAME[name].path}" not in paths]
    if lacking:
        print(f"demo: the {emulator.flavor} server has no " + ", ".join(
            f"{API_PREFIX}/{ENDPOINT_BY_NAME[name].path}" for name in lacking) + f"; not run: {', '.join(lacking)}")
    return [name for name in resources if name not in lacking]


@contextlib.contextmanager
def _demo_node(enabled: bool, flavor: str) -> Iterator[Optional[NodeEmulator]]:
    if not enabled:
        yield None
        return
    from gaia_source.emulator import NodeEmulator

    with NodeEmulator(flavor=flavor) as emulator:
        print(f"demo: emulated Gaia node ({flavor}) at {emulator.base_url}")
        yield emulator


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the pipeline from the command line (or the subcommand named first); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        from gaia_source.commands import main as command

        return command(argv)
    parser = _parser()
    args = parser.parse_args(argv)
    if args.rows_per_load < 0:
        parser.error(f"argument --rows-per-load: must be 0 (one load) or more, got {args.rows_per_load}")
    args.pipeline_name = args.pipeline_name or (DEMO_PIPELINE_NAME if args.demo else PIPELINE_NAME)
    args.dataset_name = args.dataset_name or (DEMO_DATASET_NAME if args.demo else DATASET_NAME)
    try:
        resources = _resources(args.resources, args.demo)
        from gaia_source.commands import check_output

        check_output("--summary-json", args.summary_json)  # a folder that is not there fails now, not after the load
        check_output("--export-batch-output", args.export_batch_output)
    except GaiaConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.demo:
        from gaia_source.emulator import FLAVORS

        if args.demo_flavor not in FLAVORS:
            parser.error(f"argument --demo-flavor: invalid choice: {args.demo_flavor!r} (choose from "
                         f"{', '.join(FLAVORS)})")
    # A scheduler's stop (SIGTERM: cron's timeout, systemd, a CI job cancelled) ends the run as Ctrl-C does: recorded in
    # gaia_runs with the parts it loaded, exit 130 (killed outright, loaded parts would be loads no run names)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    # The heavy imports, now that the arguments are known to be good. Without the collector running over them (~1,500
    # modules' objects, none of them garbage), then frozen: later collections only look at what the run allocates.
    gc.disable()
    import dlt
    from dlt.pipeline.exceptions import PipelineStepFailed

    from gaia_source import gaia_source
    from gaia_source.commands import duckdb_here, evaluate_run, record_run
    from gaia_source.ledger import Ledger
    from gaia_source.lifecycle import avoid_sqlalchemy_import, run_pipeline
    from gaia_source.runs import utc_now

    gc.freeze()
    gc.enable()

    logging.basicConfig(level=logging.DEBUG if args.verbose >= 2 else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("gaia_source").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if args.verbose == 1:
        logging.getLogger("httpx").setLevel(logging.INFO)
    for key, value in dlt_defaults(args.destination).items():  # no gzip, file rotation… (measured: bench/)
        os.environ.setdefault(key, value)
    avoid_sqlalchemy_import(args.destination)  # ~0.2-0.6 s of every run, for one URL dlt prints
    dlt_progress = None if args.progress in ("rich", "none") else args.progress
    started_at, pipeline, ledger, source_args = utc_now(), None, None, {}  # set as the run gets to them

    def recorded(code: int, load_ids: Sequence[str] = (), error: Optional[str] = None) -> int:
        """The run's row in gaia_runs (once dlt has a pipeline), then its exit code; ``error``: the line it stopped
        with, printed here."""
        if error is not None:
            print(f"error: {error}", file=sys.stderr)
        if pipeline is not None:  # a run stopped by an error names the parts it loaded before (the ledger's)
            record_run(pipeline, ledger, load_ids or (ledger.load_ids if ledger else ()), started_at=started_at,
                       argv=argv, source_args=source_args, resources=resources, exit_code=code, error=error)
        return code

    try:
        with _demo_node(args.demo, args.demo_flavor) as emulator:
            if emulator is not None and not args.resources:
                resources = _served(resources, emulator)
            source_args = _source_args(args, emulator.base_url if emulator else None, emulator)
            pipeline = duckdb_here(lambda: dlt.pipeline(
                pipeline_name=args.pipeline_name, destination=args.destination, dataset_name=args.dataset_name,
                progress=dlt_progress,
            ), args.demo)  # a demo in another folder than the last is a demo of this folder (see duckdb_here)
            ledger = Ledger()
            source = gaia_source(resources=resources, required_resources=bool(args.resources), ledger=ledger,
                                 **source_args)
            idle = _idle(source, resources)
            # what an interrupted run left loads first, then the source; then changed documents lose their old chunks
            with _progress_view(args.progress, ledger):
                load_info = run_pipeline(pipeline, source, ledger, rows_per_load=args.rows_per_load or None)
    except GaiaConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (GaiaLookupError, GaiaPipelineStateError) as exc:  # nothing sent; the destination is not answering
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return recorded(EXIT_INTERRUPTED, error=INTERRUPTED)
    except PipelineStepFailed as exc:
        if _gaia_cause(exc, KeyboardInterrupt) is not None:  # Ctrl-C while dlt extracted, normalized or loaded
            return recorded(EXIT_INTERRUPTED, error=INTERRUPTED)
        cause = _gaia_cause(exc)
        error = str(cause if cause is not None else exc)
        if isinstance(cause, GaiaAuthError):
            return recorded(EXIT_AUTH, error=error)
        return recorded(EXIT_CONFIG if isinstance(cause, GaiaConfigError) else EXIT_FAILED, error=error)
    load_ids = load_info.load_ids
    failing = ledger.failing
    _print_load_info(load_info, failing)
    _print_counts(pipeline, ledger)
    _print_outcomes(ledger)
    if idle:
        from gaia_source.endpoints import ENDPOINT_BY_NAME

        print("\nnot run (no inputs): " + ", ".join(f"{name} (--{ENDPOINT_BY_NAME[name].inputs}-file)" for name in idle)
              + "; inputs can also be set in [sources.gaia_source] (prompts, texts, queries and their *_file keys)")
    try:  # the files asked for (their folders were checked before the run); one that cannot be written fails it
        _export(args, pipeline, ledger)
        evaluate_run(pipeline, ledger, args.summary_json)
    except OSError as exc:
        written = f"could not write {exc.filename}: {exc.strerror}" if exc.filename else f"could not write: {exc}"
        return recorded(EXIT_FAILED, load_ids, error=written)
    if load_info.has_failed_jobs:
        return recorded(EXIT_FAILED, load_ids, error="some load jobs failed; see the load info above")
    unserved = _nothing_sent(ledger, [name for name in resources if name not in idle])
    if unserved:
        return recorded(EXIT_FAILED, load_ids, error=unserved)
    if failing:
        print(f"\n{failing} request(s) of this run are failing: SELECT * FROM {args.dataset_name}."
              f"{FAILED_REQUESTS_TABLE}; a re-run retries them.", file=sys.stderr)
        return recorded(EXIT_OK if args.allow_failed_requests else EXIT_FAILED, load_ids)
    return recorded(EXIT_OK, load_ids)


def _export(args: argparse.Namespace, pipeline: dlt.Pipeline, ledger: Ledger) -> None:
    """``--export-batch-output``: the answers to this run's inputs (one line per cell and node), not to inputs edited
    or removed since; a file per target when there are several."""
    if not args.export_batch_output:
        return
    from gaia_source.batch import export_batch_output, export_batch_output_per_target, targets

    this_run = {cell_id for cell_id, _ in ledger.cells(args.export_table)} or None
    if len(targets(pipeline, args.export_table, this_run)) > 1:
        written = export_batch_output_per_target(pipeline, args.export_batch_output, args.export_table, this_run)
        for path, lines in written.items():
            print(f"wrote {lines} Batch output line(s) from {args.export_table} to {path}")
    else:
        lines = export_batch_output(pipeline, args.export_batch_output, args.export_table, cells=this_run)
        print(f"\nwrote {lines} Batch output line(s) from {args.export_table} to {args.export_batch_output}")


def _exit_now(code: int) -> None:
    """Exit with ``code`` without tearing down every module and object one by one (about 0.5 s after a dlt run).

    Everything that should happen at exit still happens first: atexit handlers (dlt's telemetry flush, logging's
    shutdown, which flushes its handlers) and the flush of stdout and stderr. Files the run opened are closed by then
    (the pipeline and the emulator close theirs in ``main``)."""
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit_now(main())
