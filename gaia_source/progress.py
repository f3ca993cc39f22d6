"""A run's progress on the terminal, read from its ledger: one line per resource with done/total, rate and ETA.

The ledger (:class:`~gaia_source.ledger.Ledger`) already counts every cell as it ends, and knows how many cells each
resource expects (inputs × targets × samples, counted before the first request); this view only reads it, a few
times a second, into a Rich progress display. On a terminal the lines are redrawn in place; anywhere else (a log
file, CI) nothing is printed while the run goes, and one final line per resource that ran is printed at the end.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any, Dict, List, Optional, TextIO, Tuple

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskID, TextColumn
from rich.table import Column
from rich.text import Text

from .ledger import Ledger

REFRESH_S = 0.25
"""How often the view reads the ledger."""


class _CellsColumn(ProgressColumn):
    """``12/30  4.2/s  ETA 4.3 s  1 failing``; once the resource is done, ``30/30  9.1/s  in 3.3 s``."""

    def render(self, task: Task) -> Text:
        done, total, seconds = int(task.completed), task.total, task.fields["seconds"]
        parts = [f"{done}/{'?' if total is None else int(total)}"]
        if done and seconds > 0:
            rate = done / seconds
            parts.append(f"{rate:.1f}/s")
            if task.fields["ended"]:
                parts.append(f"in {_duration(seconds)}")
            elif total is not None:
                parts.append(f"ETA {_duration((total - done) / rate)}")
        if task.fields["failing"]:
            parts.append(f"{task.fields['failing']} failing")
        return Text("  ".join(parts))


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


class LedgerProgress:
    """Shows how the cells of a run are ending while it runs (use it as a context manager around the run).

    Args:
        ledger: The run's ledger.
        file: Where to draw (default: stderr).
    """

    def __init__(self, ledger: Ledger, file: Optional[TextIO] = None) -> None:
        self._ledger = ledger
        self._console = Console(file=file or sys.stderr)
        # one line per resource whatever the width: the bar gives way first, then the name is cut short (an 80-column
        # terminal wrapped "… 1 failing" onto a second line, which the redraw then left behind)
        columns: List[ProgressColumn] = [TextColumn("{task.description:<24}", table_column=Column(no_wrap=True))]
        if self._console.is_terminal:
            columns.append(BarColumn(bar_width=24, table_column=Column(min_width=0)))
        columns.append(_CellsColumn(table_column=Column(no_wrap=True, overflow="ellipsis")))
        self._progress = Progress(*columns, console=self._console, refresh_per_second=1 / REFRESH_S)
        self._tasks: Dict[str, TaskID] = {}
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="gaia-progress", daemon=True)
        self._streams: List[Tuple[logging.StreamHandler[Any], Any]] = []

    def __enter__(self) -> "LedgerProgress":
        self._started = time.monotonic()
        self._sync()
        self._progress.start()
        self._follow_logging()
        self._thread.start()
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._sync(finished=kind is None)
        for task in self._progress.tasks:  # resources that ended no cell (not run, or the run stopped) say nothing
            if not task.completed:
                self._progress.update(task.id, visible=False)
        if any(task.visible for task in self._progress.tasks):
            self._progress.stop()
        else:  # nothing to say, not even the line end Progress.stop writes after a final render elsewhere
            self._progress.live.transient = True
            self._progress.live.stop()
        for handler, stream in self._streams:
            handler.setStream(stream)

    def _poll(self) -> None:
        while not self._stop.wait(REFRESH_S):
            self._sync()

    def _sync(self, finished: bool = False) -> None:
        """Read the ledger into the display; ``finished``: the run ended, so what ended is the whole (two identical
        inputs are one cell, and a total counted from inputs can be larger)."""
        now = time.monotonic()
        for resource, (done, expected, failing, last_at) in self._ledger.progress().items():
            total = done if finished else (None if expected is None else max(expected, done))
            ended = total is not None and done >= total
            seconds = (last_at if ended and last_at is not None else now) - self._started
            task = self._tasks.get(resource)
            if task is None:
                task = self._tasks[resource] = self._progress.add_task(resource, total=total, failing=0, ended=False,
                                                                       seconds=0.0)
            self._progress.update(task, completed=done, total=total, failing=failing, ended=ended, seconds=seconds)

    def _follow_logging(self) -> None:
        """Log lines on a terminal go through the display (printed above it) instead of breaking its redraw."""
        if not self._console.is_terminal:
            return
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.__stderr__, sys.__stdout__):
                self._streams.append((handler, handler.stream))
                handler.setStream(sys.stderr if handler.stream is sys.__stderr__ else sys.stdout)  # Rich's proxies
