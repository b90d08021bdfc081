"""``DaskTokenStore``: one ARTA token for a whole Dask cluster, kept in its scheduler.

Firebase allows 100 anonymous sign-ups per hour per IP address, so N
workers on N hosts (or N workers behind one NAT address) must not each
sign up. The token lives in the scheduler's memory; renewals take a
scheduler lock, and :class:`~arta.auth.Authenticator` re-reads the token
under it before calling Firebase (the double check), so a cluster makes one
sign-up, and a job submitted from one worker can be polled from any other.

A driver gives its own store as ``host_store``: the cluster's token is
seeded from it (a new scheduler, or one restarted, costs no sign-up while
the host's token is good), and every renewal the driver sees is written
back to it. Workers never write the token to a file.

A Dask lock is a lease that can overlap briefly with the next holder's
when a holder dies or hangs: the double check turns that into at most one
extra refresh or sign-up, never a wrong token.

The token sits in the scheduler's memory in clear: anyone who can talk to
the scheduler can read it (as anyone who can run tasks on the cluster
could). Secure the scheduler as Dask's documentation says (TLS, a private
network); a ``local:N`` batch keeps the token out of the scheduler.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from arta.auth import Token, TokenStore
from arta.dask.cluster import dask_client, held, metadata_get, metadata_set, scheduler_address
from arta.errors import TokenStoreError

if TYPE_CHECKING:
    import distributed

__all__ = ["DaskTokenStore"]


class DaskTokenStore:
    """A :class:`~arta.auth.TokenStore` in the Dask scheduler, shared by every worker and driver.

    ``name`` tells apart tokens of different services or accounts on one
    scheduler. ``address`` (a scheduler address) is only needed where no
    Dask client exists yet; inside tasks the worker's client is used, on a
    driver the default one (or pass ``client``). ``lock_timeout`` bounds the
    wait for a renewal by someone else.

    The store pickles (it travels to the workers inside tasks) and finds its
    scheduler again on the other side. A token read from the scheduler is
    kept in this process while it is fresh, so that polls do not ask the
    scheduler each time; under the lock it is always read from the scheduler.

    With ``host_store`` (a driver's own store; it stays in this process),
    the fresher of the two tokens is put in both now, and each renewal
    this store sees later is written back to ``host_store``.
    """

    def __init__(self, name: str = "token", *, address: str | None = None,
                 client: distributed.Client | None = None, lock_timeout: float = 60.0,
                 host_store: TokenStore | None = None) -> None:
        self.name = name
        self.address = address if address is not None else (
            scheduler_address(client) if client is not None else None)
        self.lock_timeout = lock_timeout
        self._client = client
        self._thread_lock = threading.Lock()
        self._local = threading.local()  # .locked: this thread holds the lock
        self._cached: Token | None = None
        self.host_store = host_store
        if host_store is not None:
            with self.lock():
                host, cluster = host_store.load(), self.load()
                if host is not None and (cluster is None or host.expires_at > cluster.expires_at):
                    self.save(host)

    def _dask(self) -> distributed.Client:
        if self._client is not None and self._client.status == "running":
            return self._client
        return dask_client(self.address)

    def load(self) -> Token | None:
        """The cluster's token: this process's copy while fresh, else the scheduler's."""
        cached = self._cached
        if cached is not None and cached.fresh(time.time()) and not self._holding():
            return cached
        data = metadata_get(self._dask(), "token", self.name)
        try:
            token = Token.from_json(data) if data is not None else None
        except ValueError:
            token = None  # a foreign value: replaced at the next renewal
        if token != cached:
            self._write_back(token)
        self._cached = token
        return token

    def save(self, token: Token) -> None:
        """Put ``token`` in the scheduler for every worker (and in the host's store)."""
        metadata_set(self._dask(), token.to_json(), "token", self.name)
        self._cached = token
        self._write_back(token)

    def _write_back(self, token: Token | None) -> None:
        """Keep the host's store up to date with a renewal made anywhere in the cluster."""
        host = self.host_store
        if host is None or token is None:
            return
        known = host.load()
        if known is None or token.expires_at > known.expires_at:
            with host.lock():
                known = host.load()
                if known is None or token.expires_at > known.expires_at:
                    host.save(token)

    def clear(self) -> None:
        """Forget the token, here and in the scheduler."""
        metadata_set(self._dask(), None, "token", self.name)
        self._cached = None

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the right to renew: a thread lock here, then the scheduler's lock."""
        # Threads of one process queue here first, cheaply, as in FileTokenStore.
        if not self._thread_lock.acquire(timeout=self.lock_timeout):
            raise TokenStoreError(
                f"the Dask token store {self.name!r} stayed locked in this process for more "
                f"than {self.lock_timeout:g}s: another thread is stuck renewing the token")
        try:
            with held(self._dask(), f"arta-token-{self.name}", self.lock_timeout):
                self._local.locked = True
                try:
                    yield
                finally:
                    self._local.locked = False
        finally:
            self._thread_lock.release()

    def _holding(self) -> bool:
        return bool(getattr(self._local, "locked", False))

    def __getstate__(self) -> dict[str, Any]:
        # Only the name, the address and the timeout travel; a client, locks
        # and the cached token stay in their process.
        return {"name": self.name, "address": self.address, "lock_timeout": self.lock_timeout}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["name"], address=state["address"],  # type: ignore[misc]
                      lock_timeout=state["lock_timeout"])

    def __repr__(self) -> str:
        return f"DaskTokenStore({self.name!r})"
