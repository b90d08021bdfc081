"""What a transport does with ``Request.deadline``: timeouts capped, the bound of an answer, its error.

Every transport uses these, so that a deadline means the same on each; the
socket itself is cut at the deadline by :mod:`arta.transport.watchdog`.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Callable

from arta.errors import ConnectError, NoResponseError, TransportError
from arta.redact import scrub_chain
from arta.transport.base import Request, describe, secrets_of
from arta.transport.bodies import BODY_TIME_FACTOR
from arta.transport.watchdog import Slot, set_current_slot, watchdog

__all__ = ["DEADLINE_SLACK", "MIN_TIMEOUT", "answer_bound", "bounded_timeouts", "expired",
           "overdue", "sending", "too_late_to_send"]

#: The shortest timeout a socket is given when a deadline is near (0 would
#: make it non-blocking, and None would make it wait forever).
MIN_TIMEOUT = 0.001

#: A timeout that fires this close to the deadline is the deadline's doing
#: (a capped socket timeout may fire a hair before the deadline itself).
DEADLINE_SLACK = 0.05


def bounded_timeouts(request: Request, now: float) -> tuple[float, float]:
    """``(connect, read)`` seconds for ``request`` sent at ``now``: its own, each capped by the time left."""
    connect, read = request.connect_timeout, request.read_timeout
    if request.deadline is not None:
        left = max(request.deadline - now, MIN_TIMEOUT)
        connect, read = min(connect, left), min(read, left)
    return connect, read


def answer_bound(request: Request, now: float) -> tuple[float | None, bool]:
    """When the answer to ``request`` sent at ``now`` must be in, and whether that is its deadline.

    A body that is not streamed must arrive whole (status line, headers and
    body) within :data:`BODY_TIME_FACTOR` read timeouts, or by the
    deadline if that comes first. A streamed one (an image) takes as long
    as it takes, a chunk at most a read timeout apart, unless there is a
    deadline. ``(None, False)``: nothing to watch.
    """
    deadline = request.deadline
    if request.stream:
        return deadline, deadline is not None
    whole = now + BODY_TIME_FACTOR * request.read_timeout
    if deadline is not None and deadline <= whole:
        return deadline, True
    return whole, False


def too_late_to_send(request: Request, now: float) -> ConnectError | None:
    """The error for a request whose deadline has passed before it was sent, else None."""
    if request.deadline is not None and now >= request.deadline:
        return ConnectError(f"no connection before the deadline: {describe(request)}")
    return None


def expired(request: Request) -> bool:
    """True if ``request`` has a deadline and it has come (within :data:`DEADLINE_SLACK`)."""
    return request.deadline is not None and time.monotonic() >= request.deadline - DEADLINE_SLACK


def overdue(request: Request, error: TransportError, slot: Slot | None) -> TransportError:
    """``error`` (a failure of ``request``), or the one naming the bound that ended it.

    When the watchdog cut the socket (``slot.fired``), or a timeout capped
    by the deadline fired: :class:`~arta.errors.ConnectError` if the
    request never started to go out, else
    :class:`~arta.errors.NoResponseError`. Messages name the request
    safely (:func:`describe`).
    """
    if slot is not None and slot.sending and isinstance(error, ConnectError):
        # A TLS or proxy error after the request started to go out: it may
        # have arrived, whatever the library calls it.
        error = NoResponseError(f"the connection was lost before an answer: {describe(request)}")
    if slot is not None and slot.fired:
        if not slot.by_deadline:
            budget = BODY_TIME_FACTOR * request.read_timeout
            return NoResponseError(
                f"the answer did not arrive whole within {budget:g}s "
                f"({BODY_TIME_FACTOR} x the read timeout): {describe(request)}")
        sent = slot.sending  # the connection knows, whatever the library raised
    elif isinstance(error, (ConnectError, NoResponseError)) and expired(request):
        sent = isinstance(error, NoResponseError)
    else:
        return error
    if sent:
        return NoResponseError(f"no whole answer before the deadline: {describe(request)}")
    return ConnectError(f"no connection before the deadline: {describe(request)}")


class sending:
    """Around a transport's send: the thread's connections register their socket in ``slot``.

    If the send fails, the slot is disarmed first (a connection no answer
    will come on must not be cut later, once back in a pool), then a failure
    of one of the ``expected`` kinds is raised as ``mapped(error, request)``
    or the deadline's error (:func:`overdue`), its chain scrubbed of the
    request's secrets; any other (an interrupt) goes on as it is.
    """

    __slots__ = ("expected", "mapped", "request", "slot")

    def __init__(self, request: Request, slot: Slot | None,
                 mapped: Callable[[BaseException, Request], TransportError],
                 expected: tuple[type[BaseException], ...]) -> None:
        self.request, self.slot, self.mapped, self.expected = request, slot, mapped, expected

    def __enter__(self) -> None:
        set_current_slot(self.slot)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        set_current_slot(None)
        if error is None:
            return
        if self.slot is not None:
            watchdog.disarm(self.slot)
        if isinstance(error, self.expected):
            request = self.request
            raise overdue(request, self.mapped(error, request), self.slot) \
                from scrub_chain(error, secrets_of(request))
