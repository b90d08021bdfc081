"""``arta batch --engine dask``: the driver submits on the engine, the cluster waits and fetches.

The driver (the ``arta batch`` process) submits through the client's
:class:`~arta.engine.run.JobRun`, as a single-process batch does: the same
adaptive window, the same congestion and refusal rules, the same manifest
records (an ``intent`` fsynced before each submit, ``submitted`` with the
record id before the job reaches the cluster). Each submitted or resumed
job is then handed to the cluster as one task keyed ``arta-<record id>``
that waits for it on the worker's engine and fetches its images; a task
Dask runs again costs a few polls, never a submit. Images come back to the
driver as bytes (a job's are a few MB at most) and are written beside their
final name and renamed into place; with ``output_on_workers`` (and on a
``local:N`` cluster: one file system) the workers write them.
The cluster's side of each hand-off is :mod:`arta.dask.handoff`; docs/dask.rst
says how and what is promised.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from arta.atomic import replacing
from arta.batch.jobfile import BatchJob
from arta.batch.manifest import Manifest, ManifestError
from arta.batch.plan import BatchReport, JobRecorder, JobReport, Task
from arta.batch.run import BatchBook, Counts
from arta.client import Client
from arta.dask.cluster import connect, local_workers
from arta.dask.handoff import ENDED_TOPIC, ClusterLost, HandOffs
from arta.dask.token_store import DaskTokenStore
from arta.engine.jobs import Job, Outcome
from arta.engine.run import JobRun
from arta.errors import ArtaError, InvalidInputError, SubmitOutcomeUnknown
from arta.generation import Generation
from arta.progress import ProgressDisplay

if TYPE_CHECKING:
    import distributed

__all__ = ["ENDED_TOPIC", "ClusterLost", "run_batch_on_dask"]


def _write_into_place(folder: Path, name: str, data: bytes) -> Path:
    """Write ``data`` as ``folder/name`` whole, as :meth:`arta.Result.save` writes an image."""
    folder.mkdir(parents=True, exist_ok=True)
    with replacing(folder / name, prefix=".arta-", suffix=".part", private=False) as file:
        file.write(data)
    return folder / name


class _Driver:
    """One run: jobs submitted on the engine, each handed to the cluster, recorded as it ends."""

    def __init__(self, dask: distributed.Client, client: Client, manifest: Manifest,
                 output: Path, options: dict[str, Any]) -> None:
        self.client, self.manifest, self.output = client, manifest, output
        self.handoffs = HandOffs(dask, options)

    def hand_off(self, job: Job, generation: Generation) -> concurrent.futures.Future[Any]:
        """Launch job ``generation`` on the cluster; the future ends with its task's value."""
        return self.handoffs.launch(generation.record_id, [
            (at, status.value) for at, status in generation.seen])

    def record(self, outcome: Outcome) -> JobReport:
        """Write one ended job's images and its last manifest record."""
        recorder: JobRecorder = outcome.job.tag
        record_id = outcome.record_id
        if outcome.value is None:
            error = outcome.error or ArtaError("the job ended without a result")
            seed = outcome.job.params.seed if outcome.job.params else recorder.task.seed
            return recorder.failed(error, None if isinstance(error, SubmitOutcomeUnknown)
                                   else record_id, seed)
        value = outcome.value
        assert record_id is not None
        try:
            files = value["files"] if "files" in value else [
                str(_write_into_place(self.output, name, data)) for name, data in value["images"]]
        except OSError as error:
            return recorder.failed(ArtaError(f"the images could not be written in "
                                             f"{self.output}: {error}", record_id=record_id),
                                   record_id, value["seed"])
        return recorder.done(record_id, value["seed"], files, value["blurred"])

    def run(self, tasks: list[Task], concurrency: int, timeout: float | None,
            emit: Callable[[JobReport], None], on_counts: Callable[[Counts], None]) -> None:
        """Submit or resume every task on the engine; record each job as it ends."""
        handoffs = self.handoffs

        def jobs() -> Iterator[Job]:
            for task in tasks:
                if handoffs.lost is not None:
                    return  # the jobs in flight end (with their ids), no new one starts
                yield Job(None if task.record_id else task.params(), task.record_id,
                          tag=JobRecorder(self.manifest, task))

        ended = {"done": 0, "failed": 0}
        with handoffs, JobRun(
                self.client, self.client.window, jobs(), concurrency=concurrency, timeout=timeout,
                poll_policy=None, on_submitting=_intent, on_submitted=_submitted,
                hand_off=self.hand_off) as run:
            for ran in run:
                outcome = self.record(ran)
                ended["done" if outcome.event == "done" else "failed"] += 1
                emit(outcome)
                in_flight = run.counts["in_flight"]
                on_counts({"queued": len(tasks) - in_flight - sum(ended.values()),
                           "in_flight": in_flight, **ended})
                if outcome.manifest_error:
                    run.close()  # no record can be kept: stop
        if handoffs.lost is not None:
            raise ClusterLost(handoffs.lost)


