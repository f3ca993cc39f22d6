"""The ledger: what a request *is* (its cell) and how it ended, owned in one place.

**A cell** is what the user asked for once: one input (a prompt line, a text or a document's chunk, a query) × its
target (the node, when a run pins requests to nodes with ``compare_nodes``; the model, when the user names one) × its
sample. :class:`Cell` computes its identity from the user's input and those settings only — never from what a node
happened to answer — so a pool run and a compare run, a shard and a whole run, a run before and after a model swap,
all agree on which cell a request is:

* ``cell_id`` — the input, the model *the user named* (a discovered model is a column, not identity), the sample.
  Every row and every ``failed_requests`` row carries it.
* ``key`` — ``cell_id`` plus the pinned node (compare runs): what "is it done?" and "is it failing?" are asked on,
  and the primary key of the cell's ``failed_requests`` row.
* the row id (:func:`row_id`) — ``cell_id`` plus the node that answered and that node's configuration hash: the
  answer rows' primary key. A pool run's answer from node A and a compare run's answer for node A are one row; an
  answer under a new node configuration (drift) is a new row, and the old one stays as history.

Texts are cells keyed by :func:`text_key` (model, text, position in its document): vectors of two models are two
cells, and the embedding model is identity there, discovered or named, since vectors of different models do not mix.

**The ledger of a run** (:class:`Ledger`) records how every cell of the run ended — ``completed``, ``failed`` (with
the sends it really took), ``refused`` (not sent: input a server would reject, an endpoint that is missing), or
``skipped`` (already done) — and the run's summary and exit code come from it, not from counting tables. It also
knows how many cells each resource expects (:meth:`Ledger.expect`), so a progress view reads the run from it alone.

An answer with nothing in it (no content, no tool call: a stream a llama.cpp server cut) is ``failed``, never
``completed``: the exit code says so and a re-run sends it again. The ledger counts those apart too (``empty``, a part
of ``failed``), so a summary shows a server that answers with nothing.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Set, Tuple

import orjson

COMPLETED = "completed"
FAILED = "failed"
REFUSED = "refused"
SKIPPED = "skipped"
OUTCOMES = (COMPLETED, FAILED, REFUSED, SKIPPED)
"""How a cell can end a run; nothing else."""


def canonical_json(value: Any) -> bytes:
    """JSON with sorted keys and no whitespace: the same value always gives the same bytes."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)


def content_hash(*parts: Any) -> str:
    """A 128-bit BLAKE2b hex digest of the canonical JSON of ``parts``."""
    return hashlib.blake2b(canonical_json(list(parts)), digest_size=16).hexdigest()


@dataclass(frozen=True)
class Cell:
    """One thing the user asked for once (see the module docstring).

    Attributes:
        resource: The resource (table) it belongs to: the same prompt is one cell in ``chat_completions`` and another
            in ``chat_completions_stream``.
        input: The input's identity: a prompt's messages, parameters and ``custom_id``; a query and its ``custom_id``.
        model: The model the user named for it (None: the node's, discovered — a column, not identity).
        sample: Its sample index (0 when sent once).
        node: The node it is pinned to (``compare_nodes``), else None: any node of the pool may answer it.
    """

    resource: str
    input: Mapping[str, Any]
    model: Optional[str] = None
    sample: int = 0
    node: Optional[str] = None
    cell_id: str = field(init=False, compare=False)
    key: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        cell_id = content_hash("cell", self.resource, self.input, self.model, self.sample)
        object.__setattr__(self, "cell_id", cell_id)
        object.__setattr__(self, "key", cell_id if self.node is None else content_hash(cell_id, self.node))


def row_id(cell_id: str, node_url: Optional[str], info_hash: Optional[str]) -> str:
    """The primary key of an answer row: its cell, the node that answered and that node's configuration."""
    return content_hash("row", cell_id, node_url, info_hash)


def text_key(model: Optional[str], text: str, *position: Any) -> str:
    """The cell of one text to embed (the ``embedding_id``): the model, the text, and a document chunk's position
    (document, index, start), so a chunk's row is its own even if another chunk has the same text."""
    return content_hash("embedding", model, text, *position)


Answered = Tuple[Optional[str], Optional[str]]
"""(node_url, info_hash) of one completed row of a cell."""


def is_done(
    answered: Iterable[Answered], node: Optional[str], drift: bool, current: Callable[[str], Optional[str]]
) -> bool:
    """Whether a cell needs no request this run, given the completed rows it has.

    A row counts when it is the pinned node's (or any node's, for a pool cell) and — with ``drift`` — when its node's
    configuration is unchanged: the same ``info_hash`` now, or unknown (the row's or the node's: a node that cannot
    say its configuration this run, or is no longer in the pool, never causes a prompt to be sent again).
    """
    for node_url, info_hash in answered:
        if node is not None and node_url != node:
            continue
        if not drift or info_hash is None or node_url is None:
            return True
        now = current(node_url)
        if now is None or now == info_hash:
            return True
    return False


