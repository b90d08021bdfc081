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

import enum
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import tenacity

from arta import api
from arta.errors import ArtaError, GenerationCancelled, GenerationFailed, GenerationTimeout
from arta.params import GenerationParams
from arta.result import Image, Result
from arta.retry import RetryPolicy
from arta.transport import Transport

__all__ = ["Generation", "JobSession", "PollPlanner", "PollPolicy", "Status"]


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


@dataclass(frozen=True)
class PollPolicy:
    """How often to ask about a job: a value, composed from tenacity's waits.

    The first poll comes ``first_delay`` seconds after the job was last seen
    (no job finishes sooner than that, so earlier polls would be wasted);
    then every ``interval`` seconds, each wait ``growth`` times the last,
    capped at ``max_delay``, plus up to ``jitter`` seconds at random so
    that many clients do not poll in step. ``timeout`` bounds the whole wait
    (None: no bound). The defaults were chosen with ``benchmarks/polling.py``.
    """

    # On the benchmark's reference workload (jobs of 2-15 s) these make 14%
    # fewer status requests than the old provider's fixed 2 s poll and notice
    # a finished job a little sooner (median), at +0.5 s on the p95; waits
    # grow to 3 s, so long jobs cost a third fewer requests.
    first_delay: float = 2.0
    interval: float = 1.5
    growth: float = 1.1
    max_delay: float = 3.0
    jitter: float = 0.2
    timeout: float | None = None

    def next_delay(self, generation: Generation, attempt: int) -> float:
        """Seconds from now until poll number ``attempt`` (1: the first) of ``generation``."""
        return float(self.wait_strategy()(_Attempt(attempt)))  # type: ignore[arg-type]

    def finished(self, generation: Generation) -> None:
        """A fixed policy learns nothing from a finished job."""

    def wait_strategy(self) -> tenacity.wait.wait_base:
        """The tenacity wait after poll number ``attempt_number``."""
        then = tenacity.wait_exponential(  # attempt 2 waits `interval`, growing from there
            multiplier=self.interval / self.growth, exp_base=self.growth,
            min=min(self.interval, self.max_delay), max=self.max_delay,
        )
        return tenacity.wait_chain(tenacity.wait_fixed(self.first_delay), then) \
            + tenacity.wait_random(0, self.jitter)


class _Attempt:
    """The one field of a tenacity ``RetryCallState`` that a wait strategy reads."""

    def __init__(self, attempt_number: int) -> None:
        self.attempt_number = attempt_number


class PollPlanner(Protocol):
    """What the poll loop asks of a poll policy: when to ask next, and what happened.

    :class:`PollPolicy` is the fixed one. A planner may look at the job's
    parameters (``generation.params``), its status and every answer so far
    (``generation.seen``: ``(unix_time, Status)`` pairs, the submit's answer
    first when this process made it) to place the next poll.
    """

    @property
    def timeout(self) -> float | None:
        """Default bound of a whole wait, in seconds (None: no bound)."""
        ...

    def next_delay(self, generation: Generation, attempt: int) -> float:
        """Seconds from now until poll number ``attempt`` (1: the first of this wait)."""
        ...

    def finished(self, generation: Generation) -> None:
        """Called once when ``generation`` is seen DONE or FAILED (a place to learn)."""
        ...


def _until(deadline: float | None, wait: Callable[[Any], float]) -> Callable[[Any], float]:
    """Cap ``wait`` so that the last poll falls on the deadline, not after it."""
    if deadline is None:
        return wait

    def capped(retry_state: Any) -> float:
        return max(0.0, min(wait(retry_state), deadline - time.monotonic()))

    return capped


