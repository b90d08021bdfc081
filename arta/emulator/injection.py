"""Carrying out a fault plan: which request suffers which fault, and what it then gets.

:mod:`arta.emulator.faults` says what a plan is; this module draws from it
once per request (:meth:`FaultInjector.pick`) and turns the fault into an
answer (:func:`faulty_answer`). The two faults that need a socket, closing
without an answer and answering late, are marks on the :class:`Response`
that the server honours.
"""

from __future__ import annotations

import collections
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace

from arta.emulator.counters import Counters
from arta.emulator.faults import FaultPlan, FaultRule, parse_faults
from arta.emulator.firebase import FIREBASE_ENDPOINTS, firebase_error
from arta.emulator.messages import Request, Response, detail_response

__all__ = ["FaultInjector", "as_plan", "faulty_answer"]

Handler = Callable[[Request, Mapping[str, str]], Response]

_RETRY_AFTER = {"Retry-After": "1"}
_REASONS = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


def as_plan(faults: FaultPlan | str | None) -> FaultPlan:
    """A plan from a plan, a spec string, or None (no faults)."""
    if faults is None:
        return FaultPlan()
    if isinstance(faults, FaultPlan):
        return faults
    return parse_faults(faults)


class FaultInjector:
    """The plan in force, its seeded draws, the queued faults and the counts. Thread-safe.

    Faults have their own Random, so that turning them on does not change
    job durations or seeds, and the reverse.
    """

    def __init__(self, plan: FaultPlan, seed: int | None, counters: Counters) -> None:
        self.plan = plan
        self.seed = seed
        self._counters = counters
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget queued faults and counts; restart the draws from the seed."""
        with self._lock:
            self._random = random.Random(self.seed)
            self._queued: dict[str, collections.deque[str]] = {}
            self._counts: dict[str, int] = {}

    def set_plan(self, plan: FaultPlan, seed: int | None = None) -> None:
        """Put ``plan`` in force; restart the draws from ``seed`` when one is given."""
        with self._lock:
            self.plan = plan
            if seed is not None:
                self.seed = seed
                self._random = random.Random(seed)

    def inject(self, endpoint: str, fault: str, times: int) -> None:
        """Queue ``fault`` for the next ``times`` requests to ``endpoint``."""
        if not isinstance(times, int) or times < 1:
            raise ValueError(f"times must be a whole number >= 1, not {times!r}")
        FaultPlan((FaultRule(endpoint, fault, 1.0),))  # validates, with the spec's messages
        with self._lock:
            self._queued.setdefault(endpoint, collections.deque()).extend([fault] * times)

    def counts(self) -> dict[str, int]:
        """Faults injected so far, by ``"endpoint:fault"``."""
        with self._lock:
            return dict(self._counts)

    def pick(self, endpoint: str) -> str | None:
        """The fault this request to ``endpoint`` suffers, if any; counts it.

        A queued fault first; else one draw, only when the plan targets this
        endpoint, so that a plan's sequence on one endpoint is not shifted by
        traffic to endpoints it leaves alone. Under the lock, so draws follow
        arrival order and a seed repeats them.
        """
        if not self._queued and not self.plan:
            return None  # the usual case, without taking the lock
        with self._lock:
            queue = self._queued.get(endpoint)
            if queue:
                fault: str | None = queue.popleft()
            elif self.plan.targets(endpoint):
                fault = self.plan.choose(endpoint, self._random.random())
            else:
                return None
            if fault is not None:
                key = f"{endpoint}:{fault}"
                self._counts[key] = self._counts.get(key, 0) + 1
        if fault is not None:
            self._counters.add("faults")
        return fault


def _server_error(endpoint: str, status: int) -> Response:
    """An injected 5xx: 500 from the application (JSON), 502/503 from a proxy in front (HTML).

    The HTML ones are there on purpose: a client must survive an error body
    that is not JSON.
    """
    headers = _RETRY_AFTER if status == 503 else {}
    reason = _REASONS[status]
    if status == 500:
        if endpoint in FIREBASE_ENDPOINTS:
            return firebase_error("Internal error encountered.", 500, "INTERNAL")
        return detail_response(500, reason)
    body = (
        f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
        f"<center><h1>{status} {reason}</h1></center>\r\n</body>\r\n</html>\r\n"
    ).encode("ascii")
    return Response(
        status,
        {"Content-Type": "text/html", "Content-Length": str(len(body)), **headers},
        body,
    )


def _too_many_requests(endpoint: str) -> Response:
    """An injected 429: Google's envelope for Firebase, FastAPI's detail for the rest.

    Firebase's message is RESOURCE_EXHAUSTED, not TOO_MANY_ATTEMPTS_TRY_LATER:
    the latter means the hourly sign-up quota is spent, which is no
    transient fault.
    """
    if endpoint in FIREBASE_ENDPOINTS:
        return firebase_error("RESOURCE_EXHAUSTED", 429, "RESOURCE_EXHAUSTED", _RETRY_AFTER)
    return detail_response(429, "Too Many Requests", _RETRY_AFTER)


def _truncated(answer: Response) -> Response:
    """``answer`` with the first half of its body only: well-formed HTTP, undecodable body."""
    body = answer.body[: len(answer.body) // 2]
    return replace(answer, headers={**answer.headers, "Content-Length": str(len(body))}, body=body)


def faulty_answer(
    endpoint: str,
    fault: str,
    handler: Handler,
    request: Request,
    params: Mapping[str, str],
    submit_with_outcome: Callable[[Request, Mapping[str, str], str], Response],
    slow_seconds: float,
) -> Response:
    """Answer a request that suffers ``fault``, as ``faults.FAULT_KINDS`` describes."""
    if fault == "429":
        return _too_many_requests(endpoint)
    if fault in ("500", "502", "503"):
        return _server_error(endpoint, int(fault))
    if fault == "drop":
        # The worst case for a client: the job exists, but the answer
        # naming it is lost, so a blind retry makes a second one.
        if endpoint == "submit":
            return replace(handler(request, params), drop=True)
        return Response(0, {}, b"", drop=True)
    if fault in ("fail", "stuck"):
        return submit_with_outcome(request, params, fault)
    # "slow" and "badjson": the work is done, only the answer suffers.
    answer = handler(request, params)
    if fault == "slow":
        return replace(answer, delay=slow_seconds)
    return _truncated(answer)
