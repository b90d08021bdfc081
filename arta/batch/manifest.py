"""The manifest of a batch: the append-only record that makes ``arta batch`` resumable.

A JSONL file; each line is written whole, flushed and fsynced before the
work goes on, and starts on a fresh line even after a torn one (a disk that
filled, a power loss), so that one damaged line never swallows the next.
The last record of a job wins::

    {"job": "12:3f2a..", "line": 12, "event": "intent", "seed": 42, "params": {...}}
    {"job": "12:3f2a..", "line": 12, "event": "submitted", "record_id": "..", "seed": 42}
    {"job": "12:3f2a..", "line": 12, "event": "done", "record_id": "..", "files": [..]}
    {"job": "12:3f2a..", "line": 12, "event": "failed", "record_id": "..", "error": ".."}

The ``intent`` is written ahead of each submit, with the full parameters
and the seed. A job whose last record is an intent was perhaps taken by the
service just before a kill: the next run submits it again *with the same
seed*, so that the service (and the emulator's ``duplicate_submits``) can
see it for what it is, and counts it as possibly resubmitted.

One run at a time: :class:`RunLock` holds a lock beside the manifest for a
whole run, and a second run on the same manifest is refused at once, naming
the first run's PID and host. The lock files are hidden (dot files beside
the manifest) and stay there between runs, so that they are not taken for
images, and so that two runs always lock the same file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import filelock

from arta.errors import ArtaError

if TYPE_CHECKING:  # typing.Self is 3.11+; only the type checker needs it
    from typing_extensions import Self

__all__ = ["MANIFEST_NAME", "JobRecord", "Manifest", "ManifestBusy", "ManifestError", "RunLock"]

log = logging.getLogger(__name__)

#: The manifest's file name in the output folder, unless ``--manifest`` says otherwise.
MANIFEST_NAME = "arta-manifest.jsonl"

_EVENTS = frozenset({"intent", "submitted", "done", "failed"})


class ManifestError(ArtaError):
    """The manifest could not be written or locked: the batch cannot keep its record."""


class ManifestBusy(ManifestError):
    """Another run holds the manifest; ``owner`` says whose (pid, host, started)."""

    def __init__(self, message: str, *, owner: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.owner = owner or {}


def hidden_beside(path: Path, suffix: str) -> Path:
    """A dot file beside ``path``: out of the way of the images in the same folder."""
    return path.with_name(f".{path.name}.{suffix}")


@dataclasses.dataclass(frozen=True)
class JobRecord:
    """What the manifest knows of one job: its last event, record id and seed."""

    event: str
    record_id: str | None = None
    seed: int | None = None
    error_type: str | None = None
    files: tuple[str, ...] = ()
    blurred: tuple[int, ...] = ()


class Manifest:
    """The append-only JSONL record of a batch, safe to share between processes and threads."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file_lock = filelock.FileLock(str(hidden_beside(self.path, "lock")))
        # Group commit: threads that append at once share one write and one
        # fsync. Each append still returns only once its own line is durable.
        self._turn = threading.Condition()
        self._pending: list[bytes] = []
        self._queued = 0  # appends handed in so far
        self._durable = 0  # appends known to be on disk
        self._writing = False
        self._failed: list[tuple[int, int, OSError]] = []  # (first, last, error) of each failure

    def append(self, record: dict[str, Any]) -> None:
        """Add one line, durably (fsynced), on a fresh line; raise :class:`ManifestError` if it cannot."""
        data = (json.dumps(record, sort_keys=True) + "\n").encode()
        with self._turn:
            self._pending.append(data)
            self._queued += 1
            mine = self._queued
            while self._durable < mine:
                if self._writing:
                    self._turn.wait()
                    continue
                self._write_pending()
            error = next((e for first, last, e in self._failed if first <= mine <= last), None)
        if error is not None:
            raise ManifestError(f"the manifest {self.path} could not be written: "
                                f"{error.strerror or error}") from error

    def _write_pending(self) -> None:
        """Called holding ``_turn``: write every pending line in one go, then wake their writers."""
        lines, self._pending = self._pending, []
        first, last = self._durable + 1, self._queued
        self._writing = True
        self._turn.release()
        try:
            self._write(b"".join(lines))
            error = None
        except OSError as failure:
            error = failure
        finally:
            self._turn.acquire()
            self._writing = False
        if error is not None:
            self._failed = [*self._failed[-99:], (first, last, error)]  # rare: a disk full
        self._durable = last
        self._turn.notify_all()

    def _write(self, data: bytes) -> None:
        """Append ``data`` under the file lock (other processes), on a fresh line, and fsync it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._file_lock:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    data = b"\n" + data  # the last line was torn: never glue onto it
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            if not size:
                _fsync_folder(self.path.parent)

    def records(self) -> list[dict[str, Any]]:
        """Every whole record, in order; a damaged line is skipped with a warning."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as error:
            raise ManifestError(f"the manifest {self.path} could not be read: "
                                f"{error.strerror or error}") from error
        records = []
        for number, raw in enumerate(data.split(b"\n"), 1):
            if not raw.strip():
                continue
            record = _parse_record(raw)
            if record is None:
                log.warning("%s, line %d: not a whole record (cut short by a kill or a full "
                            "disk?); skipped", self.path, number)
            else:
                records.append(record)
        return records

    def states(self) -> dict[str, JobRecord]:
        """What is known of every job, by key (see the module's docstring)."""
        states: dict[str, JobRecord] = {}
        for record in self.records():
            states[record["job"]] = _fold(states.get(record["job"]), record)
        return states

    def latest(self) -> dict[str, dict[str, Any]]:
        """The last record of every job, by key."""
        return {record["job"]: record for record in self.records()}


