"""Every ```bash and ```python block of README.md is run, or checked against what runs it, so README cannot drift from
the code:

* **run here**, in README's order, in one folder (a copy of the checkout, as a reader's clone) against emulated nodes
  on 127.0.0.1. What a reader replaces for their own setup is replaced, and only that (:data:`ADDRESSES`): the node's
  address and key, the warehouse's credentials, and input files made from ``examples/``. A Python block that uses a
  name README defined elsewhere (``pipeline``) gets that definition as its prelude, shown in :data:`BLOCKS`; each block
  ends with a check of what it did;
* **the CI's**: install and test commands that ``.ci/run`` runs; each ``pip install`` and each test command of the
  block is one of ``.ci/run``'s;
* **run by another test**, named: the Quick start demo (``tests/test_new_user.py``), the Airflow block
  (``tests/test_airflow_executor.py``).

A new block fails :func:`test_every_block_has_a_way_to_run` until it is given one here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List

import duckdb
import httpx
import psycopg2
import pytest
import tomllib
from conftest import POSTGRES, REPO_ROOT, _postgres_up, checkout, free_port
from test_new_user import background

from gaia_source.emulator import NodeEmulator

README = REPO_ROOT / "README.md"
CI = REPO_ROOT / ".ci" / "run"


@dataclass(frozen=True)
class Block:
    line: int  # where it starts in README.md
    language: str
    text: str

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.language}: {self.text.splitlines()[0][:60]!r})"


def readme_blocks() -> List[Block]:
    """README's top-level ```bash and ```python blocks, in order."""
    text = README.read_text(encoding="utf-8")
    return [Block(text[:m.start()].count("\n") + 1, m[1], m[2])
            for m in re.finditer(r"^```(bash|python)\n(.*?)^```", text, re.S | re.M)]


@dataclass(frozen=True)
class How:
    """How a block runs: ``kind`` is ``run`` (here), ``ci`` (.ci/run runs its commands) or ``test:<file>``."""
    kind: str
    prelude: str = ""  # Python run before the block (a definition README gives elsewhere)
    check: str = ""  # Python run after the block, in the same process: asserts what it did
    alone: bool = False  # another setup (another server), tried in a folder and dlt data dir of its own


VSS_PIPELINE = "README.md's vss pipeline"
BLOCKS: Dict[str, How] = {  # a line that only that block has -> how it runs
    'pip install -e ".[demo]"': How("test:tests/test_new_user.py"),
    'pip install -e ".[dev]"\nruff check': How("ci"),
    "/tmp/gaia-airflow-venv/bin/pip install": How("ci"),
    "/tmp/gaia-amd-venv/bin/pip install": How("ci"),
    "/tmp/gaia-real-venv/bin/pip install": How("ci"),
    "export SOURCES__GAIA_SOURCE__NODE_ID=": How("run"),
    "export SOURCES__GAIA_SOURCE__TIMEOUT=600": How("run", alone=True),
    "from gaia_source import gaia_source\n": How("run"),
    "data = dlt.pipeline(\"gaia_pipeline\").dataset()": How("run"),
    "marimo run ": How("run"),
    "--export-batch-output out.jsonl": How("run"),
    "from gaia_source.transformers import": How(
        "run",
        prelude="""
import dlt
pipeline = dlt.pipeline("gaia_pipeline", destination="duckdb", dataset_name="gaia_data")
def my_question_pages():
    yield [{"question_id": "q-1", "question": "What is the capital of France?"},
           {"question_id": "q-2", "question": "What does dlt do?"}]
    yield [{"question_id": "q-3", "question": "Name the river of Paris"}]
pipeline.run([{"doc_id": f"d-{i}", "body": f"Body {i} of the manual.", "title": f"T{i}", "url": f"u{i}"}
              for i in range(5)], table_name="docs")
""",
        check="""
got = dict(pipeline.dataset()("SELECT custom_id, content FROM chat_completions WHERE custom_id LIKE 'q-%'").fetchall())
assert sorted(got) == ["q-1", "q-2", "q-3"] and all(got.values()), got
vectors = pipeline.dataset()("SELECT text_id, metadata FROM embeddings WHERE text_id LIKE 'd-%'").fetchall()
assert sorted(t for t, _ in vectors) == [f"d-{i}" for i in range(5)], vectors
""",
    ),
    "from gaia_source.vectors import search": How(
        "run",
        prelude='import dlt\npipeline = dlt.pipeline("gaia_pipeline", destination="duckdb", dataset_name="gaia_data")\n',
        check="assert len(hits) == 0  # no text of document guide-7\n",
    ),
    "DuckDbCredentials(": How("run", check='pipeline.run(pipeline_check_rows(), table_name="vss_check")\n'),
    "from gaia_source import Ledger": How("run", prelude=VSS_PIPELINE, check="""
assert ledger.failing == 0, ledger.summary_rows()
rows = pipeline.dataset()("SELECT document_id, count(*) FROM embeddings GROUP BY document_id").fetchall()
assert sorted(d for d, _ in rows) == sorted(MANUALS), rows
"""),
    "airflow dags test gaia_node_load": How("test:tests/test_airflow_executor.py"),
    'pip install -e ".[postgres]"': How("run"),
    "python -m gaia_source.emulator --flavor": How("run"),
}


