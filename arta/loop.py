"""The poll loop: one scheduler thread, a timer heap, and a bounded pool of I/O threads.

A job spends nearly all its life waiting on the service, so a waiting job
costs a heap entry here, not a thread: the scheduler thread sleeps until
the earliest due time and hands the due call to an I/O thread. Threads make
HTTP calls; none ever sleeps on behalf of a job. The loop knows nothing of
jobs: a wait (:class:`arta.generation.Watch`) schedules itself here.
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

from arta.errors import ArtaError

__all__ = ["PollLoop", "Wait"]

log = logging.getLogger(__name__)

#: How often a stop event is looked at while a job waits (seconds).
STOP_CHECK_INTERVAL = 0.05

_numbers = itertools.count(1)  # one per loop, for its threads' names
T = TypeVar("T")


class Wait(Protocol):
    """A wait the loop keeps track of, so that closing the loop ends it."""

    stop: threading.Event | None

    def cancel(self, message: str | None = None) -> bool:
        """End the wait now (the job goes on at the service)."""
        ...


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
        self._watches: set[Wait] = set()
        # The waits with a stop event, apart: the scheduler looks at their
        # events on every wake-up, and must not walk thousands of others to do so.
        self._stoppable: set[Wait] = set()
        self._thread: threading.Thread | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._closed = False

    # -- what the client and its facades use -------------------------------

    def add(self, wait: Wait) -> None:
        """Keep ``wait`` until :meth:`forget`: closing the loop cancels it, a set stop event too."""
        with self._wake:
            if self._closed:
                raise ArtaError("the client is closed")
            self._watches.add(wait)
            if wait.stop is not None:
                self._stoppable.add(wait)

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

    def forget(self, watch: Wait) -> None:
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

