"""A lean transport on a bare :class:`urllib3.PoolManager` (urllib3 comes with requests)."""

from __future__ import annotations

import os
import re
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any, Callable, Literal, Union
from urllib.parse import unquote

import certifi
import requests.utils
import urllib3
import urllib3.connectionpool
import urllib3.exceptions
import urllib3.response
import urllib3.util

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
    environment_proxies,
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
from arta.transport.watchdog import Slot, watch_pools, watchdog

__all__ = ["Urllib3Transport", "classify", "raw_chunks", "read_whole"]

redact_logger("urllib3.connectionpool")  # its DEBUG request lines hold whole URLs

# urllib3 raises these when no connection was made at all (refused,
# unreachable, DNS, connect timeout): nothing can have been sent.
_NEVER_CONNECTED = (
    urllib3.exceptions.NewConnectionError,
    urllib3.exceptions.NameResolutionError,
    urllib3.exceptions.ConnectTimeoutError,
)

#: Hosts whose route (pool or proxy) is remembered; past it, the memory is cleared.
_ROUTES_KEPT = 256

#: How a host is reached: its pool (given the path), or a proxy manager (given the whole URL).
_Route = Union[tuple[urllib3.connectionpool.HTTPConnectionPool, Literal[False]],
               tuple[urllib3.ProxyManager, Literal[True]]]

_TARGET_START = re.compile(r"[/?#]")


