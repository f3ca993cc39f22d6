"""One run of a pipeline, around dlt's steps: first finish what an interrupted run left, then do this run's work.

dlt 1.31 leaves three traps between runs, and :func:`run_pipeline` closes them:

* **Pending packages.** ``Pipeline.run(source)`` loads the packages an interrupted run left and then returns *without
  extracting the source* (dlt only logs a warning): the run's own prompts are never sent, and it exits 0.
  :func:`load_pending` loads them first and says so; then the source runs. If they cannot be loaded, the run stops
  with :class:`~gaia_source.errors.GaiaPipelineStateError` (what failed, what to do) before anything new is sent.
* **A kill at normalize's commit** (dlt-hub/dlt#4446). Normalize renames ``load/new/<id>`` to
  ``load/normalized/<id>`` and then deletes ``normalize/extracted/<id>``; killed in between, the package is in both
  places, and every later run normalizes it again and fails with ``OSError [Errno 39] Directory not empty``.
  :func:`repair_interrupted_normalize` deletes the leftover extracted copy when the committed one is complete.
* **LanceDB after a schema change** fails every load with ``No field named "<schema hash>"``: dlt looks the stored
  schema up with a double-quoted (identifier) literal. :func:`patch_lancedb_schema_lookup` fixes that statement.
"""

from __future__ import annotations

import contextlib
import logging
import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    ContextManager,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
)

import dlt
from dlt.common.destination.exceptions import DestinationException
from dlt.common.runtime import signals
from dlt.common.storages.load_package import PackageStorage
from dlt.pipeline.exceptions import PipelineStepFailed

from .destination import (
    apply_chunk_sync,
    capabilities_of,
    install_duckdb_extensions,
    purge_lance_tombstones,
    purge_resolved_failures,
)
from .endpoints import ENDPOINT_BY_NAME
from .errors import GaiaPipelineStateError
from .ledger import Ledger
from .resources import run_context_of

if TYPE_CHECKING:
    from dlt.common.pipeline import LoadInfo
    from dlt.extract.source import DltSource

logger = logging.getLogger("gaia_source")


@dataclass(frozen=True)
class RunResult:
    """What :func:`run_pipeline` did.

    Attributes:
        loads: This run's own loads, in order (its source extracted, normalized and loaded): one, or one per part
            when the run loaded in parts (``rows_per_load``).
        pending: The load of packages an interrupted run left, done first; None when there were none.
        repaired: Load ids whose leftover extracted copy was deleted (a kill at normalize's commit).
    """

    loads: Tuple[LoadInfo, ...]
    pending: Optional[LoadInfo] = None
    repaired: Tuple[str, ...] = ()

    @property
    def load_info(self) -> LoadInfo:
        """This run's last load (its only one unless it loaded in parts)."""
        return self.loads[-1]

    @property
    def load_infos(self) -> List[LoadInfo]:
        """Every load of this run, the pending packages' first."""
        return [info for info in (self.pending, *self.loads) if info is not None]

    @property
    def load_ids(self) -> List[str]:
        """The load ids of every load of this run, the pending packages' first."""
        return [load_id for info in self.load_infos for load_id in info.loads_ids]

    @property
    def has_failed_jobs(self) -> bool:
        """True when a job failed in any load: the pending packages' or this run's."""
        return any(info.has_failed_jobs for info in self.load_infos)

    def raise_on_failed_jobs(self) -> None:
        """Raise dlt's ``DestinationHasFailedJobs`` for the first load with a failed job."""
        for info in self.load_infos:
            info.raise_on_failed_jobs()

    def __str__(self) -> str:
        own = "\n\n".join(f"Part {n} of {len(self.loads)}:\n{info}" if len(self.loads) > 1 else str(info)
                          for n, info in enumerate(self.loads, 1))
        if self.pending is None:
            return own
        return f"Pending packages of an interrupted run:\n{self.pending}\n\nThis run:\n{own}"


