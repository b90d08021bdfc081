"""Many jobs at once: submits paced by the client's adaptive window, waits in its poll loop.

:class:`JobRun` is the engine under :meth:`arta.Client.map` and ``arta
batch``; nothing in it sleeps or holds a thread per job. A 429 or 503 on a
submit is no failed job (the window halves and pauses); any other failure
is an :class:`Outcome` with ``error`` set, and the record id once there is one.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Callable

from arta.engine.window import AdaptiveWindow
from arta.errors import (
    ArtaError,
    ConnectError,
    GenerationCancelled,
    GenerationTimeout,
    InvalidInputError,
    ServiceError,
)
from arta.generation import Generation, PollPlanner, Session, wait_bound
from arta.params import GenerationParams
from arta.progress import ProgressDisplay
from arta.result import Result
from arta.retry import congested

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Job", "JobRun", "Outcome", "as_completed", "map_outcomes"]


@dataclasses.dataclass(frozen=True)
class Job:
    """One unit of work: submit ``params`` (seed fixed), or resume ``record_id`` instead.

    ``tag`` is the caller's, handed back in the :class:`Outcome`. A job with
    ``error`` set failed before anything could be sent (a bad item of
    :meth:`arta.Client.map`): its outcome is that error, and no request is made.
    """

    params: GenerationParams | None = None
    record_id: str | None = None
    tag: Any = None
    error: ArtaError | None = None

    def __post_init__(self) -> None:
        if self.params is None and not self.record_id and self.error is None:
            raise InvalidInputError("a Job needs params to submit or a record_id to resume")


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How one job ended: a :class:`~arta.result.Result`, or the error that ended it."""

    job: Job
    generation: Generation | None = None
    result: Result | None = None
    error: ArtaError | None = None

    @property
    def ok(self) -> bool:
        """True if the job is DONE and its result is here."""
        return self.result is not None

    @property
    def record_id(self) -> str | None:
        """The job's id at the service (None if it was never submitted, or its fate is unknown)."""
        if self.generation is not None:
            return self.generation.record_id
        return getattr(self.error, "record_id", None) or self.job.record_id

    @property
    def params(self) -> GenerationParams | None:
        """What was (or was to be) submitted."""
        if self.job.params is not None:
            return self.job.params
        return self.generation.params if self.generation is not None else None

    @property
    def index(self) -> Any:
        """The item's position, for outcomes of :meth:`arta.Client.map` (the job's tag)."""
        return self.job.tag

    def unwrap(self) -> Result:
        """The result, or raise the error."""
        if self.result is None:
            raise self.error or ArtaError("the job has no result", record_id=self.record_id)
        return self.result


