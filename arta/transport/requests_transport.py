"""The default transport: one pooled :class:`requests.Session`, sent through its adapter."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any, cast

import requests
import requests.adapters
import requests.structures
import requests.utils
import urllib3
import urllib3.exceptions
from urllib3.connectionpool import HTTPConnectionPool

from arta.errors import ConfigurationError, ConnectError, NoResponseError, TransportError
from arta.redact import redact_logger, scrub_chain
from arta.transport.base import (
    CHUNK_SIZE,
    DEFAULT_POOL_SIZE,
    Request,
    Response,
    check_sizes,
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
from arta.transport.urllib3_transport import classify, raw_chunks, read_whole
from arta.transport.watchdog import Slot, watch_pools, watchdog

__all__ = ["DEFAULT_POOL_SIZE", "RequestsTransport"]

redact_logger("urllib3.connectionpool")  # its DEBUG request lines hold whole URLs

#: What a send may raise that is a transport's failure (mapped by ``_mapped``).
_SEND_FAILURES = (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, ValueError)
_ORIGINS_KEPT = 256  # hosts whose proxy decision is remembered (then forgotten at once)
#: Methods that requests sends without ``Content-Length: 0`` when they have no body.
_NO_BODY_LENGTH = frozenset({"GET", "HEAD"})


class _WatchedAdapter(requests.adapters.HTTPAdapter):
    """The transport's adapter: watched connections (:mod:`arta.transport.watchdog`), less work.

    Through requests' hooks for subclasses it remembers each origin's pool
    (requests builds a pool key from the URL at every call) and builds
    responses without a cookie jar or a guessed text encoding.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._pools: dict[tuple[str, object, object, object], HTTPConnectionPool] = {}
        super().__init__(*args, **kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        """Make the pool manager, with watched connections."""
        super().init_poolmanager(*args, **kwargs)
        watch_pools(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> urllib3.ProxyManager:
        """The (cached) manager for ``proxy``, with watched connections."""
        manager: urllib3.ProxyManager = super().proxy_manager_for(proxy, **proxy_kwargs)
        watch_pools(manager)
        return manager

    def get_connection_with_tls_context(
        self, request: requests.PreparedRequest, verify: bool | str | None,
        proxies: Mapping[str, str] | None = None, cert: Any = None,
    ) -> HTTPConnectionPool:
        """The pool for ``request``, found by requests once per origin, TLS settings and proxy."""
        key = (_origin(request.url or ""), verify, proxies and proxies.get("all"), cert)
        pool = self._pools.get(key)
        if pool is None or pool.pool is None:  # unknown, or closed since (8 hosts are kept)
            pool = cast(HTTPConnectionPool, super().get_connection_with_tls_context(
                request, verify, proxies=dict(proxies) if proxies else None, cert=cert))
            if len(self._pools) >= _ORIGINS_KEPT:
                self._pools.clear()
            self._pools[key] = pool
        return pool

    def build_response(self, req: requests.PreparedRequest, resp: Any) -> requests.Response:
        """The response, as requests builds it but for its cookies and text encoding."""
        response = requests.Response()
        response.status_code = resp.status
        # urllib3's headers are case-insensitive already: kept, not copied.
        response.headers = cast("requests.structures.CaseInsensitiveDict[str]", resp.headers)
        response.raw = resp
        response.reason = resp.reason
        response.url = req.url or ""
        response.request = req
        response.connection = self
        return response

    def close(self) -> None:
        """Forget the pools, and close them."""
        self._pools.clear()
        super().close()


class RequestsTransport:
    """The default transport: one pooled :class:`requests.Session`, shared by threads.

    - ``pool_size``: connections kept per host, one per thread sharing it.
    - ``proxies``: ``{"http": url, "https": url}`` (or ``"all"``), as
      requests takes them. Without it, ``HTTP_PROXY``/``HTTPS_PROXY``/
      ``ALL_PROXY`` apply; ``NO_PROXY`` exempts hosts from either, as in curl.
    - ``ca_bundle``: a CA file (or folder) to verify servers with, e.g. a
      corporate one; else ``REQUESTS_CA_BUNDLE``. TLS is always verified.
    - ``session``: your own session (auth, adapters, certificates, cookies),
      used through ``session.request``, TLS verification kept on, never
      closed by :meth:`close`. Its adapters must not retry (``max_retries=0``,
      requests' default): a retry in there would re-send a submit.
    - ``max_body_bytes``: the largest answer read for a request that is
      not streamed, after decompression (see :func:`~arta.transport.read_body`).

    Without ``session``, the environment is read once, when the transport
    is made, and each request goes straight to the session's adapter as a
    prepared request (``Session.request`` would merge the environment and
    cookies again on every call); no cookies are kept; a request's deadline
    holds whatever the server does (the watchdog cuts its socket). With
    your ``session``, a deadline caps each timeout and is checked between
    chunks, but headers dripping a byte at a time are bounded only by the
    read timeout of each byte. urllib3 never retries: the client decides.
    """

    def __init__(
        self,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        proxies: Mapping[str, str] | None = None,
        ca_bundle: str | None = None,
        session: requests.Session | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        check_sizes(pool_size, max_body_bytes)
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            # max_retries=0: urllib3 must send once; a retry in here would re-send a
            # submit behind the client's back. pool_connections is the number of
            # hosts kept (sign-up, refresh, image service, image CDN).
            adapter = _WatchedAdapter(pool_connections=8, pool_maxsize=pool_size, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._adapter: _WatchedAdapter | None = adapter
        elif session.verify is False:
            raise ConfigurationError(
                "the session has TLS verification turned off; arta always verifies. "
                "Pass ca_bundle= (a CA file) to trust a private certificate authority")
        else:
            self._adapter = None
        self.max_body_bytes = max_body_bytes
        self.session = session
        self.pool_size = pool_size
        # Per request, not on the session: the environment overrides session.proxies.
        self.proxies: dict[str, str] | None = dict(proxies) if proxies else None
        verify = session.verify if isinstance(session.verify, str) else True
        self._verify: bool | str = ca_bundle or verify
        if self._adapter is not None:
            self._settle_environment(session)
        self._origins: dict[str, dict[str, str] | None] = {}
        self._origins_lock = threading.Lock()
        renew_after_fork(self)

    def _after_fork(self) -> None:
        """In a forked child: new pools in every adapter; the parent's connections stay its own."""
        for adapter in self.session.adapters.values():
            if isinstance(adapter, requests.adapters.HTTPAdapter):
                # As HTTPAdapter.__setstate__ rebuilds them.
                adapter.proxy_manager = {}
                adapter.init_poolmanager(getattr(adapter, "_pool_connections", 10),
                                         getattr(adapter, "_pool_maxsize", 10),
                                         block=getattr(adapter, "_pool_block", False))
                if isinstance(adapter, _WatchedAdapter):
                    adapter._pools = {}
        self._origins = {}
        self._origins_lock = threading.Lock()

    def _settle_environment(self, session: requests.Session) -> None:
        """Read once what ``Session.request`` would read from the environment on every call."""
        if self._verify is True:
            self._verify = os.environ.get("REQUESTS_CA_BUNDLE") \
                or os.environ.get("CURL_CA_BUNDLE") or True
        # The environment fills in what the argument leaves out, as in requests.
        self._all_proxies, self._no_proxy = environment_proxies(self.proxies)
        # The session's own headers go out as requests would send them; a request's win.
        self._session_headers: dict[str, str] = {
            name: value for name, value in session.headers.items() if isinstance(value, str)}
        self._session_names = {name.lower(): name for name in self._session_headers}

    def handle_request(self, request: Request) -> Response:
        """Send ``request`` once through the adapter, mapping failures to ``TransportError``."""
        now = time.monotonic()
        late = too_late_to_send(request, now)
        if late is not None:
            raise late
        if self._adapter is None:
            return self._through_session(request, now)
        adapter = self._adapter
        prepared = self._prepare(request)
        when, by_deadline = answer_bound(request, now)
        slot = None if when is None else watchdog.arm(when, by_deadline=by_deadline)
        with sending(request, slot, _mapped, _SEND_FAILURES):
            try:
                proxies = self._origins[_origin(request.url)]
            except KeyError:
                proxies = self._proxies_for(request.url)
            answer = adapter.send(prepared, stream=True, timeout=bounded_timeouts(request, now),
                                  verify=self._verify, proxies=proxies)
        if request.stream:
            return Response(answer.status_code, answer.headers,
                            chunks=_guarded(answer.iter_content(CHUNK_SIZE), request, slot),
                            close=lambda: _close(answer, slot))
        content = read_whole(answer.raw, request, self.max_body_bytes, slot,
                             lambda: _close(answer, slot))
        return Response(answer.status_code, answer.headers, content=content)

    def _prepare(self, request: Request) -> requests.PreparedRequest:
        """``request`` as requests would prepare it in our session, without re-reading the session."""
        if request.json is None and request.form is None and request.multipart is None:
            own: Mapping[str, str] = request.headers
            content = None
        else:
            own, content = request.encode()
        headers = requests.structures.CaseInsensitiveDict(self._session_headers)
        for name, value in own.items():
            session_name = self._session_names.get(name.lower())
            if session_name is not None and session_name != name:
                del headers[session_name]  # (case-insensitive: a different spelling is the same)
            headers[name] = value
        if not request.stream and not any(name.lower() == "accept-encoding" for name in own):
            # Only what read_body can undo within its bound (the session's own
            # default names brotli and zstd where their packages are installed).
            headers["Accept-Encoding"] = ACCEPT_ENCODING
        method = request.method.upper()
        if content is not None:
            headers["Content-Length"] = str(len(content))
        elif method not in _NO_BODY_LENGTH:
            headers["Content-Length"] = "0"
        prepared = requests.PreparedRequest()
        prepared.method = method
        prepared.url = request.url  # its origin was checked by requests when first seen
        prepared.headers = headers
        prepared.body = content
        return prepared

    def _proxies_for(self, url: str) -> dict[str, str] | None:
        """The proxies for the origin of ``url`` (None: go direct), decided once per origin.

        The URL is first prepared by requests, so that an invalid one fails
        as it would in requests, before any connection.
        """
        if not url[:8].lower().startswith(("http://", "https://")):
            raise requests.exceptions.InvalidSchema(f"no adapter for {url.split(':', 1)[0]!r}")
        requests.PreparedRequest().prepare_url(url, None)
        proxies: dict[str, str] | None = None
        if self._all_proxies and not requests.utils.should_bypass_proxies(
                url, no_proxy=self._no_proxy):
            proxy = requests.utils.select_proxy(url, self._all_proxies)
            if proxy is not None:
                proxies = {"all": proxy}  # the adapter selects it for this URL again
        with self._origins_lock:
            if len(self._origins) >= _ORIGINS_KEPT:
                self._origins.clear()
            self._origins[_origin(url)] = proxies
        return proxies

    def _through_session(self, request: Request, now: float) -> Response:
        """Send ``request`` through the caller's session, as it is configured."""
        headers, content = request.encode()
        if not request.stream and not any(k.lower() == "accept-encoding" for k in headers):
            headers["Accept-Encoding"] = ACCEPT_ENCODING  # only what read_body can bound
        proxies = self.proxies
        if proxies and requests.utils.should_bypass_proxies(request.url, no_proxy=None):
            proxies = None
        try:
            answer = self.session.request(
                request.method,
                request.url,
                headers=headers,
                data=content,
                timeout=bounded_timeouts(request, now),
                stream=True,  # even a small body is read here, within bounds
                verify=self._verify,
                proxies=proxies,
                allow_redirects=False,
            )
        except requests.exceptions.RequestException as error:
            raise overdue(request, _mapped(error, request), None) \
                from scrub_chain(error, secrets_of(request))
        if request.stream:
            return Response(
                answer.status_code,
                answer.headers,
                chunks=_guarded(answer.iter_content(chunk_size=CHUNK_SIZE), request, None),
                close=answer.close,
            )
        try:
            content = read_body(raw_chunks(answer.raw), answer.headers, request,
                                limit=self.max_body_bytes)
        except (urllib3.exceptions.HTTPError, OSError) as error:
            scrub_chain(error, secrets_of(request))
            raise overdue(request, NoResponseError(f"the answer was cut short: {describe(request)}"),
                          None) from error
        finally:
            answer.close()
        return Response(answer.status_code, answer.headers, content=content)

    def close(self) -> None:
        """Close the pooled connections (of a session this transport made)."""
        if self._owns_session:
            self.session.close()

    def __repr__(self) -> str:
        return f"RequestsTransport(pool_size={self.pool_size})"


def _origin(url: str) -> str:
    """The start of ``url`` up to its path (``scheme://host:port``, as written)."""
    start = url.find("://") + 3
    for index in range(start, len(url)):
        if url[index] in "/?#":
            return url[:index]
    return url


def _mapped(error: BaseException, request: Request) -> TransportError:
    """The ``TransportError`` for a failure of ``session.request`` or ``adapter.send``."""
    where = describe(request)
    # In this order: ConnectTimeout is a Timeout, ProxyError and SSLError ConnectionErrors.
    if isinstance(error, requests.exceptions.ConnectTimeout):
        return ConnectError(f"connect timed out after {request.connect_timeout:g}s: {where}")
    if isinstance(error, requests.exceptions.ProxyError):
        return ConnectError(f"the proxy refused the connection: {where}")
    if isinstance(error, requests.exceptions.SSLError):
        return ConnectError(f"TLS handshake failed (certificate not trusted?): {where}")
    if isinstance(error, requests.exceptions.ConnectionError):
        return classify(error, where)
    if isinstance(error, requests.exceptions.Timeout):
        return NoResponseError(f"no answer within the {request.read_timeout:g}s read timeout: {where}")
    if isinstance(error, (requests.exceptions.ChunkedEncodingError,
                          requests.exceptions.ContentDecodingError)):
        return NoResponseError(f"the answer was cut short: {where}")
    if isinstance(error, (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
                          requests.exceptions.MissingSchema, urllib3.exceptions.LocationValueError)):
        return TransportError(f"invalid URL: {where}")
    if isinstance(error, ValueError) and not isinstance(error, requests.exceptions.RequestException):
        return TransportError(f"invalid request (a header value?): {where}")
    return TransportError(f"{type(error).__name__}: {where}")


def _guarded(chunks: Iterator[bytes], request: Request, slot: Slot | None) -> Iterator[bytes]:
    """Map failures in the middle of a streamed body to ``NoResponseError``."""
    deadline = request.deadline
    try:
        for chunk in chunks:
            if deadline is not None and slot is None and time.monotonic() > deadline:
                # No watchdog (the caller's session): checked between chunks.
                raise NoResponseError(f"no whole answer before the deadline: {describe(request)}")
            yield chunk
    except requests.exceptions.RequestException as error:
        raise overdue(request, NoResponseError(f"the answer was cut short: {describe(request)}"),
                      slot) from scrub_chain(error, secrets_of(request))


def _close(answer: requests.Response, slot: Slot | None) -> None:
    """Stop watching, then release the connection (see ``urllib3_transport._close``)."""
    if slot is not None:
        watchdog.disarm(slot)
    answer.close()