class Urllib3Transport:
    """A transport on one :class:`urllib3.PoolManager`, shared by threads: the fewest frames per request.

    The same options as :class:`~arta.transport.RequestsTransport`, read
    once, when the transport is made:

    - ``pool_size``: connections kept per host.
    - ``proxies``: ``{"http": url, "https": url}`` (or ``"all"``, or
      ``"scheme://host"``), as requests takes them. The environment's
      ``HTTP_PROXY``/``HTTPS_PROXY``/``ALL_PROXY`` fill in the schemes not
      given; ``NO_PROXY`` exempts hosts from either, as in curl.
    - ``ca_bundle``: a CA file (or folder) to verify servers with; else
      ``REQUESTS_CA_BUNDLE``, else ``SSL_CERT_FILE``/``SSL_CERT_DIR``, else
      certifi's bundle (the one requests uses). TLS is always verified.
    - ``max_body_bytes``: the largest answer read for a request that is
      not streamed, after decompression.

    urllib3 is told never to retry and never to follow a redirect: both
    are the client's business. Each request's deadline is kept by the
    process's watchdog (see :mod:`arta.transport.watchdog`).
    """

    def __init__(
        self,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        proxies: Mapping[str, str] | None = None,
        ca_bundle: str | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        check_sizes(pool_size, max_body_bytes)
        self.pool_size = pool_size
        self.max_body_bytes = max_body_bytes
        # One TLS context for every connection (urllib3 would make and load
        # one per connection), made from the CA settings as they are now.
        self._pool_options: dict[str, Any] = {
            "maxsize": pool_size, "block": False, "retries": False,
            "cert_reqs": "CERT_REQUIRED", "ssl_context": _ssl_context(ca_bundle),
        }
        self._fresh_pools()
        self.proxies, self._no_proxy = environment_proxies(proxies)
        self._timeouts: dict[tuple[float, float], urllib3.util.Timeout] = {}

        renew_after_fork(self)

    def _fresh_pools(self) -> None:
        # num_pools: the hosts kept (sign-up, refresh, image service, image CDN).
        self._manager = urllib3.PoolManager(num_pools=8, **self._pool_options)
        watch_pools(self._manager)
        self._proxy_managers: dict[str, urllib3.ProxyManager] = {}
        self._routes: dict[str, _Route] = {}
        self._routes_lock = threading.Lock()

    def _after_fork(self) -> None:
        """In a forked child: new pools; the parent's connections stay the parent's."""
        self._fresh_pools()

    # -- one request -------------------------------------------------------------

    def handle_request(self, request: Request) -> Response:
        """Send ``request`` once through the pool of its host; map failures to ``TransportError``."""
        now = time.monotonic()
        if request.deadline is None:
            timeout = self._timeout(request.connect_timeout, request.read_timeout)
        else:
            late = too_late_to_send(request, now)
            if late is not None:
                raise late
            connect, read = bounded_timeouts(request, now)
            timeout = urllib3.util.Timeout(connect=connect, read=read)
        if request.json is None and request.form is None and request.multipart is None:
            headers, content = request.headers, None  # a GET: nothing to encode, nothing to copy
        else:
            headers, content = request.encode()
        if not request.stream:
            for name in headers:
                if name.lower() == "accept-encoding":
                    break
            else:  # only what read_body can undo within its bound
                headers = {**headers, "Accept-Encoding": ACCEPT_ENCODING}
        when, by_deadline = answer_bound(request, now)
        slot = None if when is None else watchdog.arm(when, by_deadline=by_deadline)
        with sending(request, slot, _mapped, (urllib3.exceptions.HTTPError, ValueError)):
            origin, target = _split(request.url)
            opener, absolute = self._routes.get(origin) or self._route(request, origin)
            answer = opener.urlopen(
                request.method, request.url if absolute else target,
                body=content, headers=headers, retries=False,
                redirect=False, assert_same_host=False, timeout=timeout,
                preload_content=False, decode_content=False)
        if request.stream:
            return Response(answer.status, answer.headers,
                            chunks=_streamed(answer, request, slot),
                            close=lambda: _close(answer, slot))
        content = read_whole(answer, request, self.max_body_bytes, slot,
                             lambda: _close(answer, slot))
        return Response(answer.status, answer.headers, content=content)

    def _timeout(self, connect: float, read: float) -> urllib3.util.Timeout:
        """The (shared, never changed) ``Timeout`` for a request's own timeouts."""
        timeout = self._timeouts.get((connect, read))
        if timeout is None:
            timeout = self._timeouts[connect, read] = urllib3.util.Timeout(connect=connect,
                                                                            read=read)
        return timeout

    # -- routes: which pool (or proxy) serves a host ------------------------------------

    def _route(self, request: Request, origin: str) -> _Route:
        """Find (and remember) how to reach ``origin``, the start of ``request.url``."""
        url = request.url
        try:
            parsed = urllib3.util.parse_url(url)
        except urllib3.exceptions.LocationParseError as error:
            raise urllib3.exceptions.LocationValueError(f"invalid URL: {describe(request)}") \
                from error
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise urllib3.exceptions.LocationValueError(f"invalid URL: {describe(request)}")
        proxy_url = None
        if self.proxies and not requests.utils.should_bypass_proxies(url, no_proxy=self._no_proxy):
            proxy_url = requests.utils.select_proxy(url, self.proxies)
        route: _Route
        if proxy_url is None:
            route = (self._manager.connection_from_host(parsed.host, parsed.port, parsed.scheme),
                     False)
        else:  # the proxy manager takes the whole URL, and adds its headers
            route = (self._proxy_manager(proxy_url), True)
        with self._routes_lock:
            if len(self._routes) >= _ROUTES_KEPT:
                self._routes.clear()
            self._routes[origin] = route
        return route

    def _proxy_manager(self, proxy_url: str) -> urllib3.ProxyManager:
        with self._routes_lock:
            manager = self._proxy_managers.get(proxy_url)
            if manager is None:
                username, password = requests.utils.get_auth_from_url(proxy_url)
                headers = urllib3.util.make_headers(
                    proxy_basic_auth=f"{unquote(username)}:{unquote(password)}") \
                    if username else None
                manager = urllib3.ProxyManager(proxy_url, num_pools=8, proxy_headers=headers,
                                               **self._pool_options)
                watch_pools(manager)
                self._proxy_managers[proxy_url] = manager
            return manager

    def close(self) -> None:
        """Close the pooled connections."""
        with self._routes_lock:
            self._routes.clear()
            managers = [self._manager, *self._proxy_managers.values()]
            self._proxy_managers.clear()
        for manager in managers:
            manager.clear()

    def __repr__(self) -> str:
        return f"Urllib3Transport(pool_size={self.pool_size})"


def _split(url: str) -> tuple[str, str]:
    """``url`` as ``("scheme://host:port", "/path?query")``, as written, without a fragment."""
    found = _TARGET_START.search(url, url.find("://") + 3)
    if found is None:
        return url, "/"
    origin, target = url[:found.start()], url[found.start():]
    if "#" in target:
        target = target.partition("#")[0]
    if not target.startswith("/"):
        target = "/" + target
    return origin, target


def _ssl_context(ca_bundle: str | None) -> ssl.SSLContext:
    """A verifying TLS context trusting ``ca_bundle``, else the environment's CAs, else certifi's."""
    context = urllib3.util.ssl_.create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED)
    where = ca_bundle or os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE")
    folder = os.environ.get("SSL_CERT_DIR") if where is None else None
    if where is not None and os.path.isdir(where):
        where, folder = None, where
    if where is None and folder is None:
        where = certifi.where()
    try:
        context.load_verify_locations(cafile=where, capath=folder)
    except (OSError, ssl.SSLError) as error:
        raise ConfigurationError(f"cannot load the CA bundle {where or folder!r}: {error}") \
            from error
    return context


