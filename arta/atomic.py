"""Files replaced whole: written to a temp file beside them, fsynced, then moved into place.

A reader sees the old file or the new one, never a torn one, so it needs no
lock. A writer *claims* its temp file (an exclusive ``flock``, held until
the move, which dies with the writer however it dies, ``kill -9`` included),
and temp files carry a known prefix and suffix: :func:`remove_stale` removes
those no live writer holds. Where there is no ``flock`` (Windows) it goes by
age alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["CLAIM_SECONDS", "STALE_SECONDS", "remove_stale", "replacing",
           "write_json_atomically"]

#: A temp file younger than this is never swept: its writer may not have claimed it yet.
CLAIM_SECONDS = 2.0

#: Without file locks, a temp file untouched this long is taken for a killed writer's.
STALE_SECONDS = 60.0


@contextlib.contextmanager
def replacing(path: Path, *, prefix: str, suffix: str = ".tmp", private: bool = True,
              place: Callable[[Path, Path], None] | None = None) -> Iterator[BinaryIO]:
    """Write ``path`` whole or not at all through the binary file this yields.

    On a clean exit the temp file is fsynced and moved over ``path`` (by
    ``place(temp, path)`` if given, which may refuse by raising); on an
    error it is removed. ``private`` makes it 0600 (:func:`tempfile.mkstemp`);
    else it is created as :func:`open` creates files (the umask applies).
    """
    if private:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=suffix)
        temp = Path(name)
        file: BinaryIO = os.fdopen(fd, "wb")
    else:
        temp = path.with_name(f"{prefix}{uuid.uuid4().hex}{suffix}")
        file = open(temp, "xb")  # noqa: SIM115 -- closed below, before the move
    move = place or os.replace
    try:
        with file:
            if fcntl is not None:  # claimed until the move: no sweep takes it meanwhile
                fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            yield file
            file.flush()
            os.fsync(file.fileno())
            if fcntl is not None:
                move(temp, path)  # still open, so still claimed
        if fcntl is None:
            move(temp, path)  # (where an open file cannot be moved)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def write_json_atomically(path: Path, value: Any, *, prefix: str, suffix: str = ".tmp",
                          **dump_options: Any) -> None:
    """Replace ``path`` with ``value`` as JSON, whole or not at all (0600, fsynced)."""
    data = json.dumps(value, **dump_options).encode("utf-8")
    with replacing(path, prefix=prefix, suffix=suffix) as file:
        file.write(data)


def remove_stale(folder: Path, pattern: str, older_than: float = CLAIM_SECONDS) -> None:
    """Remove the temp files matching ``pattern`` whose writer is gone (killed).

    Each one no live writer holds and older than ``older_than`` seconds goes
    (without file locks: each untouched for :data:`STALE_SECONDS`).
    """
    now = time.time()
    for temp in folder.glob(pattern):
        with contextlib.suppress(OSError):  # gone meanwhile, or held by a live writer
            age = now - temp.lstat().st_mtime
            if fcntl is None:
                if age >= max(older_than, STALE_SECONDS):
                    temp.unlink()
            elif age >= older_than:
                descriptor = os.open(temp, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    temp.unlink()  # under its lock: no writer can claim it meanwhile
                finally:
                    os.close(descriptor)
