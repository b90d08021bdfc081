"""Retry policies: which failures deserve another try, and how long to wait first.

Two questions decide a retry, and they differ by call:

* an idempotent call (a status poll, an image download, a token refresh) may
  be repeated after any *transient* failure: the network, a 429, a 5xx, an
  answer cut short or garbled;
* a submit creates a job that costs money, so it is re-sent only when the
  server *surely did not take it*: the connection was never made, or it
  answered 429 or 503. After anything else the job may exist, and the caller
  gets :class:`~arta.errors.SubmitOutcomeUnknown` instead of a duplicate.

The waits are tenacity's exponential backoff with jitter, lengthened to the
server's ``Retry-After`` when it sends one.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Callable, TypeVar

import tenacity

from arta.errors import (
    ConnectError,
    MalformedResponse,
    ProtocolError,
    ServiceError,
    TransportError,
)

__all__ = ["TRANSIENT_STATUSES", "RetryPolicy", "congested", "retry_after", "surely_not_taken", "transient"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: HTTP statuses that say "not now" rather than "never".
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})


def transient(error: BaseException) -> bool:
    """True if repeating an idempotent call after ``error`` may succeed."""
    if isinstance(error, ServiceError):
        return error.status in TRANSIENT_STATUSES
    if isinstance(error, MalformedResponse):
        return False  # too big, too deep, ...: the same answer would come again
    return isinstance(error, (TransportError, ProtocolError))


def congested(error: BaseException) -> bool:
    """True if the service said it is too busy (429, 503): send less, and nothing was taken.

    The one statement of the congestion rule: the engine's window halves on
    it, and a submit refused so is no failed job.
    """
    return isinstance(error, ServiceError) and error.status in (429, 503)


def surely_not_taken(error: BaseException) -> bool:
    """True if the server surely did not act on the request, so even a submit may be re-sent."""
    return congested(error) or isinstance(error, ConnectError)


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asked us to wait (``Retry-After``, seconds or HTTP date)."""
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _log_retry(retry_state: tenacity.RetryCallState) -> None:
    outcome = retry_state.outcome
    error = outcome.exception() if outcome is not None else None
    wait = retry_state.next_action.sleep if retry_state.next_action else 0.0
    log.info("attempt %d failed (%s); retrying in %.2fs", retry_state.attempt_number, error, wait)


@dataclass(frozen=True)
class RetryPolicy:
    """How persistently one call is repeated: a value, composed from tenacity parts.

    At most ``attempts`` tries; the first retry waits ``first_delay``
    seconds, each next one twice as long, capped at ``max_delay``, plus up
    to ``jitter`` seconds at random. A ``Retry-After`` up to
    ``max_retry_after`` seconds is waited out in full.
    """

    attempts: int = 4
    first_delay: float = 0.5
    max_delay: float = 8.0
    jitter: float = 0.5
    max_retry_after: float = 60.0

    def backoff(self) -> tenacity.wait.wait_base:
        """The wait before retry number ``attempt_number``, before ``Retry-After`` is heard."""
        return (tenacity.wait_exponential(multiplier=self.first_delay, max=self.max_delay)
                + tenacity.wait_random(0, self.jitter))

    def delay(self, error: BaseException, attempt: int) -> float:
        """Seconds to wait after failed try number ``attempt``: the backoff, or the server's ask."""
        wait = float(self.backoff()(_Attempt(attempt)))  # type: ignore[arg-type]
        asked = getattr(error, "retry_after", None)
        if isinstance(asked, (int, float)) and math.isfinite(asked):
            wait = max(wait, min(float(asked), self.max_retry_after))
        return wait

    def retrying(self, retry_on: Callable[[BaseException], bool], *,
                 deadline: float | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> tenacity.Retrying:
        """This policy as a :class:`tenacity.Retrying`: the one place a retry is decided.

        Errors ``retry_on`` accepts are retried, at most :attr:`attempts`
        tries; the waits are :meth:`delay`'s; a retry that could only start
        after ``deadline`` (a ``time.monotonic()`` value) is not made, and
        the last error is raised as it is. Blocking calls run through it
        (:meth:`call`); the poll loop drives the same object step by step
        (``Retrying.iter``), sleeping on its heap instead of a thread.
        """

        def wait(retry_state: tenacity.RetryCallState) -> float:
            outcome = retry_state.outcome
            error = outcome.exception() if outcome is not None else None
            return self.delay(error or Exception(), retry_state.attempt_number)

        def stop(retry_state: tenacity.RetryCallState) -> bool:
            return retry_state.attempt_number >= self.attempts or (
                deadline is not None and time.monotonic() + wait(retry_state) > deadline)

        return tenacity.Retrying(
            retry=tenacity.retry_if_exception(retry_on), wait=wait, stop=stop,
            before_sleep=_log_retry, sleep=sleep,
            reraise=True,  # the caller sees the last typed error, not tenacity's RetryError
        )

    def call(self, function: Callable[[], T], retry_on: Callable[[BaseException], bool],
             *, deadline: float | None = None, stop: threading.Event | None = None) -> T:
        """Call ``function``, repeating it after errors ``retry_on`` accepts; raise the last one.

        No sleep outlasts ``deadline`` (see :meth:`retrying`). Setting
        ``stop`` ends a sleep early, raising the last error.
        """
        last: list[BaseException] = []

        def sleep(seconds: float) -> None:
            if stop is None:
                time.sleep(seconds)
            elif stop.wait(seconds):
                raise _Stopped

        def attempt() -> T:
            try:
                return function()
            except BaseException as error:
                last[:] = [error]
                raise

        try:
            return self.retrying(retry_on, deadline=deadline, sleep=sleep)(attempt)
        except _Stopped:
            raise last[0] from None


class _Stopped(Exception):
    """A retry's sleep was cut short by its stop event."""


class _Attempt:
    """The one field of a tenacity ``RetryCallState`` that a backoff reads."""

    def __init__(self, attempt_number: int) -> None:
        self.attempt_number = attempt_number
