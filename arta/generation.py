"""A submitted job: the ``Generation`` state machine, and the ways to wait on it.

States and waits are described in docs/design.rst; in short, a status only
moves forward, and whatever ends a wait without the job's end is an
exception carrying the ``record_id``: a submitted job is never lost. The
wait itself, in the client's poll loop, is a :class:`~arta.watch.Watch`.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable, Protocol

from arta.errors import ArtaError, GenerationFailed
from arta.images import Image
from arta.params import GenerationParams
from arta.polling.policy import PollPlanner, PollPolicy, check_wait_options
from arta.protocol import RANK, JobState, Status
from arta.result import Result
from arta.retry import transient
from arta.transport import Transport
from arta.watch import Poller, Watch, wait_bound

log = logging.getLogger(__name__)

__all__ = ["Generation", "OnChange", "PollPlanner", "PollPolicy", "Session", "Status", "Watch",
           "wait_bound"]


class Session(Poller, Protocol):
    """What a generation and the engine need of their client (an :class:`arta.Client` is one)."""

    transport: Transport

    def submit_params(self, params: GenerationParams, *, retry: bool = True) -> Generation:
        """Start a job for validated ``params``."""
        ...


#: Called with the generation at each change of its status.
OnChange = Callable[["Generation"], object]


class Generation:
    """One job on the service, from its submit to DONE or FAILED (``Client.submit``, ``Client.resume``).

    ``refresh()`` polls once; ``wait()`` waits until the job ends (a heap
    entry in the client's poll loop, not a thread); ``result()`` gives the
    images; ``future()`` is the same wait as a ``concurrent.futures.Future``.
    """

    def __init__(self, record_id: str, *, params: GenerationParams | None = None,
                 session: Session | None = None,
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

    @property
    def done(self) -> bool:
        """True once the job is DONE or FAILED."""
        return self.status.terminal

    def apply(self, state: JobState) -> bool:
        """Take in one answer of the service; return True if the status moved."""
        if state.seed is not None:
            self.seed = state.seed
        try:
            status = Status(state.status)
        except ValueError:
            status = Status.FAILED  # the protocol says any other value is a failure
        self.seen.append((time.time(), status))
        if status is Status.SUBMITTED or RANK[status] < RANK[self.status] or status is self.status:
            return False  # only forward; a repeat (or a stale answer) changes nothing
        if self.status.terminal:
            return False
        self.status = status
        self.raw_status = state.status
        self.images = state.images
        self.error_code = state.error_code
        self.error_details = state.error_details
        (before, since), now = self.history[-1], time.time()
        self.history.append((status, now))
        took = "" if before is Status.SUBMITTED else f" after {now - since:.1f}s {before.value}"
        log.info("job %s: %s%s%s", self.record_id, state.status, took,
                 f" ({self.error_code})" if self.error_code else "")
        return True

    def attach(self, session: Session) -> Generation:
        """Re-attach a generation (after unpickling) to a client; return it."""
        self._session = session
        return self

    def _require_session(self) -> Session:
        if self._session is None:
            raise ArtaError("this generation is not attached to a client: call generation."
                            "attach(client) or client.resume(record_id)", record_id=self.record_id)
        return self._session

    def refresh(self) -> Status:
        """Poll the service once (transient failures retried); return the (possibly new) status."""
        session = self._require_session()
        try:
            self.apply(session.retry_policy.call(lambda: session.poll(self.record_id),
                                                 retry_on=transient))
        except ArtaError as error:
            raise error.with_record_id(self.record_id) from error
        return self.status

    def watch(self, timeout: float | None = None, poll_policy: PollPlanner | None = None,
              stop: threading.Event | None = None) -> Watch[Generation]:
        """Start a wait in the client's poll loop (the facades' entry point); see :class:`Watch`."""
        check_wait_options(timeout, None, poll_policy)
        session = self._require_session()
        policy = poll_policy or session.poll_policy
        watch = Watch(self, session, policy, wait_bound(timeout, session, policy), stop)
        watch.future.add_done_callback(self._keep_wait_error)
        watch.start()
        return watch

    def _keep_wait_error(self, future: concurrent.futures.Future[Generation]) -> None:
        self.wait_error = None if future.cancelled() else future.exception()

    def events(self, timeout: float | None = None, poll_policy: PollPlanner | None = None,
               stop: threading.Event | None = None) -> Iterator[Generation]:
        """Yield the generation at each change of status until it ends, as :meth:`wait` ends."""
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
        """Wait until DONE or FAILED, calling ``on_change(self)`` at each transition; return self.

        Past ``timeout`` (default: the client's, else the policy's):
        ``GenerationTimeout``; once ``stop`` is set: ``GenerationCancelled``;
        each with the record id, the job going on at the service.
        """
        check_wait_options(timeout, on_change, poll_policy)
        for generation in self.events(timeout, poll_policy, stop):
            if on_change is not None:
                on_change(generation)
        return self

    def future(self) -> concurrent.futures.Future[Result]:
        """The job's :class:`~arta.result.Result` as a :class:`concurrent.futures.Future`.

        The wait (the client's policy and timeout) starts at the first call;
        later calls return the same future. Its errors carry the record id;
        ``cancel()`` ends the wait (the job goes on at the service).
        """
        if self._future is None:
            future: concurrent.futures.Future[Result] = concurrent.futures.Future()
            self._future = future
            if self.done:  # the end is known already: no wait, no poll
                self._settle(None, future)
            else:
                watch = self.watch()
                watch.future.add_done_callback(lambda done: self._settle(done, future))
                future.add_done_callback(
                    lambda f: f.cancelled() and watch.cancel("the future was cancelled"))
        return self._future

    def _settle(self, done: concurrent.futures.Future[Generation] | None,
                future: concurrent.futures.Future[Result]) -> None:
        if future.cancelled():
            return
        try:
            if done is not None:
                done.result()
            future.set_result(self.ended_result())
        except ArtaError as failed:
            future.set_exception(failed)

    def add_done_callback(self, callback: Callable[[concurrent.futures.Future[Result]], object],
                          ) -> None:
        """Call ``callback(future)`` once the job's :meth:`future` is done (starts the wait)."""
        self.future().add_done_callback(callback)

    def result(self, timeout: float | None = None) -> Result:
        """Wait until the job ends (as :meth:`wait`), then return its images.

        Blocks like :meth:`concurrent.futures.Future.result`; a job already
        ended costs no request. Raises ``GenerationFailed`` for a FAILED job,
        else what ended the wait (``GenerationTimeout``...), with the record id.
        """
        if not self.done:
            self.wait(timeout)
        return self.ended_result()

    def ended_result(self) -> Result:
        """The result of a job known to have ended, without waiting (the async facade's)."""
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
            raise ArtaError(f"the job is {self.status}, not finished yet: wait for it first",
                            record_id=self.record_id)
        session = self._session
        return Result(self.record_id, self.images, self.seed, self.params,
                      session.transport if session is not None else None,
                      session.retry_policy if session is not None else None)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_session"] = None  # a live client does not cross processes
        state["_future"] = None
        state["wait_error"] = None
        return state

    def __repr__(self) -> str:
        return f"<Generation {self.record_id} {self.status}>"
