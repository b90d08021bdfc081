"""A submitted job: the ``Generation`` state machine and its polling policy.

::

    SUBMITTED -> IN_QUEUE -> IN_PROGRESS -> DONE
                        \\-------------\\--> FAILED   (the service said so)

Transitions only move forward; a repeated status is a no-op; a status the
protocol does not know becomes FAILED with the raw value kept. Client-side
outcomes (timed out, gave up) are exceptions carrying the ``record_id``, not
states: the job is never lost, it can always be resumed.

A ``Generation`` is plain data plus a handle to the client that polls it, so
it pickles (without the handle) and can be re-attached anywhere.
"""

from __future__ import annotations

import concurrent.futures
import enum
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable, Protocol

from arta import api
from arta.errors import (
    ArtaError,
    GenerationCancelled,
    GenerationFailed,
    GenerationTimeout,
)
from arta.params import GenerationParams
from arta.polling import PollPlanner, PollPolicy, check_wait_options
from arta.result import Image, Result
from arta.retry import RetryPolicy
from arta.transport import Transport

__all__ = ["Generation", "JobSession", "PollPlanner", "PollPolicy", "Status", "Waiter"]


class Status(str, enum.Enum):
    """Where a job stands."""

    SUBMITTED = "SUBMITTED"
    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    DONE = "DONE"
    FAILED = "FAILED"

    @property
    def terminal(self) -> bool:
        """True once the job can change no more."""
        return self in (Status.DONE, Status.FAILED)

    def __str__(self) -> str:
        return self.value


_RANK = {Status.SUBMITTED: 0, Status.IN_QUEUE: 1, Status.IN_PROGRESS: 2,
         Status.DONE: 3, Status.FAILED: 3}


class Waiter(Protocol):
    """One wait on a job in the client's poll loop (see :class:`arta.loop.Watch`)."""

    future: concurrent.futures.Future[Generation]

    def add_listener(self, listener: Callable[[Generation], object]) -> None:
        """Call ``listener(generation)`` at each change of status."""
        ...

    def cancel(self, message: str | None = None) -> bool:
        """End the wait now."""
        ...


class JobSession(Protocol):
    """What a generation needs of its client: one status call, the poll loop, a transport."""

    def fetch_state(self, record_id: str) -> api.JobState:
        """Ask the service how job ``record_id`` stands (transient failures retried)."""
        ...

    def watch(self, generation: Generation, policy: PollPlanner, timeout: float | None,
              stop: threading.Event | None) -> Waiter:
        """Wait on ``generation`` in the client's poll loop."""
        ...

    @property
    def transport(self) -> Transport:
        """Where image downloads go."""
        ...

    @property
    def timeout(self) -> float | None:
        """The default bound of a wait, in seconds (None: the policy's)."""
        ...

    @property
    def retry_policy(self) -> RetryPolicy:
        """How persistently calls are repeated (image downloads use it too)."""
        ...

    @property
    def poll_policy(self) -> PollPlanner:
        """How often a job is asked about, unless a wait says otherwise."""
        ...


OnChange = Callable[["Generation"], object]


