"""Where the shared token lives: :class:`Token`, the :class:`TokenStore` protocol, and two stores.

:class:`FileTokenStore` (the default) keeps ``auth_ARTA.json`` in
``ARTA_HOME``, written whole (temp file, fsync, ``os.replace``) so readers
need no lock, and locked with :mod:`filelock` for renewals across
processes; :class:`MemoryTokenStore` is the in-process alternative. When
to renew is :class:`arta.auth.Authenticator`'s business, not the store's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import filelock

from arta.atomic import remove_stale, write_json_atomically
from arta.auth.token import Token
from arta.config import Settings
from arta.errors import ConfigurationError, TokenStoreError

__all__ = ["FileTokenStore", "MemoryTokenStore", "Token", "TokenStore"]

log = logging.getLogger("arta.auth")  # one logger for the token, however it is split

_TEMP_PREFIX, _TEMP_SUFFIX = ".auth_ARTA.", ".tmp"
_TEMPS = f"{_TEMP_PREFIX}*{_TEMP_SUFFIX}"  # what a killed writer may leave


class TokenStore(Protocol):
    """Where the shared token lives.

    ``load`` must never take the lock and never see a half-written token.
    ``lock`` guards the read-decide-write of a renewal across every thread
    and process that shares the store.
    """

    def load(self) -> Token | None:
        """The stored token, or None if there is none (or it is unreadable)."""
        ...

    def save(self, token: Token) -> None:
        """Store ``token``, replacing the old one at once."""
        ...

    def clear(self) -> None:
        """Forget the stored token."""
        ...

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Hold exclusive rights to renew the token."""
        ...


def _make_private_folder(folder: Path) -> None:
    """Make ``folder`` and each missing parent 0700, whatever the umask."""
    missing = []
    current = folder
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            continue  # made meanwhile by another process
        os.chmod(path, 0o700)  # mkdir's mode is cut by the umask


def _check_home(folder: Path) -> None:
    """Refuse a state folder every user (or another owner) can write to; warn about a loose one.

    A group- or world-writable folder owned by someone else lets that user
    swap the token file for theirs (or read every token written there).
    """
    try:
        info = folder.stat()
    except OSError as error:
        raise ConfigurationError(f"ARTA_HOME {folder} cannot be used: {error.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigurationError(
            f"ARTA_HOME {folder} is not a folder; point ARTA_HOME at a folder (or remove the file)")
    mode = stat.S_IMODE(info.st_mode)
    mine = not hasattr(os, "getuid") or info.st_uid == os.getuid()
    if mode & 0o002:  # the sticky bit (/tmp's 1777) only stops others deleting our files
        raise ConfigurationError(
            f"ARTA_HOME {folder} is writable by other users (every user: mode {mode:o}); even with "
            "the sticky bit another user can create the token or lock file there before you do. "
            "Use a folder of your own (chmod 700)")
    if mode & 0o022 and not mine and not mode & stat.S_ISVTX:
        raise ConfigurationError(
            f"ARTA_HOME {folder} is writable by other users (mode {mode:o}) and is not yours: "
            "another user could replace the token. Use a folder of your own (chmod 700)")
    if mode & 0o077 and (folder, mode) not in _WARNED:
        _WARNED.add((folder, mode))
        log.warning("ARTA_HOME %s has mode %o: other users can %s it; chmod 700 %s",
                    folder, mode, "write to" if mode & 0o022 else "look into", folder)


_WARNED: set[tuple[Path, int]] = set()


