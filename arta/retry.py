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
from dataclasses import dataclass
from typing import Callable, TypeVar

import tenacity

from arta.errors import (
    ConnectError,
    MalformedResponse,
    ProtocolError,
    ServiceError,
    TransportError,
)

__all__ = ["TRANSIENT_STATUSES", "RetryPolicy", "surely_not_taken", "transient"]

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


def surely_not_taken(error: BaseException) -> bool:
    """True if the server surely did not act on the request, so even a submit may be re-sent."""
    if isinstance(error, ServiceError):
        return error.status in (429, 503)
    return isinstance(error, ConnectError)


class _wait_retry_after(tenacity.wait.wait_base):
    """Wait as ``fallback`` says, but never less than the server's ``Retry-After``."""

    def __init__(self, fallback: tenacity.wait.wait_base, cap: float) -> None:
        self.fallback = fallback
        self.cap = cap

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        wait = self.fallback(retry_state)
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None and outcome.failed else None
        asked = getattr(error, "retry_after", None)
        if isinstance(asked, (int, float)):
            wait = max(wait, min(float(asked), self.cap))
        return float(wait)


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

    def call(self, function: Callable[[], T], retry_on: Callable[[BaseException], bool]) -> T:
        """Call ``function``, repeating it after errors ``retry_on`` accepts; raise the last one."""
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(retry_on),
            wait=_wait_retry_after(
                tenacity.wait_exponential(multiplier=self.first_delay, max=self.max_delay)
                + tenacity.wait_random(0, self.jitter),
                self.max_retry_after,
            ),
            stop=tenacity.stop_after_attempt(self.attempts),
            before_sleep=_log_retry,
            reraise=True,  # the caller sees the last typed error, not tenacity's RetryError
        )
        return retrying(function)