@dataclass
class ResourceTally:
    """How the cells of one resource ended in a run."""

    outcomes: Counter[str] = field(default_factory=Counter)
    attempts: int = 0
    """Sends it took (every request, every retry and split part)."""
    errors: List[str] = field(default_factory=list)
    """The first few failure messages (for the run's summary)."""
    last_at: float = 0.0
    """When its last cell ended (``time.monotonic()``)."""
    empty: int = 0
    """Failed cells whose answer had nothing in it (no content, no tool call): a part of ``outcomes["failed"]``."""
    cut: int = 0
    """Failed cells whose stream the server cut before its end (empty, or interrupted mid-answer)."""
    model_empty: int = 0
    """Of the ``empty``, those the server ended normally: the model itself answered nothing."""


class Progress(NamedTuple):
    """How far one resource of a run is."""

    done: int
    """Cells that ended (completed, failed, refused or skipped)."""
    expected: Optional[int]
    """Cells it has in this run, counted before the first request (None: not known)."""
    failing: int
    """Of those ended, the failed or refused ones."""
    last_at: Optional[float]
    """When the last one ended (``time.monotonic()``), None before the first."""


class Ledger:
    """How every cell of one run ended (thread-safe; one per run).

    A cell's latest outcome wins within a run (a request held for a final round is recorded once, when it ends).
    """

    MAX_ERRORS = 3

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cells: Dict[Tuple[str, str], str] = {}
        self._flags: Dict[Tuple[str, str], Tuple[bool, bool]] = {}  # (empty, cut) of failed cells that have either
        self._tallies: Dict[str, ResourceTally] = {}
        self._scope: Dict[str, Set[Tuple[str, Optional[str]]]] = {}
        self._expected: Dict[str, Optional[int]] = {}
        self.notes: List[str] = []
        """Run-level findings to tell the user (an endpoint missing, documents whose old chunks were kept…)."""
        self.unserved: Dict[str, Dict[str, str]] = {}
        """resource -> node -> the endpoint it lacks (``POST /v1/retrieve``): resources skipped on a node for that."""
        self.pending_chunk_syncs: Dict[Tuple[str, Optional[str]], Dict[str, List[str]]] = {}
        """(table, model) -> document id -> the keys of all its chunks this run: documents whose old chunks are to
        be deleted once these are loaded (:func:`~gaia_source.destination.apply_chunk_sync`)."""
        self.load_ids: List[str] = []
        """The dlt loads of this run so far, in order (:func:`~gaia_source.lifecycle.run_pipeline` adds each as it
        ends: a run in parts has several, and keeps those done when a later part fails)."""
        self.row_counts: Dict[str, int] = {}
        """Rows this run's loads so far normalized, per table (dlt's own tables left out), over all its parts."""

    def add_load(self, load_ids: Sequence[str], row_counts: Mapping[str, int]) -> None:
        """Count one of this run's loads: its ids and the rows it normalized per table."""
        self.load_ids.extend(load_ids)
        for table, count in row_counts.items():
            if not table.startswith("_dlt"):
                self.row_counts[table] = self.row_counts.get(table, 0) + count

    def record(
        self, resource: str, key: str, outcome: str, attempts: int = 0, error: Optional[str] = None,
        cell: Optional[Cell] = None, empty: bool = False, cut: bool = False,
    ) -> None:
        """Record how cell ``key`` of ``resource`` ended (``attempts``: the sends this record adds; ``cell``: the
        cell itself, when the request is one, so that :meth:`cells` can say which rows are this run's; ``empty``: a
        ``failed`` cell whose answer had nothing in it; ``cut``: a ``failed`` cell whose stream the server cut)."""
        if outcome not in OUTCOMES or ((empty or cut) and outcome != FAILED):
            raise ValueError(f"unknown outcome {outcome!r}{' (empty)' if empty else ''}{' (cut)' if cut else ''}")
        with self._lock:
            if cell is not None:
                self._scope.setdefault(resource, set()).add((cell.cell_id, cell.node))
            tally = self._tallies.setdefault(resource, ResourceTally())
            slot = (resource, key)
            previous = self._cells.get(slot)
            if previous is not None:
                tally.outcomes[previous] -= 1
            for sign, (was_empty, was_cut) in ((-1, self._flags.pop(slot, (False, False))), (1, (empty, cut))):
                tally.empty += sign * was_empty
                tally.cut += sign * was_cut
                tally.model_empty += sign * (was_empty and not was_cut)
            if empty or cut:
                self._flags[slot] = (empty, cut)
            self._cells[slot] = outcome
            tally.outcomes[outcome] += 1
            tally.attempts += attempts
            tally.last_at = time.monotonic()
            if error and outcome in (FAILED, REFUSED) and len(tally.errors) < self.MAX_ERRORS:
                tally.errors.append(error)

    def record_many(
        self, resource: str, keys: Sequence[str], outcome: str, attempts: int = 0, error: Optional[str] = None,
        cells: Optional[Sequence[Optional[Cell]]] = None, empty: bool = False, cut: bool = False,
    ) -> None:
        """:meth:`record` for several cells that ended alike (the texts of one embeddings batch, a batch of cells
        found done), under one lock: ``attempts`` counts once (the sends of the request that carried them all),
        ``cells`` (when given) lines up with ``keys``."""
        if outcome not in OUTCOMES or ((empty or cut) and outcome != FAILED):
            raise ValueError(f"unknown outcome {outcome!r}{' (empty)' if empty else ''}{' (cut)' if cut else ''}")
        if not keys:
            return
        with self._lock:
            asked = [(cell.cell_id, cell.node) for cell in cells or () if cell is not None]
            if asked:
                self._scope.setdefault(resource, set()).update(asked)
            tally = self._tallies.setdefault(resource, ResourceTally())
            recorded, flags = self._cells, self._flags
            replaced: Counter[str] = Counter()
            was_empty = was_cut = was_model_empty = 0
            for key in keys:
                slot = (resource, key)
                previous = recorded.get(slot)
                if previous is not None:
                    replaced[previous] += 1
                    if slot in flags:
                        e, c = flags.pop(slot)
                        was_empty, was_cut, was_model_empty = was_empty + e, was_cut + c, was_model_empty + (
                            e and not c)
                recorded[slot] = outcome
                if empty or cut:
                    flags[slot] = (empty, cut)
            tally.outcomes.subtract(replaced)
            tally.outcomes[outcome] += len(keys)
            tally.empty += len(keys) * empty - was_empty
            tally.cut += len(keys) * cut - was_cut
            tally.model_empty += len(keys) * (empty and not cut) - was_model_empty
            tally.attempts += attempts
            tally.last_at = time.monotonic()
            if error and outcome in (FAILED, REFUSED):  # as many as one record per key would keep
                tally.errors.extend([error] * min(len(keys), self.MAX_ERRORS - len(tally.errors)))

    def outcome(self, resource: str, key: str) -> Optional[str]:
        """How cell ``key`` of ``resource`` has ended so far in this run (None: not recorded)."""
        with self._lock:
            return self._cells.get((resource, key))
    def expect(self, resource: str, cells: Optional[int]) -> None:
        """Say how many cells ``resource`` has in this run, before the first is sent (None: not known)."""
        with self._lock:
            self._expected[resource] = cells

    def progress(self) -> Dict[str, Progress]:
        """How far each resource expected or begun is (for a progress view to read while the run goes)."""
        with self._lock:
            names = list(self._expected) + [name for name in self._tallies if name not in self._expected]
            result = {}
            for name in names:
                tally = self._tallies.get(name) or ResourceTally()
                outcomes = tally.outcomes
                result[name] = Progress(sum(outcomes[o] for o in OUTCOMES), self._expected.get(name),
                                        outcomes[FAILED] + outcomes[REFUSED], tally.last_at or None)
            return result

    def note(self, text: str) -> None:
        """Keep a run-level finding for the summary."""
        with self._lock:
            if text not in self.notes:
                self.notes.append(text)

    def lacks(self, resource: str, node: str, endpoint: str) -> None:
        """Record that ``node`` has no ``endpoint`` for ``resource`` (its cells there are not sent)."""
        with self._lock:
            self.unserved.setdefault(resource, {})[node] = endpoint

    def count(self, outcome: str, resource: Optional[str] = None) -> int:
        """How many cells (of ``resource``, or of every resource) ended with ``outcome``."""
        with self._lock:
            tallies = [self._tallies[resource]] if resource is not None and resource in self._tallies else (
                [] if resource is not None else list(self._tallies.values()))
            return sum(t.outcomes[outcome] for t in tallies)

    def cells(self, resource: str) -> Set[Tuple[str, Optional[str]]]:
        """The cells of ``resource`` this run asked for, whatever their outcome: (``cell_id``, pinned node or None).
        A row of the table is this run's when its ``cell_id`` is one of them and, for a pinned cell, its ``node_url``
        is that node (texts are not cells of this kind: none for ``embeddings``)."""
        with self._lock:
            return set(self._scope.get(resource, ()))

    @property
    def failing(self) -> int:
        """Cells of this run that failed or were refused."""
        return self.count(FAILED) + self.count(REFUSED)

    def tallies(self) -> Dict[str, ResourceTally]:
        """A copy of each resource's tally."""
        with self._lock:
            return {name: ResourceTally(Counter(t.outcomes), t.attempts, list(t.errors), t.last_at, t.empty, t.cut,
                                        t.model_empty)
                    for name, t in self._tallies.items()}

    def summary_rows(self) -> List[Dict[str, Any]]:
        """One dict per resource: its outcome counts, the empty answers among the failed, and sends (for printing or
        JSON)."""
        return [{"resource": name, **{o: t.outcomes[o] for o in OUTCOMES}, "empty": t.empty, "sends": t.attempts}
                for name, t in sorted(self.tallies().items())]