def run_pipeline(
    pipeline: dlt.Pipeline, source: DltSource, ledger: Optional[Ledger] = None, rows_per_load: Optional[int] = None,
) -> RunResult:
    """Run ``source`` through ``pipeline`` after finishing what an interrupted run left; then, once this run's loads
    have no failed job, delete what its loaded rows replace (changed documents' old chunks; on Iceberg, the
    ``failed_requests`` rows of requests that completed since: see
    :func:`~gaia_source.destination.purge_resolved_failures`). DuckDB extensions the destination needs (DuckLake,
    Delta, Iceberg) are installed from their PyPI packages first. A run that loads vectors into DuckDB loads under
    :data:`DUCKDB_LOAD_SETTINGS` (see :func:`duckdb_load_settings`).

    Use it in place of ``pipeline.run(source)``: that call, when packages are pending, loads them and returns without
    extracting ``source``. Here the pending packages load first (one warning says how many), then ``source`` runs.

    With ``rows_per_load``, a ``gaia_source`` run loads in parts (:mod:`gaia_source.parts`): once the rows extracted
    reach it, they are normalized and loaded, and the run goes on where it stopped. DuckDB lets go of what it
    cached after each part (a million vectors peaked at 4.1 GB in parts, 9.1 GB in one load; BENCHMARKS.md says what
    still grows), and the rows of the parts done are in the destination if the run stops later (a re-run sends
    only what is missing). Each part is a dlt load of its own.

    Args:
        pipeline: The pipeline (its destination set).
        source: What this run loads, e.g. ``gaia_source(..., ledger=ledger)``.
        ledger: The :class:`~gaia_source.ledger.Ledger` given to the source: after the load, the documents it found
            changed lose their old chunks (see :func:`~gaia_source.destination.apply_chunk_sync`); it holds the load
            ids of the parts loaded so far (:attr:`~gaia_source.ledger.Ledger.load_ids`), also when a later part
            fails.
        rows_per_load: Rows (of all tables together) per load; None or 0: one load for the whole run.

    Returns:
        Every load; ``has_failed_jobs`` covers each.

    Raises:
        ValueError: ``rows_per_load`` is negative (nothing was done).
        GaiaPipelineStateError: A pending package could not be loaded, or the working directory is in a state this
            module cannot repair safely; nothing of ``source`` was extracted, and the message says what to do.
        PipelineStepFailed: This run's own extract, normalize or load failed (as from ``pipeline.run``); the parts
            loaded before it stay loaded.
    """
    if rows_per_load is not None and rows_per_load < 0:  # before anything is loaded or sent
        raise ValueError(f"rows_per_load must be >= 1 (0 or None: one load), got {rows_per_load}")
    if pipeline.destination is not None and pipeline.destination.destination_name == "lancedb":
        patch_lancedb_schema_lookup()
    install_duckdb_extensions(capabilities_of(pipeline).duckdb_extensions)  # before a pending package loads
    repaired = repair_interrupted_normalize(pipeline)
    loads_vectors = any(e.vectors for e in map(ENDPOINT_BY_NAME.get, source.selected_resources) if e is not None)
    load_settings: Callable[[], ContextManager[None]] = (
        partial(duckdb_load_settings, pipeline) if loads_vectors else nullcontext)
    with load_settings():
        pending = load_pending(pipeline)
    context = run_context_of(source) if rows_per_load else None
    loads: List[LoadInfo] = []
    interrupted = False
    try:
        if context is not None:
            context.parts.start(rows_per_load or 0)
        with _SignalsBetweenParts(pipeline) as stopping:
            while not loads or (context is not None and context.parts.next_part()):
                if stopping.received:  # Ctrl-C while the last part loaded: it is in, the rest is not sent
                    raise KeyboardInterrupt
                with load_settings():  # per part: DuckDB lets go of what it cached when its last connection closes
                    loads.append(pipeline.run(source))
                if ledger is not None:
                    normalized = pipeline.last_trace.last_normalize_info if pipeline.last_trace else None
                    ledger.add_load(loads[-1].loads_ids, normalized.row_counts if normalized else {})
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt) or isinstance(getattr(exc, "exception", None),
                                                                        KeyboardInterrupt)
        raise
    finally:
        if context is not None:  # Ctrl-C: leave the requests in flight, as a run in one load does
            context.parts.close(abandon=interrupted)
    result = RunResult(loads=tuple(loads), pending=pending, repaired=tuple(repaired))
    if pipeline.destination is not None and pipeline.destination.destination_name == "lancedb":
        purge_lance_tombstones(pipeline)  # dlt's LanceDB merge keeps tombstones as rows
    if not result.has_failed_jobs:
        purge_resolved_failures(pipeline)  # so does its Iceberg merge
        if ledger is not None:
            apply_chunk_sync(pipeline, ledger)
    return result


