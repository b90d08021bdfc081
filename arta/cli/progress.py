"""Progress on stderr: a status line for one job, and a progress bar for a batch.

:class:`StatusLine` (one job, terminals only): the line is redrawn in place (``\\r`` and erase-to-end) a few times a second
so that the elapsed time moves, and erased when the work ends, so the screen
is left as it was: what the command prints to stdout (the saved files) is
all that stays. Nothing is drawn when stderr is not a terminal, and colour
only when ``NO_COLOR`` is unset and the terminal is not ``dumb``.

:class:`BatchProgress` (a batch): on a terminal, a bar redrawn in place
with done / in flight / queued / failed, the current rate (jobs a minute
over the last minute; jobs an earlier run ended are not in it) and the time
left at that rate, written again only when it changed; off a terminal (a CI
log), the same numbers as a plain line every few seconds and once at the
end, so that a log shows the batch moving without a line per redraw.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from typing import TYPE_CHECKING, Callable, TextIO

if TYPE_CHECKING:  # typing.Self is 3.11+; only the type checker needs it
    from typing_extensions import Self

__all__ = ["BatchProgress", "StatusLine"]

_CLEAR = "\r\x1b[K"
_COLOURS = {"DONE": "32", "FAILED": "31", "IN_PROGRESS": "33", "IN_QUEUE": "36"}
_SPINNER = "|/-\\"


class _Redrawn:
    """A display that a background thread redraws until the ``with`` block ends."""

    enabled: bool

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _period(self) -> float:
        """Seconds between two redraws."""
        raise NotImplementedError

    def _redraw(self) -> None:
        """Draw once more (on the background thread)."""
        raise NotImplementedError

    def _finish(self) -> None:
        """Leave the stream as it should stay once the work has ended."""

    def _run(self) -> None:
        while not self._stop.wait(self._period()):
            self._redraw()

    def __enter__(self) -> Self:
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="arta-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._finish()


class StatusLine(_Redrawn):
    """A status line with a spinner and the elapsed time; use as a context manager."""

    def __init__(self, stream: TextIO, *, enabled: bool = True, interval: float = 0.1) -> None:
        super().__init__()
        self.stream = stream
        self.enabled = enabled and stream.isatty()
        self.colour = (self.enabled and "NO_COLOR" not in os.environ
                       and os.environ.get("TERM") != "dumb")
        self.interval = interval
        self.started = time.monotonic()
        self._text = ""
        self._turn = 0
        self._lock = threading.Lock()

    def paint(self, word: str) -> str:
        """``word`` in its status colour, when colour is on."""
        code = _COLOURS.get(word)
        return f"\x1b[{code}m{word}\x1b[0m" if self.colour and code else word

    def update(self, text: str) -> None:
        """Show ``text`` from now on."""
        with self._lock:
            self._text = text
        self._draw()

    def _draw(self) -> None:
        if not self.enabled:
            return
        with self._lock:
            elapsed = time.monotonic() - self.started
            self.stream.write(f"{_CLEAR}{_SPINNER[self._turn % 4]} {self._text} "
                              f"({elapsed:.1f}s)")
            self.stream.flush()

    def _period(self) -> float:
        return self.interval

    def _redraw(self) -> None:
        self._turn += 1
        self._draw()

    def _finish(self) -> None:
        if self.enabled:
            with self._lock:
                self.stream.write(_CLEAR)  # leave the screen as it was
                self.stream.flush()


class BatchProgress(_Redrawn):
    """The progress of a batch: a bar on a terminal, a plain line every few seconds elsewhere.

    Call :meth:`update` with the counts whenever they change (from any
    thread); a background thread draws. ``window`` is the span, in seconds,
    the rate is measured over; ``every`` is how often the plain line is
    written when ``stream`` is not a terminal; ``clock`` tells the time.
    """

    def __init__(self, stream: TextIO, total: int, *, enabled: bool = True,
                 window: float = 60.0, every: float = 5.0, width: int = 24,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.stream = stream
        self.total = total
        self.enabled = enabled
        self.tty = enabled and stream.isatty()
        self.window, self.every, self.width = window, every, width
        self.counts = {"done": 0, "in_flight": 0, "queued": total, "failed": 0}
        self.clock = clock
        self.started = clock()
        self._ends: collections.deque[float] = collections.deque()  # when each job ended
        self._lock = threading.Lock()
        self._draw_lock = threading.Lock()
        self._drawn = ""  # the bar on screen: not written again while nothing changed

    def resumed(self, *, done: int, failed: int, queued: int) -> None:
        """The jobs an earlier run ended: counted as ended, but not in the rate (they took no time here)."""
        with self._lock:
            self.counts = {"done": done, "in_flight": 0, "queued": queued, "failed": failed}

    def update(self, *, done: int, in_flight: int, queued: int, failed: int) -> None:
        """The counts now; jobs that ended since the last call feed the rate."""
        now = self.clock()
        with self._lock:
            ended = done + failed - self.counts["done"] - self.counts["failed"]
            self._ends.extend([now] * max(0, ended))
            self.counts = {"done": done, "in_flight": in_flight, "queued": queued,
                           "failed": failed}

    def rate(self, now: float | None = None) -> float | None:
        """Jobs ended a minute, over the recent window (None before the first ends)."""
        now = self.clock() if now is None else now
        with self._lock:
            while self._ends and self._ends[0] < now - self.window:
                self._ends.popleft()
            if not self._ends:
                return None
            span = min(self.window, now - self.started)
            return len(self._ends) * 60.0 / max(span, 1e-3)

    def text(self, now: float | None = None) -> str:
        """The progress as one line of text: counts, rate, time left."""
        now = self.clock() if now is None else now
        rate = self.rate(now)
        with self._lock:
            c = dict(self.counts)
        left = max(0, self.total - c["done"] - c["failed"])
        eta = "--" if not rate else _duration(left * 60.0 / rate)
        pace = "--" if rate is None else f"{rate:.1f}"
        return (f"{c['done']}/{self.total} done, {c['in_flight']} in flight, {c['queued']} "
                f"queued, {c['failed']} failed, {pace} jobs/min, ETA {eta}, "
                f"{_duration(now - self.started)} elapsed")

    def bar(self, now: float | None = None) -> str:
        """The terminal form: a bar, then :meth:`text`."""
        with self._lock:
            ended = self.counts["done"] + self.counts["failed"]
        filled = self.width * ended // self.total if self.total else self.width
        return f"[{'#' * filled}{'.' * (self.width - filled)}] {self.text(now)}"

    def message(self, text: str) -> None:
        """Print ``text`` on its own line (above the bar, on a terminal)."""
        with self._draw_lock:
            self.stream.write(f"{_CLEAR if self.tty else ''}{text}\n")
            self.stream.flush()
        if self.tty:
            self._draw(again=True)  # the message wrote over it

    def _draw(self, again: bool = False) -> None:
        line = f"{_CLEAR}arta: {self.bar()}" if self.tty else f"arta: batch: {self.text()}\n"
        with self._draw_lock:
            if self.tty and line == self._drawn and not again:
                return
            self._drawn = line
            self.stream.write(line)
            self.stream.flush()

    def _period(self) -> float:
        return 0.2 if self.tty else self.every

    def _redraw(self) -> None:
        self._draw()

    def _finish(self) -> None:
        if self.tty:
            with self._draw_lock:
                self.stream.write(_CLEAR)
                self.stream.flush()
        elif self.enabled:
            self._draw()  # the last word in a log


def _duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
