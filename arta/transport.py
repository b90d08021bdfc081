"""Transports: the one seam between ``arta`` and an HTTP stack.

A transport has one method, ``handle_request(request) -> response`` (the
shape httpx uses). It sends exactly once: retries, auth and polling all live
above it, so any HTTP stack (a corporate session, an HTTP/2 client, a test
double) can be handed to :class:`arta.Client` and everything else keeps
working.

Failures are mapped to two exceptions whose difference matters: a
:class:`~arta.errors.ConnectError` means nothing was sent (safe to re-send
anything), a :class:`~arta.errors.NoResponseError` means the request may have
arrived (a submit must not be blindly re-sent).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import (
    TYPE_CHECKING,
    Callable,
    Protocol,
    Union,
)

import requests
import requests.adapters

from arta.errors import ConnectError, NoResponseError, TransportError

if TYPE_CHECKING:  # typing.Self is 3.11+; only the type checker needs it
    from typing_extensions import Self

__all__ = [
    "DEFAULT_TIMEOUT",
    "Request",
    "RequestsTransport",
    "Response",
    "Timeout",
    "Transport",
]

#: ``(connect, read)`` seconds; a float sets both.
Timeout = Union[float, tuple[float, float]]

#: Connect fast (a refused or black-holed host should fail quickly), read
#: patiently (the service may be slow to answer a submit).
DEFAULT_TIMEOUT: tuple[float, float] = (5.0, 30.0)


@dataclass(frozen=True)
class Request:
    """One HTTP request, described as data.

    At most one body is set: ``json`` (sent as JSON), ``form``
    (``application/x-www-form-urlencoded``) or ``multipart``
    (``multipart/form-data``, every value a plain string field). With
    ``stream`` the response body is not read up front: iterate
    :meth:`Response.iter_bytes` and close the response.
    """

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    json: object = None
    form: Mapping[str, str] | None = None
    multipart: Mapping[str, str] | None = None
    timeout: Timeout = DEFAULT_TIMEOUT
    stream: bool = False

    def __repr__(self) -> str:
        # Headers carry the token and the URL a key: show neither.
        return f"Request({self.method} {self.url.split('?', 1)[0]})"


class Response:
    """An HTTP response: status, headers (case-insensitive) and a body.

    The body is either already read (``content``) or streamed from
    ``chunks``; ``close()`` releases the connection and is safe to call twice.
    Use it as a context manager.
    """

    def __init__(
        self,
        status: int,
        headers: Mapping[str, str],
        *,
        content: bytes | None = None,
        chunks: Iterable[bytes] | None = None,
        close: Callable[[], None] | None = None,
    ) -> None:
        self.status = status
        self.headers: MutableMapping[str, str] = requests.structures.CaseInsensitiveDict(headers)
        self._content = content
        self._chunks = chunks
        self._close = close

    def read(self) -> bytes:
        """Return the whole body (reading the stream if there is one)."""
        if self._content is None:
            self._content = b"".join(self.iter_bytes())
        return self._content

    def iter_bytes(self) -> Iterator[bytes]:
        """Yield the body in chunks, then close the response."""
        try:
            if self._content is not None:
                yield self._content
            elif self._chunks is not None:
                yield from self._chunks
        finally:
            self.close()

    def close(self) -> None:
        """Release the underlying connection."""
        close, self._close = self._close, None
        if close is not None:
            close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Response({self.status})"


class Transport(Protocol):
    """What :class:`arta.Client` needs of an HTTP stack.

    ``handle_request`` sends ``request`` once and returns the response,
    whatever its status. It raises :class:`~arta.errors.ConnectError` when
    no connection was made and :class:`~arta.errors.NoResponseError` when
    the request was sent but no answer came (timeout, dropped connection).
    ``close`` releases pooled connections.
    """

    def handle_request(self, request: Request) -> Response:
        """Send ``request`` once and return the response."""
        ...

    def close(self) -> None:
        """Release pooled connections."""
        ...


class RequestsTransport:
    """The default transport: one pooled :class:`requests.Session`.

    ``pool_size`` bounds the connections kept per host (size it to the
    number of threads sharing the client). ``proxies`` are passed to
    requests, which also honours ``HTTPS_PROXY``/``NO_PROXY``. TLS is always
    verified; ``ca_bundle`` names a custom CA file.
    """

    def __init__(
        self,
        *,
        pool_size: int = 16,
        proxies: Mapping[str, str] | None = None,
        ca_bundle: str | None = None,
        session: requests.Session | None = None,
    ) -> None:
        self.session = session or requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=pool_size)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        if proxies:
            self.session.proxies.update(proxies)
        self._verify: bool | str = ca_bundle or True

    def handle_request(self, request: Request) -> Response:
        """Send ``request`` through the session, mapping failures to ``TransportError``."""
        files = (
            {name: (None, value) for name, value in request.multipart.items()}
            if request.multipart is not None
            else None
        )
        try:
            answer = self.session.request(
                request.method,
                request.url,
                headers=dict(request.headers),
                json=request.json,
                data=request.form,
                files=files,
                timeout=request.timeout,
                stream=request.stream,
                verify=self._verify,
                allow_redirects=False,
            )
        except requests.exceptions.ConnectTimeout as error:
            raise ConnectError(f"connect timed out: {_where(request)}") from error
        except requests.exceptions.ProxyError as error:
            raise ConnectError(f"proxy refused the connection: {_where(request)}") from error
        except requests.exceptions.SSLError as error:
            raise ConnectError(f"TLS handshake failed: {_where(request)}") from error
        except requests.exceptions.ConnectionError as error:
            raise _classify(error, request) from error
        except requests.exceptions.Timeout as error:
            raise NoResponseError(f"read timed out: {_where(request)}") from error
        except requests.exceptions.RequestException as error:
            raise TransportError(f"{type(error).__name__}: {_where(request)}") from error
        if request.stream:
            return Response(
                answer.status_code,
                answer.headers,
                chunks=_guarded(answer.iter_content(chunk_size=64 * 1024), request),
                close=answer.close,
            )
        return Response(answer.status_code, answer.headers, content=answer.content)

    def close(self) -> None:
        """Close the session's pooled connections."""
        self.session.close()


def _where(request: Request) -> str:
    # Never the query string: it carries the API key (and nothing else useful).
    return f"{request.method} {request.url.split('?', 1)[0]}"


def _classify(error: requests.exceptions.ConnectionError, request: Request) -> TransportError:
    """Tell "never connected" from "sent, then the connection died".

    urllib3 wraps a failure to connect in ``NewConnectionError`` (refused,
    unreachable, DNS); anything else under ``ConnectionError`` happened on a
    live connection, after the request may have been sent.
    """
    import urllib3.exceptions

    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, (urllib3.exceptions.NewConnectionError,
                              urllib3.exceptions.NameResolutionError,
                              urllib3.exceptions.ConnectTimeoutError)):
            return ConnectError(f"could not connect: {_where(request)}")
        reason = getattr(cause, "reason", None)
        cause = reason if isinstance(reason, BaseException) else (
            cause.args[0] if cause.args and isinstance(cause.args[0], BaseException) else None
        )
    return NoResponseError(f"connection lost before an answer: {_where(request)}")


def _guarded(chunks: Iterator[bytes], request: Request) -> Iterator[bytes]:
    """Map failures in the middle of a streamed body to ``NoResponseError``."""
    try:
        yield from chunks
    except requests.exceptions.RequestException as error:
        raise NoResponseError(f"body cut short: {_where(request)}") from error
