"""A poll policy that learns when jobs finish, and polls then (docs/polling.rst has the whole story).

A job's finish is its start (:mod:`arta.polling.queue`) plus the duration a
model of the work predicts (:mod:`arta.polling.model`, :mod:`arta.polling.stats`);
the next poll goes where the expected lateness given "not done yet" reaches
the worth of one request. Before enough is known, its ``fallback`` decides.
"""

from __future__ import annotations

import collections
import heapq
import math
import os
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from arta.config import Settings
from arta.polling.model import DurationModel, QueueModel
from arta.polling.policy import PolledJob, PollPlanner, PollPolicy
from arta.polling.queue import QueueView
from arta.polling.stats import ClassKey, Interval, PollStats, shared_stats
from arta.protocol import Status

__all__ = ["STATS_FILE", "LearnedPollPolicy", "Timeline", "default_poll_policy"]

#: The shared statistics file's name in ``ARTA_HOME``.
STATS_FILE = "poll_stats.json"

_NOT_STARTED = (Status.SUBMITTED, Status.IN_QUEUE)
#: The share of a prediction given to "the model is wrong for this job", and how much wider.
_WIDE_SHARE, _WIDE_FACTOR = 0.06, 3.0
#: A job is overdue once the chance it is still running falls under 1e-3: that far into the tail.
_OVERDUE_Z = statistics.NormalDist().inv_cdf(1 - 1e-3 / _WIDE_SHARE)
_SQRT2, _SQRT2PI = math.sqrt(2.0), math.sqrt(2.0 * math.pi)


@dataclass(frozen=True)
class Timeline:
    """What the polls of one job bound: when it was submitted, started and ended."""

    submitted: float | None  # the submit's answer, when this process made it
    start_after: float | None  # the last answer IN_QUEUE (or the submit)
    start_by: float | None  # the first answer IN_PROGRESS or DONE
    end_after: float | None  # the last answer before DONE
    end_by: float | None  # the first answer DONE
    last: float | None  # the latest answer

    @classmethod
    def of(cls, generation: PolledJob) -> Timeline:
        """Read the bounds from ``generation.seen``."""
        seen = sorted(generation.seen, key=lambda item: item[0])
        submitted = seen[0][0] if seen and generation.params is not None else None
        start_after = start_by = end_after = end_by = None
        for at, status in seen:
            if status is Status.FAILED or end_by is not None:
                break
            if status in _NOT_STARTED and start_by is None:
                start_after = at
            elif status in (Status.IN_PROGRESS, Status.DONE) and start_by is None:
                start_by = at
            if status is Status.DONE:
                end_by = at
            else:
                end_after = at
        if start_after is None and start_by is not None and submitted is not None:
            start_after = submitted  # it had started by the submit's answer
        return cls(submitted, start_after, start_by, end_after, end_by,
                   seen[-1][0] if seen else None)

    def duration(self) -> Interval | None:
        """The in-progress time ``(lo, hi, when)`` of a finished job, if bounded."""
        start_after, start_by, end_after, end_by = (self.start_after, self.start_by,
                                                    self.end_after, self.end_by)
        if start_after is None or start_by is None or end_after is None or end_by is None:
            return None
        return max(0.0, end_after - start_by), end_by - start_after, end_by

    def queue(self) -> Interval | None:
        """The queue wait ``(lo, hi, when)`` of a started job this process submitted."""
        if self.submitted is None or self.start_after is None or self.start_by is None:
            return None
        return self.start_after - self.submitted, self.start_by - self.submitted, self.start_by


def class_key(generation: PolledJob) -> ClassKey | None:
    """The class of a job: the parameters that decide how long it computes."""
    p = generation.params
    return None if p is None else (p.style, p.steps, p.n, p.aspect_ratio)


