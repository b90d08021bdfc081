"""A transport on httpx (``pip install 'arta-client[httpx]'``), speaking HTTP/2 when ``h2`` is installed.

httpx is imported when a :class:`HttpxTransport` is made, never at
``import arta``: the package's only runtime dependencies stay requests,
tenacity and filelock.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import ssl
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Callable

from arta.errors import ConfigurationError, ConnectError, NoResponseError, TransportError
from arta.redact import redact_logger, scrub_chain
from arta.transport.base import (
    CHUNK_SIZE,
    DEFAULT_POOL_SIZE,
    Request,
    Response,
    check_sizes,
    connect_failure,
    describe,
    renew_after_fork,
    secrets_of,
)
from arta.transport.bodies import ACCEPT_ENCODING, DEFAULT_MAX_BODY_BYTES, read_body
from arta.transport.deadlines import (
    answer_bound,
    bounded_timeouts,
    overdue,
    sending,
    too_late_to_send,
)
from arta.transport.watchdog import Slot, current_slot, watchdog

if TYPE_CHECKING:
    import httpx

__all__ = ["HttpxTransport"]

_INSTALL_HINT = "pip install 'arta-client[httpx]' (or 'arta-client[http2]' for HTTP/2)"


redact_logger("httpx")  # its INFO request lines hold whole URLs


def _require_httpx() -> None:
    """Import httpx, or say in one line how to install it."""
    try:
        import httpx  # noqa: F401 - imported for its side effect: it is now in sys.modules
    except ImportError as error:
        raise ConfigurationError(f"HttpxTransport needs httpx: {_INSTALL_HINT}") from error


def h2_available() -> bool:
    """True if the ``h2`` package is installed, so httpx can speak HTTP/2."""
    return importlib.util.find_spec("h2") is not None


class HttpxTransport:
    """A transport on one pooled :class:`httpx.Client`, shared by threads.

    - ``pool_size``: connections kept alive (size it to the number of
      threads sharing the client; more threads open extra connections).
    - ``proxies``: ``{"http": url, "https": url}`` (or ``"all"``), as for
      :class:`~arta.transport.RequestsTransport`. Without it,
      ``HTTP_PROXY``/``HTTPS_PROXY``/``ALL_PROXY`` apply, read when the
      transport is made; ``NO_PROXY`` exempts hosts from either.
    - ``ca_bundle``: a CA file or folder to verify servers with. TLS is
      always verified; ``SSL_CERT_FILE`` is honoured as in httpx.
    - ``http2``: None (the default) speaks HTTP/2 to servers that offer it
      over TLS if ``h2`` is installed; True requires it.
    - ``client``: your own :class:`httpx.Client`, used as it is and not
      closed by :meth:`close`. Its connections are not the transport's: a
      request's deadline caps each of its timeouts and is checked between
      chunks of a body, but a server that keeps a socket busy (headers
      dripping a byte at a time) is only bounded by each byte's timeout.
    - ``max_body_bytes``: the largest answer read for a request that is
      not streamed, after decompression; such a body must also arrive
      whole within a few read timeouts (see :func:`~arta.transport.read_body`).

    A request's deadline is kept whatever the server does: the watchdog
    (:mod:`arta.transport.watchdog`) shuts down the socket of a request
    still waiting at it, through a network backend wrapped around
    httpcore's. Not on an HTTP/2 connection, which other requests share:
    there the deadline caps each timeout only.

    Raises :class:`~arta.errors.ConfigurationError` if httpx (or, with
    ``http2=True``, h2) is not installed.
    """

    def __init__(
        self,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        proxies: Mapping[str, str] | None = None,
        ca_bundle: str | None = None,
        http2: bool | None = None,
        client: httpx.Client | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        _require_httpx()
        import httpx

        check_sizes(pool_size, max_body_bytes)
        if http2 is None:
            http2 = h2_available()
        elif http2 and not h2_available():
            raise ConfigurationError(f"HTTP/2 needs the h2 package: {_INSTALL_HINT}")
        self.max_body_bytes = max_body_bytes
        self.http2 = http2
        self.pool_size = pool_size
        self._owns_client = client is None
        if client is None:
            verify: ssl.SSLContext | bool = _ssl_context(ca_bundle) if ca_bundle else True
            # No cap on connections (a thread over the pool size opens one more,
            # as with requests, instead of queueing); pool_size stay alive.
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=pool_size)
            def make() -> httpx.Client:
                # Explicit proxies are mounted per scheme. The environment's proxies
                # are still mounted by trust_env, and its NO_PROXY hosts, being more
                # specific patterns, win over either: the same rule as requests here.
                mounts: dict[str, httpx.BaseTransport | None] = {
                    f"{scheme.rstrip(':/')}://": httpx.HTTPTransport(
                        verify=verify, http2=http2, limits=limits, proxy=httpx.Proxy(url),
                        retries=0)
                    for scheme, url in (proxies or {}).items()
                }
                return httpx.Client(
                    verify=verify, http2=http2, limits=limits, mounts=mounts or None,
                    trust_env=True, follow_redirects=False,
                )

            client = make()
            self._make_client: Callable[[], httpx.Client] | None = make
            self._watched = _watch_client(client)
            renew_after_fork(self)
        else:
            self._make_client = None
            self._watched = False
        self.client = client

    def _after_fork(self) -> None:
        """In a forked child: a new client of its own; the parent's connections stay its own."""
        if self._make_client is not None:
            self.client = self._make_client()
            self._watched = _watch_client(self.client)

    def handle_request(self, request: Request) -> Response:
        """Send ``request`` through the client, mapping failures to ``TransportError``."""
        import httpx

        now = time.monotonic()
        late = too_late_to_send(request, now)
        if late is not None:
            raise late
        headers, content = request.encode()
        if not request.stream and not any(k.lower() == "accept-encoding" for k in headers):
            headers["Accept-Encoding"] = ACCEPT_ENCODING  # only what read_body can bound
        connect, read = bounded_timeouts(request, now)
        # Writing a body counts as reading's twin; waiting for a pooled
        # connection, as connecting's (no byte has left yet).
        timeout = httpx.Timeout(connect=connect, read=read, write=read, pool=connect)
        slot: Slot | None = None
        if self._watched:
            when, by_deadline = answer_bound(request, now)
            if when is not None:
                slot = watchdog.arm(when, by_deadline=by_deadline)
        with sending(request, slot, _mapped, (httpx.HTTPError,)):
            try:
                outgoing = self.client.build_request(
                    request.method, request.url, headers=headers, content=content,
                    timeout=timeout)
                answer = self.client.send(outgoing, stream=True)  # bodies read here, in bounds
            except httpx.InvalidURL as error:  # not an HTTPError
                raise TransportError(f"invalid URL: {describe(request)}") \
                    from scrub_chain(error, secrets_of(request))
        if slot is not None:
            # httpx hands the connection back as soon as the body ends, before
            # this transport could disarm: the slot goes first (see _disarming).
            answer.stream = _disarming()(answer.stream, slot)
        if request.stream:
            return Response(
                answer.status_code,
                answer.headers,
                chunks=_guarded(answer.iter_bytes(CHUNK_SIZE), request, slot),
                close=answer.close,
            )
        try:
            content = read_body(answer.iter_raw(), answer.headers, request,
                                limit=self.max_body_bytes)
        except httpx.HTTPError as error:
            raise overdue(request, _mapped(error, request), slot) \
                from scrub_chain(error, secrets_of(request))
        finally:
            answer.close()
        return Response(answer.status_code, answer.headers, content=content)

    def close(self) -> None:
        """Close the pooled connections (of a client this transport made)."""
        if self._owns_client:
            self.client.close()

    def __repr__(self) -> str:
        return f"HttpxTransport(pool_size={self.pool_size}, http2={self.http2})"


