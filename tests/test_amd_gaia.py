"""The source against the real AMD GAIA API server (amd-gaia 0.25.1, ``gaia.api.openai_server`` as shipped).

The server runs from its own venv (``GAIA_TEST_AMD_PYTHON``: the Python of a venv with ``amd-gaia[api]==0.25.1``,
which ``.ci/run`` builds), with the deterministic agent of ``tests/amd_gaia`` registered as ``gaia``. Skipped where
that venv is missing; in CI (``CI`` set) that is a failure instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional

import duckdb
import httpx
import pytest
from conftest import free_port, run_cli

SERVE = Path(__file__).parent / "amd_gaia" / "serve.py"
KEY = "amd-s3cret-key-123"
AMD_PYTHON = os.environ.get("GAIA_TEST_AMD_PYTHON")  # read at import: each test's environment is cleaned of GAIA_*


@pytest.fixture
def amd_server() -> Iterator[Callable[..., str]]:
    """Start the real server (optionally with ``GAIA_API_KEY``); returns its base URL, as users configure it."""
    python = AMD_PYTHON
    if not python or not Path(python).exists():
        if os.environ.get("CI"):
            pytest.fail("GAIA_TEST_AMD_PYTHON is not set: .ci/run should have built the amd-gaia venv")
        pytest.skip("the real amd-gaia server is not installed (set GAIA_TEST_AMD_PYTHON; see README Quick start)")
    started = []

    def start(api_key: Optional[str] = None) -> str:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k != "GAIA_API_KEY"}
        if api_key:
            env["GAIA_API_KEY"] = api_key
        process = subprocess.Popen([python, str(SERVE), str(port)], env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        started.append(process)
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    return url
            except httpx.TransportError:
                pass
            if process.poll() is not None:
                raise RuntimeError(f"amd-gaia server exited: {process.stderr.read() if process.stderr else ''}")
            time.sleep(0.1)
        raise RuntimeError("amd-gaia server did not answer /health in 30 s")

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=10)


def _db(folder: Path, sql: str) -> list:
    with duckdb.connect(str(folder / "gaia_pipeline.duckdb")) as db:
        return db.sql(sql).fetchall()


def _prompts(folder: Path) -> Dict[str, str]:
    lines = [
        {"custom_id": "france", "messages": [{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": "What is the capital of France?"}]},
        {"custom_id": "capped", "prompt": "Tell me everything about the river Seine", "max_tokens": 4},
        {"custom_id": "assistant-last", "messages": [{"role": "user", "content": "hi"},
                                                     {"role": "assistant", "content": "hello"}]},
    ]
    (folder / "prompts.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return {"france": "gaia answers: What is the capital of France?", "capped": "gaia answers: Tell me"}


def test_real_amd_gaia_server_loads_chat_models_and_health(amd_server, tmp_path: Path) -> None:
    url = amd_server()  # the documented base URL, without /v1
    expected = _prompts(tmp_path)
    result = run_cli(tmp_path, "--base-url", url, "--prompts-file", "prompts.jsonl")
    assert result.returncode == 1, result.stderr  # the refused prompt is a failing request
    assert "not run (no inputs): embeddings (--texts-file), retrieve (--queries-file)" in result.stdout
    # discovery found the one built-in agent; every row says it answered
    assert _db(tmp_path, "SELECT id, owned_by FROM gaia_data.models") == [("gaia", "amd-gaia")]
    for table in ("chat_completions", "chat_completions_stream"):
        rows = _db(tmp_path, f"SELECT custom_id, content, model_requested, model, status FROM gaia_data.{table}")
        # AMD streams end each agent event with a newline; the plain answer has none
        assert {r[0]: r[1].rstrip("\n") for r in rows} == expected, table
        assert {(r[2], r[3], r[4]) for r in rows} == {("gaia", "gaia", "completed")}
    [(usage,)] = _db(tmp_path, "SELECT DISTINCT usage_reported FROM gaia_data.chat_completions_stream")
    assert usage is False  # AMD streams carry no usage
    # the prompt the server would refuse was not sent: one failed row per chat resource, naming its line
    failed = _db(tmp_path, "SELECT custom_id, error_type, attempts, error_message FROM gaia_data.failed_requests")
    assert len(failed) == 2 and {f[:3] for f in failed} == {("assistant-last", "GaiaInputRefused", 0)}
    assert all("prompts.jsonl:3: not sent: its last message is a 'assistant' message" in f[3] for f in failed)
    # no /v1/info on AMD GAIA: the info row is a snapshot of /health (no Lemonade LLM here, so: degraded)
    [info] = _db(tmp_path, "SELECT info_shape, server_type, status, body FROM gaia_data.info")
    assert info[:3] == ("amd-gaia-health", "amd-gaia", "degraded")
    assert json.loads(info[3])["components"]["llm"]["status"] == "unavailable"


def test_real_amd_gaia_server_enforces_its_key(amd_server, tmp_path: Path) -> None:
    url = amd_server(api_key=KEY)
    _prompts(tmp_path)
    wrong = run_cli(tmp_path, "--base-url", url, "--prompts-file", "prompts.jsonl", "--resources", "chat_completions",
                    env={"SOURCES__GAIA_SOURCE__API_KEY": "not-the-key", "SOURCES__GAIA_SOURCE__CHAT_MODEL": "gaia"})
    assert wrong.returncode == 3, wrong.stderr
    assert "401" in wrong.stderr and "not-the-key" not in wrong.stdout + wrong.stderr
    right = run_cli(tmp_path, "--base-url", url, "--prompts-file", "prompts.jsonl", "--resources", "chat_completions",
                    "--pipeline-name", "keyed", env={"SOURCES__GAIA_SOURCE__API_KEY": KEY})
    assert right.returncode == 1, right.stderr  # the assistant-last prompt is still refused, the others load
    assert KEY not in right.stdout + right.stderr
    with duckdb.connect(str(tmp_path / "keyed.duckdb")) as db:
        assert db.sql("SELECT count(*) FROM gaia_data.chat_completions WHERE status = 'completed'").fetchall() == [(2,)]
