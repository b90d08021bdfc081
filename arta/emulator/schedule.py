"""A service's capacity: K slots taken in submit order, and a cap on one account's unfinished jobs.

Nothing runs in the background. Each job gets its slot when it is
submitted: it starts at ``max(ready, the earliest time a slot is free)``
and ends ``progress`` seconds later, so the timeline is fixed at submit
and the status is read from the clock. Because slots are handed out in
submit order, the queue is FIFO by construction: with a fixed queue delay,
jobs start in the order they were submitted.

A job that never ends (the ``stuck`` fault) holds its slot forever. A job
whose status is forced later keeps its slot until its planned end.
"""

from __future__ import annotations

import heapq
import math

__all__ = ["Schedule"]

#: What Retry-After says when every unfinished job of the account is stuck:
#: it will never drop, but a client should still come back eventually.
STUCK_RETRY_AFTER = 60


class Schedule:
    """The slots, the per-account unfinished jobs, and the busy time, for one emulator.

    ``capacity`` (None: unlimited) is how many jobs are IN_PROGRESS at once;
    ``max_jobs_per_user`` (None: unlimited) how many unfinished jobs one
    account may have. Not thread-safe: the job service calls it under its lock.
    Every method costs O(log n) but :meth:`busy_seconds`, which is
    O(unfinished jobs) and only runs when stats are read.
    """

    def __init__(self, capacity: int | None = None, max_jobs_per_user: int | None = None) -> None:
        for name, value in (("capacity", capacity), ("max_jobs_per_user", max_jobs_per_user)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a whole number >= 1 or None, not {value!r}")
        self.capacity = capacity
        self.max_jobs_per_user = max_jobs_per_user
        self.reset()

    def reset(self) -> None:
        """Forget every job: all slots free, no account has jobs, no busy time."""
        # When each slot is next free; -inf: never used.
        self._slots: list[float] = [-math.inf] * (self.capacity or 0)
        # Per account, the end times of its jobs that may not have ended yet.
        self._unfinished: dict[str, list[float]] = {}
        # (end, start) of jobs whose busy time is not yet summed in _busy_done.
        self._open: list[tuple[float, float]] = []
        self._busy_done = 0.0
        #: The most unfinished jobs one account ever had at once.
        self.max_in_flight_per_user = 0

    def _pending(self, user: str, now: float) -> list[float]:
        ends = self._unfinished.setdefault(user, [])
        while ends and ends[0] <= now:
            heapq.heappop(ends)
        return ends

    def retry_after(self, user: str, now: float) -> int | None:
        """None if ``user`` may submit at ``now``; else the whole seconds to wait (>= 1).

        The wait is until the account's earliest unfinished job ends.
        """
        if self.max_jobs_per_user is None:
            return None
        ends = self._pending(user, now)
        if len(ends) < self.max_jobs_per_user:
            return None
        if math.isinf(ends[0]):
            return STUCK_RETRY_AFTER
        return max(1, math.ceil(ends[0] - now))

    def place(self, user: str, ready_at: float, progress: float, now: float) -> tuple[float, float]:
        """Give a job submitted at ``now`` its slot: its ``(start, end)``.

        ``ready_at`` is the earliest it may start (after the fixed queue
        delay); ``progress`` its time IN_PROGRESS, ``math.inf`` for a job
        that never ends.
        """
        if self._slots:
            start = max(ready_at, self._slots[0])
            end = start + progress
            heapq.heapreplace(self._slots, end)
        else:
            start = ready_at
            end = start + progress
        ends = self._pending(user, now)
        heapq.heappush(ends, end)
        self.max_in_flight_per_user = max(self.max_in_flight_per_user, len(ends))
        heapq.heappush(self._open, (end, start))
        return start, end

    def busy_seconds(self, now: float) -> float:
        """The time the slots were busy up to ``now``, summed over the slots.

        With unlimited capacity each job is its own slot: the sum of the
        jobs' time IN_PROGRESS so far.
        """
        while self._open and self._open[0][0] <= now:
            end, start = heapq.heappop(self._open)
            self._busy_done += end - start
        running = sum(now - start for _, start in self._open if start < now)
        return self._busy_done + running
