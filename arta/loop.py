"""The poll loop: one scheduler thread and a timer heap for every job a client waits on.

A job spends nearly all its life waiting on the service, so a waiting job
costs a heap entry here, not a thread: the scheduler thread sleeps until
the earliest due time, then hands the due job's status call to a bounded
pool of I/O threads (the client's connection pool size). Threads make HTTP
calls; none ever sleeps on behalf of a job.

Each :class:`Watch` is one wait on one :class:`~arta.generation.Generation`
with its own poll planner, deadline and stop event, ending in its
``future``: the generation once it is DONE or FAILED, else the error that
ended the wait (timeout, cancellation, a failure), always carrying the
record id. Transient failures of a poll are retried on the heap too, with
the client's :class:`~arta.retry.RetryPolicy` waits (``Retry-After``
honoured), and a wait the server asks for that reaches past the deadline
ends the wait at once instead of sleeping through it.

The loop is made lazily by its client, and anew in a forked child (the
parent's threads do not exist there).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import heapq
import itertools
import logging
import os
import threading
import time
from typing import Callable, Protocol, TypeVar

from arta import api
from arta.errors import ArtaError
from arta.generation import Generation, PollPlanner, Status
from arta.retry import RetryPolicy, transient

__all__ = ["PollLoop", "Watch"]

log = logging.getLogger(__name__)

#: How often a stop event is looked at while a job waits (seconds).
STOP_CHECK_INTERVAL = 0.05

Listener = Callable[[Generation], object]
_numbers = itertools.count(1)  # one per loop, for its threads' names
T = TypeVar("T")


class StatusSource(Protocol):
    """What the loop needs of its client: one status call, and how to retry it."""

    def fetch_state_once(self, record_id: str) -> api.JobState:
        """Ask the service once (a rejected token is renewed and the call made once more)."""
        ...

    @property
    def retry_policy(self) -> RetryPolicy:
        """How failed polls are retried."""
        ...


class Watch:
    """One wait on one job: its schedule, its listeners and its ``future``."""

    def __init__(self, loop: PollLoop, generation: Generation, source: StatusSource,
                 policy: PollPlanner, timeout: float | None,
                 stop: threading.Event | None) -> None:
        self.generation = generation
        self.policy = policy
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.stop = stop
        #: The generation once DONE or FAILED; else the error that ended the wait.
        self.future: concurrent.futures.Future[Generation] = concurrent.futures.Future()
        self._loop = loop
        self._source = source
        self._listeners: list[Listener] = []
        self._polls = 0
        self._failures = 0

    @property
    def done(self) -> bool:
        """True once the wait has ended, however."""
        return self.future.done()

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(generation)`` (on an I/O thread; keep it quick) at each change of status."""
        self._listeners.append(listener)

    def cancel(self, message: str | None = None) -> bool:
        """End the wait now with :class:`~arta.errors.GenerationCancelled`; False if it had ended."""
        return self._end(error=self.generation.cancelled_error(message))

    # -- driven by the loop --------------------------------------------------

    def _schedule(self, delay: float) -> None:
        if self.deadline is not None:
            delay = min(delay, max(0.0, self.deadline - time.monotonic()))
        self._loop.call_at(time.monotonic() + delay, self._due)

    def _due(self) -> None:
        """On the scheduler thread: the time has come; poll on an I/O thread."""
        if self.done:
            return
        if self.stop is not None and self.stop.is_set():
            self.cancel()
            return
        self._loop.run_io(self._poll)

    def _poll(self) -> None:
        """On an I/O thread: one status call, then the next step."""
        if self.done:
            return
        try:
            state = self._source.fetch_state_once(self.generation.record_id)
        except ArtaError as error:
            self._failed(error)
            return
        except Exception as error:  # noqa: BLE001 - a bug must end the wait, not the thread
            self._end(error=error)
            return
        self._failures = 0
        self._polls += 1
        if self.generation.apply(state):
            for listener in list(self._listeners):
                listener(self.generation)
        self._next()

    def _next(self) -> None:
        generation = self.generation
        if generation.done:
            self.policy.finished(generation)
            self._end(result=generation)
        elif self.deadline is not None and time.monotonic() >= self.deadline:
            self._end(error=generation.timeout_error(self.timeout))
        else:
            self._schedule(self.policy.next_delay(generation, self._polls + 1))

    def _failed(self, error: ArtaError) -> None:
        self._failures += 1
        policy = self._source.retry_policy
        if not transient(error) or self._failures >= policy.attempts:
            self._end(error=error.with_record_id(self.generation.record_id))
            return
        delay = policy.delay(error, self._failures)
        if self.deadline is not None and time.monotonic() + delay > self.deadline:
            # Sleeping through the deadline would only postpone the same answer.
            self._end(error=self.generation.timeout_error(
                self.timeout, f"the service asked to wait {delay:g}s more ({error})"))
            return
        log.info("job %s: poll failed (%s); retrying in %.2fs",
                 self.generation.record_id, error, delay)
        self._schedule(delay)

    def _start(self) -> None:
        if self.timeout == 0:
            self._end(error=self.generation.timeout_error(0.0))
            return
        known = self.generation.status is not Status.SUBMITTED
        # A job whose state is known (from its submit, or a resume) is not
        # asked again at once: the first wait comes first.
        self._schedule(self.policy.next_delay(self.generation, 1) if known else 0.0)

    def _end(self, *, result: Generation | None = None,
             error: BaseException | None = None) -> bool:
        try:
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)  # type: ignore[arg-type]
        except concurrent.futures.InvalidStateError:
            return False  # it had ended already (a race with cancel or close)
        self._loop.forget(self)
        return True

    def __repr__(self) -> str:
        return f"<Watch {self.generation.record_id} polls={self._polls} done={self.done}>"


