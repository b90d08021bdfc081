"""The adaptive cap on jobs in flight: additive increase, multiplicative decrease, as TCP.

The service's capacity is unknown and changes; a client that is told "256
at once" must not send 256 submits into a service that takes 32. So each
client keeps one window for all its threads:

* it starts small and grows by one per accepted submit (slow start: the
  window doubles each round of submits) up to the first rejection;
* a 429 or 503 on a submit halves it, once per round (the rejections of
  submits sent before the halving are the same congestion, not news), and
  no submit goes out before the retry policy's backoff for that many rounds
  of rejection in a row (growing, jittered; a ``Retry-After`` is honoured up
  to the policy's ``max_retry_after``): never a tight loop of refused submits;
* after that it grows by one per window of accepted submits;
* it never exceeds ``limit``, the concurrency the caller asked for.
"""

from __future__ import annotations

import math
import threading
import time

from arta.retry import RetryPolicy

__all__ = ["AdaptiveWindow"]

#: Jobs in flight before anything is known: a few, to learn quickly.
INITIAL_WINDOW = 4


class AdaptiveWindow:
    """How many jobs may be in flight now; thread-safe.

    ``acquire()`` takes a slot if the window has room (returning a ticket,
    the round it was sent in), ``release()`` gives it back when the job
    ends; ``accepted()`` and ``rejected()`` report what the service said to
    a submit.
    """

    def __init__(self, limit: int = 64, initial: int = INITIAL_WINDOW) -> None:
        self.limit = max(1, limit)
        self.size = float(min(initial, self.limit))
        self.threshold = math.inf  # slow start until the first rejection
        self.in_flight = 0
        self.rejections = 0
        #: Rounds of rejection since the last accepted submit.
        self.streak = 0
        self._round = 0  # bumped at each halving
        self._paused_until = 0.0
        self._lock = threading.Lock()

    def wait_time(self) -> float:
        """Seconds until a submit may go out (0 if the window has room now, inf if it is full)."""
        with self._lock:
            pause = self._paused_until - time.monotonic()
            if pause > 0:
                return pause
            return 0.0 if self.in_flight < int(self.size) else math.inf

    def acquire(self) -> int | None:
        """Take a slot for one submit; return its ticket, or None if there is no room now."""
        with self._lock:
            if time.monotonic() < self._paused_until or self.in_flight >= int(self.size):
                return None
            self.in_flight += 1
            return self._round

    def release(self) -> None:
        """A job that held a slot has ended (or its submit failed for good)."""
        with self._lock:
            self.in_flight = max(0, self.in_flight - 1)

    def accepted(self) -> None:
        """The service took a submit: grow (by one in slow start, else by one per window)."""
        with self._lock:
            step = 1.0 if self.size < self.threshold else 1.0 / self.size
            self.size = min(float(self.limit), self.size + step)
            self.streak = 0

    def rejected(self, ticket: int, error: BaseException, policy: RetryPolicy) -> float:
        """The service answered a submit 429/503: give the slot back, halve once per round, pause.

        Returns the pause, in seconds: the policy's wait after this many
        rounds of rejection in a row (its backoff, or the server's capped
        ``Retry-After``).
        """
        with self._lock:
            self.in_flight = max(0, self.in_flight - 1)
            self.rejections += 1
            if ticket == self._round:  # the first news of this congestion
                self._round += 1
                self.streak += 1
                self.size = max(1.0, self.size / 2)
                self.threshold = self.size
            pause = policy.delay(error, max(1, self.streak))
            self._paused_until = max(self._paused_until, time.monotonic() + pause)
            return self._paused_until - time.monotonic()

    def __repr__(self) -> str:
        return (f"<AdaptiveWindow size={self.size:.1f} in_flight={self.in_flight} "
                f"limit={self.limit} rejections={self.rejections}>")
