"""The ledger of cells, proven by sequences of CLI runs: a Hypothesis state machine drives ``gaia_pipeline.py`` against
two emulated nodes into a real DuckDB (and PostgreSQL) in a temp dir, changes what the user asks between runs, and
after every run checks the tables against the test's own bookkeeping of what was asked.

A cell is one input (a prompt's ``custom_id`` and text) × target (the node with ``--compare-nodes``, else the pool) ×
model (each ``--chat-model``; the discovered one when none is given) × sample, answered under one configuration of
the answering node (its ``info_hash``; the newest ``info`` row of a node says which is current). The expectations are
computed here from what each run was told, never with the package's id functions.

After every normal run (a run, an immediate repeat, or every shard of ``--shard i/n`` in turn):

1. every cell this run asked for has a completed row under the current configuration of the node that answered it
   XOR exactly one ``failed_requests`` row; never both, never neither. A run sends no cell that was done before it
   (done: a current completed row; with ``--no-drift``, any completed row), sends each cell at most once, and two
   completed rows of one cell never share (node, configuration);
2. every row (completed or failed) is a cell that the run which wrote it asked for (rows are told apart by the run
   whose time window holds their ``requested_at`` / ``failed_at``): nothing for a cell never asked, history kept;
3. the exit code is 1 iff a cell of this run is failing (a failing ``/v1/info`` alone may go either way);
4. a run repeated at once with nothing changed and healthy nodes sends no chat POST; with no faults injected, the
   chat POSTs of a run are exactly the rows it wrote;
5. no 8-character fragment of the API key is in the CLI's output, any table (every column, dlt's state decoded), or
   any file the runs left.

A run killed with SIGKILL at a random moment is only held to 2, to "two completed rows of one cell never share
(node, configuration)" and to 5; the next normal run must restore everything.

Profiles (``GAIA_PROPERTY_PROFILE``): ``ci`` (default; a few minutes on 2 cores when the invariants hold, stops at the
first failure and shrinks it) and ``deep`` (more and longer sequences, every distinct failure reported). A failing
example prints as a replayable sequence of steps, each run's command line and exit code as notes.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import itertools
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Set, Tuple

import duckdb
import psycopg2
import pytest
from conftest import POSTGRES, SCRIPT, _postgres_up
from dlt.common.configuration.container import Container
from dlt.common.configuration.specs.pluggable_run_context import PluggableRunContext
from dlt.common.versioned_state import decompress_state
from hypothesis import HealthCheck, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule, run_state_machine_as_test

from gaia_source.emulator import NodeEmulator

# --- profiles ------------------------------------------------------------------------------------------------------

PROFILE = os.environ.get("GAIA_PROPERTY_PROFILE", "ci")
_PROFILES: Dict[str, Dict[str, Dict[str, Any]]] = {
    "ci": {"duckdb": {"max_examples": 8, "stateful_step_count": 6, "report_multiple_bugs": False},
           "postgres": {"max_examples": 3, "stateful_step_count": 5, "report_multiple_bugs": False},
           "lancedb": {"max_examples": 2, "stateful_step_count": 4, "report_multiple_bugs": False}},
    "deep": {"duckdb": {"max_examples": 60, "stateful_step_count": 14, "report_multiple_bugs": True},
             "postgres": {"max_examples": 15, "stateful_step_count": 10, "report_multiple_bugs": True},
             "lancedb": {"max_examples": 10, "stateful_step_count": 8, "report_multiple_bugs": True}},
}
if PROFILE not in _PROFILES:
    raise ValueError(f"GAIA_PROPERTY_PROFILE={PROFILE!r}: choose one of {', '.join(_PROFILES)}")
TIMEOUT_S = {"ci": 1800, "deep": 4 * 3600}[PROFILE]  # a failure's shrinking is most of it


def _settings(destination: str) -> settings:
    return settings(deadline=None, derandomize=True, database=None, print_blob=True,
                    suppress_health_check=list(HealthCheck), **_PROFILES[PROFILE][destination])


# --- what the user can ask for ---------------------------------------------------------------------------------------

POOL = "<pool>"
DISCOVERED = "<discovered>"
CHAT_POST = "/v1/chat/completions"
FLAVORS = ("llama", "nexus", "node06", "rag")  # servers with a /v1/info that changes with the loaded model
FAULT_KINDS = ("429", "502", "503", "reset", "truncate")  # transient faults; stalls are left out (they cost seconds)
MODEL_LISTS = ((), ("model-x",), ("model-x", "model-y"), ("model-y",))
SWAPS = (None, "swapped-model-1", "swapped-model-2")  # None: back to the flavour's own model
TOPICS = ("rivers", "capitals", "warehouses", "tokens", "embeddings")
RUN_ENV = {
    "SOURCES__GAIA_SOURCE__TIMEOUT": "2",
    "SOURCES__GAIA_SOURCE__MAX_ATTEMPTS": "2",
    "SOURCES__GAIA_SOURCE__RETRY_BACKOFF": "0.01",
    "SOURCES__GAIA_SOURCE__RETRY_MAX_WAIT": "0.05",
    "SOURCES__GAIA_SOURCE__RETRY_ROUNDS": "1",
    "SOURCES__GAIA_SOURCE__ROUND_COOLDOWN": "0.05",
    "SOURCES__GAIA_SOURCE__BREAKER_COOLDOWN": "0.2",
    "RUNTIME__DLTHUB_TELEMETRY": "false",
    "DATA_WRITER__DISABLE_COMPRESSION": "true",
}


def _load_cli() -> Any:
    """gaia_pipeline.py of this checkout, imported by path (the repo root need not be on sys.path)."""
    spec = importlib.util.spec_from_file_location("gaia_pipeline", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CLI = _load_cli()


@dataclass(frozen=True)
class Cell:
    """One cell of the ledger, as the test sees it (no configuration: that is checked against the node's info)."""

    table: str
    custom_id: Optional[str]
    text: Optional[str]
    target: str  # a node URL (compare nodes) or POOL
    model: Optional[str]  # the model asked for, or DISCOVERED
    sample: Optional[int]

    def __str__(self) -> str:
        target = "pool" if self.target == POOL else self.target.rsplit(":", 1)[-1]
        return f"{self.table}[{self.custom_id} {self.text!r} @{target} model={self.model} sample={self.sample}]"


@dataclass(frozen=True)
class Config:
    """What one run was told: the prompts file and the evaluation flags."""

    prompts: Tuple[Tuple[str, str], ...]
    nodes: Tuple[str, ...]
    tables: Tuple[str, ...]
    compare: bool = False
    samples: int = 1
    models: Tuple[str, ...] = ()
    drift: bool = True

    @functools.cached_property
    def cells(self) -> FrozenSet[Cell]:
        """Every cell this configuration asks for."""
        targets = self.nodes if self.compare else (POOL,)
        return frozenset(Cell(table, custom_id, text, target, model, sample)
                         for table in self.tables for custom_id, text in self.prompts for target in targets
                         for model in (self.models or (DISCOVERED,)) for sample in range(self.samples))

    def cell_of(self, table: str, custom_id: Any, text: Any, node_url: Any, model: Any, sample: Any) -> Cell:
        """The cell a row written by a run of this configuration stands for."""
        return Cell(table, custom_id, text, node_url if self.compare else POOL, model if self.models else DISCOVERED,
                    sample)

    def describe(self) -> str:
        return (f"{len(self.prompts)} prompt(s) {[c for c, _ in self.prompts]}, "
                f"{'compare nodes' if self.compare else 'pool'}, samples={self.samples}, "
                f"models={list(self.models) or 'discovered'}, drift={'on' if self.drift else 'off'}")


@dataclass
class Run:
    """One CLI run: its configuration, its time window (rows are attributed by it), and what it returned."""

    number: int
    kind: str
    config: Config
    argv: List[str]
    started: float
    ended: float = 0.0
    exit_code: Any = None
    output: str = ""


@dataclass(frozen=True)
class Row:
    """A chat row or a failed_requests row, reduced to what the ledger is about."""

    table: str
    custom_id: Any
    text: Any
    node_url: Any
    model_requested: Any
    sample: Any
    at: float
    status: Any = None
    info_hash: Any = None
    cell_id: Any = None

    def describe(self) -> str:
        return (f"{self.table}[{self.custom_id} {self.text!r} node=…{str(self.node_url)[-9:]} "
                f"model={self.model_requested} sample={self.sample} status={self.status} "
                f"info_hash={str(self.info_hash)[:8]} cell_id={str(self.cell_id)[:12]}]")


@dataclass
class Snapshot:
    """The dataset as read after (or before) a run."""

    tables: Dict[str, List[Dict[str, Any]]] = field(default_factory=dict)
    every_value: List[str] = field(default_factory=list)
    """Every value of every table of every schema the run wrote (dlt's own included), as text."""

    def columns(self, table: str) -> Set[str]:
        rows = self.tables.get(table) or []
        return set(rows[0]) if rows else set()

    def current_hashes(self) -> Dict[str, Any]:
        """Each node's current configuration: the info_hash of its newest info row."""
        newest: Dict[str, Tuple[float, Any]] = {}
        for row in self.tables.get("info", []):
            at = _epoch(row.get("fetched_at"))
            if row.get("node_url") not in newest or at > newest[row["node_url"]][0]:
                newest[row["node_url"]] = (at, row.get("info_hash"))
        return {node: value for node, (_, value) in newest.items()}


def _epoch(value: Any) -> float:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
    return float("nan") if value is None else float(value)


def _json(value: Any) -> Any:
    if isinstance(value, (str, bytes)):
        with contextlib.suppress(ValueError):
            return json.loads(value)
    return value


def _last_user_text(messages: Any) -> Any:
    messages = _json(messages)
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        return messages[-1].get("content")
    return None


# --- violations: one exception type per invariant, so that Hypothesis reports each as its own bug -----------------


class LedgerViolation(AssertionError):
    """An invariant of the ledger does not hold after a run."""


class CliCrashed(LedgerViolation):
    """The CLI raised, or exited with a code other than 0 or 1, on a valid configuration."""


class KeyLeaked(LedgerViolation):
    """A fragment of the API key is in the output, a table or a file (5)."""


class RowForCellNeverAsked(LedgerViolation):
    """A row that the run which wrote it never asked for (2)."""


class CellDoubled(LedgerViolation):
    """Two completed rows of one cell under the same node configuration, or one cell sent twice in one run (1)."""


class DoneCellSentAgain(LedgerViolation):
    """A run wrote a new row for a cell that was done before it (1)."""


class CellFailedTwice(LedgerViolation):
    """A cell with more than one failed_requests row (1)."""


class CellCompletedAndFailed(LedgerViolation):
    """A cell with a current completed row and a failed_requests row (1)."""


class CellNeitherCompletedNorFailed(LedgerViolation):
    """A cell this run asked for with no current completed row and no failed_requests row (1)."""


class CellIdAmbiguous(LedgerViolation):
    """One cell_id on rows of different cells."""


class WrongExitCode(LedgerViolation):
    """The exit code does not say whether a cell of this run is failing (3)."""


class UnexpectedSends(LedgerViolation):
    """Chat POSTs that no missing cell explains (4)."""


_ORDER: Tuple[type, ...] = (CliCrashed, KeyLeaked, RowForCellNeverAsked, CellDoubled, DoneCellSentAgain,
                            CellFailedTwice, CellCompletedAndFailed, CellNeitherCompletedNorFailed, CellIdAmbiguous,
                            WrongExitCode, UnexpectedSends)


class Violations:
    """What one check found, raised as the first kind in :data:`_ORDER` with every finding in the message."""

    def __init__(self, context: str, history: Sequence[str] = ()) -> None:
        self.context = context
        self.history = history
        self.found: Dict[type, List[str]] = {}

    def add(self, kind: type, message: str) -> None:
        self.found.setdefault(kind, []).append(message)

    def raise_first(self) -> None:
        if not self.found:
            return
        lines = [self.context]
        for kind in _ORDER:
            for message in self.found.get(kind, [])[:12]:
                lines.append(f"  {kind.__name__}: {message}")
            if len(self.found.get(kind, [])) > 12:
                lines.append(f"  {kind.__name__}: … {len(self.found[kind]) - 12} more")
        if self.history:
            lines += ["  the runs so far:", *(f"    {line}" for line in self.history[-20:])]
        first = next(kind for kind in _ORDER if kind in self.found)
        raise first("\n".join(lines))


# --- the machine ---------------------------------------------------------------------------------------------------


class LedgerMachine(RuleBasedStateMachine):
    """Two emulated nodes, a prompt set, evaluation flags; every rule changes one thing and runs the CLI."""

    workdir: Path = Path(".")
    destination = "duckdb"
    _examples = itertools.count()

    def __init__(self) -> None:
        super().__init__()
        self.dir = self.workdir / f"example-{next(self._examples)}"
        self.dir.mkdir(parents=True)
        self.key = secrets.token_urlsafe(33)  # no fixed prefix: a fragment of it must not occur in ordinary text
        self.fragments = {self.key[i:i + 8] for i in range(len(self.key) - 7)}
        self.dataset = "gaia_data" if self.destination == "duckdb" else f"gaia_ledger_{uuid.uuid4().hex[:10]}"
        self.nodes: List[NodeEmulator] = []
        self.up: List[bool] = []
        self.prompts: Dict[str, str] = {}
        self.serial = 0
        self.compare = False
        self.samples = 1
        self.models: Tuple[str, ...] = ()
        self.drift = True
        self.tables: Tuple[str, ...] = ("chat_completions",)
        self.concurrency = 1
        self.runs: List[Run] = []
        self.history: List[str] = []
        """One line per run (what it was told, the nodes, its exit code): shown with every violation, since a flaky
        failure is reported without Hypothesis's notes."""
        self.last_clean = False  # the last normal run left no cell failing, on healthy nodes
        self._saved_env = {k: os.environ.get(k) for k in (*RUN_ENV, "DLT_DATA_DIR", "DLT_PROJECT_DIR",
                                                          "SOURCES__GAIA_SOURCE__API_KEY",
                                                          "DESTINATION__POSTGRES__CREDENTIALS")}
        self._saved_cwd = os.getcwd()
        os.environ.update(RUN_ENV)
        os.environ["DLT_DATA_DIR"] = str(self.dir / "dlt_data")
        os.environ["DLT_PROJECT_DIR"] = str(self.dir)
        os.environ["SOURCES__GAIA_SOURCE__API_KEY"] = self.key
        if self.destination == "postgres":
            os.environ["DESTINATION__POSTGRES__CREDENTIALS"] = POSTGRES
        os.chdir(self.dir)
        Container()[PluggableRunContext].reload(str(self.dir))

    def teardown(self) -> None:
        for node in self.nodes:
            node.stop()
        os.chdir(self._saved_cwd)
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if self.destination == "postgres":
            with contextlib.suppress(psycopg2.Error), psycopg2.connect(POSTGRES) as con, con.cursor() as cur:
                cur.execute("SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE %s",
                            (f"{self.dataset}%",))
                for (schema,) in cur.fetchall():
                    cur.execute(f'DROP SCHEMA "{schema}" CASCADE')
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- rules: each changes one thing, then runs -------------------------------------------------------------

    @initialize(flavors=st.tuples(st.sampled_from(FLAVORS), st.sampled_from(FLAVORS)),
                concurrency=st.sampled_from([1, 4]), streamed=st.booleans(), count=st.integers(1, 3))
    def start(self, flavors: Tuple[str, str], concurrency: int, streamed: bool, count: int) -> None:
        """Two nodes with the key, a first prompt set, and a first run."""
        self.nodes = [NodeEmulator(flavor=flavor, api_key=self.key, fault_kinds=FAULT_KINDS).start()
                      for flavor in flavors]
        self.up = [True] * len(self.nodes)
        self.concurrency = concurrency
        self.tables = ("chat_completions", "chat_completions_stream") if streamed else ("chat_completions",)
        self._add(count)
        self._normal_run()

    @rule(repeat=st.booleans())
    def run_unchanged(self, repeat: bool) -> None:
        """Run again; with ``repeat``, once more at once (a clean, healthy run must then send nothing)."""
        self._normal_run(repeat=repeat)

    @rule(count=st.integers(1, 3))
    def add_prompts(self, count: int) -> None:
        self._add(count)
        self._normal_run()

    @precondition(lambda self: self.prompts)
    @rule(which=st.integers(0, 7), topic=st.sampled_from(TOPICS))
    def edit_prompt(self, which: int, topic: str) -> None:
        """The same custom_id, a new text."""
        custom_id = sorted(self.prompts)[which % len(self.prompts)]
        self.serial += 1
        self.prompts[custom_id] = f"Question {self.serial}: what about {topic}? (edited)"
        self._normal_run()

    @precondition(lambda self: len(self.prompts) > 1)
    @rule(which=st.integers(0, 7))
    def remove_prompt(self, which: int) -> None:
        del self.prompts[sorted(self.prompts)[which % len(self.prompts)]]
        self._normal_run()

    @precondition(lambda self: self.prompts)
    @rule(which=st.integers(0, 7))
    def add_prompt_with_the_same_text(self, which: int) -> None:
        """A new custom_id whose text another prompt already has: its own cells all the same."""
        text = self.prompts[sorted(self.prompts)[which % len(self.prompts)]]
        self.serial += 1
        self.prompts[f"p{self.serial}"] = text
        self._normal_run()

    @rule()
    def toggle_compare_nodes(self) -> None:
        self.compare = not self.compare
        self._normal_run()

    @rule(samples=st.integers(1, 3))
    def set_samples(self, samples: int) -> None:
        self.samples = samples
        self._normal_run()

    @rule(models=st.sampled_from(MODEL_LISTS))
    def set_chat_models(self, models: Tuple[str, ...]) -> None:
        self.models = models
        self._normal_run()

    @rule()
    def toggle_drift(self) -> None:
        self.drift = not self.drift
        self._normal_run()

    @rule(node=st.integers(0, 1), model=st.sampled_from(SWAPS))
    def swap_model(self, node: int, model: Optional[str]) -> None:
        """The operator swaps the model a node serves under the same URL (its /v1/info changes)."""
        self.nodes[node].loaded_model = model
        self._normal_run()

    @rule(node=st.integers(0, 1))
    def take_node_down_or_up(self, node: int) -> None:
        """Stop a node, or start it again on the same port."""
        if self.up[node]:
            self.nodes[node].stop()
        else:
            _restart(self.nodes[node])
        self.up[node] = not self.up[node]
        self._normal_run()

    @rule(node=st.integers(0, 1), rate=st.sampled_from([0.0, 0.3]))
    def set_fault_rate(self, node: int, rate: float) -> None:
        """Transient faults (429, 502, 503, resets, truncated bodies) on a share of a node's requests."""
        self.nodes[node].fault_rate = rate
        self._normal_run()

    @rule(delay=st.sampled_from([0.0, 0.1, 0.3, 0.6, 1.2]))
    def killed_run(self, delay: float) -> None:
        """A run in a subprocess, killed with SIGKILL ``delay`` seconds after it first reached a node (timed from
        there, not from the start, so that interpreter start-up does not decide where it dies)."""
        config = self._config()
        argv = self._argv(config)
        run = self._begin("killed", config, argv)
        out_path = self.dir / f"killed-{run.number}.out"
        posts, requests = self._posts(), self._requests()
        with open(out_path, "wb") as out:
            proc = subprocess.Popen([sys.executable, SCRIPT, *argv], cwd=self.dir, env=dict(os.environ),
                                    stdout=out, stderr=subprocess.STDOUT)
            contact, give_up = None, time.time() + 20
            while proc.poll() is None:
                now = time.time()
                if contact is None and self._requests() > requests:
                    contact = now
                if (contact is not None and now >= contact + delay) or now > give_up:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
                time.sleep(0.005)
            run.exit_code = proc.wait()
        run.ended = time.time()
        run.output = out_path.read_text(errors="replace")
        self._noted(run, f"killed {delay} s after its first request", self._posts() - posts)
        self.last_clean = False
        self._check_after_kill(run)

    @rule(shards=st.sampled_from([2, 3]))
    def sharded_runs(self, shards: int) -> None:
        """``--shard i/n`` for every i in turn: together, one unsharded run."""
        config = self._config()
        before = self._read()
        posts = self._posts()
        batch = []
        for index in range(shards):
            batch.append(self._run_in_process("shard", config, [*self._argv(config), "--shard", f"{index}/{shards}"]))
            self._check_after_kill(batch[-1], partial=True)
        self._check(batch, before, self._read(), self._posts() - posts)

    # --- running -------------------------------------------------------------------------------------------------

    def _add(self, count: int) -> None:
        for _ in range(count):
            self.serial += 1
            self.prompts[f"p{self.serial}"] = f"Question {self.serial}: what about {TOPICS[self.serial % 5]}?"

    def _config(self) -> Config:
        return Config(prompts=tuple(sorted(self.prompts.items())), nodes=tuple(n.base_url for n in self.nodes),
                      tables=self.tables, compare=self.compare, samples=self.samples, models=self.models,
                      drift=self.drift)

    def _argv(self, config: Config) -> List[str]:
        path = self.dir / "prompts.jsonl"
        path.write_text("".join(json.dumps({"custom_id": custom_id, "messages": [{"role": "user", "content": text}]})
                                + "\n" for custom_id, text in config.prompts))
        argv = ["--base-url", ",".join(config.nodes), "--prompts-file", str(path),
                "--resources", ",".join([*config.tables, "info"]), "--progress", "none",
                "--max-concurrency", str(self.concurrency), "-v"]
        if config.compare:
            argv.append("--compare-nodes")
        if config.samples != 1:
            argv += ["--samples", str(config.samples)]
        if config.models:
            argv += ["--chat-model", ",".join(config.models)]
        if not config.drift:
            argv.append("--no-drift")
        if self.destination != "duckdb":
            argv += ["--destination", self.destination, "--dataset-name", self.dataset]
        return argv

    def _begin(self, kind: str, config: Config, argv: List[str]) -> Run:
        run = Run(len(self.runs) + 1, kind, config, argv, started=time.time())
        self.runs.append(run)
        return run

    def _run_in_process(self, kind: str, config: Config, argv: List[str]) -> Run:
        run = self._begin(kind, config, argv)
        posts = self._posts()
        buffer = io.StringIO()
        handler = logging.StreamHandler(buffer)
        handler.setLevel(logging.DEBUG)
        root = logging.getLogger()
        root.addHandler(handler)
        try:
            with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
                try:
                    run.exit_code = CLI.main(argv)
                except SystemExit as exc:
                    run.exit_code = exc.code
                except Exception:  # a crash is a finding, reported with its traceback
                    run.exit_code = "raised"
                    buffer.write(traceback.format_exc())
        finally:
            root.removeHandler(handler)
            run.ended = time.time()
        run.output = buffer.getvalue()
        self._noted(run, kind, self._posts() - posts)
        return run

    def _noted(self, run: Run, kind: str, posts: int) -> None:
        note(f"run {run.number} [{kind}] {self._health()}: {_shown(run.argv)} -> exit {run.exit_code}, "
             f"{posts} chat POST(s)")
        self.history.append(f"run {run.number} [{kind}] {self._health()}; {run.config.describe()} -> exit "
                            f"{run.exit_code}, {posts} chat POST(s)")

    def _normal_run(self, repeat: bool = False) -> None:
        config = self._config()
        before = self._read()
        posts = self._posts()
        run = self._run_in_process("run", config, self._argv(config))
        clean = self._check([run], before, self._read(), self._posts() - posts)
        self.last_clean = clean and self._healthy()
        if repeat and self.last_clean:
            before = self._read()
            posts = self._posts()
            again = self._run_in_process("repeat", config, self._argv(config))
            self._check([again], before, self._read(), self._posts() - posts, expect_no_sends=True)

    def _posts(self) -> int:
        return sum(node.requests_to(CHAT_POST, "POST") for node in self.nodes)

    def _requests(self) -> int:
        return sum(node.total_requests() for node in self.nodes)

    def _healthy(self) -> bool:
        return all(node.fault_rate == 0 for node in self.nodes)

    def _health(self) -> str:
        return "nodes " + ", ".join(
            f"{i}:{'up' if up else 'DOWN'}{f' faults={n.fault_rate}' if n.fault_rate else ''}"
            f"{f' model={n.loaded_model}' if n.loaded_model else ''}"
            for i, (n, up) in enumerate(zip(self.nodes, self.up, strict=True)))

    def _origin(self, at: float) -> Optional[Run]:
        for run in self.runs:
            if run.started <= at <= run.ended:
                return run
        return None

    # --- reading the destination -----------------------------------------------------------------------------------

    def _read(self) -> Snapshot:
        reader = {"postgres": self._read_postgres, "lancedb": self._read_lancedb}.get(self.destination,
                                                                                      self._read_duckdb)
        snapshot = Snapshot()
        for schema, table, names, rows in reader():
            for row in rows:
                for name, value in zip(names, row, strict=True):
                    if table == "_dlt_pipeline_state" and name == "state" and isinstance(value, str):
                        with contextlib.suppress(Exception):
                            value = json.dumps(decompress_state(value))
                    snapshot.every_value.append(f"{schema}.{table}.{name}={value}")
            if schema == self.dataset:
                snapshot.tables[table] = [dict(zip(names, row, strict=True)) for row in rows]
        return snapshot

    def _read_duckdb(self) -> List[Tuple[str, str, List[str], List[tuple]]]:
        path = self.dir / "gaia_pipeline.duckdb"
        if not path.exists():
            return []
        out = []
        with duckdb.connect(str(path), read_only=True) as con:
            tables = con.execute("SELECT table_schema, table_name FROM information_schema.tables "
                                 "WHERE table_type = 'BASE TABLE'").fetchall()
            for schema, table in tables:
                cursor = con.execute(f'SELECT * FROM "{schema}"."{table}"')
                out.append((schema, table, [d[0] for d in cursor.description], cursor.fetchall()))
        return out

    def _read_lancedb(self) -> List[Tuple[str, str, List[str], List[tuple]]]:
        """Every table of the embedded LanceDB folder (dlt names them ``<dataset>___<table>``)."""
        import lancedb

        path = self.dir / "gaia_pipeline.lancedb"
        if not path.exists():
            return []
        out = []
        db = lancedb.connect(str(path))
        for name in db.table_names():
            schema, _, table = name.partition("___")
            data = db.open_table(name).to_arrow()
            names = data.schema.names
            out.append((schema if table else self.dataset, table or name, names,
                        [tuple(row[n] for n in names) for row in data.to_pylist()]))
        return out

    def _read_postgres(self) -> List[Tuple[str, str, List[str], List[tuple]]]:
        out = []
        with psycopg2.connect(POSTGRES) as con, con.cursor() as cur:
            cur.execute("SELECT table_schema, table_name FROM information_schema.tables "
                        "WHERE table_schema LIKE %s AND table_type = 'BASE TABLE'", (f"{self.dataset}%",))
            for schema, table in cur.fetchall():
                cur.execute(f'SELECT * FROM "{schema}"."{table}"')
                out.append((schema, table, [d[0] for d in cur.description], cur.fetchall()))
        con.close()
        return out

    def _answers(self, snapshot: Snapshot) -> List[Row]:
        """Every row of the chat tables."""
        return [Row(table, r.get("custom_id"), _last_user_text(r.get("messages")), r.get("node_url"),
                    r.get("model_requested"), r.get("sample_index"), _epoch(r.get("requested_at")),
                    r.get("status"), r.get("info_hash"), r.get("cell_id"))
                for table in self.tables for r in snapshot.tables.get(table, [])]

    def _failures(self, snapshot: Snapshot) -> List[Row]:
        """The failed_requests rows of the chat tables. Where today's rows lack the contract's columns, what was asked
        is read from the request body (its model; its seed, which is the sample index when no seed is set) —
        test_failed_requests_carry_the_ledger_columns fails for the missing columns themselves."""
        rows = []
        for r in snapshot.tables.get("failed_requests", []):
            if r.get("resource") not in self.tables:
                continue
            body = _json(r.get("request_body"))
            body = body if isinstance(body, dict) else {}
            model = r["model_requested"] if "model_requested" in r else body.get("model")
            sample = r["sample_index"] if "sample_index" in r else body.get("seed", 0)
            rows.append(Row(r["resource"], r.get("custom_id"), _last_user_text(body.get("messages")),
                            r.get("node_url"), model, sample, _epoch(r.get("failed_at")), "failed", None,
                            r.get("cell_id")))
        return rows

    def _info_failing(self, snapshot: Snapshot) -> bool:
        return any(r.get("resource") not in self.tables for r in snapshot.tables.get("failed_requests", []))

    # --- the invariants ------------------------------------------------------------------------------------------

    def _cell(self, row: Row, run: Run) -> Cell:
        return run.config.cell_of(row.table, row.custom_id, row.text, row.node_url, row.model_requested, row.sample)

    def _check_everywhere(self, runs: Sequence[Run], after: Snapshot, found: Violations) -> None:
        """What holds after any run, killed or not: 2, no two completed rows of a cell share a configuration, 5."""
        for run in runs:
            if run.exit_code not in (0, 1) and run.kind != "killed":
                found.add(CliCrashed, f"run {run.number} exited {run.exit_code!r}:\n{run.output[-3000:]}")
            leaked = [f for f in self.fragments if f in run.output]
            if leaked:
                found.add(KeyLeaked, f"run {run.number}'s output holds {leaked[0]!r}")
        for value in after.every_value:
            if any(f in value for f in self.fragments):
                found.add(KeyLeaked, f"the destination holds it: {value[:300]}")
                break
        for path in sorted(p for p in self.dir.rglob("*") if p.is_file()):
            data = path.read_bytes()
            if any(f.encode() in data for f in self.fragments):
                found.add(KeyLeaked, f"the file {path.relative_to(self.dir)} holds it")
        seen: Dict[Tuple[Cell, Any, Any], Row] = {}
        cells_of_id: Dict[Any, Set[Cell]] = {}
        for row in self._answers(after) + self._failures(after):
            run = self._origin(row.at)
            if run is None:
                found.add(RowForCellNeverAsked, f"{row.describe()} was written outside every run's time window")
                continue
            cell = self._cell(row, run)
            if cell not in run.config.cells:
                found.add(RowForCellNeverAsked, f"{row.describe()}, written by run {run.number} ({run.kind}), is "
                                                f"{cell}, which that run never asked for ({run.config.describe()})")
            if row.cell_id is not None:
                cells_of_id.setdefault(row.cell_id, set()).add(_untargeted(cell))
            if row.status == "completed":
                key = (_untargeted(cell), row.node_url, row.info_hash)
                if key in seen:
                    found.add(CellDoubled, f"{cell} has two completed rows answered by the same node configuration: "
                                           f"{seen[key].describe()} and {row.describe()}")
                seen[key] = row
        for cell_id, cells in cells_of_id.items():
            if len(cells) > 1:
                found.add(CellIdAmbiguous, f"cell_id {cell_id} is on rows of {len(cells)} cells: "
                                           f"{sorted(map(str, cells))}")

    def _check_after_kill(self, run: Run, partial: bool = False) -> None:
        found = Violations(f"after run {run.number} ({run.kind}{', one shard of several' if partial else ''}): "
                           f"{run.config.describe()}; {self._health()}{_errors_of(run)}", self.history)
        self._check_everywhere([run], self._read(), found)
        found.raise_first()

    def _check(self, batch: Sequence[Run], before: Snapshot, after: Snapshot, posts: int,
               expect_no_sends: bool = False) -> bool:
        """Every invariant after a normal run (``batch``: the run, or every shard of one); True when no cell fails."""
        config = batch[0].config
        found = Violations(f"after run(s) {[r.number for r in batch]} ({batch[0].kind}): {config.describe()}; "
                           f"{self._health()}{''.join(_errors_of(run) for run in batch)}", self.history)
        self._check_everywhere(batch, after, found)
        asked = config.cells
        hashes = after.current_hashes()
        in_batch = {id(run) for run in batch}

        def current(row: Row) -> bool:
            if row.status != "completed":
                return False
            if not config.drift or row.info_hash is None or hashes.get(row.node_url) is None:
                return True  # no drift asked for, or nothing known about the node's configuration
            return bool(row.info_hash == hashes[row.node_url])

        def by_cell(rows: List[Row]) -> Dict[Cell, List[Row]]:
            grouped: Dict[Cell, List[Row]] = {}
            for row in rows:
                run = self._origin(row.at)
                if run is not None:
                    grouped.setdefault(self._cell(row, run), []).append(row)
            return grouped

        def answers_of(grouped: Dict[Cell, List[Row]], cell: Cell) -> List[Row]:
            """A cell's answer rows: a pool cell's from any node, a compare cell's from its node — whichever kind of
            run wrote them (README "Identity and outcomes": one row per cell and answering node)."""
            rows = grouped.get(_untargeted(cell), [])
            return rows if cell.target == POOL else [r for r in rows if r.node_url == cell.target]

        answer_rows = {}
        for cell, rows in by_cell(self._answers(after)).items():
            answer_rows.setdefault(_untargeted(cell), []).extend(rows)
        before_rows: Dict[Cell, List[Row]] = {}
        for cell, rows in by_cell(self._answers(before)).items():
            before_rows.setdefault(_untargeted(cell), []).extend(rows)
        failures = by_cell(self._failures(after))
        done_before = {cell for cell in asked if any(map(current, answers_of(before_rows, cell)))}
        answers = {cell: answers_of(answer_rows, cell) for cell in asked}
        failing = []
        for cell in sorted(asked, key=str):
            done = [r for r in answers.get(cell, []) if current(r)]
            failed = failures.get(cell, [])
            new = [r for r in answers.get(cell, []) if id(self._origin(r.at)) in in_batch]
            if len(new) > 1:
                found.add(CellDoubled, f"{cell} was answered {len(new)} times in this run: "
                                       f"{[r.describe() for r in new]}")
            if new and cell in done_before:
                found.add(DoneCellSentAgain, f"{cell} was done before this run and was sent again: "
                                             f"{[r.describe() for r in new]}")
            if len(failed) > 1:
                found.add(CellFailedTwice, f"{cell} has {len(failed)} failed_requests rows")
            if done and failed:
                found.add(CellCompletedAndFailed, f"{cell} is completed ({done[0].describe()}) and failing "
                                                  f"({failed[0].describe()})")
            if not done and not failed:
                others = [r.describe() for r in answers.get(cell, [])]
                found.add(CellNeitherCompletedNorFailed,
                          f"{cell} has no current completed row and no failed row (its rows: {others or 'none'}; "
                          f"current configurations {({k[-9:]: str(v)[:8] for k, v in hashes.items()})})")
            if failed and not done:
                failing.append(cell)
        codes = [run.exit_code for run in batch]
        info_failing = self._info_failing(after)
        if all(code in (0, 1) for code in codes):
            if failing and 1 not in codes:
                found.add(WrongExitCode, f"exit {codes} while {len(failing)} cell(s) of this run are failing, "
                                         f"e.g. {failing[0]}")
            if not failing and not info_failing and 1 in codes:
                stale = [r.describe() for r in self._failures(after)]
                found.add(WrongExitCode, f"exit {codes} while no cell of this run is failing (failed_requests "
                                         f"holds {stale or 'nothing of the chat tables'})")
        written = sum(1 for rows in answer_rows.values() for r in rows if id(self._origin(r.at)) in in_batch)
        if expect_no_sends and posts:
            found.add(UnexpectedSends, f"a repeated run with nothing changed sent {posts} chat POST(s)")
        elif self._healthy() and posts != written:
            found.add(UnexpectedSends, f"{posts} chat POST(s) on healthy nodes for {written} row(s) written")
        found.raise_first()
        return not failing and not info_failing


def _untargeted(cell: Cell) -> Cell:
    """The cell without its target: what its answer rows share, whichever kind of run (pool, compare) wrote them."""
    return Cell(cell.table, cell.custom_id, cell.text, POOL, cell.model, cell.sample)


def _restart(node: NodeEmulator, attempts: int = 50) -> None:
    """Serve again on the node's port (it was bound before, so it is fixed now)."""
    for _ in range(attempts):
        try:
            node.start()
            return
        except OSError:
            time.sleep(0.1)
    node.start()


def _errors_of(run: Run) -> str:
    """What the run said went wrong (its ``error:`` message), to show next to the violations."""
    at = run.output.find("error:")
    return "" if at < 0 else f"\n  run {run.number} said: " + run.output[at:at + 600].strip().replace("\n\n", "\n")


def _shown(argv: Sequence[str]) -> str:
    return "gaia_pipeline.py " + " ".join(a if " " not in a else repr(a) for a in argv)


def _machine(workdir: Path, destination: str) -> Callable[[], LedgerMachine]:
    return type("LedgerMachine", (LedgerMachine,), {"workdir": workdir, "destination": destination})


# --- the tests -----------------------------------------------------------------------------------------------------


@pytest.mark.timeout(TIMEOUT_S)
def test_sequences_of_runs_keep_the_ledger(tmp_path: Path) -> None:
    run_state_machine_as_test(_machine(tmp_path, "duckdb"), settings=_settings("duckdb"))


@pytest.mark.timeout(TIMEOUT_S)
def test_sequences_of_runs_keep_the_ledger_on_postgres(tmp_path: Path) -> None:
    if not _postgres_up():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {POSTGRES}: .ci/run should have started it")
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES}")
    run_state_machine_as_test(_machine(tmp_path, "postgres"), settings=_settings("postgres"))


