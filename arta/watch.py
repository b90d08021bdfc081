"""One wait on one job in a client's poll loop (a :class:`Watch`), and how long a wait lasts.

A wait is a heap entry, not a thread: each poll runs on one of the loop's
I/O threads, a failed poll is retried as the retry policy's tenacity
``Retrying`` says (its sleep another heap entry), and the wait's future
ends with the job once it is DONE or FAILED, else with the error that
ended the wait, carrying the record id.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from typing import Callable, Generic, Protocol, TypeVar

import tenacity

from arta.errors import ArtaError, GenerationCancelled, GenerationTimeout
from arta.loop import PollLoop
from arta.polling.policy import PolledJob, PollPlanner
from arta.protocol import JobState, Status
from arta.retry import RetryPolicy, transient

__all__ = ["Poller", "Watch", "WatchedJob", "wait_bound"]


class WatchedJob(PolledJob, Protocol):
    """What a wait reads and moves of its job (a :class:`~arta.generation.Generation` is one)."""

    @property
    def done(self) -> bool:
        """True once the job is DONE or FAILED."""
        ...

    def apply(self, state: JobState) -> bool:
        """Take in one answer of the service; True if the status moved."""
        ...


class Poller(Protocol):
    """What a wait needs of its client (an :class:`arta.Client` is one)."""

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


Job = TypeVar("Job", bound=WatchedJob)


def wait_bound(timeout: float | None, session: Poller,
               policy: PollPlanner | None = None) -> float | None:
    """The one rule for how long a wait lasts: the timeout asked, else the client's, else the policy's."""
    for bound in (timeout, session.timeout, (policy or session.poll_policy).timeout):
        if bound is not None:
            return bound
    return None


class Watch(Generic[Job]):
    """One wait on one job in the client's poll loop: its schedule, listeners and ``future``.

    The future ends with the generation (DONE or FAILED), else with the error
    that ended the wait, carrying the record id.
    """

    def __init__(self, generation: Job, session: Poller, policy: PollPlanner,
                 timeout: float | None, stop: threading.Event | None) -> None:
        self.generation = generation
        self.policy = policy
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.stop = stop
        #: The generation once DONE or FAILED; else the error that ended the wait.
        self.future: concurrent.futures.Future[Job] = concurrent.futures.Future()
        self._session = session
        self._loop = session.loop
        self._listeners: list[Callable[[Job], object]] = []
        self._polls = 0
        self._retrying: tenacity.Retrying | None = None  # made at the first failed poll
        self._failures: tenacity.RetryCallState | None = None

    @property
    def done(self) -> bool:
        """True once the wait has ended, however."""
        return self.future.done()

    def add_listener(self, listener: Callable[[Job], object]) -> None:
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

    def _end(self, *, result: Job | None = None,
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
