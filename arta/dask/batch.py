"""``arta batch --engine dask``: the driver submits, the cluster waits and fetches.

Only the driver (the ``arta batch`` process) ever submits. For each job it
writes to the manifest, each line fsynced:

1. ``{"event": "intent", "params": {..., "seed": S}}`` before the submit
   (the seed is fixed here, so a resubmit after a crash is recognisable);
2. ``{"event": "submitted", "record_id": R}`` once the service answered,
   *before* the job reaches the cluster;

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
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from arta.batch import BatchJob, Manifest, Outcome, _resumable
from arta.client import Client
from arta.dask.jobs import task_client
from arta.dask.token_store import DaskTokenStore
from arta.errors import ArtaError, InvalidInputError, RateLimitedError, SubmitOutcomeUnknown
from arta.params import GenerationParams

if TYPE_CHECKING:
    import distributed

__all__ = ["connect", "run_batch_on_dask"]

log = logging.getLogger(__name__)

#: Driver threads that submit: at most this many submits are on the wire at once.
SUBMITTERS = 8


@contextlib.contextmanager
def connect(scheduler: str, *, concurrency: int = 64) -> Iterator[distributed.Client]:
    """A Dask client of ``scheduler``: an address (``tcp://host:8786``), or ``local:N``.

    ``local:N`` starts a :class:`distributed.LocalCluster` of N worker
    processes for the duration, with threads enough for ``concurrency``
    jobs in flight (a waiting job holds a worker thread).
    """
    import distributed

    if not scheduler.startswith("local:"):
        with distributed.Client(scheduler, set_as_default=False) as client:
            yield client
        return
    count = scheduler[len("local:"):]
    if not count.isdigit() or int(count) < 1:
        raise InvalidInputError(f"--scheduler local:N needs a number N >= 1, not {scheduler!r}")
    workers = int(count)
    with distributed.LocalCluster(
            n_workers=workers, processes=True, threads_per_worker=max(4, -(-concurrency // workers)),
            dashboard_address=None, silence_logs=logging.WARNING) as cluster, \
            distributed.Client(cluster, set_as_default=False) as client:
        yield client


def _fetch_job(record_id: str, line: int, options: dict[str, Any]) -> dict[str, Any]:
    """The cluster's task: resume job ``record_id``, wait for it, fetch its images.

    Returns the image bytes (or, with ``output_on_workers``, the paths
    written), or the error that ended the job, as a value.
    """
    client = task_client(options["client_options"], token=options["token"])
    name = f"{line:04d}-{{record_id}}-{{index}}"
    try:
        generation = client.resume(record_id)
        generation.wait(options["timeout"])
        result = generation.result()
        if options["output_on_workers"] is not None:
            paths = result.save(options["output_on_workers"], name=name)
            return {"files": [str(path) for path in paths], "blurred": result.blurred}
        with tempfile.TemporaryDirectory(prefix="arta-") as folder:
            paths = result.save(folder, name=name)
            return {"images": [(path.name, path.read_bytes()) for path in paths],
                    "blurred": result.blurred}
    except ArtaError as error:
        return {"error_type": type(error).__name__, "error": str(error),
                "record_id": error.record_id or record_id}


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


class _Window:
    """Slots for jobs in flight: ``concurrency`` at first, halved on a 429, grown back by one per window.

    Submitter threads take a slot before a submit; the slot is given back
    when the job's task completes (or its submit fails).
    """

    def __init__(self, concurrency: int) -> None:
        self.ceiling = self.size = concurrency
        self.taken = self.accepted = 0
        self.paused_until = 0.0
        self._changed = threading.Condition()

    def take(self, stop: threading.Event) -> bool:
        """Wait for a free slot (and the end of any pause); False if ``stop`` is set meanwhile."""
        with self._changed:
            while not stop.is_set():
                pause = self.paused_until - time.monotonic()
                if pause <= 0 and self.taken < self.size:
                    self.taken += 1
                    return True
                self._changed.wait(pause if pause > 0 else 0.5)
            return False

    def give_back(self) -> None:
        with self._changed:
            self.taken -= 1
            self._changed.notify()

    def accept(self) -> None:
        with self._changed:
            self.accepted += 1
            if self.accepted >= self.size and self.size < self.ceiling:
                self.size, self.accepted = self.size + 1, 0
                self._changed.notify()

    def reject(self, retry_after: float | None) -> None:
        with self._changed:
            self.size, self.accepted = max(1, self.size // 2), 0
            self.paused_until = time.monotonic() + (retry_after or 1.0)


class _Batch:
    """One run on the cluster: submitter threads, the tasks, and what comes back.

    Up to :data:`SUBMITTERS` threads submit (so at most that many submits
    are on the wire if the driver dies); the calling thread takes each
    finished task or failed submit from one queue and records it, so the
    manifest's ``done`` lines and ``on_outcome`` come from one thread.
    """

    def __init__(self, dask: distributed.Client, client: Client, manifest: Manifest,
                 output: Path, options: dict[str, Any], concurrency: int,
                 on_outcome: Callable[[Outcome], None] | None) -> None:
        self.dask, self.client, self.manifest, self.output = dask, client, manifest, output
        self.options, self.on_outcome = options, on_outcome
        self.window = _Window(concurrency)
        self.running: dict[str, BatchJob] = {}  # task key -> job
        self.slotted: set[str] = set()  # task keys of jobs submitted in this run
        self.outcomes: list[Outcome] = []
        self.finished: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.stop = threading.Event()

    def launch(self, job: BatchJob, record_id: str) -> None:
        """Hand the cluster job ``record_id``: its task resumes, waits and fetches."""
        key = f"arta-{record_id}"
        self.running[key] = job
        future = self.dask.submit(_fetch_job, record_id, job.line, self.options, key=key,
                                  pure=False)
        future.add_done_callback(self.finished.put)

    def submitter(self, fresh: collections.deque[tuple[BatchJob, dict[str, Any]]]) -> None:
        """Take jobs from ``fresh`` and submit each when a slot is free, until none is left."""
        try:
            while self.window.take(self.stop):
                try:
                    job, params = fresh.popleft()
                except IndexError:
                    self.window.give_back()
                    return
                launched = self.submit(job, params)
                if launched is None:
                    fresh.appendleft((job, params))  # rate-limited: later, not failed
                if not launched:
                    self.window.give_back()
        except BaseException as error:  # noqa: BLE001 - handed to the calling thread
            self.finished.put(error)

    def submit(self, job: BatchJob, params: dict[str, Any]) -> bool | None:
        """Submit one job, its record id fsynced before the cluster sees it.

        True: its task is launched; False: the submit failed (the outcome is
        queued); None: rate-limited, to be submitted again later.
        """
        base = {"job": job.key, "line": job.line}
        settings = GenerationParams.create(**params)
        self.manifest.append({**base, "event": "intent", "params": settings.as_dict(),
                              "seed": settings.seed})
        try:
            generation = self.client.submit(**settings.as_dict())
        except RateLimitedError as error:
            self.window.reject(error.retry_after)
            return None
        except ArtaError as error:
            record = {**base, "event": "failed", "record_id": None,
                      "error_type": type(error).__name__, "error": str(error)}
            if isinstance(error, SubmitOutcomeUnknown):
                record.update(params=settings.as_dict(), seed=settings.seed)
            self.manifest.append(record)
            self.finished.put(Outcome(job.line, "failed", None,
                                      error=f"{type(error).__name__}: {error}"))
            return False
        self.window.accept()
        self.manifest.append({**base, "event": "submitted", "record_id": generation.record_id,
                              "seed": generation.seed})
        self.slotted.add(f"arta-{generation.record_id}")
        self.launch(job, generation.record_id)
        return True

    def collect(self, future: distributed.Future[Any]) -> Outcome:
        """Record one finished task: its images written, or its error."""
        job = self.running.pop(str(future.key))
        record_id = str(future.key)[len("arta-"):]
        base = {"job": job.key, "line": job.line, "record_id": record_id}
        try:
            value: dict[str, Any] = future.result()
        except Exception as error:  # noqa: BLE001 - e.g. KilledWorker: the job lives on
            value = {"error_type": type(error).__name__, "error": str(error),
                     "record_id": record_id}
        finally:
            future.release()
        if "error" in value:
            self.manifest.append({**base, **value, "event": "failed"})
            return Outcome(job.line, "failed", value["record_id"],
                           error=f"{value['error_type']}: {value['error']}")
        files = value.get("files") or [
            str(_write_into_place(self.output, name, data)) for name, data in value["images"]]
        self.manifest.append({**base, "event": "done", "files": files,
                              "blurred": value["blurred"]})
        return Outcome(job.line, "done", record_id, tuple(files), tuple(value["blurred"]))

    def run(self, resume: list[tuple[BatchJob, str]],
            fresh: list[tuple[BatchJob, dict[str, Any]]]) -> None:
        """Resume and submit every job; record each as it ends."""
        for job, record_id in resume:
            self.launch(job, record_id)
        waiting = collections.deque(fresh)
        threads = [threading.Thread(target=self.submitter, args=(waiting,), daemon=True,
                                    name=f"arta-dask-submit-{n}")
                   for n in range(min(SUBMITTERS, len(fresh)))]
        for thread in threads:
            thread.start()
        try:
            for _ in range(len(resume) + len(fresh)):
                item = self.finished.get()
                if isinstance(item, BaseException):
                    raise item
                outcome = item if isinstance(item, Outcome) else self.collect(item)
                if not isinstance(item, Outcome) and str(item.key) in self.slotted:
                    self.window.give_back()  # resumed jobs never took a slot
                self.outcomes.append(outcome)
                if self.on_outcome is not None:
                    self.on_outcome(outcome)
        finally:
            self.stop.set()
            for thread in threads:
                thread.join()


def _plan(jobs: list[BatchJob], manifest: Manifest) -> tuple[
        list[Outcome], list[tuple[BatchJob, str]], list[tuple[BatchJob, dict[str, Any]]]]:
    """Split the jobs: done already, to resume by record id, to submit (with which params)."""
    latest = manifest.latest()
    done, resume, fresh = [], [], []
    on_the_wire = 0
    for job in jobs:
        record = latest.get(job.key)
        record_id = _resumable(record)
        if record is not None and record.get("event") == "done":
            done.append(Outcome(job.line, "skipped", record.get("record_id"),
                                tuple(record.get("files", ()))))
        elif record_id is not None:
            resume.append((job, record_id))
        else:
            params = dict(job.params)
            if record is not None and record.get("event") in ("intent", "failed") \
                    and "seed" not in params and isinstance(record.get("seed"), int):
                params["seed"] = record["seed"]  # the same job again, recognisably
            on_the_wire += record is not None and record.get("event") == "intent"
            fresh.append((job, params))
    if on_the_wire:
        log.warning("%d job(s) had a submit on the wire when the last run stopped: they are "
                    "submitted again with the same seed (at most %d duplicate(s))",
                    on_the_wire, on_the_wire)
    return done, resume, fresh


def run_batch_on_dask(
    jobs: list[BatchJob],
    manifest: Manifest,
    output: str | os.PathLike[str],
    *,
    scheduler: str,
    client_options: dict[str, Any] | None = None,
    concurrency: int = 64,
    on_outcome: Callable[[Outcome], None] | None = None,
    output_on_workers: str | os.PathLike[str] | None = None,
    token: str = "cluster",
    timeout: float | None = None,
) -> list[Outcome]:
    """Run every job not yet done on a Dask cluster; return every job's outcome, by line.

    ``scheduler`` is an address (``tcp://host:8786``) or ``local:N``.
    ``client_options`` are :class:`~arta.client.Client` keywords for the
    driver and every worker (picklable: they travel). ``concurrency`` caps
    the jobs in flight (halved on a 429, grown back as submits are
    accepted); each job in flight holds one worker thread while it waits.
    ``token`` is ``"cluster"`` (one token in the scheduler, the default) or
    ``"host"`` (each host's ``auth_ARTA.json``). ``timeout`` bounds each
    job's wait on the workers. Images are written to ``output`` on this
    machine, or to ``output_on_workers`` by the workers. The manifest is the
    one :func:`arta.batch.run_batch` keeps: either engine resumes the other's.
    """
    if concurrency < 1:
        raise InvalidInputError(f"concurrency must be at least 1, not {concurrency}")
    done, resume, fresh = _plan(jobs, manifest)
    if not resume and not fresh:
        return sorted(done, key=lambda o: o.line)
    options = {"client_options": dict(client_options or {}), "token": token, "timeout": timeout,
               "output_on_workers": None if output_on_workers is None else str(output_on_workers)}
    with connect(scheduler, concurrency=concurrency) as dask:
        store = DaskTokenStore(client=dask) if token == "cluster" else None
        extra: dict[str, Any] = {"token_store": store} if store is not None else {}
        with Client(**{**dict(client_options or {}), **extra}) as client:
            batch = _Batch(dask, client, manifest, Path(output), options, concurrency, on_outcome)
            batch.run(resume, fresh)
    return sorted(done + batch.outcomes, key=lambda o: o.line)