def how(block: Block) -> How:
    found = [h for marker, h in BLOCKS.items() if marker in block.text]
    assert len(found) == 1, f"{block}: {len(found)} ways to run it in tests/test_readme_blocks.py (one is needed)"
    return found[0]


def test_every_block_has_a_way_to_run() -> None:
    blocks = readme_blocks()
    assert len(blocks) >= len(BLOCKS)
    for block in blocks:
        how(block)
    unused = [marker for marker in BLOCKS if not any(marker in b.text for b in blocks)]
    assert unused == [], f"blocks no longer in README: {unused}"
    for block in blocks:  # another test runs it: that test must exist and read README
        if how(block).kind.startswith("test:"):
            assert "README" in (REPO_ROOT / how(block).kind[5:]).read_text(encoding="utf-8")


# --- the CI's blocks ----------------------------------------------------------------------------------------------

def _installs(text: str) -> List[frozenset]:
    """The package arguments of every `pip install` in a shell text (flags and venv paths left out)."""
    found = []
    for line in text.replace("\\\n", " ").splitlines():
        for part in line.split("&&"):
            words = shlex.split(part.split("#")[0]) if "pip" in part else []
            if "install" in words and any(w.endswith("pip") for w in words[:words.index("install")]):
                found.append(frozenset(w for w in words[words.index("install") + 1:] if not w.startswith("-")))
    return found


def _commands(text: str) -> List[str]:
    """Test and check commands (pytest, ruff, mypy, lint-imports) of a shell text, as ``program args`` (no ``-q``)."""
    found = []
    for line in text.splitlines():
        for part in re.split(r"&&|;", line.split("#")[0]):
            words = [w for w in shlex.split(part) if w != "-q"]
            for program in ("pytest", "ruff", "mypy", "lint-imports"):
                if program in words:
                    found.append(" ".join(words[words.index(program):]))
    return found


def _ci_runs(command: str, ci_commands: List[str]) -> bool:
    """Whether .ci/run runs ``command``: the same command, or a pytest that collects its test files (a bare `pytest`
    collects every file under tests/)."""
    if command in ci_commands:
        return True
    files = set(command.split()[1:])
    return command.startswith("pytest ") and any(
        c == "pytest" or (c.startswith("pytest ") and files <= set(c.split()[1:])) for c in ci_commands)


def test_ci_blocks_are_what_ci_runs() -> None:
    ci = CI.read_text(encoding="utf-8")
    ci_installs, ci_commands = _installs(ci), _commands(ci)
    checked = 0
    for block in readme_blocks():
        if how(block).kind != "ci":
            continue
        for packages in _installs(block.text):
            assert packages in ci_installs, f"{block}: `pip install {' '.join(sorted(packages))}` is not in .ci/run"
            checked += 1
        for command in _commands(block.text):
            assert _ci_runs(command, ci_commands), f"{block}: `{command}` is not in .ci/run"
            checked += 1
    assert checked >= 8


# --- the blocks run here ------------------------------------------------------------------------------------------

KEY = "gaia-README-KEY-1234"
MANUALS = ["manual-a", "manual-b"]


@dataclass
class Reader:
    """A reader's folder and shell: the nodes README's blocks talk to, and the environment they run in."""
    folder: Path
    env: Dict[str, str]
    node: NodeEmulator  # README's "a real node" (with a key)
    amd: NodeEmulator  # README's AMD GAIA server at localhost:8080
    local: NodeEmulator  # README's node at http://localhost:8080/v1 (the Python examples)


def address(block: Block, reader: Reader) -> str:
    """The block as the reader runs it: the addresses and secrets of README replaced by the reader's, and only those."""
    text = block.text
    node_id = re.search(r"export SOURCES__GAIA_SOURCE__NODE_ID=(\S+)", text)
    if node_id:  # a hosted node id is https://{id}.gaia.domains/v1: the reader's node is local here
        text = text.replace(node_id[0], f"export SOURCES__GAIA_SOURCE__BASE_URL={reader.node.base_url}")
    text = text.replace("gaia-...", KEY)
    local = reader.amd if "SOURCES__GAIA_SOURCE__TIMEOUT=600" in text else reader.local
    text = text.replace("http://localhost:8080/v1", local.base_url).replace("http://localhost:8080",
                                                                             local.base_url.removesuffix("/v1"))
    text = text.replace("postgresql://loader:password@localhost:5432/warehouse", POSTGRES)
    return text