def _intent(job: Job) -> None:
    assert job.params is not None
    job.tag.intent(job.params)  # fsynced before the submit: a kill after it is known


def _submitted(job: Job, generation: Generation) -> None:
    try:
        job.tag.submitted(generation.record_id, generation.seed)
    except ManifestError as error:
        raise error.with_record_id(generation.record_id) from error


def run_batch_on_dask(
    jobs: list[BatchJob],
    manifest: Manifest,
    output: str | os.PathLike[str],
    *,
    scheduler: str,
    client_options: dict[str, Any] | None = None,
    concurrency: int = 64,
    on_outcome: Callable[[JobReport], None] | None = None,
    on_plan: Callable[[list[JobReport], list[Task]], object] | None = None,
    on_counts: Callable[[Counts], None] | None = None,
    output_on_workers: str | os.PathLike[str] | None = None,
    token: str = "cluster",
    timeout: float | None = None,
    progress: bool | ProgressDisplay = False,
) -> BatchReport:
    """Run every job not yet done on a Dask cluster; report every job's outcome, by line.

    The counterpart of :func:`arta.batch.run_batch` (same manifest, same
    plan, same callbacks and progress, same engine for the submits; the caller holds the
    manifest's :class:`~arta.batch.manifest.RunLock`). ``scheduler`` is an
    address (``tcp://host:8786``) or ``local:N``. ``client_options`` are
    :class:`~arta.client.Client` keywords for the driver and every worker
    (picklable: they travel). ``concurrency`` caps the jobs in flight.
    ``token``: on a remote cluster, ``"cluster"`` (the default) shares one
    token through the scheduler, seeded from this host's store and written
    back to it, and ``"host"`` gives each host its own ``auth_ARTA.json``;
    a ``local:N`` cluster always uses this host's store. ``timeout`` bounds
    each job's wait on the workers. Images are written to ``output`` on
    this machine, or to ``output_on_workers`` by the workers. Raises
    :class:`ClusterLost` after recording every ended job if the scheduler
    goes away; a rerun resumes the rest.
    """
    if concurrency < 1:
        raise InvalidInputError(f"concurrency must be at least 1, not {concurrency}")
    if token not in ("cluster", "host"):
        raise InvalidInputError(f"token must be 'cluster' or 'host', not {token!r}")
    local = local_workers(scheduler) is not None  # checks local:N before anything starts
    if local and output_on_workers is None:
        output_on_workers = os.path.abspath(output)  # one file system: no bytes through Dask
    shared = token == "cluster" and not local
    options = {"client_options": dict(client_options or {}), "timeout": timeout,
               "secede": not local,
               "token": "cluster" if shared else "host",
               "output_on_workers": None if output_on_workers is None else str(output_on_workers)}
    driver_options = dict(client_options or {})
    with BatchBook(jobs, manifest, on_outcome=on_outcome, on_plan=on_plan,
                   on_counts=on_counts, progress=progress) as book:
        if not book.tasks:
            return book.report
        with connect(scheduler, slots=concurrency) as dask:
            if shared:  # the cluster's token, seeded from this host's store and written back
                with Client(**driver_options) as host:
                    driver_options["token_store"] = DaskTokenStore(
                        client=dask, host_store=host.token_store)
            with Client(**driver_options) as client:
                _Driver(dask, client, manifest, Path(output), options).run(
                    book.tasks, concurrency, timeout, book.emit, book.counts)
    return book.report

