"""``arta batch --engine dask``: the driver submits, the cluster waits and fetches.

Only the driver (the ``arta batch`` process) ever submits, paced by the
same :class:`~arta.engine.window.AdaptiveWindow` as a single-process batch (a 429
or 503 halves it and is never a failed job). For each job it writes the
records of :class:`~arta.batch.plan.JobRecorder` to the manifest, each line
fsynced:

1. ``intent`` (the parameters, the seed fixed) before the submit, so that
   a resubmit after a crash uses the same seed;
2. ``submitted`` with the record id once the service answered, *before*
   the job reaches the cluster;

and only then hands the cluster a task keyed ``arta-<R>`` that resumes the
job by record id, waits for it and fetches its images. A task that Dask
runs again (its worker died) or recomputes (its result was lost) costs a
few polls, never a submit. If the driver dies, the manifest says which
jobs exist: the next run resumes them, and resubmits (with their recorded
seed) only the jobs whose submit was on the wire, at most one per submit
that was in flight (:data:`SUBMITTERS` at most).

Images come back to the driver as bytes, one task per job (a job's images
are a few MB at most), and are written as each task completes, so the
driver holds at most the jobs in flight. With ``output_on_workers`` the
workers write them instead (a shared filesystem). Either way each file is
written beside its final name and renamed into place: a killed writer can
leave a hidden ``.arta-*.part`` file, never a half image under its name.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import queue
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from arta.batch.jobfile import BatchJob
from arta.batch.manifest import Manifest, ManifestError
from arta.batch.plan import BatchReport, JobRecorder, Outcome, Task, plan, save_images
from arta.client import Client
from arta.dask.cluster import WORKER_CONFIG
from arta.dask.jobs import task_client
from arta.dask.token_store import DaskTokenStore
from arta.engine.window import AdaptiveWindow
from arta.errors import (
    ArtaError,
    ConnectError,
    InvalidInputError,
    ServiceError,
)
from arta.result import Result
from arta.retry import congested

if TYPE_CHECKING:
    import distributed

__all__ = ["SUBMITTERS", "connect", "run_batch_on_dask"]

log = logging.getLogger(__name__)

#: Driver threads that submit: at most this many submits are on the wire at once.
SUBMITTERS = 8

Counts = dict[str, int]


@contextlib.contextmanager
def connect(scheduler: str, *, concurrency: int = 64) -> Iterator[distributed.Client]:
    """A Dask client of ``scheduler``: an address (``tcp://host:8786``), or ``local:N``.

    ``local:N`` starts a :class:`distributed.LocalCluster` of N worker
    processes for the duration, with threads enough for ``concurrency``
    jobs in flight (a waiting job holds a worker thread).
    """
    import dask
    import distributed

    if not scheduler.startswith("local:"):
        with distributed.Client(scheduler, set_as_default=False) as client:
            yield client
        return
    count = scheduler[len("local:"):]
    if not count.isdigit() or int(count) < 1:
        raise InvalidInputError(f"--scheduler local:N needs a number N >= 1, not {scheduler!r}")
    workers = int(count)
    with _quiet("distributed"), dask.config.set(WORKER_CONFIG), distributed.LocalCluster(
            n_workers=workers, processes=True, threads_per_worker=max(4, -(-concurrency // workers)),
            dashboard_address=None, silence_logs=logging.WARNING) as cluster, \
            distributed.Client(cluster, set_as_default=False) as client:
        yield client


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Keep logger ``name`` to warnings meanwhile: a cluster of our own chats at INFO."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def _fetch_job(record_id: str, options: dict[str, Any]) -> dict[str, Any] | ArtaError:
    """The cluster's task: resume job ``record_id``, wait for it, fetch its images.

    Returns the images' names and bytes (or, with ``output_on_workers``,
    the paths written), or the error that ended the job, as a value.
    """
    client = task_client(options["client_options"], token=options["token"])
    try:
        generation = client.resume(record_id)
        generation.wait(options["timeout"])
        result = generation.result()
        if options["output_on_workers"] is not None:
            return _found(result, files=save_images(result, options["output_on_workers"]))
        with tempfile.TemporaryDirectory(prefix="arta-") as folder:
            paths = save_images(result, folder)
            return _found(result, images=[(Path(p).name, Path(p).read_bytes()) for p in paths])
    except ArtaError as error:
        return error.with_record_id(record_id)


def _found(result: Result, **fields: Any) -> dict[str, Any]:
    return {"seed": result.seed, "blurred": result.blurred, **fields}


def _write_into_place(folder: Path, name: str, data: bytes) -> Path:
    """Write ``data`` as ``folder/name``: a hidden temp file, fsynced, renamed into place."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=folder, prefix=".arta-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, folder / name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return folder / name


