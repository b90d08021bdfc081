"""What every process on the host has learned about job durations: ``poll_stats.json``.

Per class of parameters the recent in-progress durations, and the recent
queue waits, each an interval of seconds and when it was seen. Shared as the
token file is (filelock, atomic replace); bounded, checked when read, and
rebuilt (with a warning) if unusable.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import os
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import filelock

from arta.atomic import remove_stale, write_json_atomically
from arta.params import N_RANGE, STEPS_RANGE
from arta.styles import ASPECT_RATIOS, STYLES

__all__ = ["FORMAT", "ClassKey", "ClassStats", "Interval", "PollStats", "StatsState", "shared_stats"]

log = logging.getLogger(__name__)

#: The ``format`` field that marks the file as ours.
FORMAT = "arta-poll-stats/1"
#: A file bigger than this is not ours (or not sane): ignored.
MAX_FILE_BYTES = 2_000_000
#: How the temp files of a write start (those of a killed writer are swept).
_TEMP_PREFIX = ".poll_stats."

#: ``(lo, hi, at)``: the duration was between ``lo`` and ``hi`` seconds, seen at Unix time ``at``.
Interval = tuple[float, float, float]
#: ``(style, steps, n, aspect_ratio)``: jobs that should take the same time.
ClassKey = tuple[str, int, int, str]


@dataclass
class ClassStats:
    """The recent in-progress durations of one class of jobs, and how many were ever seen."""

    count: int = 0
    updated: float = 0.0
    recent: list[Interval] = field(default_factory=list)

    def add(self, intervals: list[Interval], count: int, keep: int) -> None:
        """Take in new observations, keeping the ``keep`` most recent."""
        self.recent = sorted(self.recent + intervals, key=lambda item: item[2])[-keep:]
        self.count += count
        if self.recent:
            self.updated = max(self.updated, self.recent[-1][2])


@dataclass
class StatsState:
    """The whole learned state: durations by class, and the service's queue waits."""

    classes: dict[ClassKey, ClassStats] = field(default_factory=dict)
    queue: ClassStats = field(default_factory=ClassStats)

    def merge(self, other: StatsState, keep: int, keep_queue: int, max_classes: int) -> None:
        """Add ``other``'s observations (new ones, not seen here) into this state, bounded."""
        for key, stats in other.classes.items():
            self.classes.setdefault(key, ClassStats()).add(stats.recent, stats.count, keep)
        self.queue.add(other.queue.recent, other.queue.count, keep_queue)
        if len(self.classes) > max_classes:
            newest = sorted(self.classes, key=lambda k: self.classes[k].updated)[-max_classes:]
            self.classes = {key: self.classes[key] for key in newest}

    def to_json(self) -> dict[str, Any]:
        """The file's content."""
        return {
            "format": FORMAT,
            "classes": [
                {"style": key[0], "steps": key[1], "n": key[2], "aspect_ratio": key[3],
                 "count": stats.count, "updated": stats.updated,
                 "recent": [list(item) for item in stats.recent]}
                for key, stats in self.classes.items()
            ],
            "queue": {"count": self.queue.count, "updated": self.queue.updated,
                      "recent": [list(item) for item in self.queue.recent]},
        }

    @classmethod
    def from_json(cls, data: Any) -> StatsState:
        """Read the file's content; raise ValueError if it is not ours or not sane."""
        _require(isinstance(data, dict) and data.get("format") == FORMAT,
                 f"not an {FORMAT} file")
        classes = data.get("classes")
        _require(isinstance(classes, list), "no list of classes")
        state = cls(queue=_class_stats(data.get("queue")))
        for entry in classes:
            _require(isinstance(entry, dict), "a class is not an object")
            style, steps, n, ratio = (entry.get(name)
                                      for name in ("style", "steps", "n", "aspect_ratio"))
            _require(isinstance(style, str) and _is_int(steps) and _is_int(n)
                     and isinstance(ratio, str), "a class has no style/steps/n/aspect_ratio")
            # What a submit could have asked: the model computes with these.
            # (a style outside the catalog could carry terminal escapes to `arta stats`)
            _require(style in STYLES and STEPS_RANGE[0] <= steps <= STEPS_RANGE[1]
                     and N_RANGE[0] <= n <= N_RANGE[1] and ratio in ASPECT_RATIOS,
                     "a class has parameters no job can have")
            state.classes[(style, steps, n, ratio)] = _class_stats(entry)
        return state


