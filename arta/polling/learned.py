"""A poll policy that learns when jobs finish, and polls then.

How it decides, for one job: from the jobs seen before (every process on
the host, through ``poll_stats.json``; :mod:`arta.polling.stats`) it predicts
the job's in-progress time for its parameters and how long jobs wait in
the queue (:mod:`arta.polling.model`). What the polls of this job have seen
narrows that: the job started after the last poll that found it IN_QUEUE
and before the first that found it IN_PROGRESS, and has not finished by
the last poll. From the predicted finish time it places the next poll at
the time ``t`` where the expected lateness ``E[(t - finish)+]`` reaches
``lateness_per_poll`` seconds: the worth of one request in seconds of
waiting. A certain finish gets one poll just after it; an uncertain one
gets polls spread over where it is likely, dense where it is most likely.
While the job waits in a queue whose length varies, it also probes for the
job's start in the same way (with ``start_lateness_per_poll``): knowing
when the job started is what makes its end predictable.

It polls exactly like its ``fallback`` :class:`~arta.generation.PollPolicy`
until it has seen ``min_observations`` jobs, for a job resumed by record id
(whose parameters it does not know), and while a job waits in the queue
before any queue wait was seen. A job that outlives every prediction is
polled at a bounded interval and never abandoned.
"""

from __future__ import annotations

import collections
import math
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from arta.config import Settings
from arta.polling.model import DurationModel, QueueModel, Samples, after, convolve
from arta.polling.policy import PolledJob, PollPlanner, PollPolicy
from arta.polling.stats import ClassKey, Interval, PollStats, StatsState, shared_stats
from arta.protocol import Status

__all__ = ["STATS_FILE", "LearnedPollPolicy", "Timeline", "default_poll_policy"]

#: The shared statistics file's name in ``ARTA_HOME``.
STATS_FILE = "poll_stats.json"

_NOT_STARTED = (Status.SUBMITTED, Status.IN_QUEUE)


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
        if None in (self.start_after, self.start_by, self.end_after, self.end_by):
            return None
        assert self.start_after is not None and self.start_by is not None
        assert self.end_after is not None and self.end_by is not None
        return (max(0.0, self.end_after - self.start_by),
                self.end_by - self.start_after, self.end_by)

    def queue(self) -> Interval | None:
        """The queue wait ``(lo, hi, when)`` of a started job this process submitted."""
        if self.submitted is None or self.start_after is None or self.start_by is None:
            return None
        return (self.start_after - self.submitted, self.start_by - self.submitted,
                self.start_by)


def class_key(generation: PolledJob) -> ClassKey | None:
    """The class of a job: the parameters that decide how long it computes."""
    p = generation.params
    return None if p is None else (p.style, p.steps, p.n, p.aspect_ratio)


def time_for_lateness(points: Samples, kappa: float) -> float:
    """The time ``t`` where ``E[(t - X)+] = kappa`` for X given by sorted weighted ``points``."""
    total = sum(w for _, w in points)
    weight = weighted = 0.0
    for index, (value, w) in enumerate(points):
        weight += w / total
        weighted += w / total * value
        t = (kappa + weighted) / weight
        if index + 1 == len(points) or t <= points[index + 1][0]:
            return t
    raise ValueError("no points")