class PollLoop:
    """A timer heap with one scheduler thread, and a bounded pool of I/O threads.

    Timer callbacks (:meth:`call_at`) run on the scheduler thread and must
    be quick: they hand real work to :meth:`run_io`.
    """

    def __init__(self, io_threads: int = 16, name: str = "arta") -> None:
        self.io_threads = io_threads
        self.pid = os.getpid()
        #: The names of this loop's I/O threads start with this (one number per loop).
        self.io_thread_prefix = f"{name}-io-{next(_numbers)}"
        self._name = name
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._watches: set[Watch] = set()
        # The waits with a stop event, apart: the scheduler looks at their
        # events on every wake-up, and must not walk thousands of others to do so.
        self._stoppable: set[Watch] = set()
        self._thread: threading.Thread | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._closed = False

    # -- what the client and its facades use -------------------------------

    def watch(self, generation: Generation, source: StatusSource, policy: PollPlanner,
              timeout: float | None = None, stop: threading.Event | None = None,
              listener: Listener | None = None) -> Watch:
        """Start waiting on ``generation``; its :attr:`Watch.future` says how the wait ended."""
        watch = Watch(self, generation, source, policy, timeout, stop)
        if listener is not None:
            watch.add_listener(listener)
        with self._wake:
            if self._closed:
                raise ArtaError("the client is closed", record_id=generation.record_id)
            self._watches.add(watch)
            if stop is not None:
                self._stoppable.add(watch)
        watch._start()
        return watch

    def call_at(self, when: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the scheduler thread at ``when`` (a ``time.monotonic()`` value)."""
        with self._wake:
            if self._closed:
                return
            self._ensure_thread()
            heapq.heappush(self._heap, (when, next(self._order), callback))
            if self._heap[0][2] is callback:
                self._wake.notify()

    def run_io(self, function: Callable[[], None]) -> None:
        """Run ``function`` on an I/O thread (a failure is logged: it has nobody to go to)."""
        with contextlib.suppress(ArtaError):  # closed: nothing runs any more
            self.call_io(_logged, function)

    def call_io(self, function: Callable[..., T], *args: object,
                ) -> concurrent.futures.Future[T]:
        """Run ``function(*args)`` on an I/O thread; its future gives the outcome."""
        with self._wake:
            if self._closed:
                raise ArtaError("the client is closed")
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    self.io_threads, thread_name_prefix=self.io_thread_prefix)
            pool = self._pool
        return pool.submit(function, *args)

    def forget(self, watch: Watch) -> None:
        """Drop an ended watch (its heap entries fire and find it done)."""
        with self._wake:
            self._watches.discard(watch)
            self._stoppable.discard(watch)

    @property
    def in_flight(self) -> int:
        """Waits not yet ended."""
        with self._wake:
            return len(self._watches)

    def close(self) -> None:
        """End every wait with ``GenerationCancelled`` (record ids kept) and stop the threads."""
        with self._wake:
            if self._closed:
                return
            self._closed = True
            watches, self._watches, self._stoppable = list(self._watches), set(), set()
            self._heap.clear()
            self._wake.notify()
            thread, pool = self._thread, self._pool
        for watch in watches:
            watch.cancel("the client was closed while waiting for the job")
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    # -- the scheduler thread ------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"{self._name}-loop",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._wake:
                while True:
                    if self._closed:
                        return
                    stopped = [w for w in self._stoppable if w.stop is not None and w.stop.is_set()]
                    now = time.monotonic()
                    if stopped or (self._heap and self._heap[0][0] <= now):
                        break
                    timeout = self._heap[0][0] - now if self._heap else None
                    if self._stoppable:
                        timeout = min(timeout or STOP_CHECK_INTERVAL, STOP_CHECK_INTERVAL)
                    self._wake.wait(timeout)
                due = heapq.heappop(self._heap)[2] if self._heap and \
                    self._heap[0][0] <= time.monotonic() else None
            # Outside the lock: ending a wait runs its future's callbacks.
            for watch in stopped:
                watch.cancel()
            if due is not None:
                _logged(due)

    def __repr__(self) -> str:
        return f"<PollLoop waits={len(self._watches)} timers={len(self._heap)}>"


def _logged(function: Callable[[], object]) -> None:
    """Run ``function``; a bug in it is logged, never allowed to kill a loop thread."""
    try:
        function()
    except Exception:
        log.exception("arta: internal error in the poll loop")