def _ssl_context(ca_bundle: str) -> ssl.SSLContext:
    """A verifying TLS context that trusts ``ca_bundle`` (a file, or a folder of certificates)."""
    if os.path.isdir(ca_bundle):
        return ssl.create_default_context(capath=ca_bundle)
    return ssl.create_default_context(cafile=ca_bundle)


def _mapped(error: BaseException, request: Request) -> TransportError:
    """The ``TransportError`` for an httpx failure."""
    import httpx

    where = describe(request)
    # ConnectTimeout and PoolTimeout are TimeoutExceptions too: test them first.
    if isinstance(error, httpx.ConnectTimeout):
        return ConnectError(f"connect timed out after {request.connect_timeout:g}s: {where}")
    if isinstance(error, httpx.PoolTimeout):
        return ConnectError(f"no connection free within {request.connect_timeout:g}s: {where}")
    if isinstance(error, httpx.ProxyError):
        return ConnectError(f"the proxy refused the connection: {where}")
    if isinstance(error, httpx.ConnectError):
        # Refused, unreachable, DNS, and TLS handshakes (an untrusted certificate).
        return ConnectError(f"{connect_failure(error)}: {where}")
    if isinstance(error, httpx.TimeoutException):
        return NoResponseError(f"no answer within the {request.read_timeout:g}s read timeout: {where}")
    if isinstance(error, (httpx.NetworkError, httpx.RemoteProtocolError, httpx.DecodingError)):
        return NoResponseError(f"the connection was lost before an answer: {where}")
    return TransportError(f"{type(error).__name__}: {where}")