class LearnedPollPolicy:
    """A :class:`~arta.generation.PollPlanner` that polls when a job is likely done.

    ``home`` is where ``poll_stats.json`` is shared (default ``ARTA_HOME``),
    or pass ``stats``. ``lateness_per_poll`` is how many seconds of noticing
    late one status request is worth: lower polls more. ``half_life`` is in
    jobs: how fast old observations fade. Delays stay within
    ``[min_delay, max_delay]``, and no poll comes more than ``max_lateness``
    seconds after the job's first 2% chance of being done; a job past every
    prediction is polled every ``fallback.max_delay`` seconds at most. While
    a job queues, its start is probed (``start_lateness_per_poll``) when the
    queue's spread is over ``probe_ratio`` times the in-progress time's.
    ``refit_interval`` bounds how often the model is refitted. ``clock``
    gives Unix time (tests replace it).
    """

    def __init__(self, home: str | os.PathLike[str] | None = None, *,
                 fallback: PollPolicy | None = None, stats: PollStats | None = None,
                 lateness_per_poll: float = 0.1, start_lateness_per_poll: float = 1.2,
                 half_life: float = 10.0, min_observations: int = 3,
                 min_delay: float = 0.25, max_delay: float = 30.0, refit_interval: float = 0.5,
                 probe_ratio: float = 0.5, max_lateness: float = 2.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.fallback = fallback or PollPolicy()
        if stats is None:
            folder = Path(home).expanduser() if home is not None else Settings.resolve().home
            stats = shared_stats(folder / STATS_FILE)
        self.stats = stats
        self.lateness_per_poll = lateness_per_poll
        self.start_lateness_per_poll = start_lateness_per_poll
        self.half_life = half_life
        self.min_observations = min_observations
        self.min_delay, self.max_delay = min_delay, max_delay
        self.refit_interval = refit_interval
        self.probe_ratio = probe_ratio
        self.max_lateness = max_lateness
        self.clock = clock
        self._lock = threading.Lock()
        self._fitted: tuple[int, DurationModel | None, QueueModel | None] = (-1, None, None)
        self._fitted_at = -math.inf
        self._finished: collections.OrderedDict[str, None] = collections.OrderedDict()
        #: Jobs that outlived every prediction (record id -> when): polled at a bounded interval.
        self._overdue_jobs: collections.OrderedDict[str, float] = collections.OrderedDict()
        #: Jobs being waited on and seen IN_PROGRESS: record id -> (class, started by, last seen).
        self._running: collections.OrderedDict[str, tuple[ClassKey, float, float]] = \
            collections.OrderedDict()

    @property
    def timeout(self) -> float | None:
        """The fallback's bound of a whole wait."""
        return self.fallback.timeout

    # -- PollPlanner ---------------------------------------------------------------

    def next_delay(self, generation: PolledJob, attempt: int) -> float:
        """Seconds until the next poll: the learned plan, else the fallback's."""
        delay = self.plan(generation, attempt)
        if delay is None:
            return self.fallback.next_delay(generation, attempt)
        return delay

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
            self._running.pop(generation.record_id, None)
            self._overdue_jobs.pop(generation.record_id, None)
        timeline = Timeline.of(generation)
        key, duration = class_key(generation), timeline.duration()
        queue = timeline.queue()
        if (key is not None and duration is not None) or queue is not None:
            self.stats.record(key, duration, queue)

    # -- the plan ------------------------------------------------------------------

    def models(self) -> tuple[DurationModel | None, QueueModel | None]:
        """The models fitted to the current statistics.

        Refitted when the statistics change, and every ``refit_interval``
        seconds while jobs run (they are right-censored observations).
        """
        state = self.stats.state()
        version = self.stats.version
        now = self.clock()
        with self._lock:
            stale = self._fitted[0] != version
            due = now - self._fitted_at >= self.refit_interval or self._fitted[1] is None
            if due and (stale or self._running):
                enough = sum(len(c.recent) for c in state.classes.values()) \
                    >= self.min_observations
                running = [(key, min(last - started, _longest(state, key)), started)
                           for key, started, last in self._running.values()]
                durations = DurationModel.fit(state, self.half_life, running=running,
                                              previous=self._fitted[1]) if enough else None
                queue = QueueModel.fit(state, self.half_life) if stale else self._fitted[2]
                self._fitted, self._fitted_at = (version, durations, queue), now
            return self._fitted[1], self._fitted[2]

    def _track(self, generation: PolledJob, key: ClassKey, timeline: Timeline) -> None:
        """Remember a running job: how long it has run so far is data too."""
        if timeline.start_by is None or timeline.last is None:
            return
        with self._lock:
            self._running[generation.record_id] = (key, timeline.start_by, timeline.last)
            self._running.move_to_end(generation.record_id)
            while len(self._running) > 1000:
                self._running.popitem(last=False)

    def plan(self, generation: PolledJob, attempt: int = 1) -> float | None:
        """Seconds until the next poll, or None where the fallback decides."""
        key = class_key(generation)
        timeline = Timeline.of(generation)
        if key is None or timeline.last is None:
            return None
        self._track(generation, key, timeline)
        durations, queue = self.models()
        if durations is None:
            return None
        now = max(self.clock(), timeline.last)
        if generation.record_id in self._overdue_jobs:
            return self._overdue(generation, self._overdue_jobs[generation.record_id])
        work = durations.samples(key)
        starts, probe = self._starts(timeline, queue, work)
        if starts is None:
            return None
        if not starts:  # waiting in the queue longer than any job seen
            return self._overdue(generation, timeline.start_after or now, sticky=False)
        predicted = convolve(starts, work)
        finish = after(predicted, timeline.last)
        if not finish or sum(w for _, w in finish) < 1e-3:
            return self._overdue(generation, predicted[-1][0])
        # the job's first 2% chance of being done: the earliest start plus the
        # 2% quantile of its work (the points are too coarse in the tail for it)
        first_chance = starts[0][0] + durations.quantile(key, 0.02)
        at = min(time_for_lateness(finish, self.lateness_per_poll),
                 max(now, first_chance) + self.max_lateness)
        if probe:
            at = min(at, time_for_lateness(starts, self.start_lateness_per_poll))
        return min(self.max_delay, max(self.min_delay, at - now))

    def _starts(self, timeline: Timeline, queue: QueueModel | None,
                work: Samples) -> tuple[Samples | None, bool]:
        """Where the job's start may be, and whether to poll to find it."""
        t0, lo, hi = timeline.submitted, timeline.start_after, timeline.start_by
        if hi is not None:  # it has started, between lo and hi
            lo = hi if lo is None else lo
            if queue is not None and t0 is not None:
                points = queue.samples(lo - t0, hi - t0)
                if points:
                    return [(t0 + q, w) for q, w in points], False
            return [(lo + (hi - lo) * (i + 0.5) / 8, 1 / 8) for i in range(8)], False
        if queue is None or t0 is None or lo is None:
            return None, False  # in a queue we know nothing of: the fallback decides
        points = queue.samples(lo - t0, math.inf)
        if not points:
            return [], False
        starts = [(t0 + q, w) for q, w in points]
        return starts, _spread(starts) > self.probe_ratio * _spread(work)

    def _overdue(self, generation: PolledJob, since: float, sticky: bool = True) -> float:
        """For a job past every prediction: the fallback's later polls, bounded by its max_delay.

        A job that outlived its predicted end stays so until it ends (the
        prediction was wrong for it); one that queued longer than any other
        is planned again once it starts.
        """
        with self._lock:
            if sticky:
                self._overdue_jobs.setdefault(generation.record_id, since)
            while len(self._overdue_jobs) > 10_000:
                self._overdue_jobs.popitem(last=False)
        late_polls = sum(1 for at, _ in generation.seen if at > since)
        return self.fallback.next_delay(generation, late_polls + 2)

    def close(self) -> None:
        """Write what this process learned now (it is also written within a second, and at exit)."""
        self.stats.flush()

    # -- plain data ------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_lock=None, _fitted=(-1, None, None), _fitted_at=-math.inf,
                     _running=collections.OrderedDict(), _overdue_jobs=collections.OrderedDict(),
                     stats=self.stats.path)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self.stats = shared_stats(state["stats"])

    def __repr__(self) -> str:
        return f"LearnedPollPolicy(stats={str(self.stats.path)!r}, fallback={self.fallback!r})"


