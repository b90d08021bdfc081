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
docs/dask.rst says how and what is promised.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import os
import queue
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from arta.atomic import replacing
from arta.batch.jobfile import BatchJob
from arta.batch.manifest import Manifest, ManifestError
from arta.batch.plan import BatchReport, JobRecorder, JobReport, Task, save_images
from arta.batch.run import BatchBook, Counts
from arta.client import Client
from arta.dask.cluster import connect, local_workers
from arta.dask.jobs import task_client
from arta.dask.token_store import DaskTokenStore
from arta.engine.jobs import Job, Outcome
from arta.engine.run import JobRun
from arta.errors import ArtaError, InvalidInputError, SubmitOutcomeUnknown
from arta.generation import Generation, Status
from arta.progress import ProgressDisplay
from arta.result import Result

if TYPE_CHECKING:
    import distributed

__all__ = ["ENDED_TOPIC", "ClusterLost", "run_batch_on_dask"]


#: The Dask event topic on which workers announce the jobs whose images they wrote
#: (:meth:`distributed.Client.subscribe_topic`): the scheduler keeps only its
#: last ``distributed.admin.low-level-log-length`` events (1,000, a few hundred
#: bytes each).
ENDED_TOPIC = "arta.dask.batch.ended"


#: Seconds the driver waits after a job's hand-off for more, so that jobs handed off
#: together reach Dask in one message (one graph update, one batch of messages to
#: each worker): Dask's own CPU per job falls by about a fifth with 64 jobs of
#: ~0.8 s in flight (docs/dask.rst), for a job's start later by at most this.
LAUNCH_WAIT = 0.02


class ClusterLost(ArtaError):
    """The driver lost its Dask scheduler mid-run; the manifest knows every job: run again."""


async def fetch_job(record_id: str, options: dict[str, Any],
                    status: str = Status.SUBMITTED.value) -> dict[str, Any] | ArtaError:
    """The cluster's task: wait for job ``record_id`` on this worker's engine, fetch its images.

    A coroutine, so that Dask runs it on the worker's event loop: a waiting
    job is an entry in the engine's poll loop, not a worker thread, and the
    images are fetched on the engine's I/O threads. On a cluster not ours
    (``options["secede"]``) the task gives its worker slot back while it
    waits; a ``local:N`` worker has a slot per job in flight, and keeping
    it spares Dask a message and a transition per job. Returns the images'
    names and bytes (with ``output_on_workers``, the paths written), or the
    error that ended the job, as a value. ``status`` is the job's as last
    known (the submit's answer): a job known to be queued is not polled at once.
    A job whose images the worker wrote is also announced on
    :data:`ENDED_TOPIC`: the driver has its value without fetching it.
    """
    import distributed

    client = task_client(options["client_options"], token=options["token"])
    watch = None
    try:
        generation = Generation(record_id, session=client, status=Status(status))
        watch = generation.watch(options["timeout"])
        if options["secede"]:
            _secede(f"arta-{record_id}")
        await asyncio.wrap_future(watch.future)
        fetched = await asyncio.wrap_future(client.loop.call_io(
            _fetch_images, generation.ended_result(), options["output_on_workers"]))
        if "files" in fetched:  # a few names: announced, so the driver need not fetch the value
            distributed.get_worker().log_event(ENDED_TOPIC, {"record_id": record_id, **fetched})
        return fetched
    except ArtaError as error:
        return error.with_record_id(record_id)
    finally:
        if watch is not None:
            watch.cancel()  # a no-op once ended; else (the task was cancelled) the polls stop


def _secede(key: str) -> None:
    """Free the worker's slot that task ``key`` holds, as :func:`distributed.secede` does for a thread.

    A worker starts at most as many tasks as it has threads, coroutines
    included; a task that only awaits the engine gives its slot back, so
    that a worker of 2 threads carries hundreds of waiting jobs.
    """
    import distributed

    try:
        from distributed.worker_state_machine import SecedeEvent
    except ImportError:  # another Dask: the task keeps its slot, and still works
        return
    worker = distributed.get_worker()
    worker.loop.add_callback(worker.handle_stimulus, SecedeEvent(
        key=key, compute_duration=0.0, stimulus_id=f"arta-secede-{time.time()}"))


