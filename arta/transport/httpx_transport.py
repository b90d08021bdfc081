"""A transport on httpx (``pip install 'arta[httpx]'``), speaking HTTP/2 when ``h2`` is installed.

httpx is imported when a :class:`HttpxTransport` is made, never at
``import arta``: the package's only runtime dependencies stay requests,
tenacity and filelock.
"""

from __future__ import annotations

import importlib.util
import os
import ssl
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from arta.errors import ConfigurationError, ConnectError, NoResponseError, TransportError
from arta.redact import redact_logger, scrub_chain
from arta.transport.base import (
    ACCEPT_ENCODING,
    CHUNK_SIZE,
    DEFAULT_MAX_BODY_BYTES,
    Request,
    Response,
    connect_failure,
    describe,
    read_body,
    secrets_of,
)
from arta.transport.requests_transport import DEFAULT_POOL_SIZE

if TYPE_CHECKING:
    import httpx

__all__ = ["HttpxTransport"]

_INSTALL_HINT = "pip install 'arta[httpx]' (or 'arta[http2]' for HTTP/2)"


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
      closed by :meth:`close`.
    - ``max_body_bytes``: the largest answer read for a request that is
      not streamed, after decompression; such a body must also arrive
      whole within a few read timeouts (see :func:`~arta.transport.read_body`).

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

        if pool_size < 1:
            raise ConfigurationError(f"pool_size must be at least 1, not {pool_size!r}")
        if http2 is None:
            http2 = h2_available()
        elif http2 and not h2_available():
            raise ConfigurationError(f"HTTP/2 needs the h2 package: {_INSTALL_HINT}")
        if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int) \
                or max_body_bytes < 1:
            raise ConfigurationError(
                f"max_body_bytes must be a positive int, not {max_body_bytes!r}")
        self.max_body_bytes = max_body_bytes
        self.http2 = http2
        self.pool_size = pool_size
        self._owns_client = client is None
        if client is None:
            verify: ssl.SSLContext | bool = _ssl_context(ca_bundle) if ca_bundle else True
            # No cap on connections (a thread over the pool size opens one more,
            # as with requests, instead of queueing); pool_size stay alive.
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=pool_size)
            # Explicit proxies are mounted per scheme. The environment's proxies
            # are still mounted by trust_env, and its NO_PROXY hosts, being more
            # specific patterns, win over either: the same rule as requests here.
            mounts: dict[str, httpx.BaseTransport | None] = {
                f"{scheme.rstrip(':/')}://": httpx.HTTPTransport(
                    verify=verify, http2=http2, limits=limits, proxy=httpx.Proxy(url), retries=0)
                for scheme, url in (proxies or {}).items()
            }
            client = httpx.Client(
                verify=verify, http2=http2, limits=limits, mounts=mounts or None,
                trust_env=True, follow_redirects=False,
            )
        self.client = client

    def handle_request(self, request: Request) -> Response:
        """Send ``request`` through the client, mapping failures to ``TransportError``."""
        import httpx

        headers, content = request.encode()
        if not request.stream and not any(k.lower() == "accept-encoding" for k in headers):
            headers["Accept-Encoding"] = ACCEPT_ENCODING  # only what read_body can bound
        timeout = httpx.Timeout(
            connect=request.connect_timeout, read=request.read_timeout,
            # Writing a body counts as reading's twin; waiting for a pooled
            # connection, as connecting's (no byte has left yet).
            write=request.read_timeout, pool=request.connect_timeout,
        )
        try:
            outgoing = self.client.build_request(
                request.method, request.url, headers=headers, content=content, timeout=timeout)
            answer = self.client.send(outgoing, stream=True)  # bodies are read here, in bounds
        except httpx.HTTPError as error:
            raise _mapped(error, request) from scrub_chain(error, secrets_of(request))
        except httpx.InvalidURL as error:
            raise TransportError(f"invalid URL: {describe(request)}") \
                from scrub_chain(error, secrets_of(request))
        if request.stream:
            return Response(
                answer.status_code,
                answer.headers,
                chunks=_guarded(answer.iter_bytes(CHUNK_SIZE), request),
                close=answer.close,
            )
        try:
            content = read_body(answer.iter_raw(), answer.headers, request,
                                limit=self.max_body_bytes)
        except httpx.HTTPError as error:
            raise _mapped(error, request) from scrub_chain(error, secrets_of(request))
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


def _mapped(error: httpx.HTTPError, request: Request) -> TransportError:
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


def _guarded(chunks: Iterator[bytes], request: Request) -> Iterator[bytes]:
    """Map failures in the middle of a streamed body to ``NoResponseError``."""
    import httpx

    try:
        yield from chunks
    except httpx.HTTPError as error:
        raise NoResponseError(f"the answer was cut short: {describe(request)}") \
            from scrub_chain(error, secrets_of(request))
