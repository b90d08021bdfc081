"""When a queued job starts, from what every job of this process shows of a first-in-first-out queue.

Jobs start in submit order, so each poll bounds every other job's start,
and a queued job starts once the jobs submitted before it have, as fast as
this process's jobs end (docs/polling.rst). A sighting that breaks the
order turns this off, until jobs come ``reopen`` seconds after the break.
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
        self._known: collections.OrderedDict[str, bool] = collections.OrderedDict()  # started?
        self._started, self._last_start = 0, -math.inf  # how many were seen started; the latest
        self._ends: collections.deque[float] = collections.deque(maxlen=64)  # this process's jobs'

    def see(self, record_id: str, submitted: float, queued_at: float | None,
            started_by: float | None) -> None:
        """Take in a job's latest sightings: last seen queued, first seen started (or None)."""
        with self._lock:
            if not self.fifo and submitted > self._broken_at + self.reopen:
                self._forget()  # a job submitted well after the break: try the order again
            if not self.fifo:
                return
            if record_id not in self._known:
                self._known[record_id] = False
                bisect.insort(self._subs, submitted)
                if len(self._known) > self.keep:
                    self._started -= self._known.popitem(last=False)[1]
                    del self._subs[:len(self._subs) - self.keep]
            if started_by is not None and not self._known[record_id]:
                self._known[record_id] = True
                self._started += 1
                self._last_start = max(self._last_start, started_by)
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
        k = bisect.bisect_left(times, at, 0, i)
        del subs[k:i], times[k:i]
        subs.insert(k, sub)
        times.insert(k, at)
        if len(subs) > self.keep:
            del subs[0], times[0]

    def ended(self, at: float) -> None:
        """Take in that a job of this process ended at ``at``: the rate at which slots free up."""
        with self._lock:
            self._ends.append(at)

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
        """When a queued job submitted at ``submitted`` should start, and how unsure (seconds);
        None if no rate is known or no job of ours is ahead of it (the service's queue decides)."""
        with self._lock:
            ends = [at for at in self._ends if at >= now - self.rate_window]
            if not self.fifo or len(ends) < 3 or max(ends) - min(ends) < 1.0 or not self._started:
                return None
            # our jobs start as fast as they end (a slot freed is taken from the queue)
            rate = (len(ends) - 1) / (max(ends) - min(ends))
            # ahead: the jobs submitted before it, less those started (seen so, or submitted
            # well before a job seen so)
            sure = bisect.bisect_left(self._subs, submitted - self.tolerance)
            unsure = bisect.bisect_left(self._subs, submitted + self.tolerance) - sure - 1
            started = max(self._started,
                          bisect.bisect_left(self._subs, self._started_subs[-1] - self.tolerance))
            ahead = bisect.bisect_left(self._subs, submitted) - started
            if ahead < 0.5 and started <= sure:
                return None
            ahead = max(0, ahead)
            # starts come about as a Poisson stream; the order within the tolerance is a guess
            spread = math.sqrt(ahead + 1 + unsure * unsure / 12) / rate
            return max(now, self._last_start + (ahead + 1) / rate), spread
