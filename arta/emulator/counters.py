"""The emulator's request counters, shared by its services and read by ``/emulator/stats``."""

from __future__ import annotations

import threading
from collections.abc import Iterable

__all__ = ["Counters"]


class Counters:
    """Named whole-number counters behind one small lock.

    Each service adds to its own names; a lock of their own keeps a counter
    bump from waiting on a service's longer critical sections.
    """

    def __init__(self, names: Iterable[str]) -> None:
        self._names = tuple(names)
        self._lock = threading.Lock()
        self._values = dict.fromkeys(self._names, 0)

    def add(self, name: str, amount: int = 1) -> None:
        """Add ``amount`` to counter ``name`` (a KeyError for a name not declared)."""
        with self._lock:
            self._values[name] += amount

    def raise_to(self, name: str, value: int) -> None:
        """Make counter ``name`` at least ``value``: for maxima such as jobs in flight."""
        with self._lock:
            self._values[name] = max(self._values[name], value)

    def snapshot(self) -> dict[str, int]:
        """A copy of every counter, in declaration order."""
        with self._lock:
            return dict(self._values)

    def reset(self) -> None:
        """Set every counter back to 0."""
        with self._lock:
            self._values = dict.fromkeys(self._names, 0)
