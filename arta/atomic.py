"""Files replaced whole: written to a temp file beside them, fsynced, then ``os.replace``d.

A reader sees the old file or the new one, never a torn one, so it needs no
lock. The temp file is made by :func:`tempfile.mkstemp` (mode 0600) under a
known prefix, so that copies left by a killed writer can be found and
removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["write_json_atomically"]


def write_json_atomically(path: Path, value: Any, *, prefix: str, suffix: str = ".tmp",
                          **dump_options: Any) -> None:
    """Replace ``path`` with ``value`` as JSON, whole or not at all (0600, fsynced)."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=suffix)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(value, file, **dump_options)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
