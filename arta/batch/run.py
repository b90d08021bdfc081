"""``arta batch``: thousands of jobs in flight from one process, nothing lost, nothing paid twice unknowingly.

The jobs run on the client's engine (:meth:`arta.Client.run`): ``concurrency``
jobs in flight, a waiting job costing a heap entry in the poll loop, not a
thread. The images of each finished job are saved on the client's I/O
threads, beside the polls: no threads of the batch's own. With ``workers`` > 1, that many processes split the
jobs and the concurrency between them (one shared token file: one sign-up).

The batch's memory is its :class:`~arta.batch.manifest.Manifest`. Before each
submit an ``intent`` (the parameters and the seed) is fsynced; the record id
is written the moment the service answers, before any poll; the end of the
job (``done`` with its files, or ``failed`` with the error and the record
id) after the images are saved. A batch killed at any point and run again
resumes:

- finished jobs are skipped;
- jobs with a record id are picked up by it (never submitted twice);
- a job with an intent and no record id was perhaps taken by the service
  just before the kill: it is submitted again with the same seed, and
  counted as *possibly resubmitted*;
- jobs the service FAILED, and the rest, are submitted.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import multiprocessing.connection
import os
import queue
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Callable

from arta.batch.jobfile import BatchJob
from arta.batch.manifest import Manifest, ManifestError
from arta.batch.plan import (
    BatchReport,
    JobRecorder,
    JobReport,
    Task,
    plan,
    save_images,
)
from arta.client import Client
from arta.engine.jobs import Job, Outcome
from arta.engine.run import JobRun
from arta.errors import ArtaError, SubmitOutcomeUnknown
from arta.generation import Generation
from arta.progress import ProgressDisplay, progress_display
from arta.result import Result

if TYPE_CHECKING:  # typing.Self is 3.11+; only the type checker needs it
    from typing_extensions import Self

__all__ = ["BatchBook", "run_batch", "running"]

log = logging.getLogger(__name__)

Counts = dict[str, int]

#: A worker's exit status when its driver died under it.
EXIT_ORPHANED = 70


class _Share:
    """One process's share of a batch: its tasks through ``client.run``, saves on its I/O threads."""

    def __init__(self, client: Client, manifest: Manifest, output: str | os.PathLike[str],
                 tasks: Sequence[Task], concurrency: int, emit: Callable[[JobReport], None],
                 on_counts: Callable[[Counts], None]) -> None:
        self.client, self.manifest, self.output = client, manifest, output
        self.tasks, self.concurrency = tasks, concurrency
        self._emit, self._on_counts = emit, on_counts
        self._lock = threading.Lock()
        self._ended = {"done": 0, "failed": 0}
        self._saving = 0
        self._run: JobRun | None = None

    def run(self) -> None:
        """Run every task; each outcome is emitted once its images are saved (or it failed)."""
        jobs = (Job(None if task.record_id else task.params(), task.record_id,
                    tag=JobRecorder(self.manifest, task)) for task in self.tasks)
        self._run = run = self.client.run(jobs, concurrency=self.concurrency,
                                          on_submitting=self._submitting,
                                          on_submitted=self._submitted)
        # Saving is downloading: it runs on the client's I/O threads, beside the
        # polls, not on threads of its own.
        saves: list[concurrent.futures.Future[None]] = []
        try:
            for outcome in run:
                if outcome.result is not None:
                    with self._lock:
                        self._saving += 1
                    saves.append(self.client.loop.call_io(self._save, outcome.job.tag,
                                                          outcome.result))
                else:
                    self._end(self._failed(outcome))
        except BaseException:
            run.close()
            for save in saves:
                save.cancel()
            concurrent.futures.wait(saves)
            raise
        concurrent.futures.wait(saves)
        self._counts()

    def counts(self) -> Counts:
        """Queued, in flight (saving included), done and failed, in this share."""
        run = self._run
        with self._lock:
            done, failed, saving = self._ended["done"], self._ended["failed"], self._saving
        in_flight = (run.counts["in_flight"] if run is not None else 0) + saving
        queued = max(0, len(self.tasks) - in_flight - done - failed)
        return {"queued": queued, "in_flight": in_flight, "done": done, "failed": failed}

    def _submitting(self, job: Job) -> None:
        assert job.params is not None
        job.tag.intent(job.params)  # fsynced before the submit: a kill after it is known
        self._counts()

    def _submitted(self, job: Job, generation: Generation) -> None:
        try:
            job.tag.submitted(generation.record_id, generation.seed)
        except ManifestError as error:
            raise error.with_record_id(generation.record_id) from error

    def _save(self, recorder: JobRecorder, result: Result) -> None:
        try:
            files = save_images(result, self.output)
            outcome = recorder.done(result.record_id, result.seed, files, result.blurred)
        except ArtaError as error:
            outcome = recorder.failed(error, result.record_id, result.seed)
        except Exception as error:  # noqa: BLE001 - a bug must not lose a paid job's outcome
            outcome = recorder.failed(ArtaError(f"{type(error).__name__}: {error}",
                                                record_id=result.record_id),
                                      result.record_id, result.seed)
        with self._lock:
            self._saving -= 1
        self._end(outcome)

    def _failed(self, outcome: Outcome) -> JobReport:
        recorder: JobRecorder = outcome.job.tag
        error = outcome.error or ArtaError("the job ended without a result")
        seed = outcome.job.params.seed if outcome.job.params is not None else recorder.task.seed
        record_id = None if isinstance(error, SubmitOutcomeUnknown) else outcome.record_id
        return recorder.failed(error, record_id, seed)

    def _end(self, outcome: JobReport) -> None:
        with self._lock:
            self._ended["done" if outcome.event == "done" else "failed"] += 1
            self._emit(outcome)
        if outcome.manifest_error and self._run is not None:
            self._run.close()  # no record can be kept: stop submitting
        self._counts()

    def _counts(self) -> None:
        self._on_counts(self.counts())


