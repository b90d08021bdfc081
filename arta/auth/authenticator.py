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

import logging
import time
from typing import Callable

from arta import protocol
from arta.auth.stores import FileTokenStore, MemoryTokenStore, Token, TokenStore
from arta.config import Settings
from arta.errors import ArtaError, ConnectError, QuotaExceededError
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

#: Seconds a fresh token is handed out again without reading the store.
STORE_RECHECK = 1.0

#: After a renewal that failed, or gave a token already past half its life
#: (clock skew, a lifetime of 0), the next attempt waits this long: one
#: Firebase call a minute at most, as botocore throttles its refreshes.
RENEWAL_BACKOFF = 60.0

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
        # The token handed out last and when the store was read for it: a
        # poll every few milliseconds need not stat the file each time.
        self._recent: tuple[Token, float] | None = None
        # The token the log last told of: a reused one is told once, not at every poll.
        self._told: str | None = None

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
        The store is read at most every :data:`STORE_RECHECK` seconds while
        the token stays fresh: another process's newer token is no better.
        """
        recent, now = self._recent, time.monotonic()
        if recent is not None and now - recent[1] < STORE_RECHECK \
                and recent[0].fresh(self.clock()):
            return recent[0]
        token = self._load()
        if token is not None and (token.fresh(self.clock()) or self._throttled()):
            self._recent = (token, now)
            return self._reused(token)
        with self.store.lock():
            token = self._load()  # another process may have renewed it meanwhile
            if token is not None and (token.fresh(self.clock()) or self._throttled()):
                return self._reused(token)
            return self._renew(token)

    def _reused(self, token: Token) -> Token:
        if token.id_token != self._told:
            self._told = token.id_token
            log.info("reusing the stored token (valid %.0f more minutes)",
                     (token.expires_at - self.clock()) / 60)
        return token

    def _throttled(self) -> bool:
        return self.clock() < self._no_renewal_until

    def replace(self, rejected: Token) -> Token:
        """A new token after the service rejected ``rejected``.

        Compare before replace: if another thread or process has already put
        a different token in the store, that one is used, not thrown away.
        """
        self._recent = None
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
                log.info("renewed the token (refreshed)")
            except protocol.RefreshRejected as error:
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
        self._told = renewed.id_token
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
            token = self._call(protocol.signup_request(self.settings), protocol.parse_signup)
        except QuotaExceededError as error:
            self._no_sign_up_until = self.clock() + error.retry_after
            raise
        log.info("signed up a new anonymous account")
        return token

    def refresh(self, refresh_token: str) -> Token:
        """Trade ``refresh_token`` for a new token (not stored; retried when transient)."""
        return self._call(protocol.refresh_request(self.settings, refresh_token), protocol.parse_refresh)

    def _call(self, request: Request,
              parse: Callable[[Response, tuple[str, ...]], protocol.TokenGrant]) -> Token:
        # Transient failures are retried, sign-up included: at worst a lost
        # answer costs one extra anonymous account, never a paid job.
        def once() -> protocol.TokenGrant:
            with self.transport.handle_request(request) as response:
                return parse(response, protocol.request_secrets(request))

        try:
            return Token.from_grant(self.retry_policy.call(once, retry_on=transient), self.clock())
        except ConnectError as error:
            raise error.naming(self.settings.where)  # offline: say which setting to look at
