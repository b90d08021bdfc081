"""Tokens: obtained once, shared by every thread and process, refreshed at half-life.

Firebase allows 100 new anonymous accounts per hour per IP address
(docs/protocol.rst section 1), so a token is a shared resource, not a per-process
one. A :class:`TokenStore` keeps it; :class:`Authenticator` decides when to
sign up or refresh, double-checked under the store's lock:

1. read the token without a lock (the file is only ever replaced whole);
2. if it is missing or past half its life, take the lock and read again:
   another process may have renewed it while we waited;
3. only then call Firebase, and save the answer atomically.

So N processes that start together make one sign-up, and a reader never
sees a torn file.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import os
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import filelock

from arta import api
from arta.config import Settings
from arta.errors import ArtaError, ConfigurationError, QuotaExceededError, TokenStoreError
from arta.retry import RetryPolicy, transient
from arta.transport import Request, Response, Transport

__all__ = [
    "Authenticator",
    "FileTokenStore",
    "MemoryTokenStore",
    "Token",
    "TokenStore",
]

log = logging.getLogger(__name__)

Clock = Callable[[], float]

#: After a renewal that failed, or gave a token already past half its life
#: (clock skew, a lifetime of 0), the next attempt waits this long: one
#: Firebase call a minute at most, as botocore throttles its refreshes.
RENEWAL_BACKOFF = 60.0

#: Temporary copies of the token older than this are left over from a
#: process killed while saving, and are removed at the next save.
STALE_TEMP_SECONDS = 60.0

_TEMP_PREFIX, _TEMP_SUFFIX = ".auth_ARTA.", ".tmp"


def _jwt_claims(jwt: str) -> dict[str, Any]:
    """The payload of a JWT, read without verifying its signature.

    We only want ``exp`` and ``iat``: the service verifies the signature, and
    an unreadable token simply has no claims.
    """
    try:
        payload = jwt.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, RecursionError):
        return {}
    return claims if isinstance(claims, dict) else {}


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            return None
        return number if math.isfinite(number) else None
    return None


@dataclass(frozen=True)
class Token:
    """An ID token with its refresh token and lifetime. Its repr shows no secret."""

    id_token: str
    refresh_token: str
    obtained_at: float
    expires_at: float
    user_id: str = ""

    @classmethod
    def from_grant(cls, grant: api.TokenGrant, now: float) -> Token:
        """Date a fresh grant by this machine's clock: received ``now``, good for ``expiresIn``.

        The JWT's ``exp``/``iat`` are the server's clock: a local clock an
        hour ahead would see every token as expired on arrival. They only
        give the lifetime when ``expiresIn`` is 0.
        """
        life = grant.expires_in
        if life <= 0:
            claims = _jwt_claims(grant.id_token)
            exp, iat = _number(claims.get("exp")), _number(claims.get("iat"))
            life = max(0.0, exp - iat) if exp is not None and iat is not None else 0.0
        return cls(grant.id_token, grant.refresh_token, now, now + life, grant.user_id)

    def renew_at(self) -> float:
        """When to refresh: at half of the token's life, the old provider's rule."""
        return self.obtained_at + (self.expires_at - self.obtained_at) / 2

    def fresh(self, now: float) -> bool:
        """True while the token is in the first half of its life."""
        return now < self.renew_at()

    def expired(self, now: float) -> bool:
        """True once the service will no longer take the token."""
        return now >= self.expires_at

    def to_json(self) -> dict[str, Any]:
        """The file format: a superset of the old provider's ``auth_ARTA.json``."""
        return {
            "idToken": self.id_token,
            "refreshToken": self.refresh_token,
            "expiresIn": str(round(self.expires_at - self.obtained_at)),
            "localId": self.user_id,
            "obtainedAt": self.obtained_at,
            "expiresAt": self.expires_at,
        }

    @classmethod
    def from_json(cls, data: Any) -> Token:
        """Read the file format, or a file written by the old provider (dated by its JWT)."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")  # noqa: TRY004 - a bad file, not a bad call
        id_token, refresh_token = data.get("idToken"), data.get("refreshToken")
        if not isinstance(id_token, str) or not id_token or not isinstance(refresh_token, str):
            raise ValueError("no idToken/refreshToken")
        claims = _jwt_claims(id_token)
        expires_at = _number(data.get("expiresAt")) or _number(claims.get("exp"))
        obtained_at = _number(data.get("obtainedAt")) or _number(claims.get("iat"))
        if expires_at is None or obtained_at is None:
            raise ValueError("no expiry: neither expiresAt nor a JWT exp")
        return cls(id_token, refresh_token, obtained_at, expires_at, str(data.get("localId", "")))

    def __repr__(self) -> str:
        return (
            f"Token(user_id={self.user_id!r}, obtained_at={self.obtained_at:.0f}, "
            f"expires_at={self.expires_at:.0f})"
        )


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
    """Refuse a state folder others can write to; warn about one they can read.

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

    def _remove_temps(self, older_than: float) -> None:
        """Remove temporary token copies left by killed processes (older than ``older_than`` s)."""
        now = time.time()
        for temp in self.path.parent.glob(f"{_TEMP_PREFIX}*{_TEMP_SUFFIX}"):
            with contextlib.suppress(OSError):
                if now - temp.lstat().st_mtime >= older_than:
                    temp.unlink()

    def save(self, token: Token) -> None:
        """Replace the file atomically with ``token``, readable by its owner only.

        Temporary copies left behind by processes killed while saving (older
        than :data:`STALE_TEMP_SECONDS`) are removed on the way.
        """
        self._ensure_folder()
        self._remove_temps(STALE_TEMP_SECONDS)
        fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=_TEMP_PREFIX,
                                    suffix=_TEMP_SUFFIX)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:  # mkstemp makes it 0600
                json.dump(token.to_json(), file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise

    def clear(self) -> None:
        """Delete the token file, and every temporary copy of a token beside it."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        with contextlib.suppress(FileNotFoundError):
            self._remove_temps(0.0)

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


class Authenticator:
    """Hands out a usable ID token, renewing it through the store's lock."""

    def __init__(self, settings: Settings, transport: Transport, store: TokenStore,
                 clock: Clock = time.time, retry_policy: RetryPolicy | None = None) -> None:
        self.settings = settings
        self.transport = transport
        self.store = store
        self.clock = clock
        self.retry_policy = retry_policy or RetryPolicy()
        # After Firebase's TOO_MANY_ATTEMPTS_TRY_LATER, sign-ups are refused
        # here until this time instead of hammering a quota that is spent.
        self._no_sign_up_until = 0.0
        # After a failed or futile renewal, none is tried before this time.
        self._no_renewal_until = 0.0
        # A token obtained but not stored (the store failed): used for the
        # life of this process rather than signing up again on every call.
        self._kept: Token | None = None

    def _load(self) -> Token | None:
        token = self.store.load()
        kept = self._kept
        if kept is not None and (token is None or token.expires_at < kept.expires_at):
            return kept
        return token

    def token(self) -> Token:
        """A token in the first half of its life (or a still-valid one if renewal fails).

        Renewals that fail, or give a token already past half its life, are
        throttled to one a minute: meanwhile the current token is used.
        """
        token = self._load()
        if token is not None and (token.fresh(self.clock()) or self._throttled()):
            return token
        with self.store.lock():
            token = self._load()  # another process may have renewed it meanwhile
            if token is not None and (token.fresh(self.clock()) or self._throttled()):
                return token
            return self._renew(token)

    def _throttled(self) -> bool:
        return self.clock() < self._no_renewal_until

    def replace(self, rejected: Token) -> Token:
        """A new token after the service rejected ``rejected``.

        Compare before replace: if another thread or process has already put
        a different token in the store, that one is used, not thrown away.
        """
        with self.store.lock():
            token = self.store.load()
            if token is not None and token.id_token != rejected.id_token \
                    and not token.expired(self.clock()):
                return token
            return self._renew(token, force=True)

    def _renew(self, token: Token | None, force: bool = False) -> Token:
        """Refresh ``token`` (or sign up if there is none or it is refused); save the result."""
        check = getattr(self.store, "check_writable", None)
        if check is not None:
            check()  # a local fault must not cost a sign-up
        if token is not None:
            try:
                renewed = self.refresh(token.refresh_token)
                log.debug("refreshed the shared token")
            except api.RefreshRejected as error:
                log.info("%s; signing up again", error)
                renewed = self.sign_up()
            except ArtaError as error:
                self._no_renewal_until = self.clock() + RENEWAL_BACKOFF
                # A token still in its second half works: use it, renew next time.
                if not force and not token.expired(self.clock()):
                    log.warning("token refresh failed (%s); using the current token", error)
                    return token
                raise
        else:
            renewed = self.sign_up()
        if not renewed.fresh(self.clock()):
            log.warning("the new token is already past half its life (a lifetime of %.0fs); "
                        "not renewing it again for %.0fs",
                        renewed.expires_at - renewed.obtained_at, RENEWAL_BACKOFF)
            self._no_renewal_until = self.clock() + RENEWAL_BACKOFF
        self._store(renewed)
        return renewed

    def _store(self, token: Token) -> None:
        """Save ``token``; if the store fails, keep it in memory for this process's life."""
        try:
            self.store.save(token)
        except (OSError, ArtaError) as error:
            log.warning("cannot store the token (%s); keeping it in memory for this process",
                        getattr(error, "strerror", None) or error)
            self._kept = token
        else:
            self._kept = None

    def sign_up(self) -> Token:
        """Make a new anonymous account and return its token (not stored; retried when transient).

        Refused at once while a spent quota is being waited out.
        """
        wait = self._no_sign_up_until - self.clock()
        if wait > 0:
            raise QuotaExceededError(
                "Firebase's quota of anonymous sign-ups is still spent "
                f"(TOO_MANY_ATTEMPTS_TRY_LATER); try again in about {wait / 60:.0f} minutes",
                retry_after=wait,
            )
        try:
            token = self._call(api.signup_request(self.settings), api.parse_signup)
        except QuotaExceededError as error:
            self._no_sign_up_until = self.clock() + error.retry_after
            raise
        log.info("signed up a new anonymous account")
        return token

    def refresh(self, refresh_token: str) -> Token:
        """Trade ``refresh_token`` for a new token (not stored; retried when transient)."""
        return self._call(api.refresh_request(self.settings, refresh_token), api.parse_refresh)

    def _call(self, request: Request, parse: Callable[[Response], api.TokenGrant]) -> Token:
        # Transient failures are retried, sign-up included: at worst a lost
        # answer costs one extra anonymous account, never a paid job.
        def once() -> api.TokenGrant:
            with self.transport.handle_request(request) as response:
                return parse(response)

        return Token.from_grant(self.retry_policy.call(once, retry_on=transient), self.clock())