class Generation:
    """One job on the service, from its submit to DONE or FAILED.

    ``refresh()`` polls once; ``wait()`` waits until the job ends;
    ``result()`` gives the images; ``future()`` is the same wait as a
    :class:`concurrent.futures.Future`. Every wait runs in the client's poll
    loop: a waiting job costs a heap entry, not a thread. Obtain one from
    ``Client.submit`` or ``Client.resume``.
    """

    def __init__(self, record_id: str, *, params: GenerationParams | None = None,
                 session: JobSession | None = None,
                 status: Status = Status.SUBMITTED) -> None:
        self.record_id = record_id
        self.params = params
        self.seed: int | None = params.seed if params else None
        self.status = status
        self.raw_status: str = status.value
        self.images: tuple[Image, ...] = ()
        self.error_code: str | None = None
        self.error_details: str | None = None
        self.history: list[tuple[Status, float]] = [(status, time.time())]
        #: Every answer of the service about this job: ``(unix_time, status)``.
        self.seen: list[tuple[float, Status]] = []
        #: The error that ended the last wait without an end to the job, if any.
        self.wait_error: BaseException | None = None
        self._session = session
        self._future: concurrent.futures.Future[Result] | None = None

    # -- state -------------------------------------------------------------

    @property
    def done(self) -> bool:
        """True once the job is DONE or FAILED."""
        return self.status.terminal

    def apply(self, state: api.JobState) -> bool:
        """Take in one answer of the service; return True if the status moved."""
        if state.seed is not None:
            self.seed = state.seed
        try:
            status = Status(state.status)
        except ValueError:
            status = Status.FAILED  # the protocol says any other value is a failure
        self.seen.append((time.time(), status))
        if status is Status.SUBMITTED or _RANK[status] < _RANK[self.status] or status is self.status:
            return False  # only forward; a repeat (or a stale answer) changes nothing
        if self.status.terminal:
            return False
        self.status = status
        self.raw_status = state.status
        self.images = state.images
        self.error_code = state.error_code
        self.error_details = state.error_details
        self.history.append((status, time.time()))
        return True

    # -- talking to the service --------------------------------------------

    def attach(self, session: JobSession) -> Generation:
        """Re-attach a generation (after unpickling) to a client; return it."""
        self._session = session
        return self

    def _require_session(self) -> JobSession:
        if self._session is None:
            raise ArtaError(
                "this generation is not attached to a client: call "
                "generation.attach(client) or client.resume(record_id)",
                record_id=self.record_id,
            )
        return self._session

    def refresh(self) -> Status:
        """Poll the service once; return the (possibly new) status."""
        session = self._require_session()
        try:
            self.apply(session.fetch_state(self.record_id))
        except ArtaError as error:
            raise error.with_record_id(self.record_id) from error
        return self.status

    def watch(self, timeout: float | None = None, poll_policy: PollPlanner | None = None,
              stop: threading.Event | None = None) -> Waiter:
        """Start a wait in the client's poll loop and return it (the facades' entry point).

        ``timeout`` (default: the policy's) bounds the wait; the waiter's
        ``future`` ends with this generation, or with the error that ended
        the wait (carrying the record id).
        """
        check_wait_options(timeout, None, poll_policy)
        session = self._require_session()
        policy = poll_policy or session.poll_policy
        bound = timeout if timeout is not None else policy.timeout
        waiter = session.watch(self, policy, bound, stop)
        waiter.future.add_done_callback(self._keep_wait_error)
        return waiter

    def _keep_wait_error(self, future: concurrent.futures.Future[Generation]) -> None:
        self.wait_error = None if future.cancelled() else future.exception()

    def events(self, timeout: float | None = None, poll_policy: PollPlanner | None = None,
               stop: threading.Event | None = None) -> Iterator[Generation]:
        """Wait until the job ends, yielding the generation at each change of status.

        ``timeout`` (default: the policy's) bounds the whole wait; past it,
        :class:`~arta.errors.GenerationTimeout` carries the record id.
        Setting ``stop`` (from any thread) ends the wait promptly with
        :class:`~arta.errors.GenerationCancelled`: the job itself goes on.
        Leaving the loop early stops the polling.
        """
        changes: queue.SimpleQueue[bool] = queue.SimpleQueue()
        waiter = self.watch(timeout, poll_policy, stop)
        waiter.add_listener(lambda _: changes.put(True))
        waiter.future.add_done_callback(lambda _: changes.put(False))
        try:
            while changes.get():  # a plain blocking get: Ctrl-C still reaches the caller
                yield self
            waiter.future.result()  # raises what ended the wait, if not the job's end
        finally:
            waiter.cancel()  # a no-op once ended; else nobody listens any more

    def wait(self, timeout: float | None = None, on_change: OnChange | None = None,
             poll_policy: PollPlanner | None = None,
             stop: threading.Event | None = None) -> Generation:
        """Wait until DONE or FAILED; call ``on_change(self)`` at each transition.

        Raises :class:`~arta.errors.GenerationTimeout` (with the record id)
        if the job has not ended after ``timeout`` seconds (default: the
        policy's, else unbounded), or :class:`~arta.errors.GenerationCancelled`
        once ``stop`` is set; either way the job goes on at the service and
        can be resumed. Returns the generation itself.
        """
        check_wait_options(timeout, on_change, poll_policy)
        for generation in self.events(timeout, poll_policy, stop):
            if on_change is not None:
                on_change(generation)
        return self

    def future(self) -> concurrent.futures.Future[Result]:
        """The job's :class:`~arta.result.Result` as a :class:`concurrent.futures.Future`.

        The wait starts at the first call (with the client's poll policy and
        timeout) and runs in the poll loop; later calls return the same
        future. It fails with :class:`~arta.errors.GenerationFailed`, or the
        error that ended the wait, each carrying the record id.
        """
        if self._future is None:
            future: concurrent.futures.Future[Result] = concurrent.futures.Future()
            future.set_running_or_notify_cancel()
            self._future = future
            waiter = self.watch(self._require_session().timeout)
            waiter.future.add_done_callback(lambda done: self._settle(done, future))
        return self._future

    def _settle(self, done: concurrent.futures.Future[Generation],
                future: concurrent.futures.Future[Result]) -> None:
        error = done.exception()
        try:
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(self.result())
        except ArtaError as failed:
            future.set_exception(failed)

    def add_done_callback(self, callback: Callable[[concurrent.futures.Future[Result]], object],
                          ) -> None:
        """Call ``callback(future)`` once the job's :meth:`future` is done (starts the wait)."""
        self.future().add_done_callback(callback)

    def result(self) -> Result:
        """The images of a DONE job; raise ``GenerationFailed`` for a FAILED one.

        For a job still running, raises the error that ended the last wait
        (a timeout, say) if there was one.
        """
        if self.status is Status.FAILED:
            reason = ": ".join(x for x in (self.error_code, self.error_details) if x)
            raw = "" if self.raw_status == "FAILED" else f" (status {self.raw_status!r})"
            raise GenerationFailed(
                f"the service failed the job{raw}" + (f": {reason}" if reason else ""),
                record_id=self.record_id, error_code=self.error_code,
                error_details=self.error_details,
            )
        if self.status is not Status.DONE:
            if isinstance(self.wait_error, ArtaError):
                raise self.wait_error
            raise ArtaError(f"the job is {self.status}, not finished yet: call wait() first",
                            record_id=self.record_id)
        session = self._session
        return Result(self.record_id, self.images, self.seed, self.params,
                      session.transport if session is not None else None,
                      session.retry_policy if session is not None else None)

    def cancelled_error(self, message: str | None = None) -> GenerationCancelled:
        """The error that ends a wait the caller stopped (the job goes on)."""
        return GenerationCancelled(
            message or f"stopped waiting for the job while it was {self.status}; "
                       "it goes on at the service",
            record_id=self.record_id,
        )

    def timeout_error(self, bound: float | None, reason: str | None = None) -> GenerationTimeout:
        """The error that ends a wait past its timeout (the job may still finish)."""
        because = f" ({reason})" if reason else ""
        return GenerationTimeout(
            f"the job is still {self.status} after {bound or 0:g}s{because}; it may still finish",
            record_id=self.record_id,
        )

    # -- plain data --------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_session"] = None  # a live client does not cross processes
        state["_future"] = None
        state["wait_error"] = None
        return state

    def __repr__(self) -> str:
        return f"<Generation {self.record_id} {self.status}>"