def time_for_lateness(last: float, parts: list[tuple[float, float, float]], kappa: float) -> float:
    """The ``t`` where ``E[(t - X)+ | X > last] = kappa``, X a mixture of normals ``(weight, m, s)``.

    ``E[(t - X) 1{last < X < t}]`` is ``(t - m)(F(t) - F(last)) + s (f(t) - f(last))`` per part
    (F, f: the normal's cdf and density in ``(x - m) / s``); it is convex and increasing in ``t``,
    so Newton's steps converge (from below, the first lands above; from above, they stay there).
    """
    below = [(w, m, s, _cdf((last - m) / s), _pdf((last - m) / s)) for w, m, s in parts]
    beyond = sum(w * (1 - fa) for w, _, _, fa, _ in below)
    if beyond < 1e-12:  # surely over by now, yet not seen so: the mixture was wrong
        return last + kappa
    t = max(last, parts[0][1]) + kappa
    for _ in range(12):
        value = slope = 0.0
        for w, m, s, fa, pa in below:
            z = (t - m) / s
            fz = _cdf(z)
            value += w * ((t - m) * (fz - fa) + s * (_pdf(z) - pa))
            slope += w * (fz - fa)
        value, slope = value / beyond - kappa, slope / beyond
        if abs(value) < 0.01 or slope <= 0:
            break
        t = max(last, t - value / slope)
    return t


def _finish(prediction: tuple[float, float], lo: float, hi: float) -> tuple[float, float]:
    """The finish's mean and spread: a start within ``[lo, hi]``, then ``prediction``'s duration."""
    mu, sigma = prediction
    mean = math.exp(mu + sigma * sigma / 2)
    return (lo + hi) / 2 + mean, math.hypot((hi - lo) / math.sqrt(12), mean * sigma)


def _truncated_mean(m: float, s: float, lo: float, hi: float) -> float:
    """The mean of a normal ``(m, s)`` between ``lo`` and ``hi`` (the nearer end if none is there)."""
    a, b = (lo - m) / s, (hi - m) / s
    mass = _cdf(b) - _cdf(a)
    if mass < 1e-9:
        return lo if m < lo else hi
    return min(hi, max(lo, m + s * (_pdf(a) - _pdf(b)) / mass))


def _cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / _SQRT2)


def _pdf(z: float) -> float:
    return math.exp(-0.5 * z * z) / _SQRT2PI