def _fetch_images(result: Result, output_on_workers: str | None) -> dict[str, Any]:
    """On an I/O thread: the images written where the workers write, or read back as bytes."""
    found = {"seed": result.seed, "blurred": result.blurred}
    if output_on_workers is not None:
        return {**found, "files": save_images(result, output_on_workers)}
    with tempfile.TemporaryDirectory(prefix="arta-") as folder:
        paths = save_images(result, folder)
        return {**found, "images": [(Path(p).name, Path(p).read_bytes()) for p in paths]}


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
        self.dask, self.client, self.manifest, self.output = dask, client, manifest, output
        self.options = options
        self.lost: str | None = None  # why the scheduler is gone, once it is
        self._endings: dict[str, concurrent.futures.Future[Any]] = {}  # by record id, on the cluster
        # Jobs handed off, for the launcher thread (None: the run is over).
        self._launches: queue.SimpleQueue[tuple[str, str, concurrent.futures.Future[Any]] | None] \
            = queue.SimpleQueue()

    def hand_off(self, job: Job, generation: Generation) -> concurrent.futures.Future[Any]:
        """Queue job ``generation`` for the cluster; the future ends with its task's value."""
        ending: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._launches.put((generation.record_id, generation.status.value, ending))
        return ending

    def _launch(self) -> None:
        """On a thread of its own: the jobs queued, as one task each, in one message to Dask."""
        end = False
        while not end:
            taken = [self._launches.get()]
            gathering = time.monotonic() + LAUNCH_WAIT
            with contextlib.suppress(queue.Empty):
                while taken[-1] is not None:
                    taken.append(self._launches.get(timeout=max(0.0, gathering - time.monotonic())))
            end = None in taken
            queued = [item for item in taken if item is not None]
            if not queued:
                continue
            record_ids = [record_id for record_id, _, _ in queued]
            self._endings.update((record_id, ending) for record_id, _, ending in queued)
            try:
                if self.lost is not None:
                    raise ClusterLost(self.lost)
                tasks = self.dask.map(fetch_job, record_ids, [self.options] * len(queued),
                                      [status for _, status, _ in queued], pure=False,
                                      key=[f"arta-{record_id}" for record_id in record_ids])
            except Exception as error:  # noqa: BLE001 - each job keeps its id
                for record_id, _, ending in queued:
                    _settle(ending, error if isinstance(error, ArtaError) else ArtaError(
                        f"{type(error).__name__}: {error}", record_id=record_id))
                continue
            for task, (record_id, _, ending) in zip(tasks, queued):
                task.add_done_callback(functools.partial(self._landed, record_id=record_id,
                                                         ending=ending))

    def _announced(self, event: tuple[float, dict[str, Any]]) -> None:
        """On Dask's event loop: a worker's announcement of a job it ended (see :func:`fetch_job`).

        Announcements come before the task's end on the same stream, so
        :meth:`_landed` finds the job settled and fetches nothing.
        """
        value = dict(event[1])
        ending = self._endings.get(value.pop("record_id"))
        if ending is not None:
            _settle(ending, value)

    def _landed(self, task: distributed.Future[Any], record_id: str,
                ending: concurrent.futures.Future[Any]) -> None:
        """On Dask's callback thread: the task's value (or its error) ends the job's outcome."""
        value = None
        try:
            if not ending.done():  # not announced: fetch the value from the worker
                value = task.result()
        except BaseException as error:  # noqa: BLE001 - KilledWorker, a lost scheduler: the job lives on
            value = ArtaError(f"{type(error).__name__}: {error}")
            if self.dask.status != "running":  # reconnecting: the scheduler forgot every task
                self.lost = (f"the Dask scheduler was lost ({type(error).__name__}); the "
                             "submitted jobs go on: run the batch again to resume them")
                value = ClusterLost(self.lost)
        finally:
            task.release()  # nothing of a finished job stays in the scheduler
            self._endings.pop(record_id, None)
        _settle(ending, value)

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
        def jobs() -> Iterator[Job]:
            for task in tasks:
                if self.lost is not None:
                    return  # the jobs in flight end (with their ids), no new one starts
                yield Job(None if task.record_id else task.params(), task.record_id,
                          tag=JobRecorder(self.manifest, task))

        ended = {"done": 0, "failed": 0}
        self.dask.subscribe_topic(ENDED_TOPIC, self._announced)
        launcher = threading.Thread(target=self._launch, name="arta-dask-launcher", daemon=True)
        launcher.start()
        with _ended(launcher, self._launches), JobRun(
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
        if self.dask.status == "running":
            self.dask.unsubscribe_topic(ENDED_TOPIC)
        if self.lost is not None:
            raise ClusterLost(self.lost)


def _settle(ending: concurrent.futures.Future[Any], value: Any) -> None:
    """End a hand-off's future with ``value`` (an exception raises), unless the run closed it."""
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        if isinstance(value, BaseException):
            ending.set_exception(value)
        else:
            ending.set_result(value)


def _intent(job: Job) -> None:
    assert job.params is not None
    job.tag.intent(job.params)  # fsynced before the submit: a kill after it is known


def _submitted(job: Job, generation: Generation) -> None:
    try:
        job.tag.submitted(generation.record_id, generation.seed)
    except ManifestError as error:
        raise error.with_record_id(generation.record_id) from error


@contextlib.contextmanager
def _ended(thread: threading.Thread, launches: queue.SimpleQueue[Any]) -> Iterator[None]:
    """Stop the launcher thread when the run is over."""
    try:
        yield
    finally:
        launches.put(None)
        thread.join()


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

