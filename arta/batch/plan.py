"""What a batch run is made of: its tasks, its outcomes, and the records it writes.

:func:`plan` reads the manifest's :class:`~arta.batch.manifest.JobRecord` of every
job and decides, before any request, what this run does with it: skip it
(done), resume it by record id, or submit it (again, with the same seed, if
an earlier run may already have: *possibly resubmitted*).
:class:`JobRecorder` writes a job's records: the intent before the submit,
the record id after it, the end after the images are saved.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from arta.batch.jobfile import BatchJob
from arta.batch.manifest import JobRecord, Manifest, ManifestError
from arta.errors import (
    ArtaError,
    DownloadError,
    GenerationFailed,
    InvalidInputError,
    SubmitOutcomeUnknown,
)
from arta.params import GenerationParams
from arta.result import Result

__all__ = ["POSSIBLY_RESUBMITTED_NOTE", "BatchReport", "JobRecorder", "JobReport", "Task",
           "check_folder", "plan", "save_images"]

#: What "possibly resubmitted" means, for the summary line.
POSSIBLY_RESUBMITTED_NOTE = (
    " (an earlier run was stopped between their submit and its answer; each was sent again "
    "with the same seed, so the service can tell a duplicate)")


def check_folder(folder: str | os.PathLike[str]) -> None:
    """Make sure images can be written in ``folder`` before anything is paid for."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise InvalidInputError(f"cannot write in the output folder {folder}: "
                                f"{error.strerror or error}") from None


@dataclasses.dataclass(frozen=True)
class JobReport:
    """How one job of this run ended (also the ``--json`` output of a job)."""

    line: int
    event: str  # "done", "failed" or "skipped"
    record_id: str | None = None
    files: tuple[str, ...] = ()
    blurred: tuple[int, ...] = ()
    error: str | None = None
    prompt: str | None = None
    seed: int | None = None
    #: Submitted again with the seed of an earlier run's unanswered submit.
    possibly_resubmitted: bool = False
    #: The manifest could not be written: the run must stop.
    manifest_error: bool = False

    def as_json(self) -> dict[str, Any]:
        """A plain dict for ``--json``."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Task:
    """A job to work on in this run: submit it (with ``seed``) or resume it by ``record_id``."""

    job: BatchJob
    record_id: str | None = None
    seed: int | None = None
    possibly_resubmitted: bool = False

    def params(self) -> GenerationParams:
        """The submit's parameters, with the seed fixed (written in the intent before the submit)."""
        seed = self.seed if self.seed is not None else self.job.params.get("seed")
        return GenerationParams.create(**{**self.job.params, "seed": seed})


@dataclasses.dataclass
class BatchReport:
    """What a run did: every job's outcome, and how many jobs may have been paid twice."""

    outcomes: list[JobReport]
    possibly_resubmitted: int = 0

    def count(self, event: str) -> int:
        """How many outcomes are ``event``."""
        return sum(outcome.event == event for outcome in self.outcomes)

    @property
    def manifest_error(self) -> str | None:
        """The first manifest failure of the run, if any."""
        return next((o.error for o in self.outcomes if o.manifest_error), None)


def plan(jobs: Sequence[BatchJob], states: dict[str, JobRecord]) -> tuple[list[JobReport], list[Task]]:
    """Split ``jobs`` into those done by an earlier run and the tasks of this one."""
    skipped: list[JobReport] = []
    tasks: list[Task] = []
    for job in jobs:
        state = states.get(job.key)
        if state is None:
            tasks.append(Task(job))
        elif state.event == "done":
            skipped.append(JobReport(job.line, "skipped", state.record_id, state.files,
                                   state.blurred, prompt=job.prompt, seed=state.seed))
        elif state.error_type == GenerationFailed.__name__:
            tasks.append(Task(job))  # the service failed it: a new job, a new seed
        elif state.record_id is not None:
            tasks.append(Task(job, record_id=state.record_id, seed=state.seed))
        else:
            # An intent with no answer recorded: the submit may have reached the
            # service. Send it again with the same seed, and say so.
            maybe = state.event == "intent" or state.error_type == SubmitOutcomeUnknown.__name__
            tasks.append(Task(job, seed=state.seed, possibly_resubmitted=maybe))
    return skipped, tasks


class JobRecorder:
    """Writes one job's records into the manifest."""

    def __init__(self, manifest: Manifest, task: Task) -> None:
        self.manifest = manifest
        self.task = task
        self.base = {"job": task.job.key, "line": task.job.line}

    def intent(self, params: GenerationParams) -> None:
        """Before the submit: the parameters and the seed, fsynced."""
        self.manifest.append({**self.base, "event": "intent", "seed": params.seed,
                              "params": params.as_dict(),
                              "possibly_resubmitted": self.task.possibly_resubmitted})

    def submitted(self, record_id: str, seed: int | None) -> None:
        """The service answered the submit with ``record_id``."""
        self.manifest.append({**self.base, "event": "submitted", "record_id": record_id,
                              "seed": seed})

    def done(self, record_id: str, seed: int | None, files: Sequence[str],
             blurred: Sequence[int]) -> JobReport:
        """The images are saved."""
        self.manifest.append({**self.base, "event": "done", "record_id": record_id,
                              "seed": seed, "files": list(files), "blurred": list(blurred)})
        return self.outcome("done", record_id, seed, files=tuple(files), blurred=tuple(blurred))

    def failed(self, error: ArtaError, record_id: str | None, seed: int | None) -> JobReport:
        """The job ended in ``error``; record it (if the manifest still can be written)."""
        text = f"{type(error).__name__}: {error}"
        try:
            self.manifest.append({**self.base, "event": "failed", "record_id": record_id,
                                  "seed": seed, "error_type": type(error).__name__,
                                  "error": str(error)})
        except ManifestError as manifest_error:
            return self.outcome("failed", record_id, seed, error=f"{text}; and {manifest_error}",
                                manifest_error=True)
        return self.outcome("failed", record_id, seed, error=text,
                            manifest_error=isinstance(error, ManifestError))

    def outcome(self, event: str, record_id: str | None, seed: int | None,
                **fields: Any) -> JobReport:
        """This job's outcome."""
        return JobReport(self.task.job.line, event, record_id, prompt=self.task.job.prompt,
                       seed=seed, possibly_resubmitted=self.task.possibly_resubmitted, **fields)


def save_images(result: Result, output: str | os.PathLike[str]) -> list[str]:
    """Save a result's images as ``arta generate`` names them; a local fault is a DownloadError."""
    try:
        return [str(path) for path in result.save(output)]
    except OSError as error:  # disk full, ulimit -f, a read-only folder
        raise DownloadError(f"the images could not be saved in {output}: "
                            f"{error.strerror or error}", record_id=result.record_id) from error
