"""README's synopsis of the command line is what ``--help`` prints: the usage lines of ``gaia_pipeline.py`` and of each
subcommand, as argparse writes them at a fixed width. A flag added to a parser and not to README fails here.

After changing a flag, rewrite README's block from ``--help`` with ``python tests/test_readme_synopsis.py``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

REPO_ROOT = Path(__file__).resolve().parent.parent
README = REPO_ROOT / "README.md"
SCRIPT = REPO_ROOT / "gaia_pipeline.py"
COMMANDS: Tuple[Tuple[str, ...], ...] = ((), ("runs",), ("search",), ("report",))
WIDTH = 120
"""The synopsis' width: argparse wraps at the terminal's columns less 2, so ``--help`` runs with COLUMNS = WIDTH + 2."""
BLOCK = re.compile(r"^## The pipeline script\n\n```text\n(.*?)^```$", re.M | re.S)
"""The ```text block that opens README's "The pipeline script" section: the synopsis."""


def help_text(*command: str) -> str:
    """What ``python gaia_pipeline.py [command] --help`` prints in a terminal WIDTH + 2 columns wide."""
    env = {**os.environ, "COLUMNS": str(WIDTH + 2), "NO_COLOR": "1", "PYTHON_COLORS": "0"}
    result = subprocess.run([sys.executable, str(SCRIPT), *command, "--help"], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def usage(help_: str) -> str:
    """The usage lines of a ``--help`` text, as a command line (``python gaia_pipeline.py …``, aligned as printed)."""
    lines, _, _ = help_.partition("\n\n")
    assert lines.startswith("usage: gaia_pipeline.py"), lines
    return "python " + lines.removeprefix("usage: ")  # as long as "usage: ": continuation lines stay aligned


def synopsis() -> str:
    """README's synopsis: the usage lines of the command and of each subcommand, from their ``--help``."""
    return "".join(usage(help_text(*command)) + "\n" for command in COMMANDS)


def readme_synopsis(readme: str) -> str:
    """The synopsis block README has now."""
    found = BLOCK.search(readme)
    assert found, 'README.md has no ```text block right under "## The pipeline script"'
    return found.group(1)


def options(help_: str) -> List[List[str]]:
    """Every option a ``--help`` text describes (but ``-h``), each as its spellings: ``[["-n", "--limit"], …]``."""
    described = re.findall(r"^  (-\S.*?)(?:  |$)", help_.partition("\n\n")[2], re.M)
    spelled = [[part.split()[0] for part in line.split(", ")] for line in described]
    return [names for names in spelled if names[0] != "-h"]


def test_readme_synopsis_is_what_help_prints() -> None:
    assert readme_synopsis(README.read_text(encoding="utf-8")) == synopsis(), (
        "README's synopsis differs from --help: rewrite it with python tests/test_readme_synopsis.py")


def test_the_synopsis_names_every_option_and_choice() -> None:
    written = readme_synopsis(README.read_text(encoding="utf-8")).split("\npython ")
    assert len(written) == len(COMMANDS)
    for command, lines in zip(COMMANDS, written, strict=True):
        help_ = help_text(*command)
        described = options(help_)
        assert len(described) >= 3, help_
        tokens = set(re.findall(r"-{1,2}[a-z][a-z-]*", lines))
        missing = [names for names in described if not tokens & set(names)]
        assert missing == [], f"gaia_pipeline.py {' '.join(command)}: not in README's synopsis: {missing}"
    main = written[0]
    for flag in ("--compare-nodes", "--samples N", "--no-drift", "--table-format {delta,iceberg}", "--shard I/N",
                 "--progress {rich,log,tqdm,enlighten,alive_progress,none}", "--summary-json PATH"):
        assert flag in main, flag
    assert "[--base-url URL | --node-id ID | --demo]" in written[2]  # search: one node, or the demo's


if __name__ == "__main__":  # rewrite README's synopsis from --help
    text = README.read_text(encoding="utf-8")
    old = readme_synopsis(text)
    new = synopsis()
    README.write_text(text.replace(f"```text\n{old}```", f"```text\n{new}```", 1), encoding="utf-8")
    print("README.md: synopsis " + ("unchanged" if new == old else "rewritten from --help"))