@pytest.mark.timeout(TIMEOUT_S)
def test_sequences_of_runs_keep_the_ledger_on_lancedb(tmp_path: Path) -> None:
    pytest.importorskip("lancedb")
    run_state_machine_as_test(_machine(tmp_path, "lancedb"), settings=_settings("lancedb"))


def test_failed_requests_carry_the_ledger_columns(make_node, tmp_path: Path) -> None:
    """The columns the machine reads: a cell_id on every row, and a failure says which cell it is."""
    up = make_node("llama")
    down = make_node("nexus")
    down.stop()
    (tmp_path / "prompts.jsonl").write_text(
        json.dumps({"custom_id": "p1", "messages": [{"role": "user", "content": "Name a river"}]}) + "\n")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = CLI.main(["--base-url", f"{up.base_url},{down.base_url}", "--prompts-file", "prompts.jsonl",
                         "--resources", "chat_completions", "--compare-nodes", "--samples", "2",
                         "--chat-model", "model-x", "--progress", "none"])
    assert code == 1
    with duckdb.connect(str(tmp_path / "gaia_pipeline.duckdb"), read_only=True) as con:
        def columns(table: str) -> Set[str]:
            return {r[0] for r in con.execute(f"DESCRIBE gaia_data.{table}").fetchall()}

        assert "cell_id" in columns("chat_completions")
        assert {"resource", "custom_id", "sample_index", "node_url", "model_requested", "cell_id"} <= columns(
            "failed_requests")
        failed = con.execute("SELECT custom_id, sample_index, node_url, model_requested FROM gaia_data.failed_requests "
                             "WHERE resource = 'chat_completions' ORDER BY sample_index").fetchall()
    assert failed == [("p1", 0, down.base_url, "model-x"), ("p1", 1, down.base_url, "model-x")]

