"""The run's progress, as the command line shows it: redrawn lines with done/total on a terminal, one final line per
resource anywhere else; read from the run's ledger, with totals counted before the first request."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from conftest import SCRIPT, run_cli

from gaia_source import gaia_source
from gaia_source.ledger import Ledger

FINAL = re.compile(r"^(\w+) +(\d+)/(\d+)  (\d+\.\d)/s  in (\d+\.\d) s(?:  (\d+) failing)?$")


def _prompts(folder: Path, n: int) -> str:
    (folder / "p.txt").write_text("".join(f"Question {i}?\n" for i in range(n)))
    return "p.txt"


def _run_on_a_terminal(cwd: Path, *args: str, columns: int = 120, env: Optional[Dict[str, str]] = None
                       ) -> Tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal (120 columns), as in a shell; returns the exit code, what the
    terminal got and stdout."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(columns), **(env or {})}
    process = subprocess.Popen([sys.executable, SCRIPT, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                               stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    received = bytearray()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            received += chunk
        elif process.poll() is not None:
            break
    os.close(master)
    stdout = process.stdout.read().decode() if process.stdout else ""
    return process.wait(timeout=60), received.decode(errors="replace"), stdout


def test_a_terminal_sees_each_resource_redrawn_with_done_of_total(make_node, tmp_path: Path) -> None:
    node = make_node("rag", latency_ms=60)  # one request at a time: 20 prompts take over a second
    code, terminal, stdout = _run_on_a_terminal(tmp_path, "--base-url", node.base_url, "--prompts-file",
                                                _prompts(tmp_path, 20), "--resources", "chat_completions")
    assert code == 0, terminal
    assert "\x1b[" in terminal  # redrawn in place (cursor movement), not printed line after line
    seen = [int(done) for done in re.findall(r"chat_completions\s+\S*\s+(\d+)/20\b", terminal)]
    assert seen[0] < 20 and seen[-1] == 20 and seen == sorted(seen)  # counted up to the total known at the start
    assert len(set(seen)) >= 3
    assert re.search(r"chat_completions .*20/20  \d+\.\d/s  in \d+\.\d s", terminal)
    assert "chat_completions" in stdout and "/20" not in stdout  # the tables' summary, not the progress


def test_an_80_column_terminal_keeps_each_resource_on_one_line(make_node, tmp_path: Path) -> None:
    """The longest resource name, a count of hundreds, a rate, the time and failures: the bar gives way, the line
    does not wrap (a wrapped "failing" was left on the screen by every redraw)."""
    node = make_node("rag")
    (tmp_path / "p.txt").write_text("".join(f"Question {i}?\n" for i in range(300)) + "[[fail]] Broken?\n")
    code, terminal, _ = _run_on_a_terminal(tmp_path, "--base-url", node.base_url, "--prompts-file", "p.txt",
                                           "--resources", "chat_completions_stream", columns=80,
                                           env={"SOURCES__GAIA_SOURCE__RETRY_BACKOFF": "0.01"})
    assert code == 1, terminal
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", terminal)  # what is drawn, without the cursor movements
    lines = [line.rstrip() for line in re.split(r"[\r\n]+", screen) if line.strip()]
    drawn = [line for line in lines if "/301" in line]
    assert drawn and all(line.startswith("chat_completions_stream") and len(line) <= 80 for line in drawn), drawn
    assert drawn[-1].endswith("1 failing") and "301/301" in drawn[-1]
    assert not [line for line in lines if line.strip() in ("failing", "1 failing") or line.startswith(" ")], lines


def test_without_a_terminal_only_a_final_line_per_resource(make_node, tmp_path: Path) -> None:
    node = make_node("rag", latency_ms=20)
    (tmp_path / "t.txt").write_text("Paris is on the Seine.\nDuckDB stores vectors.\nOne more text.\n")
    result = run_cli(tmp_path, "--base-url", node.base_url, "--prompts-file", _prompts(tmp_path, 5), "--texts-file",
                     "t.txt", "--resources", "models,chat_completions,embeddings,chat_completions_stream")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    finals: Dict[str, List[int]] = {}
    for line in lines:
        match = FINAL.match(line)
        assert match, line
        finals[match[1]] = [int(match[2]), int(match[3])]
    assert len(lines) == 4 and finals == {"models": [1, 1], "chat_completions": [5, 5],
                                          "chat_completions_stream": [5, 5], "embeddings": [3, 3]}
    again = run_cli(tmp_path, "--base-url", node.base_url, "--prompts-file", "p.txt", "--resources",
                    "chat_completions", "--progress", "none", "--pipeline-name", "quiet")
    assert again.returncode == 0 and again.stderr == ""


def test_without_a_terminal_failures_are_a_few_lines_not_a_retry_log(make_node, tmp_path: Path) -> None:
    """Eight prompts that fail on every send (4 sends, then 2 final rounds each): what a log file gets is the final
    line, the rounds' warnings and the first five failures; each retry, and the failures after the fifth, only with
    -v. The failed_requests table has every one."""
    node = make_node("rag")
    (tmp_path / "p.txt").write_text("".join(f"Question {i}?\n" for i in range(4))
                                    + "".join(f"[[fail]] Broken {i}?\n" for i in range(8)))
    env = {"SOURCES__GAIA_SOURCE__RETRY_BACKOFF": "0.01"}
    result = run_cli(tmp_path, "--base-url", node.base_url, "--prompts-file", "p.txt", "--resources",
                     "chat_completions", env=env)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert not [line for line in lines if "attempt " in line and "retrying" in line], result.stderr
    failed = [line for line in lines if line.startswith("ERROR gaia_source: chat_completions: request ")]
    assert len(failed) == 5 and all("failed (HTTP 500)" in line for line in failed)
    assert [line for line in lines if "more requests failed" in line] == [
        "ERROR gaia_source: chat_completions: more requests failed; they are not logged one by one (-v logs them): "
        "SELECT * FROM failed_requests lists every one"]
    rounds = [line for line in lines if "failed transiently; round" in line]
    assert len(rounds) == 2
    [final] = [line for line in lines if FINAL.match(line)]
    assert FINAL.match(final).groups()[:3] == ("chat_completions", "12", "12") and final.endswith("8 failing")
    assert len(lines) == 5 + 1 + 2 + 1 + 2  # and the blank line and "8 request(s) of this run are failing: …"
    assert node.requests_to("/v1/chat/completions") == 4 + 8 * 4 * 3
    verbose = run_cli(tmp_path, "--base-url", node.base_url, "--prompts-file", "p.txt", "--resources",
                      "chat_completions", "-v", env=env)
    assert verbose.returncode == 1
    assert len([line for line in verbose.stderr.splitlines() if "retrying in" in line]) == 8 * 3 * 3
    assert len([line for line in verbose.stderr.splitlines() if " failed: POST " in line]) == 8


def test_the_ledger_knows_each_resources_total_before_the_first_request(make_node) -> None:
    a, b = make_node("nexus"), make_node("nexus")
    ledger = Ledger()
    gaia_source(base_url=[a.base_url, b.base_url], prompts=["one", "two", "three"], texts=["x", "y"],
                queries=["q"], samples=2, chat_model="m1,m2", compare_nodes=True, ledger=ledger)
    assert a.total_requests() == b.total_requests() == 0
    expected = {name: progress.expected for name, progress in ledger.progress().items()}
    # prompts × models × nodes × samples; texts; queries × nodes; one per node for models and info
    assert expected == {"models": 2, "info": 2, "chat_completions": 24, "chat_completions_stream": 24,
                        "embeddings": 2, "retrieve": 2}