def run_batch(
    jobs: list[BatchJob],
    manifest: Manifest,
    output: str | os.PathLike[str],
    *,
    client: Client | None = None,
    client_options: dict[str, Any] | None = None,
    concurrency: int = 64,
    workers: int = 1,
    on_outcome: Callable[[JobReport], None] | None = None,
    on_plan: Callable[[list[JobReport], list[Task]], object] | None = None,
    on_counts: Callable[[Counts], None] | None = None,
    progress: bool | ProgressDisplay = False,
) -> BatchReport:
    """Run every job not yet done, ``concurrency`` in flight; report every job's outcome.

    With ``workers`` == 1 the jobs run in this process on ``client`` (else
    one made from ``client_options``); with more, each worker process makes
    its client from ``client_options`` and runs its share of the jobs and of
    the concurrency. ``on_plan`` is called once before any request with the
    jobs an earlier run finished and the tasks of this run, ``on_outcome``
    in this process as each job ends, ``on_counts`` with the whole batch's
    counts (queued, in flight, done, failed) as they change. ``progress``
    shows them on stderr (``True``: see :func:`arta.progress.progress_display`;
    jobs an earlier run finished count as done, not in the rate). The
    caller holds the manifest's :class:`~arta.batch.manifest.RunLock`.
    """
    with BatchBook(jobs, manifest, on_outcome=on_outcome, on_plan=on_plan,
                   on_counts=on_counts, progress=progress) as book:
        tasks = book.tasks
        if tasks and (workers <= 1 or len(tasks) == 1):
            owned = client is None
            client = client or Client(**(client_options or {}))
            try:
                _Share(client, manifest, output, tasks, concurrency, book.emit, book.counts).run()
            finally:
                if owned:
                    client.close()
        elif tasks:
            _run_processes(tasks, manifest, output, min(workers, len(tasks)), concurrency,
                           client_options or {}, book.emit, book.counts)
    return book.report


