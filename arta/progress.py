"""Progress on stderr: a status line for one job, and a progress display for many.

:class:`StatusLine` (one job, terminals only): the line is redrawn in place (``\\r`` and erase-to-end) a few times a second
so that the elapsed time moves, and erased when the work ends, so the screen
is left as it was: what the command prints to stdout (the saved files) is
all that stays. Nothing is drawn when stderr is not a terminal, and colour
only when ``NO_COLOR`` is unset and the terminal is not ``dumb``.

:class:`BatchProgress` (many jobs): on a terminal, a bar redrawn in place
(only when its text changed) with done / in flight / queued / failed, the
current rate (jobs a minute over the last minute) and the time left at that
rate; off a terminal (a CI log), the same numbers as a plain line every few
seconds and once at the end. Jobs done by an earlier run of a batch
(:meth:`~ProgressDisplay.resumed`) count as done but not in the rate.

:func:`progress_display` picks the display for ``progress=True`` of
:meth:`arta.Client.map` and :func:`arta.batch.run_batch`: tqdm's bar when
tqdm is installed, else rich's, else the built-in one.
"""

from __future__ import annotations

import collections
import importlib.util
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Protocol, TextIO

if TYPE_CHECKING:  # typing.Self is 3.11+; only the type checker needs it
    from typing_extensions import Self

__all__ = ["BatchProgress", "ProgressDisplay", "StatusLine", "progress_display"]

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


class ProgressDisplay(Protocol):
    """What shows the progress of many jobs; a context manager around the run."""

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc_info: object) -> None: ...

    def update(self, *, done: int, in_flight: int, queued: int, failed: int) -> None:
        """The counts now (done and failed include :meth:`resumed`'s)."""

    def resumed(self, done: int) -> None:
        """``done`` jobs were done by an earlier run: shown as done, not counted in the rate."""

    def message(self, text: str) -> None:
        """Print ``text`` on a line of its own, out of the display's way."""