#: The longest time an observation may span: no job queues or computes for a day.
MAX_SECONDS = 86400.0


def _require(condition: bool, problem: str) -> None:
    """Refuse a file that is not ours, saying what is wrong with it (never its content)."""
    if not condition:
        raise ValueError(problem)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> float:
    _require(not isinstance(value, bool) and isinstance(value, (int, float))
             and math.isfinite(value), "a value is not a finite number")
    return float(value)


def _class_stats(entry: Any) -> ClassStats:
    _require(isinstance(entry, dict) and isinstance(entry.get("recent"), list),
             "no list of recent observations")
    count = entry.get("count")
    _require(_is_int(count) and count >= 0, "a count is not a whole number")
    recent: list[Interval] = []
    for item in entry["recent"]:
        _require(isinstance(item, list) and len(item) == 3, "an observation is not [lo, hi, at]")
        lo, hi, at = (_number(x) for x in item)
        _require(0 <= lo <= hi <= MAX_SECONDS, "an observation is not an interval of seconds")
        recent.append((lo, hi, min(at, time.time())))  # stamped in the future: it still ages
    return ClassStats(int(count), _number(entry.get("updated", 0.0)), recent)


class PollStats:
    """One process's view of the shared statistics, with its not-yet-written observations.

    Thread-safe. :meth:`record` updates the view at once (this process
    learns immediately) and queues the observation for the file;
    :meth:`flush` merges the queue into the file under its lock. Obtain the
    instance shared by a whole process with :func:`shared_stats`.
    """

    def __init__(self, path: str | os.PathLike[str], *, keep: int = 8, keep_queue: int = 32,
                 max_classes: int = 64, flush_interval: float = 1.0,
                 lock_timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.keep, self.keep_queue, self.max_classes = keep, keep_queue, max_classes
        self.flush_interval, self.lock_timeout = flush_interval, lock_timeout
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._state = StatsState()
        self._pending = StatsState()
        self._last_flush = -math.inf
        self._timer: threading.Timer | None = None
        self._file_stamp: tuple[int, int] | None = None
        self._last_check = 0.0
        #: Bumped at every change of the view: lets a model know when to refit.
        self.version = 0
        self._adopt(self._read())

    # -- the view --------------------------------------------------------------

    def state(self) -> StatsState:
        """The current view (do not mutate it): the file as last read, plus this process's news."""
        self.reload_if_changed()
        return self._state

    def record(self, key: ClassKey | None, duration: Interval | None,
               queue: Interval | None) -> None:
        """Learn one finished job: its class's in-progress duration and its queue wait."""
        one = StatsState()
        if key is not None and duration is not None:
            one.classes[key] = ClassStats(1, duration[2], [duration])
        if queue is not None:
            one.queue = ClassStats(1, queue[2], [queue])
        with self._lock:
            self._state.merge(one, self.keep, self.keep_queue, self.max_classes)
            self._pending.merge(one, self.keep, self.keep_queue, 10**9)
            self.version += 1
            due = self._last_flush + self.flush_interval - time.monotonic()
            if due > 0:
                self._flush_later(due)  # write once the interval is over, not now
                return
        # Called as a wait ends: another process holding the lock must not delay it.
        self.flush(wait=False)

    def _flush_later(self, delay: float) -> None:
        """Flush on a timer thread in ``delay`` seconds (one timer at a time; call under _lock)."""
        if self._timer is None:
            self._timer = threading.Timer(delay, self.flush)
            self._timer.daemon = True
            self._timer.start()

    def reload_if_changed(self, every: float = 1.0) -> None:
        """Pick up other processes' writes (checked at most every ``every`` seconds)."""
        now = time.monotonic()
        if now - self._last_check < every:
            return
        self._last_check = now
        if self._stamp() != self._file_stamp:  # (adopted, it is not read again until changed)
            self._adopt(self._read())

    # -- the file --------------------------------------------------------------

    def flush(self, wait: bool = True) -> None:
        """Merge this process's new observations into the file, under its lock.

        ``wait=False``: if another process holds the lock, retry later on
        a timer thread instead of waiting for it.
        """
        with self._flush_lock:
            with self._lock:
                self._timer = None  # a timer that fires after this finds nothing to write
                if not (self._pending.classes or self._pending.queue.recent):
                    return
                pending, self._pending = self._pending, StatsState()
                self._last_flush = time.monotonic()
            try:
                with self._file_lock(self.lock_timeout if wait else 0.0):
                    remove_stale(self.path.parent, f"{_TEMP_PREFIX}*.tmp")  # killed writers'
                    merged = self._read()
                    merged.merge(pending, self.keep, self.keep_queue, self.max_classes)
                    self._write(merged)
            except (OSError, filelock.Timeout) as error:
                busy = isinstance(error, filelock.Timeout) and not wait
                if not busy:
                    log.warning("cannot write the poll statistics %s (%s); keeping them in "
                                "memory", self.path, error)
                with self._lock:  # keep them for the next try
                    pending.merge(self._pending, self.keep, self.keep_queue, 10**9)
                    self._pending = pending
                    if busy:
                        self._flush_later(max(self.flush_interval, 0.1))
                return
            self._adopt(merged)

    def _adopt(self, state: StatsState) -> None:
        """Make ``state`` (just read or written) the view, plus what is still pending."""
        with self._lock:
            state.merge(self._pending, self.keep, self.keep_queue, self.max_classes)
            self._state = state
            self._file_stamp = self._stamp()
            self.version += 1

    def _stamp(self) -> tuple[int, int] | None:
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return info.st_mtime_ns, info.st_size

    @contextlib.contextmanager
    def _file_lock(self, timeout: float) -> Iterator[None]:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with filelock.FileLock(self.lock_path, mode=0o600, timeout=timeout):
            yield

    def _read(self) -> StatsState:
        """The file's state; an empty one if it is missing, and (with a warning) if it is unusable."""
        try:
            # O_NONBLOCK: a FIFO in the file's place must not block the reader.
            with open(os.open(self.path, os.O_RDONLY | os.O_NONBLOCK), "rb") as file:
                regular = stat.S_ISREG(os.fstat(file.fileno()).st_mode)
                raw = file.read(MAX_FILE_BYTES + 1) if regular else b""
        except FileNotFoundError:
            return StatsState()
        except OSError as error:
            log.warning("cannot read the poll statistics %s (%s); starting afresh",
                        self.path, error.strerror)
            return StatsState()
        try:
            if not regular:
                raise ValueError("not a regular file")
            if len(raw) > MAX_FILE_BYTES:
                raise ValueError("too big")
            state = StatsState.from_json(json.loads(raw.decode("utf-8")))
        except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
            log.warning("the poll statistics %s are unusable (%s); they will be rebuilt",
                        self.path, type(error).__name__ if isinstance(error, RecursionError)
                        else error)
            return StatsState()
        bounded = StatsState()  # merged in, it keeps as much as this process would
        bounded.merge(state, self.keep, self.keep_queue, self.max_classes)
        return bounded

    def _write(self, state: StatsState) -> None:
        write_json_atomically(self.path, state.to_json(), prefix=_TEMP_PREFIX,
                              separators=(",", ":"))

    def __repr__(self) -> str:
        return f"PollStats({str(self.path)!r})"


_SHARED: dict[tuple[int, Path], PollStats] = {}
_SHARED_LOCK = threading.Lock()


def shared_stats(path: str | os.PathLike[str]) -> PollStats:
    """The one :class:`PollStats` of this process for ``path`` (a new one after a fork)."""
    key = (os.getpid(), Path(path).expanduser().absolute())
    with _SHARED_LOCK:
        stats = _SHARED.get(key)
        if stats is None:
            stats = _SHARED[key] = PollStats(key[1])
        return stats


@atexit.register
def _flush_all() -> None:
    """Write what this process learned before it exits."""
    for (pid, _), stats in list(_SHARED.items()):
        if pid == os.getpid():
            with contextlib.suppress(Exception):
                stats.flush()
