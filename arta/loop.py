"""The poll loop: one scheduler thread, a timer heap, and a bounded pool of I/O threads.

A job spends nearly all its life waiting on the service, so a waiting job
costs a heap entry here, not a thread: the scheduler thread sleeps until
the earliest due time and hands the due call to an I/O thread. Threads make
HTTP calls; none ever sleeps on behalf of a job. The loop knows nothing of
jobs: a wait (:class:`arta.watch.Watch`) schedules itself here.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import heapq
import itertools
import logging
import math
import os
import threading
import time
import weakref
from typing import Any, Callable, Protocol, TypeVar

from arta.errors import ClientClosedError

__all__ = ["PollLoop", "Wait"]

log = logging.getLogger(__name__)

#: Seconds a call waits for an I/O thread before the pool adds one.
GROW_AFTER = 0.02
#: Calls slower than this on average wait on the network: more threads help.
SLOW_CALL = 0.05
#: Threads kept for quick calls (one in the CPU, one waiting on a socket).
FEW_THREADS = 2

#: How often a stop event is looked at while a job waits (seconds).
STOP_CHECK_INTERVAL = 0.05

#: A timer may fire late by this share of its delay, and by at most
#: :data:`MAX_SLACK` seconds. Due times are rounded up to a grid of that
#: size, so timers set around the same time fire together: one wake of the
#: scheduler, and their calls run back to back on an I/O thread already
#: awake, not each on a thread woken for it alone (about a quarter less CPU
#: per job on the service-like load of benchmarks/peer.py, docs/benchmarks.rst).
SLACK_SHARE = 0.05
MAX_SLACK = 0.1

_numbers = itertools.count(1)  # one per loop, for its threads' names
T = TypeVar("T")


class Wait(Protocol):
    """A wait the loop keeps track of, so that closing the loop ends it."""

    stop: threading.Event | None

    def cancel(self, message: str | None = None) -> bool:
        """End the wait now (the job goes on at the service)."""
        ...


class _Closable(Protocol):
    def close(self) -> None: ...


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
        self._pool = _IOPool(io_threads, self.io_thread_prefix, self.call_at)
        self._closed = False
        self._dependents: weakref.WeakSet[_Closable] = weakref.WeakSet()

    # -- what the client and its facades use -------------------------------

    def add(self, wait: Wait) -> None:
        """Keep ``wait`` until :meth:`forget`: closing the loop cancels it, a set stop event too."""
        with self._wake:
            if self._closed:
                raise ClientClosedError("the client is closed")
            self._watches.add(wait)
            if wait.stop is not None:
                self._stoppable.add(wait)

    def call_at(self, when: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the scheduler thread at ``when`` (a ``time.monotonic()`` value).

        It may run late by :data:`SLACK_SHARE` of the delay (at most
        :data:`MAX_SLACK`), with the other timers due by then.
        """
        when = _coalesced(when, time.monotonic())
        with self._wake:
            if self._closed:
                return
            self._ensure_thread()
            heapq.heappush(self._heap, (when, next(self._order), callback))
            if self._heap[0][2] is callback:
                self._wake.notify()

    def run_io(self, function: Callable[[], None]) -> None:
        """Run ``function`` on an I/O thread (a failure is logged: it has nobody to go to)."""
        if self._closed:  # nothing runs any more
            return
        # No future: nobody would read it, and a poll is the commonest call.
        with contextlib.suppress(ClientClosedError):  # the pool closed meanwhile
            self._pool.put(None, _logged, (function,))

    def call_io(self, function: Callable[..., T], *args: object,
                ) -> concurrent.futures.Future[T]:
        """Run ``function(*args)`` on an I/O thread; its future gives the outcome."""
        if self._closed:
            raise ClientClosedError("the client is closed")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._pool.put(future, function, args)
        return future

    def closes_with(self, dependent: _Closable) -> None:
        """Close ``dependent`` (a run of many jobs) when this loop closes, or now if it has."""
        with self._wake:
            if not self._closed:
                self._dependents.add(dependent)
                return
        dependent.close()

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
            thread = self._thread
            dependents = list(self._dependents)
        for dependent in dependents:  # first: they stop sending before their waits end
            dependent.close()
        for watch in watches:
            watch.cancel("the client was closed while waiting for the job")
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self._pool.shutdown()

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