class BatchProgress(_Redrawn):
    """The built-in display: a bar on a terminal, a plain line every few seconds elsewhere.

    Call :meth:`update` with the counts whenever they change (from any
    thread); a background thread draws. ``total`` may be None (an input of
    unknown length: no bar, no time left). ``window`` is the span, in
    seconds, the rate is measured over; ``every`` is how often the plain
    line is written when ``stream`` is not a terminal; ``clock`` tells the
    time; ``label`` names the work in the plain line (``arta: batch: ...``).
    """

    def __init__(self, stream: TextIO, total: int | None, *, enabled: bool = True,
                 window: float = 60.0, every: float = 5.0, width: int = 24,
                 clock: Callable[[], float] = time.monotonic, label: str = "batch") -> None:
        super().__init__()
        self.stream = stream
        self.total = total
        self.enabled = enabled
        self.tty = enabled and stream.isatty()
        self.window, self.every, self.width, self.label = window, every, width, label
        self.counts = {"done": 0, "in_flight": 0, "queued": total or 0, "failed": 0}
        self.clock = clock
        self.started = clock()
        self._ends: collections.deque[float] = collections.deque()  # when each job ended
        self._lock = threading.Lock()
        self._draw_lock = threading.Lock()
        self._drawn = ""

    def resumed(self, done: int) -> None:
        """``done`` jobs were done by an earlier run: shown as done, not counted in the rate."""
        with self._lock:
            self.counts["done"] += done
            self.counts["queued"] = max(0, self.counts["queued"] - done)

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
        pace = "--" if rate is None else f"{rate:.1f}"
        elapsed = _duration(now - self.started)
        if self.total is None:
            return (f"{c['done']} done, {c['in_flight']} in flight, {c['failed']} failed, "
                    f"{pace} jobs/min, {elapsed} elapsed")
        left = max(0, self.total - c["done"] - c["failed"])
        eta = "--" if not rate else _duration(left * 60.0 / rate)
        return (f"{c['done']}/{self.total} done, {c['in_flight']} in flight, {c['queued']} "
                f"queued, {c['failed']} failed, {pace} jobs/min, ETA {eta}, {elapsed} elapsed")

    def bar(self, now: float | None = None) -> str:
        """The terminal form: a bar, then :meth:`text`."""
        if self.total is None:
            return self.text(now)
        with self._lock:
            ended = self.counts["done"] + self.counts["failed"]
        filled = min(self.width, self.width * ended // self.total if self.total else self.width)
        return f"[{'#' * filled}{'.' * (self.width - filled)}] {self.text(now)}"

    def message(self, text: str) -> None:
        """Print ``text`` on its own line (above the bar, on a terminal)."""
        with self._draw_lock:
            self.stream.write(f"{_CLEAR if self.tty else ''}{text}\n")
            self.stream.flush()
            self._drawn = ""  # the bar is gone from the screen: draw it again
        if self.tty:
            self._draw()

    def _draw(self) -> None:
        line = (f"{_CLEAR}arta: {self.bar()}" if self.tty
                else f"arta: {self.label}: {self.text()}\n")
        with self._draw_lock:
            if self.tty and line == self._drawn:
                return  # nothing changed on the screen
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


class _TqdmProgress:
    """:class:`ProgressDisplay` on a ``tqdm`` bar."""

    def __init__(self, total: int | None, label: str, stream: TextIO) -> None:
        import tqdm

        self._tqdm = tqdm
        self._stream = stream
        self._bar = tqdm.tqdm(total=total, desc=f"arta {label}", unit="job", file=stream,
                              dynamic_ncols=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._bar.close()

    def resumed(self, done: int) -> None:
        # tqdm's rate is (n - initial) / elapsed: an earlier run's jobs are not this one's pace.
        self._bar.initial = self._bar.n = self._bar.n + done
        self._bar.refresh()

    def update(self, *, done: int, in_flight: int, queued: int, failed: int) -> None:
        ended = done + failed
        self._bar.set_postfix(in_flight=in_flight, failed=failed, refresh=False)
        if ended != self._bar.n:
            self._bar.update(ended - self._bar.n)

    def message(self, text: str) -> None:
        self._tqdm.tqdm.write(text, file=self._stream)


class _RichProgress:
    """:class:`ProgressDisplay` on a ``rich`` progress bar."""

    def __init__(self, total: int | None, label: str, stream: TextIO) -> None:
        import rich.console
        import rich.progress

        self._progress = rich.progress.Progress(
            *rich.progress.Progress.get_default_columns(), rich.progress.TextColumn("{task.fields[counts]}"),
            console=rich.console.Console(file=stream))
        self._task = self._progress.add_task(f"arta {label}", total=total, counts="")

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._progress.stop()

    def resumed(self, done: int) -> None:
        # reset() drops the speed samples: an earlier run's jobs are not this one's pace.
        task = self._progress.tasks[0]
        self._progress.reset(self._task, completed=int(task.completed) + done)

    def update(self, *, done: int, in_flight: int, queued: int, failed: int) -> None:
        self._progress.update(self._task, completed=done + failed,
                              counts=f"{in_flight} in flight, {failed} failed")

    def message(self, text: str) -> None:
        self._progress.console.print(text, markup=False, highlight=False)


def progress_display(progress: bool | ProgressDisplay | None, total: int | None, *,
                     label: str, stream: TextIO | None = None) -> ProgressDisplay | None:
    """The display for a ``progress=`` option: None for False, the given one, or one to suit.

    ``True`` picks tqdm's bar when tqdm is installed, else rich's, else
    :class:`BatchProgress`; on ``stream`` (default: stderr).
    """
    if progress is None or progress is False:
        return None
    if progress is not True:
        return progress
    stream = sys.stderr if stream is None else stream
    if importlib.util.find_spec("tqdm") is not None:
        return _TqdmProgress(total, label, stream)
    if importlib.util.find_spec("rich") is not None:
        return _RichProgress(total, label, stream)
    return BatchProgress(stream, total, label=label)


def _duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
