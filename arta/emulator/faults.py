"""Fault plans: which endpoint misbehaves how, and how often; and the parsers for the CLI flags.

A plan is written as a spec string, a comma-separated list of
``ENDPOINT:FAULT=PROBABILITY``, for example::

    submit:drop=0.05,status:503=0.1,status:badjson=0.05,submit:fail=0.02

:func:`parse_faults` turns it into a :class:`FaultPlan`, a frozen value the
:class:`~arta.emulator.app.EmulatorApp` draws from once per request. What
each fault does is described on :data:`FAULT_KINDS` and in the package
docstring.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "ENDPOINTS",
    "FAULT_KINDS",
    "SUBMIT_ONLY_FAULTS",
    "FaultPlan",
    "FaultRule",
    "parse_faults",
    "parse_seconds",
]

#: The endpoints a fault can target: Firebase sign-up and refresh, the
#: text2image submit and status poll, and the image download.
ENDPOINTS: tuple[str, ...] = ("signup", "refresh", "submit", "status", "image")

#: The faults, in spec spelling:
#:
#: - ``429``: Too Many Requests with ``Retry-After: 1``; nothing is done.
#: - ``500``, ``502``, ``503``: that server error (503 with ``Retry-After: 1``);
#:   nothing is done.
#: - ``drop``: the connection closes with no answer. A submit still creates
#:   its job first; any other request is not performed.
#: - ``slow``: the right answer, but only after ``slow_seconds``.
#: - ``badjson``: the answer's body cut in half (JSON, or PNG for images).
#: - ``fail`` (submit only): the job ends ``FAILED`` instead of ``DONE``.
#: - ``stuck`` (submit only): the job stays ``IN_PROGRESS`` forever.
FAULT_KINDS: tuple[str, ...] = (
    "429", "500", "502", "503", "drop", "slow", "badjson", "fail", "stuck",
)

#: Faults that decide a job's fate, so only a submit can carry them.
SUBMIT_ONLY_FAULTS: frozenset[str] = frozenset({"fail", "stuck"})

# Rounding: 0.7 + 0.2 + 0.1 is 0.9999999999999999 or 1.0000000000000002
# depending on order, and either must pass as "adds up to 1".
_SUM_TOLERANCE = 1e-9

_EXAMPLE = "submit:drop=0.05,status:503=0.1"


def _check_target(endpoint: str, fault: str) -> str | None:
    """Why ``fault`` on ``endpoint`` is not allowed, or None if it is."""
    if endpoint not in ENDPOINTS:
        return f"unknown endpoint {endpoint!r}; expected one of: {', '.join(ENDPOINTS)}"
    if fault not in FAULT_KINDS:
        return f"unknown fault {fault!r}; expected one of: {', '.join(FAULT_KINDS)}"
    if fault in SUBMIT_ONLY_FAULTS and endpoint != "submit":
        return (
            f"fault {fault!r} decides a job's outcome, so it applies only to submit, "
            f"not to {endpoint!r}"
        )
    return None


class FaultRule(NamedTuple):
    """One ``ENDPOINT:FAULT=PROBABILITY`` part of a plan."""

    endpoint: str
    fault: str
    probability: float

    def __str__(self) -> str:
        return f"{self.endpoint}:{self.fault}={self.probability:g}"


@dataclass(frozen=True)
class FaultPlan:
    """Which faults each endpoint suffers, and with what probability.

    Build one with :func:`parse_faults`, or from :class:`FaultRule` values::

        FaultPlan((FaultRule("submit", "drop", 0.05),))

    It is checked on construction: known endpoints and faults, ``fail`` and
    ``stuck`` only on ``submit``, probabilities in [0, 1] adding up to at
    most 1 per endpoint (a request suffers at most one fault), and no
    endpoint/fault pair given twice. ``str(plan)`` gives its spec back; a
    plan that can inject nothing (no rules, or all at 0) is falsy.
    """

    rules: tuple[FaultRule, ...] = ()

    def __post_init__(self) -> None:
        # Accept any iterable of (endpoint, fault, probability) triples, so a
        # caller can pass a list of plain tuples; store NamedTuples in a tuple
        # so the plan stays hashable and immutable.
        rules = tuple(FaultRule(*rule) for rule in self.rules)
        object.__setattr__(self, "rules", rules)
        seen: set[tuple[str, str]] = set()
        totals: dict[str, float] = {}
        for rule in rules:
            problem = _check_target(rule.endpoint, rule.fault)
            if problem is not None:
                raise ValueError(f"fault {rule.endpoint}:{rule.fault}: {problem}")
            probability = rule.probability
            if not (isinstance(probability, (int, float)) and 0.0 <= probability <= 1.0):
                raise ValueError(
                    f"fault {rule.endpoint}:{rule.fault}: probability {probability!r} "
                    "is not a number between 0 and 1"
                )
            if (rule.endpoint, rule.fault) in seen:
                raise ValueError(f"fault {rule.endpoint}:{rule.fault} is given twice")
            seen.add((rule.endpoint, rule.fault))
            totals[rule.endpoint] = totals.get(rule.endpoint, 0.0) + probability
        for endpoint, total in totals.items():
            if total > 1.0 + _SUM_TOLERANCE:
                raise ValueError(
                    f"the fault probabilities of {endpoint} add up to {total:g}, more than 1 "
                    "(a request suffers at most one fault)"
                )

    def __str__(self) -> str:
        return ",".join(str(rule) for rule in self.rules)

    def __bool__(self) -> bool:
        return any(rule.probability > 0 for rule in self.rules)

    def for_endpoint(self, endpoint: str) -> tuple[FaultRule, ...]:
        """The rules that apply to ``endpoint``, in plan order."""
        return tuple(rule for rule in self.rules if rule.endpoint == endpoint)

    def targets(self, endpoint: str) -> bool:
        """True if a request to ``endpoint`` can draw a fault."""
        return any(rule.probability > 0 for rule in self.for_endpoint(endpoint))

    def choose(self, endpoint: str, draw: float) -> str | None:
        """The fault that a uniform ``draw`` in [0, 1) picks for ``endpoint``, or None.

        The endpoint's probabilities are laid end to end from 0; the draw
        picks the one it falls in, or no fault past their sum.
        """
        edge = 0.0
        for rule in self.for_endpoint(endpoint):
            edge += rule.probability
            if draw < edge:
                return rule.fault
        return None


def parse_faults(spec: str) -> FaultPlan:
    """Parse ``"ENDPOINT:FAULT=PROBABILITY,..."`` into a :class:`FaultPlan`.

    Names are case-insensitive and blanks around parts are ignored; a blank
    spec is the empty plan. A bad part raises :class:`ValueError` naming it
    and listing what is allowed.
    """
    if not spec.strip():
        return FaultPlan()
    rules: list[FaultRule] = []
    for part in spec.split(","):
        text = part.strip()
        if not text:
            raise ValueError(
                f"fault spec {spec!r} has an empty part; expected "
                f"ENDPOINT:FAULT=PROBABILITY,... e.g. {_EXAMPLE}"
            )
        target, equals, number = text.partition("=")
        endpoint, colon, fault = target.partition(":")
        endpoint, fault = endpoint.strip().lower(), fault.strip().lower()
        if not (equals and colon and endpoint and fault and number.strip()):
            raise ValueError(
                f"fault spec part {text!r}: expected ENDPOINT:FAULT=PROBABILITY, e.g. {_EXAMPLE}"
            )
        problem = _check_target(endpoint, fault)
        if problem is not None:
            raise ValueError(f"fault spec part {text!r}: {problem}")
        try:
            probability = float(number)
        except ValueError:
            raise ValueError(
                f"fault spec part {text!r}: probability {number.strip()!r} is not a number"
            ) from None
        # NaN fails every comparison, so "not 0 <= p <= 1" catches it too.
        if not 0.0 <= probability <= 1.0:
            raise ValueError(
                f"fault spec part {text!r}: probability {number.strip()!r} "
                "is not between 0 and 1"
            )
        rules.append(FaultRule(endpoint, fault, probability))
    try:
        return FaultPlan(tuple(rules))
    except ValueError as exc:
        raise ValueError(f"fault spec {spec!r}: {exc}") from None


# No sign and no exponent: "-" separates the bounds, so "1e-3" would be ambiguous.
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_SECONDS = re.compile(rf"\s*({_NUMBER})\s*(?:-\s*({_NUMBER})\s*)?")


def parse_seconds(text: str) -> tuple[float, float]:
    """Parse ``"2"`` or ``"0-3"`` (seconds, or a MIN-MAX range) into ``(min, max)``.

    What ``--queue-seconds`` and ``--progress-seconds`` take; the tuple goes
    straight to ``Emulator(queue_seconds=..., progress_seconds=...)``.
    Raises :class:`ValueError` for anything else, a negative bound or
    MIN > MAX.
    """
    match = _SECONDS.fullmatch(text)
    if match is None:
        raise ValueError(
            f"expected seconds or a MIN-MAX range of seconds (e.g. 2 or 0-3), got {text!r}"
        )
    low = float(match.group(1))
    high = float(match.group(2)) if match.group(2) is not None else low
    if not (math.isfinite(high) and low <= high):
        raise ValueError(f"expected MIN <= MAX in a range of seconds, got {text!r}")
    return (low, high)