class MemoryTokenStore:
    """A token store for one process: no disk, shared by its threads."""

    def __init__(self) -> None:
        self._token: Token | None = None
        self._lock = threading.RLock()

    def load(self) -> Token | None:
        """The token held in memory."""
        return self._token

    def save(self, token: Token) -> None:
        """Hold ``token``."""
        self._token = token

    def clear(self) -> None:
        """Forget the token."""
        self._token = None

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold a re-entrant thread lock."""
        with self._lock:
            yield

    def __repr__(self) -> str:
        return f"MemoryTokenStore(has_token={self._token is not None})"


class FileTokenStore:
    """The default store: ``auth_ARTA.json`` in ``ARTA_HOME``, shared across processes.

    The file is written to a temporary file in the same folder, flushed,
    fsynced and moved over the old one with :func:`os.replace`, so readers
    need no lock. Renewals take ``auth_ARTA.json.lock`` (a
    :class:`filelock.FileLock`, released by the OS if its holder dies),
    waiting at most ``lock_timeout`` seconds. The folder is made 0700 and
    the file 0600.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *,
                 lock_timeout: float = 60.0) -> None:
        self.path = Path(path) if path is not None else Settings.resolve().token_file
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.lock_timeout = lock_timeout
        self._thread_lock = threading.Lock()
        self._last: tuple[tuple[int, int, int, int], Token] | None = None

    def _ensure_folder(self) -> None:
        folder = self.path.parent
        if not folder.exists():
            try:
                _make_private_folder(folder)
            except OSError as error:
                raise ConfigurationError(
                    f"cannot create the ARTA_HOME folder {folder}: {error.strerror}") from None
        _check_home(folder)

    def check_writable(self) -> None:
        """Raise :class:`~arta.errors.ConfigurationError` unless a token can be saved here.

        Called before a sign-up, so that a local fault (a folder sitting at
        the token path, a read-only home) does not spend one of the 100
        anonymous accounts an address gets per hour.
        """
        self._ensure_folder()
        for path, what in ((self.path, "token file"), (self.lock_path, "lock file")):
            if path.is_dir():
                raise ConfigurationError(
                    f"a folder sits at the {what} path {path}; remove it (arta keeps a file there)")
        try:
            fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=_TEMP_PREFIX,
                                        suffix=_TEMP_SUFFIX)
        except OSError as error:
            raise ConfigurationError(
                f"cannot write in ARTA_HOME {self.path.parent}: {error.strerror}") from None
        os.close(fd)
        os.unlink(temp)

    def load(self) -> Token | None:
        """Read the token without a lock; a corrupt, foreign or unreadable file counts as none.

        A file others can read is made 0600 on the way, with a warning. The
        token read last is kept with the file's identity (inode, size,
        change times): every request asks for the token, and while the file
        is the same one a ``stat`` answers instead of a read and a parse.
        """
        try:
            seen = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError:
            seen = None  # the read below says what is wrong
        identity = None if seen is None else (
            seen.st_ino, seen.st_size, seen.st_mtime_ns, seen.st_ctime_ns)
        cached = self._last
        if identity is not None and cached is not None and cached[0] == identity:
            return cached[1]
        token = self._read()
        self._last = None if token is None or identity is None else (identity, token)
        return token

    def _read(self) -> Token | None:
        try:
            with open(self.path, "rb") as file:
                self._tighten(file.fileno())
                data = file.read(1024 * 1024)
        except FileNotFoundError:
            return None
        except OSError as error:
            log.warning("cannot read the token file %s (%s); getting a new token",
                        self.path, error.strerror)
            return None
        try:
            return Token.from_json(json.loads(data.decode("utf-8")))
        except (ValueError, RecursionError) as error:
            # Say why, never what: the content may hold a secret.
            why = "nested too deep" if isinstance(error, RecursionError) else \
                "not UTF-8" if isinstance(error, UnicodeDecodeError) else error
            log.warning("the token file %s is unusable (%s); it will be replaced",
                        self.path, why if data.strip() else "empty")
            return None

    def _tighten(self, fd: int) -> None:
        """Make the open token file 0600 if group or others may read it, and say so."""
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077:
            try:
                os.fchmod(fd, 0o600)
            except OSError as error:
                log.warning("the token file %s has mode %o and cannot be made 0600 (%s)",
                            self.path, mode, error.strerror)
                return
            log.warning("the token file %s had mode %o (readable by others); made it 0600",
                        self.path, mode)

    def save(self, token: Token) -> None:
        """Replace the file atomically with ``token``, readable by its owner only.

        Temporary copies left behind by processes killed while saving are
        removed on the way (:func:`arta.atomic.remove_stale`).
        """
        self._ensure_folder()
        remove_stale(self.path.parent, _TEMPS)
        write_json_atomically(self.path, token.to_json(), prefix=_TEMP_PREFIX,
                              suffix=_TEMP_SUFFIX)

    def clear(self) -> None:
        """Delete the token file, and every temporary copy of a token beside it."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        remove_stale(self.path.parent, _TEMPS, 0.0)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the store across threads (a thread lock) and processes (the file lock)."""
        self._ensure_folder()
        if self.lock_path.is_dir():
            raise ConfigurationError(
                f"a folder sits at the lock file path {self.lock_path}; remove it "
                "(arta keeps a file there)")
        deadline = time.monotonic() + self.lock_timeout
        # The thread lock first: threads of one process queue cheaply here
        # instead of all polling the file lock.
        if not self._thread_lock.acquire(timeout=self.lock_timeout):
            raise self._held_too_long()
        try:
            file_lock = filelock.FileLock(self.lock_path, mode=0o600)
            try:
                # Poll often: waiters only re-read a file, so turns are short.
                file_lock.acquire(timeout=max(0.0, deadline - time.monotonic()),
                                  poll_interval=0.005)
            except filelock.Timeout:
                raise self._held_too_long() from None
            try:
                yield
            finally:
                file_lock.release()
        finally:
            self._thread_lock.release()

    def _held_too_long(self) -> TokenStoreError:
        return TokenStoreError(
            f"the token store lock {self.lock_path} stayed taken for more than "
            f"{self.lock_timeout:g}s: another process is stuck renewing the token. "
            "Stop it, or use a separate ARTA_HOME"
        )

    def __getstate__(self) -> dict[str, Any]:
        # A store can travel to worker processes; the thread lock cannot.
        state = self.__dict__.copy()
        del state["_thread_lock"]
        state["_last"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FileTokenStore({str(self.path)!r})"