def _guarded(chunks: Iterator[bytes], request: Request, slot: Slot | None) -> Iterator[bytes]:
    """Map failures in the middle of a streamed body to ``NoResponseError``."""
    import httpx

    deadline = request.deadline
    try:
        for chunk in chunks:
            if deadline is not None and slot is None and time.monotonic() > deadline:
                # No watchdog (the caller's client): checked between chunks.
                raise NoResponseError(f"no whole answer before the deadline: {describe(request)}")
            yield chunk
    except httpx.HTTPError as error:
        raise overdue(request, NoResponseError(f"the answer was cut short: {describe(request)}"),
                      slot) from scrub_chain(error, secrets_of(request))


# -- the watchdog's hold on httpcore's sockets -------------------------------------------


def _watch_client(client: httpx.Client) -> bool:
    """Wrap the network backend of each connection pool of ``client``; True if all were.

    httpx does not take a network backend, so the pools it made are
    reached through their (private, stable in httpcore 1.x) attributes; a
    pool without them is left as it is, and only its timeouts bound it.
    """
    transports = [client._transport, *client._mounts.values()]
    watched = True
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if transport is not None and backend is None:
            watched = False
        elif backend is not None and not isinstance(backend, _WatchedBackend):
            pool._network_backend = _WatchedBackend(backend)  # type: ignore[union-attr]
    return watched


class _WatchedBackend:
    """An httpcore network backend whose streams register their sockets with the watchdog."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None, socket_options: Any = None) -> _WatchedStream:
        """Connect as the inner backend does; the plain socket is registered at once."""
        return _WatchedStream(self._inner.connect_tcp(
            host, port, timeout=timeout, local_address=local_address,
            socket_options=socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Any = None) -> _WatchedStream:
        """Connect as the inner backend does."""
        return _WatchedStream(self._inner.connect_unix_socket(
            path, timeout=timeout, socket_options=socket_options))

    def sleep(self, seconds: float) -> None:
        """Sleep as the inner backend does."""
        self._inner.sleep(seconds)


class _WatchedStream:
    """An httpcore network stream that registers its socket in the slot of each request it sends.

    A request starts with a write (its headers), in the thread that sends
    it: that is where the slot is told which socket to cut. Reads pass
    straight through. A ``shared`` stream (HTTP/2: many requests at once)
    never registers: cutting it would end the others too.
    """

    def __init__(self, inner: Any, *, shared: bool = False) -> None:
        self._inner = inner
        self._sock = inner.get_extra_info("socket")
        self._shared = shared or self._sock is None
        slot = current_slot()
        if slot is not None and not self._shared:
            slot.attach(self._sock)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        """Read as the inner stream does."""
        data: bytes = self._inner.read(max_bytes, timeout)
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        """Register the socket in this thread's slot, then write."""
        slot = current_slot()
        if slot is not None and not self._shared:
            if slot.sock is not self._sock:
                slot.attach(self._sock)
            slot.sending = True
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        """Close as the inner stream does."""
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> _WatchedStream:
        """Shake hands; the TLS stream is shared if HTTP/2 was agreed on."""
        inner = self._inner.start_tls(ssl_context, server_hostname, timeout)
        ssl_object = inner.get_extra_info("ssl_object")
        http2 = ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2"
        return _WatchedStream(inner, shared=self._shared or http2)

    def get_extra_info(self, info: str) -> Any:
        """As the inner stream."""
        return self._inner.get_extra_info(info)


@functools.cache
def _disarming() -> Callable[[Any, Slot], httpx.SyncByteStream]:
    """The class of a response stream that disarms its slot before it lets its connection go.

    (Made on first use, since httpx is imported only then.)
    """
    import httpx

    class Disarming(httpx.SyncByteStream):
        def __init__(self, inner: httpx.SyncByteStream | httpx.AsyncByteStream, slot: Slot) -> None:
            self._inner = inner
            self._slot = slot

        def __iter__(self) -> Iterator[bytes]:
            assert isinstance(self._inner, httpx.SyncByteStream)
            yield from self._inner

        def close(self) -> None:
            watchdog.disarm(self._slot)
            assert isinstance(self._inner, httpx.SyncByteStream)
            self._inner.close()

    return Disarming
