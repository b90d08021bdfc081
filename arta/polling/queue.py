"""When a queued job starts, from what every job of this process shows of a first-in-first-out queue.

Jobs start in submit order, so a job seen IN_QUEUE at t says no later job
had started by t, and one seen IN_PROGRESS that every earlier one had:
each poll narrows every other job's start. The rate at which starts pass
this process's jobs predicts when a queued one starts; its place among the
jobs submitted within ``tolerance`` of it is unknown (concurrent submits'
answers come back shuffled by up to ~0.15 s). A sighting that breaks the
order turns this off, until jobs come ``reopen`` seconds after the break.
Every operation is O(log n).
"""

from __future__ import annotations

import bisect
import collections
import math
import threading

__all__ = ["QueueView"]


class QueueView:
    """The start bounds this process's jobs give each other. Thread-safe."""

    def __init__(self, tolerance: float = 0.25, keep: int = 4096, rate_window: float = 120.0,
                 reopen: float = 600.0) -> None:
        self.tolerance, self.keep, self.rate_window, self.reopen = tolerance, keep, rate_window, reopen
        self._lock = threading.Lock()
        self._forget()
        self._broken_at = -math.inf  # the latest submit time seen when the order broke

    def _forget(self) -> None:
        """Start afresh: first in, first out, and nothing seen."""
        self.fifo = True  # until a sighting says otherwise
        # The sightings that bound something, by submit time: the latest time a job at
        # or before each was seen queued (increasing), the first a job at or after was
        # seen started (increasing).
        self._queued_subs: list[float] = []
        self._queued_at: list[float] = []
        self._started_subs: list[float] = []
        self._started_at: list[float] = []
        self._subs: list[float] = []  # submit times of the jobs seen, sorted
        self._known: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._passes: collections.deque[tuple[float, int]] = collections.deque(maxlen=64)

    def see(self, record_id: str, submitted: float, queued_at: float | None,
            started_by: float | None) -> None:
        """Take in a job's latest sightings: last seen queued, first seen started (or None)."""
        with self._lock:
            if not self.fifo and submitted > self._broken_at + self.reopen:
                self._forget()  # a job submitted well after the break: try the order again
            if not self.fifo:
                return
            if record_id not in self._known:
                self._known[record_id] = None
                bisect.insort(self._subs, submitted)
                if len(self._known) > self.keep:
                    self._known.popitem(last=False)
                    del self._subs[:len(self._subs) - self.keep]
            if queued_at is not None:
                self._see_queued(submitted, queued_at)
            if started_by is not None:
                self._see_started(submitted, started_by)

    def _see_queued(self, sub: float, at: float) -> None:
        subs, times = self._queued_subs, self._queued_at
        i = bisect.bisect_right(subs, sub)
        if i and times[i - 1] >= at:  # an earlier job was seen queued later: it says more
            return
        k = bisect.bisect_right(times, at, lo=i)  # later jobs seen queued no later: it says more
        del subs[i:k], times[i:k]
        subs.insert(i, sub)
        times.insert(i, at)
        if len(subs) > self.keep:
            del subs[0], times[0]

    def _see_started(self, sub: float, at: float) -> None:
        subs, times = self._started_subs, self._started_at
        i = bisect.bisect_left(subs, sub)
        if i < len(subs) and times[i] <= at:  # a later job was seen started sooner: it says more
            return
        frontier = subs[-1] if subs else -math.inf
        k = bisect.bisect_left(times, at, 0, i)
        del subs[k:i], times[k:i]
        subs.insert(k, sub)
        times.insert(k, at)
        if sub > frontier:  # the start of the queue moved past these jobs of ours
            passed = bisect.bisect_right(self._subs, sub) - bisect.bisect_right(self._subs, frontier)
            self._passes.append((at, passed))
        if len(subs) > self.keep:
            del subs[0], times[0]

    def start_bounds(self, submitted: float, lo: float, hi: float) -> tuple[float, float]:
        """A job's start bounds ``(lo, hi)`` from its own polls, narrowed by the other jobs'."""
        with self._lock:
            if not self.fifo:
                return lo, hi
            i = bisect.bisect_right(self._queued_subs, submitted - self.tolerance) - 1
            j = bisect.bisect_left(self._started_subs, submitted + self.tolerance)
            narrow_lo = max(lo, self._queued_at[i]) if i >= 0 else lo
            narrow_hi = min(hi, self._started_at[j]) if j < len(self._started_at) else hi
            if narrow_lo > narrow_hi:  # not first in, first out after all
                self._broken_at = max([submitted, *self._subs[-1:]])
                self._forget()
                self.fifo = False
                return lo, hi
            return narrow_lo, narrow_hi

    def expected_start(self, submitted: float, now: float) -> tuple[float, float] | None:
        """When a queued job submitted at ``submitted`` should start, and how unsure that is
        (one standard deviation, seconds); None if no rate is known or no job of this
        process is ahead of it (then the service's own queue decides)."""
        with self._lock:
            passes = [(at, n) for at, n in self._passes if at >= now - self.rate_window]
            if not self.fifo or len(passes) < 3 or passes[-1][0] - passes[0][0] < 1.0:
                return None
            rate = sum(n for _, n in passes[1:]) / (passes[-1][0] - passes[0][0])
            if rate <= 0:
                return None
            # ahead: the jobs surely submitted before it, and half of those too close to tell,
            # less those the head of the queue passed (then it is among the rest)
            passed = bisect.bisect_right(self._subs, self._started_subs[-1])
            sure = bisect.bisect_left(self._subs, submitted - self.tolerance)
            edge = bisect.bisect_left(self._subs, submitted + self.tolerance) - 1
            unsure = max(0, edge - max(sure, passed))
            ahead = max(0, sure - passed) + unsure / 2
            if ahead < 0.5 and passed <= sure:
                return None
            # starts come about as a Poisson stream; the order within the tolerance is a guess
            spread = math.sqrt(ahead + 1 + unsure * unsure / 12) / rate
            return max(now, self._started_at[-1] + (ahead + 1) / rate), spread
