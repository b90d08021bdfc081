"""Many jobs at once: submits paced by the client's adaptive window, waits in its poll loop.

:class:`JobRun` is the engine under :meth:`arta.Client.map` and ``arta
batch``; nothing in it sleeps or holds a thread per job. A 429 or 503 on a
submit is no failed job (the window halves and pauses); any other failure
is an :class:`Outcome` with ``error`` set, and the record id once there is one.
A ``hand_off`` takes each submitted job in place of the wait here (the Dask driver).
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import logging
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Callable

from arta.engine.jobs import Job, Outcome
from arta.engine.window import AdaptiveWindow
from arta.errors import (
    ArtaError,
    ConnectError,
    GenerationCancelled,
    InvalidInputError,
    RunInterrupted,
    ServiceError,
)
from arta.generation import Generation, PollPlanner, Session, wait_bound
from arta.retry import congested

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["JobRun"]

log = logging.getLogger(__name__)


class JobRun:
    """A run of many jobs; iterate it for each :class:`Outcome` as it comes.

    ``counts`` says how many jobs are queued, in flight, done and failed;
    ``close()`` stops submitting (jobs already submitted keep their record
    ids and are no longer waited for). The run also closes with its client.

    The input is read only on the thread that iterates the run (and the one
    that made it), never on the loop's threads: if it raises, the jobs taken
    before end as usual and then the iteration raises that error. Ctrl-C
    while iterating raises :class:`~arta.errors.RunInterrupted` with the
    outcomes not yet handed out, record ids included.
    """

    def __init__(self, client: Session, window: AdaptiveWindow, jobs: Iterable[Job], *,
                 concurrency: int,
                 timeout: float | None, poll_policy: PollPlanner | None,
                 on_submitting: Callable[[Job], object] | None,
                 on_submitted: Callable[[Job, Generation], object] | None,
                 hand_off: Callable[[Job, Generation], concurrent.futures.Future[Any]] | None = None,
                 ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidInputError(f"concurrency must be an int of at least 1, not {concurrency!r}")
        self.concurrency = concurrency
        self._client = client
        self._loop = client.loop  # a closed client refuses here, before anything is read
        self._window = window
        self._jobs = iter(jobs)
        self._timeout = wait_bound(timeout, client, poll_policy)  # refusals end by it too
        self._policy = poll_policy
        self._on_submitting = on_submitting
        self._on_submitted = on_submitted
        self._hand_off = hand_off  # its future ends the job's outcome, in place of a wait
        self._ready: collections.deque[Job] = collections.deque()  # read, not yet started
        # Outcomes; None only wakes the iterating thread (to read input, or to see a close).
        self._outcomes: queue.SimpleQueue[Outcome | None] = queue.SimpleQueue()
        self._lock = threading.RLock()
        self._submits_ended = threading.Condition(self._lock)
        self._waits: set[Any] = set()
        self._connect_failures: dict[int, int] = {}
        self._refused_since: float | None = None  # since when every submit was refused
        self._refused: ArtaError | None = None  # refused past the timeout: the rest end so
        self._input_error: Exception | None = None
        self._input_wanted = False
        self._running = 0  # this run's jobs between their slot and their outcome
        self._submitting = 0  # of those, the ones in a submit right now
        self._owed = 0  # jobs taken in and not yet handed out
        self._exhausted = False
        self._closed = False
        self.counts = {"queued": 0, "in_flight": 0, "done": 0, "failed": 0}
        self._window.limit = concurrency  # the window never grows past what was asked
        self._loop.closes_with(self)
        try:
            self._read_input()
        except KeyboardInterrupt:
            raise self._interrupted() from None

    def __iter__(self) -> Iterator[Outcome]:
        return self

    def __next__(self) -> Outcome:
        try:
            return self._next_outcome()
        except KeyboardInterrupt:
            raise self._interrupted() from None

    def _next_outcome(self) -> Outcome:
        while True:
            self._read_input()
            with self._lock:
                done = self._owed == 0 and self._exhausted
                if self._closed:  # a submit on its way comes back with its record id
                    while self._submitting:
                        self._submits_ended.wait()
            if done or self._closed:
                try:  # after close(): what had ended by then, and no more
                    outcome = self._outcomes.get_nowait()
                except queue.Empty:
                    error, self._input_error = self._input_error, None
                    if error is not None and not self._closed:
                        raise error
                    raise StopIteration from None
            else:
                outcome = self._outcomes.get()
            if outcome is not None:
                with self._lock:
                    self._owed -= 1
                return outcome

    def close(self) -> None:
        """Stop submitting and stop waiting; already submitted jobs keep their record ids."""
        with self._lock:
            self._closed = True
            waits, self._waits = list(self._waits), set()
        for wait in waits:  # a Watch, or a hand-off's future
            wait.cancel(*() if self._hand_off else ("the run was closed while waiting for the job",))
        if waits and self._hand_off is None:  # whoever closed may never read their outcomes (a break, Ctrl-C in a loop body)
            log.warning("the run was closed: %d job(s) go on at the service: %s", len(waits),
                        ", ".join(wait.generation.record_id for wait in waits))
        self._outcomes.put(None)  # the iterating thread sees the close

    def _interrupted(self) -> RunInterrupted:
        """Close on Ctrl-C; the outcomes not handed out (submits on their way included)."""
        self.close()
        with self._lock:
            while self._submitting:
                self._submits_ended.wait()
        outcomes = []
        while True:
            try:
                outcome = self._outcomes.get_nowait()
            except queue.Empty:
                break
            if outcome is not None:
                outcomes.append(outcome)
        interrupted = RunInterrupted(outcomes)
        if interrupted.record_ids:
            log.warning("%s", interrupted)
        return interrupted

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _read_input(self) -> None:
        """Take jobs from the input while the run has room for them (only the iterating thread)."""
        while True:
            with self._lock:
                self._input_wanted = False
                if self._exhausted or self._closed or (
                        self._refused is None
                        and self._running + len(self._ready) >= self.concurrency):
                    break
            try:
                job: Job | None = next(self._jobs)
            except StopIteration:
                job = None
            except Exception as error:  # noqa: BLE001 - raised once the jobs taken have ended
                job, self._input_error = None, error
            with self._lock:
                if job is None:
                    self._exhausted = True
                    break
                self._owed += 1
                failed = job.error or self._refused
                if failed is None:
                    self.counts["queued"] += 1
                    self._ready.append(job)
                    continue
            self._finish(Outcome(job, error=failed), counted=False)
        self._pump()

    def _pump(self) -> None:
        """Start as many jobs as this run's concurrency and the client's window allow."""
        window = self._window
        with self._lock:
            while not self._closed and self._ready and self._running < self.concurrency:
                ticket = window.acquire()
                if ticket is None:
                    # A full window is reopened by a job's end; a paused one by the clock.
                    pause = window.wait_time()
                    if pause != float("inf"):
                        self._loop.call_at(time.monotonic() + pause, self._pump)
                    break
                job = self._ready.popleft()
                self._running += 1
                self.counts["queued"] -= 1
                self.counts["in_flight"] += 1
                self._loop.run_io(functools.partial(self._start, job, ticket))
            wanted = not (self._closed or self._exhausted or self._input_wanted) and (
                self._refused is not None or self._running + len(self._ready) < self.concurrency)
            self._input_wanted = self._input_wanted or wanted
        if wanted:
            self._outcomes.put(None)  # the iterating thread reads more input

    def _start(self, job: Job, ticket: int) -> None:
        """On an I/O thread: submit (or resume) one job and put it in the poll loop."""
        with self._lock:
            if self._closed:
                self._window.release()
                return  # nothing sent
            self._submitting += 1
        try:
            self._start_job(job, ticket)
        finally:
            with self._lock:
                self._submitting -= 1
                self._submits_ended.notify_all()

    def _start_job(self, job: Job, ticket: int) -> None:
        generation = None
        try:
            if job.record_id is not None:
                generation = Generation(job.record_id, params=job.params, session=self._client)
            else:
                generation = self._submit(job, ticket)
                if generation is None:
                    return  # taken back, to be submitted again
                if self._on_submitted is not None:
                    _call_hook(self._on_submitted, job, generation)
            with self._lock:  # (a close after this cancels the wait, which then reports)
                wait: Any = None
                if not self._closed:
                    wait = generation.watch(self._timeout, self._policy) \
                        if self._hand_off is None else self._hand_off(job, generation)
                    self._waits.add(wait)
            if wait is None:
                raise GenerationCancelled("the run was closed before the job was waited for")
            started = generation
            ending = wait if self._hand_off is not None else wait.future
            ending.add_done_callback(lambda done: self._ended(job, started, wait, done))
        except Exception as error:  # noqa: BLE001 - every job ends with an outcome
            record_id = generation.record_id if generation is not None else None
            failed = error if isinstance(error, ArtaError) else ArtaError(
                f"{type(error).__name__}: {error}")
            if record_id is not None:
                failed = failed.with_record_id(record_id)
                if self._closed:
                    log.warning("the run was closed: job %s goes on at the service", record_id)
            self._window.release()
            self._finish(Outcome(job, generation, error=failed))

    def _submit(self, job: Job, ticket: int) -> Generation | None:
        assert job.params is not None
        if self._on_submitting is not None:
            _call_hook(self._on_submitting, job)
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
        """End every job not yet submitted, and the rest of the input, with ``error`` (none sent)."""
        with self._lock:
            self._refused = error
            ready, self._ready = list(self._ready), collections.deque()
            self.counts["queued"] -= len(ready)
        for job in ready:
            self._finish(Outcome(job, error=error), counted=False)
        self._outcomes.put(None)  # the iterating thread reads the rest, each ending so

    def _take_back(self, job: Job, delay: float) -> None:
        """Put ``job`` back at the head of the line, to be sent again after ``delay``."""
        with self._lock:
            self._running -= 1
            self.counts["in_flight"] -= 1
            self.counts["queued"] += 1
            self._ready.appendleft(job)
        if delay > 0:
            self._loop.call_at(time.monotonic() + delay, self._pump)
        else:
            self._pump()

    def _ended(self, job: Job, generation: Generation, wait: Any,
               done: concurrent.futures.Future[Any]) -> None:
        self._window.release()
        with self._lock:
            self._waits.discard(wait)
        if done.cancelled():  # a hand-off's, by close()
            error: BaseException | None = GenerationCancelled(
                "the run was closed while waiting", record_id=generation.record_id)
        else:
            error = done.exception()
        if error is None and self._hand_off is not None:
            self._finish(Outcome(job, generation, value=done.result()))
        elif error is None:
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


def _call_hook(hook: Callable[..., object], *args: object) -> None:
    """Call a caller's hook; its failure fails the job (given its record id by the caller)."""
    try:
        hook(*args)
    except ArtaError:
        raise
    except Exception as error:
        raise ArtaError(f"{type(error).__name__} in {getattr(hook, '__name__', 'a hook')}: "
                        f"{error}") from error