class JobSession(Transport, Protocol):
    """What a generation needs of its client: status polls, and a transport for its images."""

    def fetch_state(self, record_id: str) -> api.JobState:
        """Ask the service how job ``record_id`` stands."""
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

    ``refresh()`` polls once; ``wait()`` polls until the job ends;
    ``result()`` gives the images. Obtain one from ``Client.submit`` or
    ``Client.resume``.
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
        self._session = session

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

    def events(self, timeout: float | None = None, poll_policy: PollPlanner | None = None,
               stop: threading.Event | None = None) -> Iterator[Generation]:
        """Poll until the job ends, yielding the generation at each change of status.

        ``timeout`` (default: the policy's) bounds the whole wait; past it,
        :class:`~arta.errors.GenerationTimeout` carries the record id.
        Setting ``stop`` (from any thread) ends the wait at once, between
        polls or in the middle of a sleep, with
        :class:`~arta.errors.GenerationCancelled`: the job itself goes on.
        """

        def sleep(seconds: float) -> None:
            if stop is None:
                time.sleep(seconds)
            elif stop.wait(seconds):
                raise self._cancelled()

        session = self._require_session()
        policy = poll_policy or session.poll_policy
        bound = timeout if timeout is not None else policy.timeout
        deadline = None if bound is None else time.monotonic() + bound
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_result(lambda status: not status.terminal),
            wait=_until(deadline, lambda state: policy.next_delay(self, state.attempt_number)),
            stop=tenacity.stop_never if bound is None else tenacity.stop_after_delay(bound),
            retry_error_callback=lambda state: None,  # out of time: judged below
            reraise=True,  # an error while polling is raised as it is
            sleep=sleep,
        )
        # A job whose state is known (from its submit, or a resume) is not
        # asked again at once: the first turn only starts the first wait.
        known = self.status is not Status.SUBMITTED
        for attempt in retrying:
            if self.done:
                break
            if stop is not None and stop.is_set():
                raise self._cancelled()
            with attempt:
                before = self.status
                first = attempt.retry_state.attempt_number == 1
                status = self.status if first and known else self.refresh()
            if not attempt.retry_state.outcome or attempt.retry_state.outcome.failed:
                continue  # tenacity re-raises it on the next turn
            attempt.retry_state.set_result(status)
            if status is not before:
                yield self
        if not self.done:
            raise self._timeout(bound)
        policy.finished(self)

    def wait(self, timeout: float | None = None, on_change: OnChange | None = None,
             poll_policy: PollPlanner | None = None,
             stop: threading.Event | None = None) -> Generation:
        """Poll until DONE or FAILED; call ``on_change(self)`` at each transition.

        Raises :class:`~arta.errors.GenerationTimeout` (with the record id)
        if the job has not ended after ``timeout`` seconds (default: the
        policy's, else unbounded), or :class:`~arta.errors.GenerationCancelled`
        once ``stop`` is set; either way the job goes on at the service and
        can be resumed. Returns the generation itself.
        """
        for generation in self.events(timeout, poll_policy, stop):
            if on_change is not None:
                on_change(generation)
        return self

    def result(self) -> Result:
        """The images of a DONE job; raise ``GenerationFailed`` for a FAILED one."""
        if self.status is Status.FAILED:
            reason = ": ".join(x for x in (self.error_code, self.error_details) if x)
            raw = "" if self.raw_status == "FAILED" else f" (status {self.raw_status!r})"
            raise GenerationFailed(
                f"the service failed the job{raw}" + (f": {reason}" if reason else ""),
                record_id=self.record_id, error_code=self.error_code,
                error_details=self.error_details,
            )
        if self.status is not Status.DONE:
            raise ArtaError(f"the job is {self.status}, not finished yet: call wait() first",
                            record_id=self.record_id)
        session = self._session
        return Result(self.record_id, self.images, self.seed, self.params, session,
                      session.retry_policy if session is not None else None)

    def _cancelled(self) -> GenerationCancelled:
        return GenerationCancelled(
            f"stopped waiting for the job while it was {self.status}; it goes on at the service",
            record_id=self.record_id,
        )

    def _timeout(self, bound: float | None) -> GenerationTimeout:
        return GenerationTimeout(
            f"the job is still {self.status} after {bound or 0:g}s; it may still finish",
            record_id=self.record_id,
        )

    # -- plain data --------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_session"] = None  # a live client does not cross processes
        return state

    def __repr__(self) -> str:
        return f"<Generation {self.record_id} {self.status}>"