class _Batch:
    """One run on the cluster: submitter threads, the tasks, and what comes back.

    Up to :data:`SUBMITTERS` threads submit (so at most that many submits
    are on the wire if the driver dies); the calling thread takes each
    finished task or failed submit from one queue and records it, so
    ``on_outcome`` is called from one thread.
    """

    def __init__(self, dask: distributed.Client, client: Client, manifest: Manifest,
                 output: Path, options: dict[str, Any], concurrency: int) -> None:
        self.dask, self.client, self.manifest, self.output = dask, client, manifest, output
        self.options = options
        self.window = AdaptiveWindow(concurrency)
        self.recorders: dict[str, JobRecorder] = {}  # task key -> its job's recorder
        self.slotted: set[str] = set()  # task keys of jobs submitted in this run
        self.finished: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.stop = threading.Event()
        self.counts = {"queued": 0, "in_flight": 0, "done": 0, "failed": 0}
        self._lock = threading.Lock()

    def _count(self, moves: dict[str, int]) -> None:
        with self._lock:
            for name, step in moves.items():
                self.counts[name] += step

    def launch(self, recorder: JobRecorder, record_id: str) -> None:
        """Hand the cluster job ``record_id``: its task resumes, waits and fetches."""
        key = f"arta-{record_id}"
        self.recorders[key] = recorder
        future = self.dask.submit(_fetch_job, record_id, self.options, key=key, pure=False)
        future.add_done_callback(self.finished.put)

    def submitter(self, waiting: collections.deque[Task]) -> None:
        """Submit the tasks in ``waiting`` as the window allows, until none is left."""
        failures: dict[int, int] = {}
        try:
            while not self.stop.is_set():
                ticket = self.window.acquire()
                if ticket is None:
                    self.stop.wait(min(self.window.wait_time(), 0.02))
                    continue
                try:
                    task = waiting.popleft()
                except IndexError:
                    self.window.release()
                    return
                delay = self.submit(task, ticket, failures)
                if delay is not None:  # not sent: back in line, later
                    waiting.appendleft(task)
                    self.stop.wait(delay)
        except BaseException as error:  # noqa: BLE001 - handed to the calling thread
            self.finished.put(error)

    def submit(self, task: Task, ticket: int, failures: dict[int, int]) -> float | None:
        """Submit one job, its record id fsynced before the cluster sees it.

        Returns None once the job is launched or its submit failed for good,
        else the seconds to wait before trying it again (429/503, no connection).
        """
        recorder = JobRecorder(self.manifest, task)
        params = task.params()
        recorder.intent(params)
        try:
            generation = self.client.submit_params(params, retry=False)
        except ServiceError as error:
            if not congested(error):
                self._failed(recorder, error, params.seed)
                return None
            # congestion: never a failure; back in line after the window's pause
            return self.window.rejected(ticket, error, self.client.retry_policy)
        except ConnectError as error:
            failures[task.job.line] = attempt = failures.get(task.job.line, 0) + 1
            if attempt >= self.client.retry_policy.attempts:
                self._failed(recorder, error, params.seed)
                return None
            self.window.release()
            return self.client.retry_policy.delay(error, attempt)
        except ArtaError as error:  # SubmitOutcomeUnknown, a refused token, ...
            self._failed(recorder, error, params.seed)
            return None
        self.window.accepted()
        try:
            recorder.submitted(generation.record_id, generation.seed)
        except ManifestError as error:
            raise error.with_record_id(generation.record_id) from error
        self.slotted.add(f"arta-{generation.record_id}")
        self._count({"queued": -1, "in_flight": 1})
        self.launch(recorder, generation.record_id)
        return None

    def _failed(self, recorder: JobRecorder, error: ArtaError, seed: int) -> None:
        self.window.release()
        self._count({"queued": -1, "in_flight": 1})
        self.finished.put(recorder.failed(error, None, seed))

    def collect(self, future: distributed.Future[Any]) -> Outcome:
        """Record one finished task: its images written, or its error."""
        key = str(future.key)
        recorder, record_id = self.recorders.pop(key), key[len("arta-"):]
        if key in self.slotted:
            self.window.release()  # resumed jobs never took a slot
        try:
            value = future.result()
        except Exception as error:  # noqa: BLE001 - e.g. KilledWorker: the job lives on
            value = ArtaError(f"{type(error).__name__}: {error}", record_id=record_id)
        finally:
            future.release()
        seed = recorder.task.seed
        if isinstance(value, ArtaError):
            return recorder.failed(value, value.record_id or record_id, seed)
        try:
            files = value.get("files") or [str(_write_into_place(self.output, name, data))
                                           for name, data in value["images"]]
        except OSError as error:
            return recorder.failed(ArtaError(f"the images could not be written in "
                                             f"{self.output}: {error}", record_id=record_id),
                                   record_id, value["seed"])
        return recorder.done(record_id, value["seed"], files, value["blurred"])

    def run(self, tasks: list[Task], on_outcome: Callable[[Outcome], None],
            on_counts: Callable[[Counts], None]) -> None:
        """Resume and submit every task; record each job as it ends."""
        fresh = collections.deque(task for task in tasks if task.record_id is None)
        self.counts["queued"] = len(fresh)
        for task in tasks:
            if task.record_id is not None:
                self.counts["in_flight"] += 1
                self.launch(JobRecorder(self.manifest, task), task.record_id)
        threads = [threading.Thread(target=self.submitter, args=(fresh,), daemon=True,
                                    name=f"arta-dask-submit-{n}")
                   for n in range(min(SUBMITTERS, len(fresh)))]
        for thread in threads:
            thread.start()
        try:
            for _ in tasks:
                item = self.finished.get()
                if isinstance(item, BaseException):
                    raise item
                outcome = item if isinstance(item, Outcome) else self.collect(item)
                self._count({"in_flight": -1, "done" if outcome.event == "done" else "failed": 1})
                on_outcome(outcome)
                on_counts(dict(self.counts))
        finally:
            self.stop.set()
            for thread in threads:
                thread.join()


