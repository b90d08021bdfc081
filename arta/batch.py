"""``arta batch``: many prompts, one token, nothing lost, nothing paid twice unknowingly.

The batch's memory is its :class:`~arta.manifest.Manifest`. Before each
submit an ``intent`` (the parameters and the seed) is fsynced; the record id
is written the moment the service answers; the end of the job (``done``
with its files, or ``failed`` with the error and the record id) after the
images are saved. A batch killed at any point and run again resumes:

- finished jobs are skipped;
- jobs with a record id are picked up by it (never submitted twice);
- a job with an intent and no record id was perhaps taken by the service
  just before the kill: it is submitted again with the same seed, and
  counted as *possibly resubmitted*;
- jobs the service FAILED, and the rest, are submitted.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable

from arta.client import Client
from arta.errors import (
    ArtaError,
    DownloadError,
    GenerationFailed,
    InvalidInputError,
    SubmitOutcomeUnknown,
)
from arta.jobfile import FIELDS, BatchJob, read_jobs
from arta.manifest import JobState, Manifest, ManifestError
from arta.params import GenerationParams

__all__ = ["FIELDS", "POSSIBLY_RESUBMITTED_NOTE", "BatchJob", "BatchReport", "Manifest",
           "Outcome", "Task", "check_folder", "plan", "read_jobs", "run_batch", "running"]

log = logging.getLogger(__name__)

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
class Outcome:
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

    outcomes: list[Outcome]
    possibly_resubmitted: int = 0

    def count(self, event: str) -> int:
        """How many outcomes are ``event``."""
        return sum(outcome.event == event for outcome in self.outcomes)

    @property
    def manifest_error(self) -> str | None:
        """The first manifest failure of the run, if any."""
        return next((o.error for o in self.outcomes if o.manifest_error), None)


def plan(jobs: Sequence[BatchJob], states: dict[str, JobState]) -> tuple[list[Outcome], list[Task]]:
    """Split ``jobs`` into those done by an earlier run and the tasks of this one."""
    skipped: list[Outcome] = []
    tasks: list[Task] = []
    for job in jobs:
        state = states.get(job.key)
        if state is None:
            tasks.append(Task(job))
        elif state.event == "done":
            skipped.append(Outcome(job.line, "skipped", state.record_id, state.files,
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
             blurred: Sequence[int]) -> Outcome:
        """The images are saved."""
        self.manifest.append({**self.base, "event": "done", "record_id": record_id,
                              "seed": seed, "files": list(files), "blurred": list(blurred)})
        return self.outcome("done", record_id, seed, files=tuple(files), blurred=tuple(blurred))

    def failed(self, error: ArtaError, record_id: str | None, seed: int | None) -> Outcome:
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
                **fields: Any) -> Outcome:
        """This job's outcome."""
        return Outcome(self.task.job.line, event, record_id, prompt=self.task.job.prompt,
                       seed=seed, possibly_resubmitted=self.task.possibly_resubmitted, **fields)


def save_images(result: Any, output: str | os.PathLike[str]) -> list[str]:
    """Save a result's images as ``arta generate`` names them; a local fault is a DownloadError."""
    try:
        return [str(path) for path in result.save(output)]
    except OSError as error:  # disk full, ulimit -f, a read-only folder
        raise DownloadError(f"the images could not be saved in {output}: "
                            f"{error.strerror or error}", record_id=result.record_id) from error


# -- the worker processes ----------------------------------------------------

_worker: dict[str, Any] = {}


def _start_worker(client_options: dict[str, Any], manifest: str, output: str) -> None:
    """Pool initializer: one client per worker process; the token file is shared."""
    _worker.update(client=Client(**client_options), manifest=Manifest(manifest), output=output)


def _run_task(task: Task) -> Outcome:
    """One job, start to end, in a worker process."""
    client: Client = _worker["client"]
    recorder = JobRecorder(_worker["manifest"], task)
    record_id, seed = task.record_id, task.seed
    try:
        if record_id is None:
            params = task.params()
            seed = params.seed
            recorder.intent(params)  # before the submit: a kill after it is known
            generation = client.submit(**params.as_dict())
            record_id = generation.record_id
            recorder.submitted(record_id, seed)
        else:
            generation = client.resume(record_id)
        generation.wait(client.timeout)
        result = generation.result()
        seed = result.seed if result.seed is not None else seed
        files = save_images(result, _worker["output"])
        return recorder.done(record_id, seed, files, result.blurred)
    except ArtaError as error:
        if isinstance(error, SubmitOutcomeUnknown):
            record_id = None
        return recorder.failed(error, error.record_id or record_id, seed)


def run_batch(
    jobs: list[BatchJob],
    manifest: Manifest,
    output: str | os.PathLike[str],
    *,
    workers: int = 4,
    client_options: dict[str, Any] | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
    on_plan: Callable[[list[Outcome], list[Task]], object] | None = None,
) -> BatchReport:
    """Run every job not yet done, in ``workers`` processes; report every job's outcome.

    Each worker makes a :class:`~arta.client.Client` from ``client_options``
    (its ``timeout`` bounds each job's wait). ``on_outcome`` is called in
    this process as each job ends, ``on_plan`` once before any request
    with the jobs an earlier run finished and the tasks of this run. The
    caller holds the manifest's
    :class:`~arta.manifest.RunLock`.
    """
    skipped, tasks = plan(jobs, manifest.states())
    if on_plan is not None:
        on_plan(skipped, tasks)
    report = BatchReport(list(skipped), sum(task.possibly_resubmitted for task in tasks))
    if not tasks:
        return report
    # spawn, not fork: a forked child would inherit this process's threads and sockets.
    context = multiprocessing.get_context("spawn")
    with context.Pool(min(workers, len(tasks)), initializer=_start_worker,
                      initargs=(client_options or {}, str(manifest.path), str(output))) as pool:
        for outcome in pool.imap_unordered(_run_task, tasks):
            report.outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome)
    report.outcomes.sort(key=lambda o: o.line)
    return report


def running(manifest: Manifest, jobs: list[BatchJob]) -> Iterator[tuple[int, str]]:
    """(line, record id) of every job submitted and not finished: what a resume picks up."""
    states = manifest.states()
    for job in jobs:
        state = states.get(job.key)
        if state is not None and state.record_id is not None and state.event == "submitted":
            yield job.line, state.record_id