class _SignalsBetweenParts:
    """Remembers a Ctrl-C (SIGINT, SIGTERM) that came while dlt normalized or loaded a part of the run.

    dlt 1.31 holds those signals back while it normalizes or loads, so that the jobs running can end, and forgets
    them when the package completes: a run in parts would go on to its next part after the user pressed Ctrl-C. Here
    each of the two steps runs inside one interception of dlt's own (its nested ones are no-ops) that notes the
    signal before dlt clears it; the part then completes, is recorded, and the run stops before the next part
    (:func:`run_pipeline` raises ``KeyboardInterrupt``). A second Ctrl-C stops at once, as dlt does.
    """

    def __init__(self, pipeline: dlt.Pipeline) -> None:
        self.received = False
        self._pipeline = pipeline
        self._steps = {name: getattr(pipeline, name) for name in ("normalize", "load")}
        self._before = {name: pipeline.__dict__[name] for name in self._steps if name in pipeline.__dict__}

    def __enter__(self) -> "_SignalsBetweenParts":
        if self._pipeline.runtime_config.intercept_signals:
            for name, step in self._steps.items():
                setattr(self._pipeline, name, self._noting(step))
        return self

    def __exit__(self, *exc: Any) -> None:
        for name in self._steps:
            if name in self._before:  # the caller's own wrapper of the step (a benchmark's timer) stays
                self._pipeline.__dict__[name] = self._before[name]
            else:
                self._pipeline.__dict__.pop(name, None)

    def _noting(self, step: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            with signals.intercepted_signals():
                try:
                    return step(*args, **kwargs)
                finally:
                    self.received = self.received or signals.was_signal_received()

        return run


DUCKDB_LOAD_SETTINGS: Dict[str, str] = {"disabled_compression_methods": "alp,alprd,chimp,patas"}
"""DuckDB settings in force while a run loads into a DuckDB file (see :func:`duckdb_load_settings`)."""


@contextmanager
def duckdb_load_settings(pipeline: dlt.Pipeline) -> Iterator[None]:
    """Hold :data:`DUCKDB_LOAD_SETTINGS` on ``pipeline``'s DuckDB database while the block runs; elsewhere a no-op.

    DuckDB tries every floating-point compression (ALP, ALPRD, Chimp, Patas) on each vector segment it writes, and
    dense embeddings compress under none of them: measured on 100,000 x 768 vectors, the load's insert and checkpoint
    took 6.8-7.1 s with the analysis and 4.6 s without, the stored segments ``Uncompressed`` either way
    (BENCHMARKS.md, issue 21). Other float columns of the run's tables are then stored uncompressed too (a few bytes
    per row); what is already stored is not rewritten. The setting is global to the database instance, which dlt's
    connections share while one stays open: this one is opened through dlt's own SQL client (the user's DuckDB
    settings included) and held until the block ends, when the settings are set back.

    A database that cannot be opened now (another process holds the file's lock, a configuration error) runs the
    block without them: dlt meets the same error in its own step and reports it as it does without this block
    (a pending package's message, a ``PipelineStepFailed``), never a traceback from here.
    """
    if pipeline.destination is None or pipeline.destination.destination_name != "duckdb":
        yield
        return
    client: Any = None
    try:
        client = pipeline.sql_client()
        client.open_connection()
        before = {name: (client.execute_sql(f"SELECT current_setting('{name}')") or [[""]])[0][0]
                  for name in DUCKDB_LOAD_SETTINGS}
        _set_global(client, DUCKDB_LOAD_SETTINGS)
    except Exception as exc:  # the run's own steps open the same database and say why it fails
        logger.debug("DuckDB load settings not applied: %s", exc)
        if client is not None:
            with contextlib.suppress(Exception):
                client.close_connection()
        yield
        return
    try:
        yield
    finally:
        try:  # what is still in the write-ahead log is written now, under these settings, not at close
            client.execute_sql("CHECKPOINT")
        except DestinationException as exc:  # another connection's transaction: DuckDB writes it later
            logger.debug("no checkpoint after the load: %s", exc)
        try:
            _set_global(client, before)  # a connection the user passed in outlives the run
        except DestinationException as exc:  # never hides how the run itself ended
            logger.warning("could not set DuckDB's %s back after the load: %s", ", ".join(before), exc)
        finally:
            client.close_connection()


def _set_global(client: Any, settings: Mapping[str, str]) -> None:
    """``SET GLOBAL`` each of ``settings`` on a DuckDB SQL client's database."""
    for name, value in settings.items():
        client.execute_sql(f"SET GLOBAL {name} = '{value}'")


def load_pending(pipeline: dlt.Pipeline) -> Optional[LoadInfo]:
    """Normalize and load the packages an interrupted run left; None when there are none.

    Raises:
        GaiaPipelineStateError: They could not be normalized or loaded (the message names the cause and what to do).
    """
    if not pipeline.has_pending_data:
        return None
    pending = sorted({*pipeline.list_extracted_load_packages(), *pipeline.list_normalized_load_packages()})
    try:
        if pipeline.list_extracted_load_packages():
            pipeline.normalize()
        info = pipeline.load()
    except PipelineStepFailed as exc:
        raise GaiaPipelineStateError(_pending_failed(pipeline, pending, exc)) from exc
    if info is not None and info.loads_ids:
        logger.warning(
            "loaded %d pending load package(s) left by an interrupted run (%s) before this run's own work",
            len(info.loads_ids), ", ".join(info.loads_ids),
        )
    return info


def _pending_failed(pipeline: dlt.Pipeline, pending: Sequence[str], exc: PipelineStepFailed) -> str:
    cause = " ".join(str(exc.exception).split())  # one line
    name = pipeline.pipeline_name
    message = (f"{len(pending)} load package(s) left by an interrupted run could not be loaded "
               f"({', '.join(pending)}; dlt's {exc.step} step failed: {cause}). Nothing new was sent.")
    if pipeline.has_pending_data:
        return message + (f" Fix the cause and run again: the package is loaded first. `dlt pipeline {name} info` "
                          f"shows it; `dlt pipeline {name} abort-packages` gives it up (requests whose rows are "
                          "missing are then sent again).")
    return message + (f" dlt aborted the package, so its rows are not loaded; `dlt pipeline {name} info` shows the "
                      "failed job. Run again: requests whose rows are missing are sent again.")


def repair_interrupted_normalize(pipeline: dlt.Pipeline) -> List[str]:
    """Delete what a kill at dlt's normalize commit left (dlt-hub/dlt#4446); return the load ids repaired.

    Normalize builds ``load/new/<id>``, renames it (atomically) to ``load/normalized/<id>``, then deletes
    ``normalize/extracted/<id>``. A package in both ``normalize/extracted`` and the load storage is the leftover of a
    commit that happened: its extracted copy (and any ``load/new/<id>`` a failed retry built) is deleted, and the
    committed package loads as it is. A committed copy without its schema file is not trusted: the error names the
    directory to delete (then the extracted copy is normalized again).

    Raises:
        GaiaPipelineStateError: The committed copy is incomplete.
    """
    extracted = pipeline.list_extracted_load_packages()
    if not extracted:
        return []
    # dlt 1.31 has no public accessor for the package storages (pipeline.list_* only lists them)
    load_storage = pipeline._get_load_storage()
    extracted_packages = pipeline._get_normalize_storage().extracted_packages
    repaired: List[str] = []
    for load_id in extracted:
        committed = next((packages for packages in (load_storage.normalized_packages, load_storage.loaded_packages)
                          if packages.storage.has_folder(packages.get_package_path(load_id))), None)
        if committed is None:
            continue  # not normalized yet: dlt normalizes it
        committed_dir = committed.storage.make_full_path(committed.get_package_path(load_id))
        extracted_dir = extracted_packages.storage.make_full_path(extracted_packages.get_package_path(load_id))
        # the commit is one os.rename; where dlt falls back to moving file by file (EMFILE), the job folders move
        # before the package's own files: a committed copy with its schema file holds every job
        schema_file = PackageStorage.SCHEMA_FILE_NAME
        if not os.path.isfile(os.path.join(committed_dir, schema_file)):
            raise GaiaPipelineStateError(
                f"load package {load_id} is both in {extracted_dir} and, without its {schema_file}, in "
                f"{committed_dir}: a run was killed while dlt's normalize step committed it (dlt-hub/dlt#4446). "
                f"Delete {committed_dir} and run again: dlt normalizes the package again from {extracted_dir}."
            )
        deleted = [extracted_dir]
        extracted_packages.delete_package(load_id)
        new_dir = load_storage.new_packages.storage.make_full_path(load_storage.new_packages.get_package_path(load_id))
        if os.path.isdir(new_dir):  # built by a retry whose commit then failed with "Directory not empty"
            load_storage.new_packages.delete_package(load_id)
            deleted.append(new_dir)
        logger.warning(
            "repaired what a kill at dlt's normalize commit left (dlt-hub/dlt#4446): package %s is complete in %s; "
            "deleted %s", load_id, _relative(committed_dir, pipeline),
            " and ".join(_relative(path, pipeline) for path in deleted),
        )
        repaired.append(load_id)
    return repaired


def _relative(path: str, pipeline: dlt.Pipeline) -> str:
    return os.path.relpath(path, pipeline.working_dir)


# --- dlt 1.31's LanceDB schema lookup --------------------------------------------------------------------------------


def patch_lancedb_schema_lookup() -> bool:
    """Make dlt 1.31's LanceDB client compare schema hashes and names with string literals; True when patched.

    dlt 1.31.x filters its version table with ``version_hash = "<hash>"`` (``lancedb_client.py``,
    ``get_stored_schema_by_hash``, near line 577; likewise ``get_stored_schema`` by name and
    ``_delete_schema_in_storage``). LanceDB (DataFusion) reads a double-quoted token as a column name, so once the
    version table exists, every load after a schema change fails with ``No field named "<hash>"`` and a lost
    working directory cannot be restored from the destination. The three methods are replaced by the same code with
    an escaped single-quoted literal. Applied only on dlt 1.31.x and only while the buggy statement is in dlt's
    source (a fixed dlt is left alone); safe to call again.
    """
    import inspect

    from dlt.destinations.impl.lancedb import lancedb_client
    from dlt.destinations.impl.lancedb.exceptions import lancedb_error

    client_class: Any = lancedb_client.LanceDBClient
    if getattr(client_class, "_gaia_literals_patched", False):
        return True
    if not dlt.__version__.startswith("1.31."):
        return False
    if '= "{schema_hash}"' not in inspect.getsource(client_class.get_stored_schema_by_hash):
        return False
    client_class.get_stored_schema_by_hash = lancedb_error(_get_stored_schema_by_hash)
    client_class.get_stored_schema = lancedb_error(_get_stored_schema)
    client_class._delete_schema_in_storage = lancedb_error(_delete_schema_in_storage)
    client_class._gaia_literals_patched = True
    logger.debug("patched dlt %s's LanceDB schema lookup (string literals for hashes and names)", dlt.__version__)
    return True


def _version_table(client: Any) -> Any:
    """dlt's schema version table of the client's dataset, at its latest version, or None before it exists."""
    name = client.make_qualified_table_name(client.schema.version_table_name)
    if name not in client.list_table_names():
        return None
    table = client.db_client.open_table(name)
    table.checkout_latest()
    return table


def _newest_stored_schema(client: Any, column: str, value: Optional[str]) -> Any:
    """The newest row of the version table whose ``column`` equals ``value`` (any row when None), as dlt returns it."""
    from dlt.common.data_writers.escape import escape_lancedb_literal
    from dlt.common.destination.client import StorageSchemaInfo

    table = _version_table(client)
    if table is None:
        return None
    field = client.schema.naming.normalize_identifier
    query = table.search()
    if value is not None:
        query = query.where(f"`{field(column)}` = {escape_lancedb_literal(value)}", prefilter=True)
    rows = query.to_list()
    if not rows:
        return None
    newest = max(rows, key=lambda row: row[field("inserted_at")])
    return StorageSchemaInfo(
        version_hash=newest[field("version_hash")],
        schema_name=newest[field("schema_name")],
        version=newest[field("version")],
        engine_version=newest[field("engine_version")],
        inserted_at=newest[field("inserted_at")],
        schema=newest[field("schema")],
    )


def _get_stored_schema_by_hash(self: Any, schema_hash: str) -> Any:
    return _newest_stored_schema(self, "version_hash", schema_hash)


def _get_stored_schema(self: Any, schema_name: Optional[str] = None) -> Any:
    """Retrieves newest schema from destination storage."""
    return _newest_stored_schema(self, "schema_name", schema_name or None)


def _delete_schema_in_storage(self: Any, schema: Any) -> None:
    """Deletes all stored versions with the same name as `schema`. No-op if table is missing."""
    from dlt.common.data_writers.escape import escape_lancedb_literal

    table = _version_table(self)
    if table is not None:
        column = self.schema.naming.normalize_identifier("schema_name")
        table.delete(f"`{column}` = {escape_lancedb_literal(schema.name)}")


# --- dlt 1.31's fixed cost -------------------------------------------------------------------------------------------


def avoid_sqlalchemy_import(destination: str) -> bool:
    """Give dlt its own SQLAlchemy-free URL class for connection strings in this process; True when done.

    dlt 1.31 renders every destination's credentials as a URL when it reports a load (``LoadInfo``), through
    ``dlt.common.libs.sql_alchemy_compat``, which imports SQLAlchemy whenever it is installed (the ``iceberg`` extra
    installs it, for pyiceberg's catalog): 0.2–0.6 s of a snapshot run that loads three rows. dlt ships a drop-in
    (``sql_alchemy_shims``: ``URL``, ``make_url``) for when SQLAlchemy is absent; this module points the compat module
    at it. Only for a one-destination process (the script): never for the ``sqlalchemy`` destination, and not when
    the compat module was already imported. pyiceberg's SQL catalog imports SQLAlchemy itself, unaffected.
    """
    import sys
    import types

    name = "dlt.common.libs.sql_alchemy_compat"
    if destination == "sqlalchemy" or name in sys.modules:
        return False
    from dlt.common.libs import sql_alchemy_shims

    module = types.ModuleType(name, "dlt's SQLAlchemy-free URL (gaia_source.lifecycle.avoid_sqlalchemy_import)")
    module.URL = sql_alchemy_shims.URL  # type: ignore[attr-defined]
    module.make_url = sql_alchemy_shims.make_url  # type: ignore[attr-defined]
    sys.modules[name] = module
    return True
