"""Resumable batches: the job file, the manifest that remembers every job, the plan, the gallery.

``run`` runs a batch on the client's engine; ``plan`` decides what each job
still needs; ``manifest`` is the batch's fsynced memory; ``jobfile`` reads
prompts and JSON lines; ``gallery`` writes the HTML page of the results.
"""

from arta.batch.jobfile import FIELDS, BatchJob, read_jobs
from arta.batch.manifest import Manifest
from arta.batch.plan import (
    POSSIBLY_RESUBMITTED_NOTE,
    BatchReport,
    JobReport,
    Task,
    check_folder,
    plan,
)
from arta.batch.run import run_batch, running

__all__ = [
    "FIELDS",
    "POSSIBLY_RESUBMITTED_NOTE",
    "BatchJob",
    "BatchReport",
    "JobReport",
    "Manifest",
    "Task",
    "check_folder",
    "plan",
    "read_jobs",
    "run_batch",
    "running",
]


def __getattr__(name: str) -> object:
    """``arta.batch.Outcome`` was the name of :class:`JobReport` (one ``Outcome``: the engine's)."""
    if name == "Outcome":
        import warnings

        warnings.warn("arta.batch.Outcome is arta.batch.JobReport", DeprecationWarning,
                      stacklevel=2)
        return JobReport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