def _coalesced(when: float, now: float) -> float:
    """``when`` rounded up to a grid of about its slack (a power of two seconds, so grids nest)."""
    slack = min(MAX_SLACK, (when - now) * SLACK_SHARE)
    if slack < 0.001:
        return when
    grid = 2.0 ** math.floor(math.log2(slack))
    return math.ceil(when / grid) * grid


def _logged(function: Callable[[], object]) -> None:
    """Run ``function``; a bug in it is logged, never allowed to kill a loop thread."""
    try:
        function()
    except Exception:
        log.exception("arta: internal error in the poll loop")


class _IOPool:
    """The loop's I/O threads: as many as the calls need, up to ``size``.

    A thread is added when a call has waited :data:`GROW_AFTER` for one
    (checked from the loop's timer heap) and the calls are slow, waiting on
    the network (their mean time over :data:`SLOW_CALL`): more threads then
    carry more calls at once. Calls that are quick (a nearby service) are
    bound by the CPU, where a thread more only fights for the GIL (with the
    event loop of ``arta.aio`` first): :data:`FEW_THREADS` carry them.
    """

    def __init__(self, size: int, prefix: str,
                 call_at: Callable[[float, Callable[[], None]], None]) -> None:
        self.size = size
        self._prefix = prefix
        self._call_at = call_at
        self._work: collections.deque[tuple[float, concurrent.futures.Future[Any] | None,
                                            Callable[..., Any], tuple[object, ...]]] = \
            collections.deque()
        self._ready = threading.Condition()
        self._threads = 0
        self._idle = 0
        self._check_due = False
        self._closed = False
        self._call_time = 0.0  # the calls' mean duration (exponentially weighted)

    def put(self, future: concurrent.futures.Future[Any] | None, function: Callable[..., Any],
            args: tuple[object, ...]) -> None:
        """Queue ``function(*args)``; its outcome goes to ``future`` (None: nobody waits)."""
        with self._ready:
            if self._closed:
                raise ClientClosedError("the client is closed")
            self._work.append((time.monotonic(), future, function, args))
            if len(self._work) <= self._idle:  # an idle thread (woken or not) will take it
                self._ready.notify()
            elif self._threads == 0:
                self._start()
            elif self._threads < self.size and not self._check_due:
                self._check_due = True
                self._call_at(time.monotonic() + GROW_AFTER, self._grow_if_waiting)

    def _grow_if_waiting(self) -> None:
        with self._ready:
            self._check_due = False
            if self._closed or len(self._work) <= self._idle or self._threads >= self.size:
                return
            if time.monotonic() - self._work[0][0] >= GROW_AFTER and (
                    self._threads < FEW_THREADS or self._call_time >= SLOW_CALL):
                self._start()
            if self._threads < self.size:  # look again while calls keep waiting
                self._check_due = True
                self._call_at(time.monotonic() + GROW_AFTER, self._grow_if_waiting)

    def _start(self) -> None:
        self._threads += 1
        threading.Thread(target=self._serve, name=f"{self._prefix}_{self._threads - 1}",
                         daemon=True).start()

    def _serve(self) -> None:
        while True:
            with self._ready:
                while not self._work and not self._closed:
                    self._idle += 1
                    self._ready.wait()
                    self._idle -= 1
                if self._closed:
                    self._threads -= 1
                    return
                _, future, function, args = self._work.popleft()
            started = time.monotonic()
            if future is None:
                # A call nobody waits for is wrapped in _logged; what it lets through
                # (a SystemExit, say) must not end the thread, as a future would keep it.
                with contextlib.suppress(BaseException):
                    function(*args)
            elif future.set_running_or_notify_cancel():
                try:
                    future.set_result(function(*args))
                except BaseException as error:  # noqa: BLE001 - the future carries it
                    future.set_exception(error)
            # A data race on a float is harmless here: it is only a hint.
            self._call_time += 0.1 * (time.monotonic() - started - self._call_time)

    def shutdown(self) -> None:
        """Stop the threads once their call ends; cancel the calls not started."""
        with self._ready:
            self._closed = True
            work, self._work = list(self._work), collections.deque()
            self._ready.notify_all()
        for _, future, _, _ in work:
            if future is not None:
                future.cancel()
