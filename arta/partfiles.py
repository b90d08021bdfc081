"""The ``.arta-*.part`` files a download writes before renaming them into place, and their sweep.

A writer *claims* its part file: it holds an exclusive ``flock`` on it from
creation until the rename, and the lock dies with the writer however it
dies (``kill -9`` included). A sweep, at the start of a save into the same
folder, removes every part it can lock, that is every part whose writer is
gone, at once: a rerun after a killed batch cleans up after it. A part
younger than :data:`CLAIM_SECONDS` is spared (its writer may not have locked
it yet). Where there is no ``flock`` (Windows, where an open file cannot be
removed anyway) the sweep goes by age alone: untouched for
:data:`STALE_PART_SECONDS`.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from pathlib import Path
from typing import IO, Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["CLAIM_SECONDS", "STALE_PART_SECONDS", "claim", "part_path", "sweep"]

#: Without locks, a ``.part`` file untouched this long is taken for a killed writer's.
STALE_PART_SECONDS = 60.0

#: A part younger than this is never swept: the time between its creation and its lock.
CLAIM_SECONDS = 2.0

_swept: dict[Path, float] = {}  # folder -> when it was last swept, in this process


def part_path(path: Path) -> Path:
    """A temporary name beside ``path`` that no other download can take."""
    return path.with_name(f".arta-{uuid.uuid4().hex}.part")


def claim(file: IO[Any]) -> bool:
    """Lock ``file`` (a part just created) for as long as it is open; False where locks are lacking."""
    if fcntl is None:
        return False
    fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    return True


def sweep(folder: Path) -> None:
    """Remove the parts in ``folder`` left by writers that are gone.

    A folder is swept at most once every :data:`CLAIM_SECONDS` per process:
    a batch saving thousands of images into one folder must not list it
    before each one.
    """
    now = time.time()
    if now - _swept.get(folder, 0.0) < CLAIM_SECONDS:
        return
    _swept[folder] = now
    for part in folder.glob(".arta-*.part"):
        with contextlib.suppress(OSError):
            age = now - part.lstat().st_mtime
            if fcntl is None:
                if age >= STALE_PART_SECONDS:
                    part.unlink()
            elif age >= CLAIM_SECONDS:
                _remove_unclaimed(part)


def _remove_unclaimed(part: Path) -> None:
    """Unlink ``part`` if no writer holds it (its lock held meanwhile, so none can take it)."""
    assert fcntl is not None
    descriptor = os.open(part, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: a live writer
        part.unlink()
    finally:
        os.close(descriptor)