def run_batch_on_dask(
    jobs: list[BatchJob],
    manifest: Manifest,
    output: str | os.PathLike[str],
    *,
    scheduler: str,
    client_options: dict[str, Any] | None = None,
    concurrency: int = 64,
    on_outcome: Callable[[Outcome], None] | None = None,
    on_plan: Callable[[list[Outcome], list[Task]], object] | None = None,
    on_counts: Callable[[Counts], None] | None = None,
    output_on_workers: str | os.PathLike[str] | None = None,
    token: str = "cluster",
    timeout: float | None = None,
) -> BatchReport:
    """Run every job not yet done on a Dask cluster; report every job's outcome, by line.

    The counterpart of :func:`arta.batch.run_batch` (same manifest, same
    plan, same callbacks; the caller holds the manifest's
    :class:`~arta.batch.manifest.RunLock`). ``scheduler`` is an address
    (``tcp://host:8786``) or ``local:N``. ``client_options`` are
    :class:`~arta.client.Client` keywords for the driver and every worker
    (picklable: they travel). ``concurrency`` caps the jobs in flight (the
    adaptive window's limit); each job in flight holds one worker thread
    while it waits. ``token`` is ``"cluster"`` (one token in the scheduler,
    the default) or ``"host"`` (each host's ``auth_ARTA.json``).
    ``timeout`` bounds each job's wait on the workers. Images are written
    to ``output`` on this machine, or to ``output_on_workers`` by the workers.
    """
    if concurrency < 1:
        raise InvalidInputError(f"concurrency must be at least 1, not {concurrency}")
    skipped, tasks = plan(jobs, manifest.states())
    if on_plan is not None:
        on_plan(skipped, tasks)
    report = BatchReport(list(skipped), sum(task.possibly_resubmitted for task in tasks))
    if tasks:
        options = {"client_options": dict(client_options or {}), "token": token,
                   "timeout": timeout, "output_on_workers":
                   None if output_on_workers is None else str(output_on_workers)}
        with connect(scheduler, concurrency=concurrency) as dask:
            store = DaskTokenStore(client=dask) if token == "cluster" else None
            extra: dict[str, Any] = {"token_store": store} if store is not None else {}
            with Client(**{**dict(client_options or {}), **extra}) as client:
                batch = _Batch(dask, client, manifest, Path(output), options, concurrency)
                def record(outcome: Outcome) -> None:
                    report.outcomes.append(outcome)
                    if on_outcome is not None:
                        on_outcome(outcome)

                batch.run(tasks, record, on_counts or (lambda counts: None))
    report.outcomes.sort(key=lambda o: o.line)
    return report