def _mapped(error: BaseException, request: Request) -> TransportError:
    """The ``TransportError`` for a failure of ``urlopen``."""
    where = describe(request)
    # The order matters: ConnectTimeoutError is also a TimeoutError, and a
    # NewConnectionError is a ConnectTimeoutError (for compatibility).
    if isinstance(error, (urllib3.exceptions.NewConnectionError,
                          urllib3.exceptions.NameResolutionError)):
        return ConnectError(f"{connect_failure(error)}: {where}")
    if isinstance(error, urllib3.exceptions.ConnectTimeoutError):
        return ConnectError(f"connect timed out after {request.connect_timeout:g}s: {where}")
    if isinstance(error, urllib3.exceptions.ProxyError):
        return ConnectError(f"the proxy refused the connection: {where}")
    if isinstance(error, urllib3.exceptions.SSLError):
        return ConnectError(f"TLS handshake failed (certificate not trusted?): {where}")
    if isinstance(error, urllib3.exceptions.ReadTimeoutError):
        return NoResponseError(f"no answer within the {request.read_timeout:g}s read timeout: {where}")
    if isinstance(error, urllib3.exceptions.LocationValueError):
        return TransportError(f"invalid URL: {where}")
    if isinstance(error, ValueError):  # http.client refusing a header value (a newline...)
        return TransportError(f"invalid request (a header value?): {where}")
    if isinstance(error, (urllib3.exceptions.ProtocolError, urllib3.exceptions.DecodeError)):
        return classify(error, where)
    return TransportError(f"{type(error).__name__}: {where}")


def classify(error: BaseException, where: str) -> TransportError:
    """Tell "never connected" from "sent, then the connection died".

    urllib3 wraps a failure to connect in ``NewConnectionError`` (or a name
    or connect-timeout error), somewhere down the chain of causes; anything
    else happened on a live connection, after the request may have been sent.
    """
    cause: BaseException | None = error
    seen = 0
    while cause is not None and seen < 10:  # a bound, in case a chain loops
        if isinstance(cause, _NEVER_CONNECTED):
            return ConnectError(f"{connect_failure(error)}: {where}")
        reason = getattr(cause, "reason", None)
        if isinstance(reason, BaseException):
            cause = reason
        elif cause.args and isinstance(cause.args[-1], BaseException):
            cause = cause.args[-1]
        else:
            cause = cause.__cause__ or cause.__context__
        seen += 1
    return NoResponseError(f"the connection was lost before an answer: {where}")


def read_whole(answer: urllib3.response.BaseHTTPResponse, request: Request, limit: int,
               slot: Slot | None, close: Callable[[], None]) -> bytes:
    """The whole body of ``answer``, within bounds, and the connection given back.

    On a failure ``close()`` releases the connection and the error says
    what ended the read (cut short, or the deadline); once the body is in,
    the connection is back in its pool and ``slot`` disarmed.
    """
    try:
        content = _body(answer, request, limit)
    except (urllib3.exceptions.HTTPError, OSError) as error:
        close()
        raise overdue(request, NoResponseError(f"the answer was cut short: {describe(request)}"),
                      slot) from scrub_chain(error, secrets_of(request))
    except BaseException:
        close()  # over the size limit, interrupted: the connection goes
        raise
    answer.release_conn()  # (already back in its pool when the body ended)
    if slot is not None:
        watchdog.disarm(slot)  # (a no-op: the pool took the connection back, disarming it)
    return content


def _body(answer: urllib3.response.BaseHTTPResponse, request: Request, limit: int) -> bytes:
    """In one read when the declared size is within bounds (the watchdog bounds its time)."""
    headers = answer.headers
    declared = headers.get("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) <= limit \
            and "Content-Encoding" not in headers:
        # http.client reads exactly the declared size, and urllib3 checks it came whole.
        return answer.read(decode_content=False)
    return read_body(raw_chunks(answer), headers, request, limit=limit)


def raw_chunks(raw: urllib3.response.BaseHTTPResponse) -> Iterator[bytes]:
    """The body's bytes as they arrive, still encoded: each read waits for one network read."""
    while True:
        data = raw.read1(CHUNK_SIZE, decode_content=False)
        if not data:
            return
        yield data


def _streamed(answer: urllib3.response.BaseHTTPResponse, request: Request,
              slot: Slot | None) -> Iterator[bytes]:
    """The decoded body in chunks; a failure (or the deadline) in the middle is ``NoResponseError``."""
    try:
        yield from answer.stream(CHUNK_SIZE, decode_content=True)
    except (urllib3.exceptions.HTTPError, OSError) as error:
        raise overdue(request, NoResponseError(f"the answer was cut short: {describe(request)}"),
                      slot) from scrub_chain(error, secrets_of(request))


def _close(answer: urllib3.response.BaseHTTPResponse, slot: Slot | None) -> None:
    """Release the connection: back to its pool if the body was read to its end, else closed.

    (urllib3 gives a connection back by itself when the body ends, and then
    ``close`` no longer reaches it; before that, the connection is closed.)
    """
    if slot is not None:
        watchdog.disarm(slot)
    answer.close()
    answer.release_conn()
