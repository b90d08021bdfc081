"""One watchdog thread per process that ends socket waits at their deadline.

A socket's own timeout bounds the silence between two reads, not the whole
exchange: a server that drips its status line one byte every two seconds
restarts a 30 s read timeout forever. So each request whose whole answer
must arrive by some time is *armed*: it gets a :class:`Slot` pushed on a
heap, and the connection it uses registers its socket in that slot (when it
connects, and each time it sends a request). When the time comes and the
slot is still armed, the watchdog shuts the socket down
(``shutdown(SHUT_RDWR)``): the blocked read returns at once, the transport
maps the failure to a :class:`~arta.errors.TransportError`, and the
connection is discarded, never reused.

Arming is a heap push under a lock and disarming a flag under the same
lock: no thread per request, no timer object. Disarmed entries stay in the
heap until they surface or until they outnumber the live ones, when the
heap is rebuilt without them (amortised O(1) per request).

The thread starts with the first armed slot. A forked child starts with an
empty heap and no thread (``os.register_at_fork``): the parent's slots and
sockets are not the child's to cut, and its thread does not exist there.

Two waits are out of its reach, and bounded by the connect timeout (capped
by the deadline) alone: a DNS lookup, which has no socket, and a TLS
handshake, during which Python's ``ssl`` has detached the plain socket and
not yet handed out the TLS one. Each byte of a handshake must still come
within that timeout.

Which connection registers its socket where is the transports' business:
:class:`WatchedHTTPConnection` (urllib3, hence requests) and the httpcore
stream in :mod:`arta.transport.httpx_transport`. They find the slot of
the request in flight through :func:`current_slot` (a thread-local: the
thread that sends a request is the one whose connection sends it).
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

import urllib3.connection
import urllib3.connectionpool
import urllib3.poolmanager

if TYPE_CHECKING:  # a Protocol that exists for the type checker only
    from urllib3._base_connection import BaseHTTPConnection

__all__ = [
    "WATCHED_POOL_CLASSES",
    "Slot",
    "Watchdog",
    "WatchedHTTPConnection",
    "WatchedHTTPSConnection",
    "current_slot",
    "cut",
    "set_current_slot",
    "watch_pools",
    "watchdog",
]


def cut(sock: Any) -> None:
    """Shut ``sock`` down both ways, so that a read or write blocked on it returns now.

    ``socket.socket.shutdown`` is called even on a TLS socket: the TLS
    socket's own ``shutdown`` would also drop its TLS state under the feet
    of the thread reading it. A socket already closed is left alone.
    """
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except (OSError, TypeError, ValueError):
        pass  # closed already, or not a socket: nothing is blocked on it


class Slot:
    """One armed request: when it must end, the socket it uses, what became of it.

    ``sending`` turns true when the request starts going out on a
    connection (so a cut before that means nothing was sent); ``fired``
    when the watchdog cut it.
    """

    __slots__ = ("armed", "by_deadline", "fired", "sending", "sock", "when")

    def __init__(self, when: float, by_deadline: bool) -> None:
        self.when = when
        self.by_deadline = by_deadline  # the caller's deadline, not the whole-answer bound
        self.sock: Any = None
        self.armed = True
        self.fired = False
        self.sending = False

    def attach(self, sock: Any) -> None:
        """Register ``sock`` as the socket this request waits on now."""
        self.sock = sock
        # The watchdog sets ``fired`` before it reads ``sock``: if it fired
        # while this request had no socket yet, the new one is cut here.
        if self.fired:
            cut(sock)


class _Local(threading.local):
    slot: Slot | None = None


_local = _Local()


def current_slot() -> Slot | None:
    """The slot armed for the request this thread is sending, if any."""
    return _local.slot


def set_current_slot(slot: Slot | None) -> None:
    """Make ``slot`` the one this thread's connections register their sockets in."""
    _local.slot = slot