class BatchBook:
    """What every engine of a batch keeps alike: the plan, the report, the callbacks, the progress.

    Entered, it plans the jobs (``tasks`` are this run's; the rest are
    reported done at once) and shows the progress; :meth:`emit` and
    :meth:`counts` take what the engine says; at the end the report is in
    line order. ``run_batch`` and the Dask driver both keep one.
    """

    def __init__(self, jobs: list[BatchJob], manifest: Manifest, *,
                 on_outcome: Callable[[JobReport], None] | None,
                 on_plan: Callable[[list[JobReport], list[Task]], object] | None,
                 on_counts: Callable[[Counts], None] | None,
                 progress: bool | ProgressDisplay) -> None:
        self._jobs, self._manifest = jobs, manifest
        self._on_outcome, self._on_plan, self._on_counts = on_outcome, on_plan, on_counts
        self._display = progress_display(progress, len(jobs), label="batch")
        self._skipped = 0
        self.tasks: list[Task] = []
        self.report = BatchReport([])

    def __enter__(self) -> Self:
        if self._display is not None:
            self._display.__enter__()
        skipped, self.tasks = plan(self._jobs, self._manifest.states())
        if self._on_plan is not None:
            self._on_plan(skipped, self.tasks)
        self._skipped = len(skipped)
        if self._display is not None:
            self._display.resumed(self._skipped)
        self.report = BatchReport(list(skipped),
                                  sum(task.possibly_resubmitted for task in self.tasks))
        return self

    def emit(self, outcome: JobReport) -> None:
        """One job of this run ended."""
        self.report.outcomes.append(outcome)
        if self._on_outcome is not None:
            self._on_outcome(outcome)

    def counts(self, now: Counts) -> None:
        """This run's counts changed (an earlier run's jobs are added to ``done`` for the display)."""
        if self._on_counts is not None:
            self._on_counts(now)
        if self._display is not None:
            self._display.update(done=self._skipped + now["done"], in_flight=now["in_flight"],
                                 queued=now["queued"], failed=now["failed"])

    def __exit__(self, *exc_info: object) -> None:
        self.report.outcomes.sort(key=lambda o: o.line)
        if self._display is not None:
            self._display.__exit__(*exc_info)


# -- several processes -------------------------------------------------------


def _run_processes(tasks: list[Task], manifest: Manifest, output: str | os.PathLike[str],
                   workers: int, concurrency: int, client_options: dict[str, Any],
                   emit: Callable[[JobReport], None], on_counts: Callable[[Counts], None]) -> None:
    """Split the tasks and the concurrency over ``workers`` processes; relay what they say."""
    # spawn, not fork: a forked child would inherit this process's threads and sockets.
    context = multiprocessing.get_context("spawn")
    channel: Any = context.Queue()
    shares = [(tasks[i::workers], max(1, concurrency // workers + (i < concurrency % workers)))
              for i in range(workers)]
    processes = [context.Process(target=_worker, name=f"arta-batch-{i}", daemon=True,
                                 args=(i, share, client_options, str(manifest.path), str(output),
                                       share_concurrency, channel))
                 for i, (share, share_concurrency) in enumerate(shares)]
    for process in processes:
        process.start()
    counts: dict[int, Counts] = {}
    running = set(range(workers))
    try:
        while running:
            try:
                kind, index, value = channel.get(timeout=0.5)
            except queue.Empty:
                dead = {i for i in running if processes[i].exitcode is not None}
                for i in dead:
                    log.error("batch worker %d ended (exit code %s) before its jobs; run the "
                              "batch again to finish them", i, processes[i].exitcode)
                running -= dead
                continue
            if kind == "outcome":
                emit(value)
            elif kind == "counts":
                counts[index] = value
                on_counts({key: sum(c[key] for c in counts.values()) for key in value})
            else:
                running.discard(index)
    finally:
        for process in processes:
            process.join(timeout=None if not running else 0)
            if process.is_alive():
                process.terminate()
        channel.close()


def _die_with_driver() -> None:
    """End this worker process the moment its driver dies, however it died (``kill -9`` too).

    An orphan would go on submitting beside the next run, which takes the
    run lock the dead driver held: jobs paid twice. The worker stops as
    abruptly as a killed process; the manifest is made for that (every
    line fsynced; an intent without its record id is flagged on the next run).
    """
    driver = multiprocessing.parent_process()
    if driver is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([driver.sentinel])  # ready when the driver is gone
        os._exit(EXIT_ORPHANED)

    threading.Thread(target=watch, name="arta-batch-driver-watch", daemon=True).start()


def _worker(index: int, tasks: list[Task], client_options: dict[str, Any], manifest: str,
            output: str, concurrency: int, channel: Any) -> None:
    """A worker process: its share of the batch, reported on ``channel``; it dies with its driver."""
    _die_with_driver()
    try:
        with Client(**client_options) as client:
            _Share(client, Manifest(manifest), output, tasks, concurrency,
                   emit=lambda outcome: channel.put(("outcome", index, outcome)),
                   on_counts=lambda counts: channel.put(("counts", index, counts))).run()
    except KeyboardInterrupt:  # Ctrl-C reached the whole group: the parent tells the user
        return
    channel.put(("end", index, None))


def running(manifest: Manifest, jobs: list[BatchJob]) -> Iterator[tuple[int, str]]:
    """(line, record id) of every job submitted and not finished: what a resume picks up."""
    states = manifest.states()
    for job in jobs:
        state = states.get(job.key)
        if state is not None and state.record_id is not None and state.event == "submitted":
            yield job.line, state.record_id
