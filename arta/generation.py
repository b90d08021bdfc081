"""A submitted job: the ``Generation`` state machine, and how one waits on it (a :class:`Watch`).

States and waits are described in docs/design.rst; in short, a status only
moves forward, and whatever ends a wait without the job's end is an
exception carrying the ``record_id``: a submitted job is never lost.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable, Protocol

import tenacity

from arta.errors import ArtaError, GenerationCancelled, GenerationFailed, GenerationTimeout
from arta.images import Image
from arta.loop import PollLoop
from arta.params import GenerationParams
from arta.polling.policy import PollPlanner, PollPolicy, check_wait_options
from arta.protocol import RANK, JobState, Status
from arta.result import Result
from arta.retry import RetryPolicy, transient
from arta.transport import Transport

log = logging.getLogger(__name__)

__all__ = ["Generation", "OnChange", "PollPlanner", "PollPolicy", "Session", "Status", "Watch",
           "wait_bound"]


class Session(Protocol):
    """What a generation and the engine need of their client (an :class:`arta.Client` is one)."""

    transport: Transport
    retry_policy: RetryPolicy
    poll_policy: PollPlanner
    timeout: float | None

    @property
    def loop(self) -> PollLoop:
        """The poll loop every wait of this client runs in."""
        ...

    def poll(self, record_id: str, deadline: float | None = None) -> JobState:
        """Ask the service once how job ``record_id`` stands (a rejected token renewed once)."""
        ...

    def submit_params(self, params: GenerationParams, *, retry: bool = True) -> Generation:
        """Start a job for validated ``params``."""
        ...


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
              stop: threading.Event | None = None) -> Watch:
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


def wait_bound(timeout: float | None, session: Session,
               policy: PollPlanner | None = None) -> float | None:
    """The one rule for how long a wait lasts: the timeout asked, else the client's, else the policy's."""
    for bound in (timeout, session.timeout, (policy or session.poll_policy).timeout):
        if bound is not None:
            return bound
    return None


class Watch:
    """One wait on one job in the client's poll loop: its schedule, listeners and ``future``.

    The future ends with the generation (DONE or FAILED), else with the error
    that ended the wait, carrying the record id.
    """

    def __init__(self, generation: Generation, session: Session, policy: PollPlanner,
                 timeout: float | None, stop: threading.Event | None) -> None:
        self.generation = generation
        self.policy = policy
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.stop = stop
        #: The generation once DONE or FAILED; else the error that ended the wait.
        self.future: concurrent.futures.Future[Generation] = concurrent.futures.Future()
        self._session = session
        self._loop = session.loop
        self._listeners: list[OnChange] = []
        self._polls = 0
        self._retrying: tenacity.Retrying | None = None  # made at the first failed poll
        self._failures: tenacity.RetryCallState | None = None

    @property
    def done(self) -> bool:
        """True once the wait has ended, however."""
        return self.future.done()

    def add_listener(self, listener: OnChange) -> None:
        """Call ``listener(generation)`` (on an I/O thread; keep it quick) at each change of status."""
        self._listeners.append(listener)

    def cancel(self, message: str | None = None) -> bool:
        """End the wait now with :class:`~arta.errors.GenerationCancelled`; False if it had ended."""
        generation = self.generation
        return self._end(error=GenerationCancelled(
            message or f"stopped waiting for the job while it was {generation.status}; "
                       "it goes on at the service", record_id=generation.record_id))

    def start(self) -> None:
        """Enter the loop: the first poll now, or after the policy's first wait if the state is known."""
        if self.timeout == 0:
            self._end(error=self._timed_out())
            return
        self._loop.add(self)
        known = self.generation.status is not Status.SUBMITTED
        # A job whose state is known (from its submit, or a resume) is not
        # asked again at once: the first wait comes first.
        self._schedule(self.policy.next_delay(self.generation, 1) if known else 0.0)

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
        """On an I/O thread: one status call, then the next step.

        Whatever goes wrong here (a bug in a policy, a listener, a parser)
        ends the wait with an error carrying the record id: never a wait
        that hangs, never an error without the id of a job already paid for.
        """
        if self.done:
            return
        try:
            self._step()
        except Exception as error:  # noqa: BLE001 - see above
            if not isinstance(error, ArtaError):
                wrapped = ArtaError(f"the wait failed: {type(error).__name__}: {error}")
                wrapped.__cause__ = error
                error = wrapped
            self._end(error=error.with_record_id(self.generation.record_id))

    def _step(self) -> None:
        try:
            state = self._session.poll(self.generation.record_id, self.deadline)
        except ArtaError as error:
            self._failed(error)
            return
        self._failures = None
        self._polls += 1
        generation = self.generation
        if generation.apply(state):
            for listener in list(self._listeners):
                listener(generation)
        if generation.done:
            self.policy.finished(generation)
            self._end(result=generation)
        elif self.deadline is not None and time.monotonic() >= self.deadline:
            self._end(error=self._timed_out())
        else:
            self._schedule(self.policy.next_delay(generation, self._polls + 1))

    def _failed(self, error: ArtaError) -> None:
        """Ask tenacity whether and when to poll again; the sleeping is a heap entry."""
        if self._retrying is None:
            self._retrying = self._session.retry_policy.retrying(transient, deadline=self.deadline)
        state = self._failures or tenacity.RetryCallState(self._retrying, None, (), {})
        state.set_exception((type(error), error, error.__traceback__))
        self._retrying.begin()  # tenacity's statistics are per thread; polls move between threads
        try:
            delay = self._retrying.iter(state)  # a DoSleep (a float): tenacity says retry
        except ArtaError as final:
            self._end(error=self._final_error(final, state.attempt_number))
            return
        state.prepare_for_next_attempt()
        self._failures = state
        self._schedule(float(delay))  # type: ignore[arg-type]

    def _final_error(self, error: ArtaError, attempts: int) -> ArtaError:
        policy = self._session.retry_policy
        if transient(error) and attempts < policy.attempts and self.deadline is not None:
            # Stopped by the deadline: sleeping through it would only postpone the answer.
            return self._timed_out(f"the service asked to wait {policy.delay(error, attempts):g}s "
                                   f"more ({error})")
        return error.with_record_id(self.generation.record_id)

    def _timed_out(self, reason: str | None = None) -> GenerationTimeout:
        because = f" ({reason})" if reason else ""
        return GenerationTimeout(
            f"the job is still {self.generation.status} after {self.timeout or 0:g}s{because}; "
            "it may still finish", record_id=self.generation.record_id)

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
