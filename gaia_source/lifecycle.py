"""One run of a pipeline, around dlt's steps: first finish what an interrupted run left, then do this run's work.

dlt 1.31's ``Pipeline.run(source)``, when an interrupted run left packages, loads them and then returns *without
extracting the source* (dlt only logs a warning): the run's own prompts are never sent, and it exits 0.
:func:`run_pipeline` loads them first (:func:`load_pending`, one warning says how many), then runs the source. If they
cannot be loaded, the run stops with :class:`~gaia_source.errors.GaiaPipelineStateError` (what failed, what to do)
before anything new is sent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional, Sequence

import dlt
from dlt.pipeline.exceptions import PipelineStepFailed

from .errors import GaiaPipelineStateError

if TYPE_CHECKING:
    from dlt.common.pipeline import LoadInfo
    from dlt.extract.source import DltSource

logger = logging.getLogger("gaia_source")


@dataclass(frozen=True)
class RunResult:
    """What :func:`run_pipeline` did.

    Attributes:
        load_info: This run's own load (its source extracted, normalized and loaded).
        pending: The load of packages an interrupted run left, done first; None when there were none.
    """

    load_info: LoadInfo
    pending: Optional[LoadInfo] = None

    @property
    def load_infos(self) -> List[LoadInfo]:
        """Every load of this run, the pending packages' first."""
        return [info for info in (self.pending, self.load_info) if info is not None]

    @property
    def has_failed_jobs(self) -> bool:
        """True when a job failed in either load: the pending packages' or this run's."""
        return any(info.has_failed_jobs for info in self.load_infos)

    def raise_on_failed_jobs(self) -> None:
        """Raise dlt's ``DestinationHasFailedJobs`` for the first load with a failed job."""
        for info in self.load_infos:
            info.raise_on_failed_jobs()

    def __str__(self) -> str:
        if self.pending is None:
            return str(self.load_info)
        return f"Pending packages of an interrupted run:\n{self.pending}\n\nThis run:\n{self.load_info}"


def run_pipeline(pipeline: dlt.Pipeline, source: DltSource) -> RunResult:
    """Run ``source`` through ``pipeline`` after finishing what an interrupted run left.

    Use it in place of ``pipeline.run(source)``: that call, when packages are pending, loads them and returns without
    extracting ``source``. Here the pending packages load first (one warning says how many), then ``source`` runs.

    Args:
        pipeline: The pipeline (its destination set).
        source: What this run loads, e.g. ``gaia_source(...)``.

    Returns:
        Both loads; ``has_failed_jobs`` covers each.

    Raises:
        GaiaPipelineStateError: A pending package could not be loaded; nothing of ``source`` was extracted, and the
            message says what to do.
        PipelineStepFailed: This run's own extract, normalize or load failed (as from ``pipeline.run``).
    """
    pending = load_pending(pipeline)
    return RunResult(load_info=pipeline.run(source), pending=pending)


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
