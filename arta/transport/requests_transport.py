"""The default transport: one pooled :class:`requests.Session`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import requests
import requests.adapters
import requests.utils
import urllib3.exceptions

from arta.errors import ConfigurationError, ConnectError, NoResponseError, TransportError
from arta.transport.base import CHUNK_SIZE, Request, Response, describe

__all__ = ["DEFAULT_POOL_SIZE", "RequestsTransport"]

#: Connections kept open per host: the number of threads that may share one
#: client before a request has to open a fresh connection.
DEFAULT_POOL_SIZE = 16  # the I/O threads of a client's poll loop

# urllib3 raises these when no connection was made at all (refused,
# unreachable, DNS, connect timeout): nothing can have been sent.
_NEVER_CONNECTED = (
    urllib3.exceptions.NewConnectionError,
    urllib3.exceptions.NameResolutionError,
    urllib3.exceptions.ConnectTimeoutError,
)


class RequestsTransport:
    """The default transport: one pooled :class:`requests.Session`, shared by threads.

    - ``pool_size``: connections kept per host; size it to the number of
      threads sharing the client (more threads still work, over extra
      short-lived connections).
    - ``proxies``: ``{"http": url, "https": url}`` (or ``"all"``), as
      requests takes them. Without it, ``HTTP_PROXY``/``HTTPS_PROXY``/
      ``ALL_PROXY`` apply; ``NO_PROXY`` exempts hosts from either, as in curl.
    - ``ca_bundle``: a CA file (or folder) to verify servers with, e.g. a
      corporate one. TLS is always verified: there is no switch to turn it
      off. ``REQUESTS_CA_BUNDLE`` is honoured as in requests.
    - ``session``: your own session (with its auth, adapters, certificates),
      used as it is, except that TLS verification stays on and that it is
      not closed by :meth:`close`, since it is yours. Mount adapters with
      ``max_retries=0`` (requests' default) on it: a retry inside the
      transport would re-send a submit behind the client's back.

    Connect and read timeouts come from each :class:`Request`. urllib3 is
    told never to retry: retries are the client's business.
    """

    def __init__(
        self,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        proxies: Mapping[str, str] | None = None,
        ca_bundle: str | None = None,
        session: requests.Session | None = None,
    ) -> None:
        if pool_size < 1:
            raise ConfigurationError(f"pool_size must be at least 1, not {pool_size!r}")
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            # max_retries=0: urllib3 must send once; a retry in here would re-send a
            # submit behind the client's back. pool_connections is the number of
            # hosts kept (sign-up, refresh, image service, image CDN).
            adapter = requests.adapters.HTTPAdapter(
                pool_connections=8, pool_maxsize=pool_size, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        elif session.verify is False:
            raise ConfigurationError(
                "the session has TLS verification turned off; arta always verifies. "
                "Pass ca_bundle= (a CA file) to trust a private certificate authority")
        self.session = session
        self.pool_size = pool_size
        # Proxies are passed per request, not set on the session: requests lets
        # the environment override session.proxies (psf/requests#2018), but
        # never a per-request argument.
        self.proxies: dict[str, str] | None = dict(proxies) if proxies else None
        verify = session.verify if isinstance(session.verify, str) else True
        self._verify: bool | str = ca_bundle or verify

    def handle_request(self, request: Request) -> Response:
        """Send ``request`` through the session, mapping failures to ``TransportError``."""
        headers, content = request.encode()
        proxies = self.proxies
        if proxies and requests.utils.should_bypass_proxies(request.url, no_proxy=None):
            proxies = None
        try:
            answer = self.session.request(
                request.method,
                request.url,
                headers=headers,
                data=content,
                timeout=(request.connect_timeout, request.read_timeout),
                stream=request.stream,
                verify=self._verify,
                proxies=proxies,
                allow_redirects=False,
            )
        except requests.exceptions.RequestException as error:
            raise _mapped(error, request) from error
        if request.stream:
            return Response(
                answer.status_code,
                answer.headers,
                chunks=_guarded(answer.iter_content(chunk_size=CHUNK_SIZE), request),
                close=answer.close,
            )
        return Response(answer.status_code, answer.headers, content=answer.content)

    def close(self) -> None:
        """Close the pooled connections (of a session this transport made)."""
        if self._owns_session:
            self.session.close()

    def __repr__(self) -> str:
        return f"RequestsTransport(pool_size={self.pool_size})"


def _mapped(error: requests.exceptions.RequestException, request: Request) -> TransportError:
    """The ``TransportError`` for a failure of ``session.request``."""
    where = describe(request)
    # The order matters: ConnectTimeout is also a Timeout, ProxyError and
    # SSLError are also ConnectionErrors.
    if isinstance(error, requests.exceptions.ConnectTimeout):
        return ConnectError(f"connect timed out after {request.connect_timeout:g}s: {where}")
    if isinstance(error, requests.exceptions.ProxyError):
        return ConnectError(f"the proxy refused the connection: {where}")
    if isinstance(error, requests.exceptions.SSLError):
        return ConnectError(f"TLS handshake failed (certificate not trusted?): {where}")
    if isinstance(error, requests.exceptions.ConnectionError):
        return _classify(error, where)
    if isinstance(error, requests.exceptions.Timeout):
        return NoResponseError(f"no answer within the {request.read_timeout:g}s read timeout: {where}")
    if isinstance(error, (requests.exceptions.ChunkedEncodingError,
                          requests.exceptions.ContentDecodingError)):
        return NoResponseError(f"the answer was cut short: {where}")
    return TransportError(f"{type(error).__name__}: {where}")


def _classify(error: BaseException, where: str) -> TransportError:
    """Tell "never connected" from "sent, then the connection died".

    urllib3 wraps a failure to connect in ``NewConnectionError`` (or a name
    or connect-timeout error), somewhere down the chain of causes; anything
    else under ``ConnectionError`` happened on a live connection, after the
    request may have been sent.
    """
    cause: BaseException | None = error
    seen = 0
    while cause is not None and seen < 10:  # a bound, in case a chain loops
        if isinstance(cause, _NEVER_CONNECTED):
            return ConnectError(f"could not connect: {where}")
        reason = getattr(cause, "reason", None)
        if isinstance(reason, BaseException):
            cause = reason
        elif cause.args and isinstance(cause.args[0], BaseException):
            cause = cause.args[0]
        else:
            cause = cause.__cause__ or cause.__context__
        seen += 1
    return NoResponseError(f"the connection was lost before an answer: {where}")


def _guarded(chunks: Iterator[bytes], request: Request) -> Iterator[bytes]:
    """Map failures in the middle of a streamed body to ``NoResponseError``."""
    try:
        yield from chunks
    except requests.exceptions.RequestException as error:
        raise NoResponseError(f"the answer was cut short: {describe(request)}") from error