class Watchdog:
    """The heap of armed slots and the one thread that cuts them when they are due."""

    #: Dead (disarmed) entries tolerated in the heap before it is rebuilt
    #: without them, as long as they are also more than the live ones.
    COMPACT_AT = 256

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._heap: list[tuple[float, int, Slot]] = []
        self._dead = 0
        self._order = itertools.count()  # ties broken by order, never by comparing slots
        self._wake_at = math.inf  # when the thread will next look, as far as arm() knows
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def after_fork(self) -> None:
        """In a forked child: forget the parent's slots and thread (see the module's doc)."""
        self._reset()
        _local.slot = None  # (the forking thread's request, if any, is the parent's)

    def arm(self, when: float, *, by_deadline: bool = True) -> Slot:
        """A slot whose socket is cut at ``when`` (a ``time.monotonic()`` value) unless disarmed."""
        slot = Slot(when, by_deadline)
        with self._lock:
            if self._thread is None:
                self._start()
            heapq.heappush(self._heap, (when, next(self._order), slot))
            if when < self._wake_at:
                self._wake_at = when
                self._wake.notify()
        return slot

    def disarm(self, slot: Slot) -> bool:
        """Stop watching ``slot``; True if it had already been cut.

        Under the lock, so that once this returns the watchdog can no longer
        cut the socket: a connection handed back to its pool stays whole.
        """
        if not slot.armed:  # it never turns true again: no lock needed to see that
            return slot.fired
        with self._lock:
            if slot.armed:
                slot.armed = False
                self._dead += 1
                if self._dead > self.COMPACT_AT and 2 * self._dead > len(self._heap):
                    self._heap = [entry for entry in self._heap if entry[2].armed]
                    heapq.heapify(self._heap)
                    self._dead = 0
            return slot.fired

    def pending(self) -> int:
        """How many slots are armed (for tests and benchmarks)."""
        with self._lock:
            return sum(1 for entry in self._heap if entry[2].armed)

    def _start(self) -> None:
        thread = threading.Thread(target=self._run, name="arta-watchdog", daemon=True)
        thread.start()
        self._thread = thread

    def _run(self) -> None:
        with self._lock:
            while True:
                heap = self._heap
                now = time.monotonic()
                while heap and (heap[0][0] <= now or not heap[0][2].armed):
                    _, _, slot = heapq.heappop(heap)
                    if not slot.armed:
                        self._dead -= 1
                        continue
                    slot.fired = True  # before reading sock: see Slot.attach
                    if slot.sock is not None:
                        cut(slot.sock)
                    # Last: whoever sees it unarmed without the lock (disarm)
                    # sees a socket already cut.
                    slot.armed = False
                self._wake_at = heap[0][0] if heap else math.inf
                self._wake.wait(None if not heap else max(0.0, self._wake_at - now))


#: The process's watchdog.
watchdog = Watchdog()
os.register_at_fork(after_in_child=watchdog.after_fork)


# -- urllib3 (and so requests): connections that register their sockets ---------------


class _Watched(urllib3.connection.HTTPConnection):
    """What a watched urllib3 connection adds: it registers its socket in its thread's slot.

    On connect (the plain socket, before any TLS handshake or proxy tunnel,
    which may hang too; then the TLS socket, since wrapping detaches the
    plain one) and before each request it sends (a pooled connection is
    reused without connecting).
    """

    #: The slot of the request this connection is serving, disarmed when it
    #: goes back to its pool: from then on its socket is not that request's.
    arta_slot: Slot | None = None

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        slot = _local.slot
        if slot is not None:
            slot.attach(sock)
        return sock

    def connect(self) -> None:
        """Connect (and shake hands), then register the socket the requests will use."""
        super().connect()
        slot = _local.slot
        if slot is not None:
            slot.attach(self.sock)

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> None:
        """Register the socket, mark the request as going out, and send it."""
        slot = _local.slot
        if slot is not None:
            if self.sock is None:
                # Connect first, so that a cut during the connection is told
                # apart from one after the request started to go out.
                self.connect()
            slot.attach(self.sock)
            slot.sending = True
            self.arta_slot = slot
        super().request(method, url, *args, **kwargs)


class WatchedHTTPConnection(_Watched):
    """A urllib3 HTTP connection whose socket the watchdog can cut."""


class WatchedHTTPSConnection(_Watched, urllib3.connection.HTTPSConnection):
    """A urllib3 HTTPS connection whose socket the watchdog can cut."""


def _released(conn: Any) -> None:
    """Disarm the slot of a connection going back to its pool (see ``_Watched.arta_slot``)."""
    slot = getattr(conn, "arta_slot", None)
    if slot is not None:
        conn.arta_slot = None
        watchdog.disarm(slot)


class _WatchedHTTPPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = WatchedHTTPConnection

    def _put_conn(self, conn: BaseHTTPConnection | None) -> None:
        _released(conn)
        super()._put_conn(conn)


class _WatchedHTTPSPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = WatchedHTTPSConnection

    def _put_conn(self, conn: BaseHTTPConnection | None) -> None:
        _released(conn)
        super()._put_conn(conn)


#: ``pool_classes_by_scheme`` for a ``PoolManager``/``ProxyManager`` whose connections are watched.
WATCHED_POOL_CLASSES: dict[str, type[urllib3.connectionpool.HTTPConnectionPool]] = {
    "http": _WatchedHTTPPool,
    "https": _WatchedHTTPSPool,
}


def watch_pools(manager: urllib3.poolmanager.PoolManager) -> None:
    """Make the pools that ``manager`` creates from now on use watched connections.

    Only a manager with urllib3's own pool classes is changed (a SOCKS
    manager keeps its own, unwatched: only its timeouts bound it).
    """
    if manager.pool_classes_by_scheme is urllib3.poolmanager.pool_classes_by_scheme:
        manager.pool_classes_by_scheme = WATCHED_POOL_CLASSES