def _longest(state: StatsState, key: ClassKey) -> float:
    """Twice the longest finished job of ``key``'s class (else of any class).

    A running job counts as lasting at least this long, no more: one stuck
    job must not teach that every job is slow.
    """
    stats = state.classes.get(key)
    pool = stats.recent if stats is not None and stats.recent else \
        [item for other in state.classes.values() for item in other.recent]
    return 2 * max((hi for _, hi, _ in pool), default=math.inf)


def _spread(points: Sequence[tuple[float, float]]) -> float:
    """From the 10% to the 90% point of equal-weight sorted ``points``."""
    ordered = sorted(v for v, _ in points)
    return ordered[int(0.9 * (len(ordered) - 1))] - ordered[int(0.1 * (len(ordered) - 1))]


def default_poll_policy(settings: Settings | None = None) -> PollPlanner:
    """The policy a :class:`~arta.client.Client` uses unless told otherwise.

    The learned one, sharing ``poll_stats.json`` in ``settings.home``;
    ``ARTA_POLL=fixed`` in the environment gives the fixed :class:`PollPolicy`.
    """
    settings = settings or Settings.resolve()
    if settings.poll == "fixed":
        return PollPolicy()
    return LearnedPollPolicy(settings.home)


def describe_stats(home: str | os.PathLike[str]) -> str:
    """What ``arta stats`` prints: the shared file, each class's estimate, the queue's."""
    stats = PollStats(Path(home).expanduser() / STATS_FILE)
    state = stats.state()
    lines = [f"file:   {stats.path}"]
    model = DurationModel.fit(state)
    if model is None:
        lines.append("no finished job seen yet: polling as the fixed policy does")
    else:
        lines.append(f"{'style':<20} {'steps':>5} {'n':>2} {'ratio':>5} {'jobs':>5} "
                     f"{'in progress':>11} {'spread':>7}")
        for key, cls in sorted(state.classes.items(), key=lambda kv: -kv[1].count):
            mu, sigma = model.predict(key)
            lines.append(f"{key[0][:20]:<20} {key[1]:>5} {key[2]:>2} {key[3]:>5} "
                         f"{cls.count:>5} {math.exp(mu):>10.1f}s {100 * sigma:>6.0f}%")
        lines.append(f"({len(state.classes)} classes; spread: one standard deviation, "
                     "in log time)")
    queue = QueueModel.fit(state)
    if queue is not None:
        points = queue.samples(0.0, math.inf)
        lines.append(f"queue:  median {points[len(points) // 2][0]:.1f}s, 10-90% "
                     f"{points[int(0.1 * len(points))][0]:.1f}-"
                     f"{points[int(0.9 * len(points))][0]:.1f}s ({state.queue.count} jobs)")
    return "\n".join(lines)