def run_shell(block: Block, reader: Reader) -> subprocess.CompletedProcess:
    """A bash block, line by line as printed (`bash -e`): `pip install` lines only check that the extras exist (the
    test's venv has `[dev]`, which holds them), and `dlt pipeline … show` is left to tests/test_new_user.py."""
    extras = set(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    lines = []
    for line in address(block, reader).splitlines():
        if re.match(r"pip install -e \"\.\[([\w,]+)\]\"$", line.strip()):
            named = set(re.findall(r"\[([\w,]+)\]", line)[0].split(","))
            assert named <= extras, f"{block}: no extra {named - extras} in pyproject.toml"
            continue
        if re.match(r"dlt pipeline \S+ show", line):
            continue
        lines.append(line)
    result = subprocess.run(["bash", "-e", "-c", "\n".join(lines)], cwd=reader.folder, env=reader.env,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, f"{block}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def run_python(block: Block, reader: Reader, blocks: List[Block]) -> subprocess.CompletedProcess:
    spec = how(block)
    prelude = spec.prelude
    if prelude == VSS_PIPELINE:  # the block that defines it, as README shows it above
        prelude = next(b.text for b in blocks if "DuckDbCredentials(" in b.text)
    helpers = ("def pipeline_check_rows():\n    yield {'id': 1}\n"
               f"MANUALS = {MANUALS!r}\n")
    code = "\n".join([helpers, prelude, address(block, reader), spec.check])
    result = subprocess.run([sys.executable, "-c", code], cwd=reader.folder, env=reader.env, capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, f"{block}:\n{code}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def rows(db: Path, sql: str) -> List[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql).fetchall()


@contextlib.contextmanager
def postgres_dataset(name: str) -> Iterator[None]:
    """README's PostgreSQL commands load into ``gaia_data``: on the test's PostgreSQL, dropped before and after."""
    def drop() -> None:
        with psycopg2.connect(POSTGRES) as con, con.cursor() as cur:
            cur.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
            cur.execute(f"DROP SCHEMA IF EXISTS {name}_staging CASCADE")
    drop()
    try:
        yield
    finally:
        drop()


@pytest.fixture
def reader(tmp_path: Path, make_node) -> Reader:
    folder = checkout(tmp_path / "gaia-dlt")
    for name, example in (("prompts.jsonl", "prompts.jsonl"), ("corpus.jsonl", "texts.jsonl"),
                          ("queries.txt", "queries.txt"), ("batch_input.jsonl", "prompts.jsonl")):
        (folder / name).write_text((REPO_ROOT / "examples" / example).read_text())
    manuals = [{"id": f"{doc}-{i}", "document_id": doc, "text": f"Section {i} of {doc}. " * 40}
               for doc in MANUALS for i in range(2)]
    (folder / "manuals.jsonl").write_text("".join(json.dumps(m) + "\n" for m in manuals))
    env = {k: v for k, v in os.environ.items() if k != "DLT_PROJECT_DIR"}  # the folder's own .dlt/ counts
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DESTINATION__FILESYSTEM__BUCKET_URL"] = (tmp_path / "lake").as_uri()  # README: set bucket_url for it
    local = make_node("rag")
    env["SOURCES__GAIA_SOURCE__BASE_URL"] = local.base_url  # the reader's configured node (.dlt/config.toml)
    return Reader(folder, env, make_node("rag", api_key=KEY), make_node("amd"), local)


@pytest.mark.timeout(900)
def test_readme_blocks_run_in_order(reader: Reader) -> None:
    if not _postgres_up():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not running on 127.0.0.1:5432")
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    blocks = readme_blocks()
    db = reader.folder / "gaia_pipeline.duckdb"
    ran = 0
    for block in blocks:
        if how(block).kind != "run":
            continue
        ran += 1
        if block.language == "python":
            run_python(block, reader, blocks)
        elif "marimo run " in block.text:  # the dashboard without the dlthub plugin: it serves the pipeline's page
            with background(address(block, reader), reader.folder, reader.env,
                            ready=lambda line: "http://" in line) as started:
                [url] = re.findall(r"https?://[\w.:-]+", started)[:1]
                assert httpx.get(f"{url.replace('localhost', '127.0.0.1')}/health", timeout=10).status_code == 200
        elif "--flavor" in block.text:  # the emulator's synopsis: the first of each a|b, every [option], a free port
            port = free_port()
            command = re.sub(r"(\w+)(\|\w+)+", r"\1", address(block, reader).replace("\\\n", " "))
            command = command.replace("[", "").replace("]", "").replace("--port 8080", f"--port {port}")
            with background(command, reader.folder, reader.env, ready=lambda line: "listening on" in line):
                models = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": "Bearer K"})
                assert models.status_code == 200 and models.json()["data"], models.text
        elif 'pip install -e ".[postgres]"' in block.text:
            with postgres_dataset("gaia_data"):
                result = run_shell(block, reader)
                assert result.stdout.count("is LOADED and contains no failed jobs") == 4, result.stdout
                with psycopg2.connect(POSTGRES) as con, con.cursor() as cur:
                    cur.execute("SELECT count(*) FROM gaia_data.models")
                    assert cur.fetchone()[0] >= 1
            assert list((reader.folder.parent / "lake").glob("gaia_data/models/*"))  # filesystem and delta
            assert (reader.folder / "ducklake.sqlite").is_file()
        elif how(block).alone:
            alone = Reader(reader.folder.parent / "alone", {**reader.env, "DLT_DATA_DIR": str(
                reader.folder.parent / "alone_dlt")}, reader.node, reader.amd, reader.local)
            alone.folder.mkdir()
            for name in ("gaia_pipeline.py", "prompts.jsonl"):
                (alone.folder / name).write_bytes((reader.folder / name).read_bytes())
            result = run_shell(block, alone)
            _check_shell(block, alone, alone.folder / "gaia_pipeline.duckdb", result)
        else:
            result = run_shell(block, reader)
            _check_shell(block, reader, db, result)
    assert ran >= 12


def _check_shell(block: Block, reader: Reader, db: Path, result: subprocess.CompletedProcess) -> None:
    """What each shell block that loads must have done, from the DuckDB file."""
    if "NODE_ID" in block.text:  # the prompt set and the corpus, from the keyed node
        prompts = [json.loads(line) for line in (reader.folder / "prompts.jsonl").read_text().splitlines()]
        texts = [json.loads(line) for line in (reader.folder / "corpus.jsonl").read_text().splitlines()]
        answered = rows(db, "SELECT custom_id, node_url FROM gaia_data.chat_completions WHERE status = 'completed'")
        assert sorted(answered) == sorted((p["custom_id"], reader.node.base_url) for p in prompts)
        assert sorted(r[0] for r in rows(db, "SELECT text_id FROM gaia_data.embeddings")) == sorted(
            t["id"] for t in texts)
        queries = (reader.folder / "queries.txt").read_text().split("\n")
        assert sorted(r[0] for r in rows(db, "SELECT query FROM gaia_data.retrieve")) == sorted(q for q in queries if q)
        assert KEY not in result.stdout + result.stderr
    elif "TIMEOUT=600" in block.text:  # the AMD server's agent answered the same prompts
        prompts = [json.loads(line)["custom_id"] for line in (reader.folder / "prompts.jsonl").read_text().splitlines()]
        for table in ("chat_completions", "chat_completions_stream"):
            answered = rows(db, f"SELECT custom_id, model FROM gaia_data.{table} WHERE status = 'completed' AND "
                                f"starts_with(node_url, '{reader.amd.base_url.removesuffix('/v1')}')")
            assert sorted(answered) == sorted((p, "gaia") for p in prompts)  # the built-in agent, by discovery
    elif "--export-batch-output" in block.text:
        out = [json.loads(line) for line in (reader.folder / "out.jsonl").read_text().splitlines()]
        expected = [json.loads(line)["custom_id"] for line in (reader.folder / "batch_input.jsonl").read_text()
                    .splitlines()]
        assert sorted(line["custom_id"] for line in out) == sorted(expected)
        assert all(line["error"] is None and line["response"]["status_code"] == 200 for line in out)


# --- figures ------------------------------------------------------------------------------------------------------

def test_readme_quotes_benchmarks_latest_figures() -> None:
    """README's benchmark figures are BENCHMARKS.md's latest run (its first section), rounded as README rounds them."""
    readme = README.read_text(encoding="utf-8")
    latest = (REPO_ROOT / "BENCHMARKS.md").read_text(encoding="utf-8").split("\n## ")[1]
    paragraph = readme[readme.index("[BENCHMARKS.md](BENCHMARKS.md) has the figures"):]
    paragraph = paragraph[:paragraph.index("\n\n")]
    quoted = re.findall(r"(\d+(?:\.\d+)?)(×| GB)", paragraph)
    assert len(quoted) >= 3, paragraph

    def measured(unit: str) -> List[float]:
        if unit == "×":
            return [float(x) for x in re.findall(r"\*\*(\d+(?:\.\d+)?)×\*\*", latest)]
        return [float(x.replace(",", "")) / 1000 for x in re.findall(r"\*\*([\d,]+) MB\*\*", latest)]

    for value, unit in quoted:
        decimals = len(value.partition(".")[2])
        assert any(round(m, decimals) == float(value) for m in measured(unit)), (
            f"README quotes {value}{unit}; BENCHMARKS.md's latest run has {measured(unit)}")
