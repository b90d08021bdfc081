"""Files replaced whole: written to a temp file beside them, fsynced, then moved into place.

A reader sees the old file or the new one, never a torn one, so it needs no
lock. Temp files carry a known prefix and suffix, so that copies left by a
killed writer can be found and swept (:func:`remove_stale`).
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

__all__ = ["remove_stale", "replacing", "write_json_atomically"]


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
    try:
        with file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        (place or os.replace)(temp, path)
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


def remove_stale(folder: Path, pattern: str, older_than: float) -> None:
    """Remove the temp files matching ``pattern`` untouched for ``older_than`` seconds (a killed writer's)."""
    now = time.time()
    for temp in folder.glob(pattern):
        with contextlib.suppress(OSError):
            if now - temp.lstat().st_mtime >= older_than:
                temp.unlink()