class JobRun:
    """A run of many jobs; iterate it for each :class:`Outcome` as it comes.

    ``counts`` says how many jobs are queued, in flight, done and failed;
    ``close()`` stops submitting (jobs already submitted keep their record
    ids and are no longer waited for).
    """

    def __init__(self, client: Session, window: AdaptiveWindow, jobs: Iterable[Job], *,
                 concurrency: int,
                 timeout: float | None, poll_policy: PollPlanner | None,
                 on_submitting: Callable[[Job], object] | None,
                 on_submitted: Callable[[Job, Generation], object] | None) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidInputError(f"concurrency must be an int of at least 1, not {concurrency!r}")
        self.concurrency = concurrency
        self._client = client
        self._window = window
        self._jobs = iter(jobs)
        self._timeout = wait_bound(timeout, client, poll_policy)  # refusals end by it too
        self._policy = poll_policy
        self._on_submitting = on_submitting
        self._on_submitted = on_submitted
        self._ready: collections.deque[Job] = collections.deque()  # taken back, to go first
        self._outcomes: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self._lock = threading.RLock()
        self._waits: set[Any] = set()
        self._connect_failures: dict[int, int] = {}
        self._refused_since: float | None = None  # since when every submit was refused
        self._running = 0  # this run's jobs between their slot and their outcome
        self._owed = 0  # jobs taken in and not yet handed out
        self._exhausted = False
        self._closed = False
        self.counts = {"queued": 0, "in_flight": 0, "done": 0, "failed": 0}
        self._window.limit = concurrency  # the window never grows past what was asked
        self._pump()

    def __iter__(self) -> Iterator[Outcome]:
        return self

    def __next__(self) -> Outcome:
        with self._lock:
            done = self._owed == 0 and self._exhausted
        if done or self._closed:
            try:  # after close(): what had ended by then, and no more
                outcome = self._outcomes.get_nowait() if self._closed else None
            except queue.Empty:
                outcome = None
            if outcome is None:
                raise StopIteration
        else:
            outcome = self._outcomes.get()
        with self._lock:
            self._owed -= 1
        return outcome

    def close(self) -> None:
        """Stop submitting and stop waiting; already submitted jobs keep their record ids."""
        with self._lock:
            self._closed = True
            waits, self._waits = list(self._waits), set()
        for wait in waits:
            wait.cancel("the run was closed while waiting for the job")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _next_job(self) -> Job | None:
        if self._ready:
            return self._ready.popleft()
        if self._exhausted:
            return None
        while True:
            try:
                job = next(self._jobs)
            except StopIteration:
                self._exhausted = True
                return None
            self._owed += 1
            if job.error is None:
                self.counts["queued"] += 1
                return job
            self._finish(Outcome(job, error=job.error), counted=False)

    def _pump(self) -> None:
        """Start as many jobs as this run's concurrency and the client's window allow."""
        window = self._window
        with self._lock:
            while not self._closed and self._running < self.concurrency:
                job = self._next_job()
                if job is None:
                    break
                ticket = window.acquire()
                if ticket is None:
                    self._ready.appendleft(job)
                    # A full window is reopened by a job's end; a paused one by the clock.
                    pause = window.wait_time()
                    if pause != float("inf"):
                        self._client.loop.call_at(time.monotonic() + pause, self._pump)
                    break
                self._running += 1
                self.counts["queued"] -= 1
                self.counts["in_flight"] += 1
                self._client.loop.run_io(functools.partial(self._start, job, ticket))

    def _start(self, job: Job, ticket: int) -> None:
        """On an I/O thread: submit (or resume) one job and put it in the poll loop."""
        client = self._client
        try:
            if job.record_id is not None:
                generation = Generation(job.record_id, params=job.params, session=client)
            else:
                submitted = self._submit(job, ticket)
                if submitted is None:
                    return  # taken back, to be submitted again
                generation = submitted
                if self._on_submitted is not None:
                    _call_hook(self._on_submitted, job, generation, generation.record_id)
        except ArtaError as error:
            self._window.release()
            self._finish(Outcome(job, error=error))
            return
        with self._lock:
            if self._closed:
                self._window.release()
                self._finish(Outcome(job, generation, error=GenerationCancelled(
                    "the run was closed before the job was waited for",
                    record_id=generation.record_id)))
                return
            wait = generation.watch(self._timeout, self._policy)
            self._waits.add(wait)
        wait.future.add_done_callback(lambda done: self._ended(job, generation, wait, done))

    def _submit(self, job: Job, ticket: int) -> Generation | None:
        assert job.params is not None
        if self._on_submitting is not None:
            _call_hook(self._on_submitting, job, None, None)
        window = self._window
        try:
            generation = self._client.submit_params(job.params, retry=False)
        except ServiceError as error:
            if not congested(error):
                raise
            # Congestion is no failed job: back in line after the window's pause,
            # unless every submit has been refused for longer than the timeout.
            pause = window.rejected(ticket, error, self._client.retry_policy)
            now = time.monotonic()
            since = self._refused_since = self._refused_since or now
            if self._timeout is not None and now + pause - since > self._timeout:
                self._finish(Outcome(job, error=error))  # its slot went back with the rejection
                self._give_up_queued(error)
                return None
            self._take_back(job, pause)
            return None
        except ConnectError as error:
            failures = self._connect_failures.get(id(job), 0) + 1
            self._connect_failures[id(job)] = failures
            policy = self._client.retry_policy
            if failures >= policy.attempts:
                raise
            window.release()
            self._take_back(job, policy.delay(error, failures))
            return None
        window.accepted()
        self._refused_since = None
        self._pump()  # a grown window has room now: slow start must not wait for a job's end
        return generation

    def _give_up_queued(self, error: ArtaError) -> None:
        """End every job not yet submitted with ``error`` (nothing of theirs was sent)."""
        with self._lock:
            while (job := self._next_job()) is not None:
                self.counts["queued"] -= 1
                self._finish(Outcome(job, error=error), counted=False)

    def _take_back(self, job: Job, delay: float) -> None:
        """Put ``job`` back at the head of the line, to be sent again after ``delay``."""
        with self._lock:
            self._running -= 1
            self.counts["in_flight"] -= 1
            self.counts["queued"] += 1
            self._ready.appendleft(job)
        if delay > 0:
            self._client.loop.call_at(time.monotonic() + delay, self._pump)
        else:
            self._pump()

    def _ended(self, job: Job, generation: Generation, wait: Any,
               done: concurrent.futures.Future[Generation]) -> None:
        self._window.release()
        with self._lock:
            self._waits.discard(wait)
        error = done.exception()
        if error is None:
            try:
                self._finish(Outcome(job, generation, result=generation.ended_result()))
            except ArtaError as failed:
                self._finish(Outcome(job, generation, error=failed))
        elif isinstance(error, ArtaError):
            self._finish(Outcome(job, generation, error=error))
        else:
            self._finish(Outcome(job, generation, error=ArtaError(
                f"internal error while waiting: {error!r}", record_id=generation.record_id)))

    def _finish(self, outcome: Outcome, counted: bool = True) -> None:
        with self._lock:
            if counted:
                self._running -= 1
                self.counts["in_flight"] -= 1
            self.counts["done" if outcome.ok else "failed"] += 1
        self._outcomes.put(outcome)
        if counted:
            self._pump()


