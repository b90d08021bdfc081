"""A one-line progress display on stderr, for terminals only.

The line is redrawn in place (``\\r`` and erase-to-end) a few times a second
so that the elapsed time moves, and erased when the work ends, so the screen
is left as it was: what the command prints to stdout (the saved files) is
all that stays. Nothing is drawn when stderr is not a terminal, and colour
only when ``NO_COLOR`` is unset and the terminal is not ``dumb``.
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:  # typing.Self is 3.11+; only the type checker needs it
    from typing_extensions import Self

__all__ = ["StatusLine"]

_CLEAR = "\r\x1b[K"
_COLOURS = {"DONE": "32", "FAILED": "31", "IN_PROGRESS": "33", "IN_QUEUE": "36"}
_SPINNER = "|/-\\"


class StatusLine:
    """A status line with a spinner and the elapsed time; use as a context manager."""

    def __init__(self, stream: TextIO, *, enabled: bool = True, interval: float = 0.1) -> None:
        self.stream = stream
        self.enabled = enabled and stream.isatty()
        self.colour = (self.enabled and "NO_COLOR" not in os.environ
                       and os.environ.get("TERM") != "dumb")
        self.interval = interval
        self.started = time.monotonic()
        self._text = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def paint(self, word: str) -> str:
        """``word`` in its status colour, when colour is on."""
        code = _COLOURS.get(word)
        return f"\x1b[{code}m{word}\x1b[0m" if self.colour and code else word

    def update(self, text: str) -> None:
        """Show ``text`` from now on."""
        with self._lock:
            self._text = text
        self._draw()

    def _draw(self, turn: int = 0) -> None:
        if not self.enabled:
            return
        with self._lock:
            elapsed = time.monotonic() - self.started
            self.stream.write(f"{_CLEAR}{_SPINNER[turn % 4]} {self._text} ({elapsed:.1f}s)")
            self.stream.flush()

    def _run(self) -> None:
        turn = 0
        while not self._stop.wait(self.interval):
            turn += 1
            self._draw(turn)

    def __enter__(self) -> Self:
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="arta-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.enabled:
            with self._lock:
                self.stream.write(_CLEAR)  # leave the screen as it was
                self.stream.flush()