class LearnedPollPolicy:
    """A :class:`~arta.polling.PollPlanner` that polls when a job is likely done.

    ``home`` is where ``poll_stats.json`` is shared (default ``ARTA_HOME``),
    or pass ``stats``. ``lateness_per_poll`` is how many seconds of noticing
    late one status request is worth (less for an unsure job: see
    :meth:`plan`): lower polls more. ``half_life`` is in jobs: how fast old
    observations fade from the model. Delays stay within ``[min_delay,
    max_delay]``; no poll comes more than ``max_lateness`` seconds after the
    job's first 2% chance of being done. ``clock`` gives Unix time.
    """

    def __init__(self, home: str | os.PathLike[str] | None = None, *,
                 fallback: PollPolicy | None = None, stats: PollStats | None = None,
                 lateness_per_poll: float = 0.2, half_life: float = 40.0,
                 min_observations: int = 3, min_delay: float = 0.25, max_delay: float = 30.0,
                 refit_interval: float = 1.0, max_lateness: float = 3.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.fallback = fallback or PollPolicy()
        if stats is None:
            folder = Path(home).expanduser() if home is not None else Settings.resolve().home
            stats = shared_stats(folder / STATS_FILE)
        self.stats = stats
        self.lateness_per_poll, self.half_life = lateness_per_poll, half_life
        self.min_observations = min_observations
        self.min_delay, self.max_delay = min_delay, max_delay
        self.refit_interval = refit_interval
        self.max_lateness = max_lateness
        self.clock = clock
        self._reset()

    def _reset(self) -> None:
        """The state of one process: fitted models, this process's jobs."""
        self._lock = threading.Lock()
        self._fitted: tuple[int, DurationModel | None, QueueModel | None] = (-1, None, None)
        self._fitted_at = -math.inf
        self.queue = QueueView()
        self._finished: collections.OrderedDict[str, None] = collections.OrderedDict()
        #: Running jobs far late (id -> surprise, submit time); the shift they prove, from when.
        self._late: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()
        self._shift, self._refuted = (0.0, math.inf), -math.inf

    @property
    def timeout(self) -> float | None:
        """The fallback's bound of a whole wait."""
        return self.fallback.timeout

    # -- PollPlanner ---------------------------------------------------------------

    def next_delay(self, generation: PolledJob, attempt: int) -> float:
        """Seconds until the next poll: the learned plan, else the fallback's."""
        delay = self.plan(generation, attempt)
        return self.fallback.next_delay(generation, attempt) if delay is None else delay

    def finished(self, generation: PolledJob) -> None:
        """Learn from a job seen DONE (once per record id)."""
        if generation.status is not Status.DONE:
            return
        with self._lock:
            if generation.record_id in self._finished:
                return
            self._finished[generation.record_id] = None
            if len(self._finished) > 10_000:
                self._finished.popitem(last=False)
        self._see_late(generation.record_id, 0.0, 0.0, 0.0)  # it ended: late no more
        timeline = Timeline.of(generation)
        key, duration, queue = class_key(generation), timeline.duration(), timeline.queue()
        if duration is not None and queue is not None:  # narrowed by the other jobs' polls
            sub, end_after, end_by = timeline.submitted, timeline.end_after, timeline.end_by
            assert sub is not None and end_after is not None and end_by is not None
            lo, hi = self.queue.start_bounds(sub, sub + queue[0], sub + queue[1])
            end_lo, end_hi, durations = end_after, end_by, self.models()[0]
            if durations is not None and key is not None:
                # Polls crowd just after a predicted end, so a job's end is late in its last
                # gap, not at its middle: take where the prediction puts it in that gap.
                mu, sigma = durations.predict(key)
                m, s = _finish((mu, sigma), lo, hi)
                end_lo = end_hi = _truncated_mean(m, s, end_after, end_by)
                if sub >= self._shift[1] and math.log(max(1e-3, end_lo - hi)) - mu < 3 * sigma:
                    self._refuted = max(self._refuted, sub)  # the late ones were not a slow-down
            duration = (max(0.0, end_lo - hi), end_hi - lo, end_by)
            queue = (lo - sub, hi - sub, hi)
        if (key is not None and duration is not None) or queue is not None:
            self.stats.record(key, duration, queue)

    # -- the plan ------------------------------------------------------------------

    def models(self) -> tuple[DurationModel | None, QueueModel | None]:
        """The models fitted to the current statistics (refitted when they change)."""
        state = self.stats.state()
        version, now = self.stats.version, self.clock()
        with self._lock:
            if self._fitted[0] != version and now - self._fitted_at >= self.refit_interval:
                enough = sum(len(c.recent) for c in state.classes.values()) >= self.min_observations
                self._fitted = (version,
                                DurationModel.fit(state, self.half_life) if enough else None,
                                QueueModel.fit(state))
                self._fitted_at = now
            return self._fitted[1], self._fitted[2]

    def plan(self, generation: PolledJob, attempt: int = 1) -> float | None:
        """Seconds until the next poll, or None where the fallback decides."""
        key = class_key(generation)
        timeline = Timeline.of(generation)
        sub, last = timeline.submitted, timeline.last
        if key is None or sub is None or last is None:
            return None
        durations, queue = self.models()
        if durations is None:
            return None
        now = max(self.clock(), last)
        started = timeline.start_by is not None
        self.queue.see(generation.record_id, sub, None if started else timeline.start_after,
                       timeline.start_by)
        lo, hi = self.queue.start_bounds(sub, timeline.start_after or sub,
                                         timeline.start_by or math.inf)
        mu, sigma = durations.predict(key)
        if hi < math.inf:  # a job running far past its prediction says the service slowed down
            self._see_late(generation.record_id, sub, math.log(max(1e-3, last - hi)) - mu, sigma)
        prediction = (mu + self._shift[0], sigma) if sub >= self._shift[1] else (mu, sigma)
        if hi == math.inf:  # still queued, as far as anyone knows
            return self._probe(generation, prediction, sub, lo, last, now, queue)
        m, s = _finish(prediction, lo, hi)
        parts = [(1 - _WIDE_SHARE, m, s), (_WIDE_SHARE, m, _WIDE_FACTOR * s)]
        overdue_at = m + _OVERDUE_Z * _WIDE_FACTOR * s
        if last > overdue_at:
            return self._overdue(generation, overdue_at)
        first_chance = m - 2.05 * s  # the core's 2% quantile
        # a long or unsure job (a spread over a second) is worth more polls, as a fixed
        # policy's grow with a job's length: not only ever later ones
        kappa = self.lateness_per_poll / math.sqrt(max(1.0, s))
        at = min(time_for_lateness(last, parts, kappa),
                 max(now, first_chance) + self.max_lateness)
        return self._bounded(at - now)

    def _probe(self, generation: PolledJob, prediction: tuple[float, float], sub: float,
               lo: float, last: float, now: float, queue: QueueModel | None) -> float | None:
        """The next poll of a queued job: just after it has likely started (found within half
        the duration's spread of its start: closer would buy little, and cost polls)."""
        expected = self.queue.expected_start(sub, now)
        if expected is not None:
            starts = [(1.0, expected[0], max(0.1, expected[1]))]
        elif queue is None:
            return None  # in a queue we know nothing of: the fallback decides
        else:  # it waits as long as the jobs before it did, given how long it has waited
            starts = [(w, sub + wait, 0.5) for wait, w in queue.waits if wait > lo - sub]
            if not starts:  # queued longer than any job seen
                return self._overdue(generation, lo)
        mu, sigma = prediction
        kappa = math.sqrt(3) / 2 * math.exp(mu) * sigma
        at = min(time_for_lateness(last, starts, kappa),
                 # and, as for a running job, within max_lateness of its first chance to be done
                 lo + math.exp(mu - 2 * sigma) + self.max_lateness)
        return self._bounded(at - now)

    def _see_late(self, record_id: str, sub: float, surprise: float, sigma: float) -> None:
        """Keep the running jobs late by over three spreads (a lower bound: they run on); the third
        largest is a slow-down three jobs prove, for the jobs submitted since the first of them."""
        with self._lock:
            if surprise > 3 * sigma:
                self._late[record_id] = (surprise, sub)
                if len(self._late) > 64:
                    self._late.popitem(last=False)
            elif self._late.pop(record_id, None) is None:
                return
            top = heapq.nlargest(3, (v for v in self._late.values() if v[1] > self._refuted))
            self._shift = (top[-1][0], min(s for _, s in top)) if len(top) == 3 else (0.0, math.inf)

    def _bounded(self, delay: float) -> float:
        return min(self.max_delay, max(self.min_delay, delay))

    def _overdue(self, generation: PolledJob, since: float) -> float:
        """For a job past every prediction: the fallback's polls (growing since it was expected,
        ``since``), bounded by its max_delay, until the refitted model expects it again."""
        late_polls = sum(1 for at, _ in generation.seen if at > since)
        return max(self.min_delay, self.fallback.next_delay(generation, late_polls + 2))

    def close(self) -> None:
        """Write what this process learned now (it is also written within a second, and at exit)."""
        self.stats.flush()

    # -- plain data ------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        keep = ("_lock", "_fitted", "_fitted_at", "queue", "_finished", "_late", "_shift",
                "_refuted")
        state = {name: value for name, value in self.__dict__.items() if name not in keep}
        state["stats"] = self.stats.path
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()
        self.stats = shared_stats(state["stats"])

    def __repr__(self) -> str:
        return f"LearnedPollPolicy(stats={str(self.stats.path)!r}, fallback={self.fallback!r})"


def default_poll_policy(settings: Settings | None = None) -> PollPlanner:
    """The policy a :class:`~arta.client.Client` uses unless told otherwise.

    The learned one, sharing ``poll_stats.json`` in ``settings.home``;
    ``ARTA_POLL=fixed`` in the environment gives the fixed :class:`PollPolicy`.
    """
    settings = settings or Settings.resolve()
    if settings.poll == "fixed":
        return PollPolicy()
    return LearnedPollPolicy(settings.home)