def _fold(state: JobRecord | None, record: dict[str, Any]) -> JobRecord:
    """The job's state after ``record``."""
    event = record["event"]
    seed = record.get("seed")
    if seed is None and state is not None:
        seed = state.seed
    if event == "intent":
        return JobRecord("intent", seed=seed)
    return JobRecord(event, record.get("record_id"), seed, record.get("error_type"),
                    tuple(record.get("files", ())), tuple(record.get("blurred", ())))


def _parse_record(raw: bytes) -> dict[str, Any] | None:
    """A record of the expected shape, or None."""
    try:
        record = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    if not isinstance(record, dict):
        return None
    checks: dict[str, Callable[[Any], bool]] = {
        "job": lambda v: isinstance(v, str),
        "event": lambda v: isinstance(v, str) and v in _EVENTS,
        "line": _is_int,
        "record_id": lambda v: v is None or (isinstance(v, str) and bool(v)),
        "seed": lambda v: v is None or _is_int(v),
        "error_type": lambda v: v is None or isinstance(v, str),
        "files": lambda v: isinstance(v, list) and all(isinstance(f, str) for f in v),
        "blurred": lambda v: isinstance(v, list) and all(_is_int(i) for i in v),
    }
    required = ("job", "event")
    if any(key not in record for key in required):
        return None
    if all(check(record[key]) for key, check in checks.items() if key in record):
        return record
    return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _fsync_folder(folder: Path) -> None:
    """Make a new file's name durable too (its folder entry)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class RunLock:
    """The lock a batch holds on its manifest for the whole run; a second run is refused at once.

    The lock is a :mod:`filelock` lock on a hidden file beside the manifest,
    taken without waiting. Its holder writes its PID, host and start time
    into a second hidden file (``.NAME.owner``), which a refused run quotes.
    The lock dies with the process (even under SIGKILL), so a stale owner
    file never blocks a later run.
    """

    def __init__(self, manifest_path: str | os.PathLike[str]) -> None:
        self.manifest_path = Path(manifest_path)
        self.owner_file = hidden_beside(self.manifest_path, "owner")
        self._lock = filelock.FileLock(str(hidden_beside(self.manifest_path, "run.lock")))

    def acquire(self) -> None:
        """Take the lock now, or raise :class:`ManifestBusy` (or :class:`ManifestError`)."""
        try:
            self.manifest_path.parent.mkdir(parents=True, exist_ok=True)
            self._lock.acquire(timeout=0)
        except filelock.Timeout:
            owner = self._owner()
            who = (f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}, started "
                   f"{owner.get('started', '?')}") if owner else "owner unknown"
            raise ManifestBusy(
                f"another arta batch ({who}) is running on the manifest {self.manifest_path}; "
                "wait for it to end, or give this run its own -o/--manifest",
                owner=owner) from None
        except OSError as error:
            raise ManifestError(f"cannot lock the manifest {self.manifest_path}: "
                                f"{error.strerror or error}") from error
        owner = {"pid": os.getpid(), "host": socket.gethostname(),
                 "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        try:
            self.owner_file.write_text(json.dumps(owner) + "\n", encoding="utf-8")
        except OSError as error:
            self._lock.release()
            raise ManifestError(f"cannot write {self.owner_file}: "
                                f"{error.strerror or error}") from error

    def release(self) -> None:
        """Let the next run in (the lock file itself stays, hidden)."""
        try:
            self.owner_file.unlink()
        except OSError:
            pass
        self._lock.release()

    def _owner(self) -> dict[str, Any]:
        try:
            owner = json.loads(self.owner_file.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return {}
        return owner if isinstance(owner, dict) else {}

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
