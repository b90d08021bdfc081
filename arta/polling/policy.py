"""Poll policies: when to ask the service about a job, as values the poll loop consults.

:class:`PollPolicy` is the fixed policy (tenacity's waits, composed);
:class:`PollPlanner` is what the loop asks of any policy, so that a policy
that learns (:class:`arta.polling.learned.LearnedPollPolicy`) is a value like it.
The checks here run before anything is sent: a bad timeout or policy is
an :class:`~arta.errors.InvalidInputError`, never a failure after a submit.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import tenacity

from arta.errors import InvalidInputError
from arta.params import GenerationParams
from arta.protocol import Status

__all__ = ["PollPlanner", "PollPolicy", "PolledJob", "check_timeout", "check_wait_options"]


class PolledJob(Protocol):
    """What a poll policy may read of a job (a :class:`~arta.generation.Generation` is one)."""

    @property
    def record_id(self) -> str:
        """The job's id at the service."""
        ...

    @property
    def params(self) -> GenerationParams | None:
        """What was asked (None for a job resumed by its id alone)."""
        ...

    @property
    def status(self) -> Status:
        """Where the job stands."""
        ...

    @property
    def seen(self) -> Sequence[tuple[float, Status]]:
        """Every answer about the job: ``(unix_time, status)``."""
        ...


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

    def __post_init__(self) -> None:
        for name in ("first_delay", "interval", "max_delay", "jitter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0 <= value < math.inf:
                raise InvalidInputError(
                    f"PollPolicy.{name} must be a finite number of seconds >= 0, not {value!r}")
        if isinstance(self.growth, bool) or not isinstance(self.growth, (int, float)) \
                or not 1 <= self.growth < math.inf:
            raise InvalidInputError(f"PollPolicy.growth must be a number >= 1, not {self.growth!r}")
        check_timeout(self.timeout, "PollPolicy.timeout")

    def next_delay(self, generation: PolledJob, attempt: int) -> float:
        """Seconds from now until poll number ``attempt`` (1: the first) of ``generation``."""
        return float(self._strategy(_Attempt(attempt)))  # type: ignore[arg-type]

    def finished(self, generation: PolledJob) -> None:
        """A fixed policy learns nothing from a finished job."""

    @functools.cached_property
    def _strategy(self) -> tenacity.wait.wait_base:
        # Built once per policy: next_delay runs at every poll of every job.
        return self.wait_strategy()

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

    def next_delay(self, generation: PolledJob, attempt: int) -> float:
        """Seconds from now until poll number ``attempt`` (1: the first of this wait)."""
        ...

    def finished(self, generation: PolledJob) -> None:
        """Called once when ``generation`` is seen DONE or FAILED (a place to learn)."""
        ...


def check_timeout(timeout: object, name: str = "timeout") -> float | None:
    """``timeout`` as seconds (None: no bound), or an ``InvalidInputError`` saying what is wrong."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
            or not 0 <= timeout < math.inf:
        raise InvalidInputError(
            f"{name} must be None or a finite number of seconds >= 0, not {timeout!r}")
    return float(timeout)


def check_wait_options(timeout: object, on_change: object, poll_policy: object) -> float | None:
    """Check a wait's arguments before anything is sent (or waited for); return the timeout."""
    if on_change is not None and not callable(on_change):
        raise InvalidInputError(f"on_change must be a callable or None, not {on_change!r}")
    if poll_policy is not None and not callable(getattr(poll_policy, "next_delay", None)):
        raise InvalidInputError(
            f"poll_policy must be an arta.PollPolicy (or a PollPlanner), not {poll_policy!r}")
    return check_timeout(timeout)
