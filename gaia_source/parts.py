"""One run loaded as several dlt loads: each resource's rows are cut into parts of about ``rows_per_load`` rows.

dlt extracts a source, then normalizes it, then loads it: one load package, one insert at the end. For a large run
that package is large, and so is what the destination holds while it inserts it (DuckDB keeps the rows it inserted
cached until its connection closes: 9 GB for a million embeddings, BENCHMARKS.md). :class:`LoadParts` lets
:func:`~gaia_source.lifecycle.run_pipeline` run the same source several times, each run a part: every resource goes on
from where the previous part stopped (its requests, lookups and numbering are one stream for the whole run), and a
part ends once it holds ``rows_per_load`` rows. Nothing else changes: the run has one ledger, one set of lookups and
one ``gaia_runs`` row, whose ``load_ids`` lists every part.

Without :meth:`LoadParts.start` (``pipeline.run(source)`` called directly), a resource yields all its rows in one load,
as any dlt resource does.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import pyarrow as pa
from dlt.extract.items import DataItemWithMeta

_DONE = object()
"""A resource whose rows have all been yielded in this run."""
_NOTHING = object()
"""No item held back for the next part."""


def rows_in(item: Any) -> int:
    """How many rows an item a resource yields holds (an Arrow table, a list of rows, one row)."""
    data = item.data if isinstance(item, DataItemWithMeta) else item
    if isinstance(data, pa.Table):
        return int(data.num_rows)
    if isinstance(data, list):
        return len(data)
    return 1


def _split(item: Any, room: int) -> Tuple[Any, Any]:
    """``item`` cut at ``room`` rows: what fits in the part, and the rest (``_NOTHING`` when all of it fits). Rows
    come in Arrow tables of thousands (vectors) or lists; a part of exactly ``rows_per_load`` rows fills whole
    row groups of a DuckDB table when that is a multiple of its row group. Items with hints are not cut."""
    if isinstance(item, (pa.Table, list)) and rows_in(item) > room:
        return item[:room] if isinstance(item, list) else item.slice(0, room), (
            item[room:] if isinstance(item, list) else item.slice(room))
    return item, _NOTHING


class LoadParts:
    """Cuts the item streams of one source's resources into parts (see the module's docstring). Not thread-safe: dlt
    pulls every resource of a source from one thread."""

    def __init__(self) -> None:
        self.rows_per_load: Optional[int] = None
        self.key: Optional[str] = None
        """The run's own key while it runs in parts (a run context keeps its state across the parts' loads)."""
        self._streams: Dict[str, Any] = {}
        self._rows = 0
        self._runs = itertools.count(1)
        self.on_pause: List[Callable[[], None]] = []
        """Called when a part is full, before dlt loads it (a run context lets its lookup connections go)."""

    def start(self, rows_per_load: int) -> None:
        """Begin a run in parts of ``rows_per_load`` rows (the first part starts now)."""
        if rows_per_load < 1:
            raise ValueError(f"rows_per_load must be >= 1, got {rows_per_load}")
        self.close()
        self.rows_per_load, self.key = rows_per_load, f"parts-{id(self)}-{next(self._runs)}"

    def next_part(self) -> bool:
        """Begin the next part; False when no resource has rows left to yield (the run is over)."""
        self._rows = 0
        return any(stream is not _DONE for stream in self._streams.values())

    def items(self, name: str, make: Callable[[], Iterable[Any]]) -> Iterator[Any]:
        """The items of resource ``name`` for this part: its stream (``make()``, made once per run) from where the
        last part stopped, until the part holds ``rows_per_load`` rows or the stream ends. What overflows the part (the
        rest of a cut item, or the item that finds it full) is held back for the next one, so a part is only begun
        when it has rows."""
        if self.rows_per_load is None:
            yield from make()
            return
        stream = self._streams.get(name)
        if stream is _DONE:
            return
        iterator, head = stream if stream is not None else (iter(make()), _NOTHING)
        self._streams[name] = (iterator, head)
        while True:
            if head is _NOTHING:
                try:
                    head = next(iterator)
                except StopIteration:
                    self._streams[name] = _DONE
                    return
            if self._rows >= self.rows_per_load:
                self._streams[name] = (iterator, head)
                for pause in self.on_pause:
                    pause()
                return
            item, head = _split(head, self.rows_per_load - self._rows)
            self._streams[name] = (iterator, head)
            self._rows += rows_in(item)
            yield item

    def close(self, abandon: bool = False) -> None:
        """End the run in parts; a later run of the source starts afresh, in one load unless started again.

        Streams not finished (the run stopped on an error) are closed, which waits for their requests in flight to
        end; ``abandon`` (Ctrl-C) leaves them to end on their own instead, as Ctrl-C during extraction does."""
        streams: Iterable[Tuple[Any, Any]] = [s for s in self._streams.values() if s is not _DONE]
        self._streams, self._rows, self.rows_per_load, self.key = {}, 0, None, None
        if abandon:
            return
        for iterator, _ in streams:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
