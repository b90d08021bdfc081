"""An uncaught Ctrl-C that arta re-raised ends the script as any interrupted Python script.

Python exits as killed by SIGINT (status 130 in a shell) only when the
exception that ends ``__main__`` is exactly ``KeyboardInterrupt``; arta's own
subclasses (:class:`~arta.errors.GenerationInterrupted`, which carries the
record id) would end it with status 1. So when one is raised, a
``sys.excepthook`` is chained in (once per process) that, for those, prints
the traceback as usual and, at exit, after the other exit functions, ends the
process as the interpreter itself does: SIGINT with its default action.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from types import TracebackType

__all__ = ["exit_as_interrupted_if_uncaught"]

_installed = threading.Lock()
_hooked = False


def exit_as_interrupted_if_uncaught() -> None:
    """Make an uncaught interrupt of arta's end the process as a plain Ctrl-C does (set up once)."""
    global _hooked
    with _installed:
        if _hooked:
            return
        _hooked = True
        previous = sys.excepthook

        def hook(kind: type[BaseException], error: BaseException,
                 trace: TracebackType | None) -> None:
            previous(kind, error, trace)  # the traceback, record id included, on stderr
            # Only arta's own: another library's subclass keeps the exit it chose.
            if issubclass(kind, KeyboardInterrupt) and kind.__module__ == "arta.errors":
                atexit.register(_die_by_sigint)  # last in, first out: it runs the rest first

        sys.excepthook = hook


def _die_by_sigint() -> None:
    atexit.unregister(_die_by_sigint)
    atexit._run_exitfuncs()  # the exit functions registered before this one
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "nt":  # no signal to re-deliver: the status Windows gives Ctrl-C
        os._exit(0xC000013A)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)