def _call_hook(hook: Callable[..., object], job: Job, generation: Generation | None,
               record_id: str | None) -> None:
    """Call a caller's hook; its failure fails the job (with its record id, once there is one)."""
    try:
        if generation is None:
            hook(job)
        else:
            hook(job, generation)
    except ArtaError:
        raise
    except Exception as error:
        raise ArtaError(f"{type(error).__name__} in {getattr(hook, '__name__', 'a hook')}: "
                        f"{error}", record_id=record_id) from error


def _as_params(item: str | Mapping[str, Any] | GenerationParams,
               defaults: Mapping[str, Any]) -> GenerationParams:
    if isinstance(item, GenerationParams):
        return item
    if isinstance(item, str):
        return GenerationParams.create(item, **defaults)
    if isinstance(item, Mapping) and "prompt" in item:
        fields = {**defaults, **item}
        return GenerationParams.create(fields.pop("prompt"), **fields)
    raise InvalidInputError(
        f"an item must be a prompt, a dict with a 'prompt', or GenerationParams, not {item!r}")


def map_outcomes(client: Session, window: AdaptiveWindow,
                 items: Iterable[str | Mapping[str, Any] | GenerationParams],
                 *, concurrency: int, ordered: bool, timeout: float | None,
                 poll_policy: PollPlanner | None, defaults: Mapping[str, Any],
                 progress: ProgressDisplay | None = None) -> Iterator[Outcome]:
    """The body of :meth:`arta.Client.map`: each item a job, tagged with its index."""

    def jobs() -> Iterator[Job]:
        for index, item in enumerate(items):
            try:
                yield Job(_as_params(item, defaults), tag=index)
            except (InvalidInputError, TypeError) as error:  # no request for this one
                failed = error if isinstance(error, ArtaError) else InvalidInputError(str(error))
                yield Job(tag=index, error=failed)

    run = JobRun(client, window, jobs(), concurrency=concurrency, timeout=timeout,
                 poll_policy=poll_policy, on_submitting=None, on_submitted=None)
    try:
        with progress if progress is not None else contextlib.nullcontext():
            yield from _in_order(run, progress) if ordered else _shown(run, progress)
    finally:
        run.close()


def _shown(run: JobRun, progress: ProgressDisplay | None) -> Iterator[Outcome]:
    for outcome in run:
        if progress is not None:
            progress.update(**run.counts)
        yield outcome


def _in_order(run: JobRun, progress: ProgressDisplay | None) -> Iterator[Outcome]:
    buffered: dict[int, Outcome] = {}
    expected = 0
    for outcome in _shown(run, progress):
        buffered[outcome.job.tag] = outcome
        while expected in buffered:
            yield buffered.pop(expected)
            expected += 1


def as_completed(generations: Iterable[Generation],
                 timeout: float | None = None) -> Iterator[Generation]:
    """Yield each generation as its wait ends, as :func:`concurrent.futures.as_completed` does.

    Every wait runs in its client's poll loop (:meth:`Generation.future`).
    Call ``result()`` on what is yielded: the images, or the error that
    ended the job or its wait (carrying the record id). Past ``timeout``
    seconds, :class:`~arta.errors.GenerationTimeout` names the jobs still
    running; they go on at the service, and their waits end.
    """
    by_future = {generation.future(): generation for generation in generations}
    try:
        for future in concurrent.futures.as_completed(by_future, timeout=timeout):
            yield by_future[future]
    except concurrent.futures.TimeoutError:
        pending = [g.record_id for f, g in by_future.items() if not f.done()]
        for future in by_future:
            future.cancel()  # nobody waits for them any more: their polls stop
        raise GenerationTimeout(
            f"{len(pending)} of {len(by_future)} jobs still running after {timeout:g}s: "
            + ", ".join(pending)) from None
