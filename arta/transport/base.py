"""The transport seam: :class:`Request` and :class:`Response` as data, and the :class:`Transport` protocol.

Nothing here does I/O. A request is a value (method, URL, headers, at most
one body, timeouts, a deadline, a stream flag); :meth:`Request.encode` turns
its body into the exact bytes and ``Content-Type`` that go on the wire, so
that every transport (and the in-process one, which has no wire) sends the
same thing. The helpers at the end say what a deadline means to a
transport: the timeouts it caps, the bound of the whole answer, and the
error that names it.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import ssl
import weakref
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Protocol, Union, cast
from urllib.parse import urlencode
from urllib.request import getproxies

import requests.structures
import urllib3._collections
import urllib3.filepost

from arta.errors import ConfigurationError
from arta.redact import redact

if TYPE_CHECKING:  # typing.Self is 3.11+; only the type checker needs it
    from typing_extensions import Self


__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_POOL_SIZE",
    "DEFAULT_TIMEOUT",
    "EncodedRequest",
    "Request",
    "Response",
    "Timeout",
    "Transport",
    "connect_failure",
    "describe",
    "environment_proxies",
    "secrets_of",
]

#: ``(connect, read)`` seconds; a float sets both.
Timeout = Union[float, tuple[float, float]]

#: Connect fast (a refused or black-holed host should fail quickly), read
#: patiently (the service may be slow to answer a submit).
DEFAULT_TIMEOUT: tuple[float, float] = (5.0, 30.0)

#: Bytes per chunk of a streamed body: big enough that per-chunk overhead
#: vanishes, small enough that a 200 MB download stays a few chunks in memory.
CHUNK_SIZE = 64 * 1024

#: Connections kept open per host: the number of threads that may share one
#: client before a request has to open a fresh connection.
DEFAULT_POOL_SIZE = 16  # the I/O threads of a client's poll loop

_JSON = "application/json"
_FORM = "application/x-www-form-urlencoded"


class EncodedRequest(NamedTuple):
    """What goes on the wire: the headers (``Content-Type`` included) and the body bytes."""

    headers: dict[str, str]
    content: bytes | None


@dataclass(frozen=True)
class Request:
    """One HTTP request, described as data.

    At most one body is set: ``json`` (sent as JSON), ``form``
    (``application/x-www-form-urlencoded``) or ``multipart``
    (``multipart/form-data``, every value a plain string field). ``timeout``
    is ``(connect, read)`` seconds, or one float for both. With ``stream``
    the response body is not read up front: iterate
    :meth:`Response.iter_bytes` and close the response.

    ``deadline`` is a :func:`time.monotonic` value: the caller's whole wait
    ends then, whatever the server does. A transport returns or raises by
    then (give or take a few milliseconds): its connect and read timeouts
    are each capped by the time left, and a server that keeps the socket
    busy (a status line dripping a byte every two seconds restarts every
    read timeout) is cut off. A streamed body is bounded by it too while it
    is being read. None (the default): only ``timeout`` and, for a body
    that is not streamed, :data:`BODY_TIME_FACTOR` read timeouts bound it.
    Past the deadline the error is :class:`~arta.errors.ConnectError` if no
    connection was made (nothing sent), else
    :class:`~arta.errors.NoResponseError`, and its message says so.
    """

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    json: object = None
    form: Mapping[str, str] | None = None
    multipart: Mapping[str, str] | None = None
    timeout: Timeout = DEFAULT_TIMEOUT
    stream: bool = False
    deadline: float | None = None

    def __post_init__(self) -> None:
        if self.form is None and self.multipart is None:
            return  # the common case, checked first: a request is made for every poll
        bodies = [name for name in ("json", "form", "multipart") if getattr(self, name) is not None]
        if len(bodies) > 1:
            raise ValueError(f"a request has at most one body, got {' and '.join(bodies)}")

    @property
    def connect_timeout(self) -> float:
        """Seconds to wait for the connection to be made."""
        return self.timeout[0] if isinstance(self.timeout, tuple) else float(self.timeout)

    @property
    def read_timeout(self) -> float:
        """Seconds to wait for the answer (and between two chunks of it)."""
        return self.timeout[1] if isinstance(self.timeout, tuple) else float(self.timeout)

    def encode(self) -> EncodedRequest:
        """The headers and body bytes to send, exactly as every ``arta`` transport sends them.

        A ``Content-Type`` already in :attr:`headers` is kept. Multipart is
        encoded by urllib3 (which requests uses too), with a fresh boundary.
        """
        headers = dict(self.headers)
        if self.json is not None:
            # allow_nan=False: NaN is not JSON, and a server would reject it anyway.
            content = json.dumps(self.json, ensure_ascii=False, separators=(",", ":"),
                                 allow_nan=False).encode("utf-8")
            content_type = _JSON
        elif self.form is not None:
            content, content_type = urlencode(list(self.form.items())).encode("ascii"), _FORM
        elif self.multipart is not None:
            content, content_type = urllib3.filepost.encode_multipart_formdata(
                list(self.multipart.items()))
        else:
            return EncodedRequest(headers, None)
        if not any(name.lower() == "content-type" for name in headers):
            headers["Content-Type"] = content_type
        return EncodedRequest(headers, content)

    def __repr__(self) -> str:
        # Headers carry the token and the URL a key: show neither.
        return f"Request({describe(self)})"


class Response:
    """An HTTP response: status, headers (case-insensitive) and a body.

    The body is either already read (``content``) or streamed from
    ``chunks``; ``close()`` releases the connection and is safe to call
    twice. :meth:`iter_bytes` closes the response when the body ends, when
    it fails, and when the iteration is abandoned; use the response as a
    context manager to close it in every other case.
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
        # A mapping that is already case-insensitive (urllib3's, requests')
        # is kept as it is: no copy per response.
        self.headers: MutableMapping[str, str] = (
            cast("MutableMapping[str, str]", headers) if isinstance(headers, _CASE_INSENSITIVE)
            else requests.structures.CaseInsensitiveDict(headers))
        self._content = content
        self._chunks = chunks
        self._close = close
        self._closed = close is None

    @property
    def closed(self) -> bool:
        """True once the connection behind the body is released."""
        return self._closed

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
                chunks, self._chunks = self._chunks, None  # a stream can be read once
                yield from chunks
        finally:
            self.close()

    def close(self) -> None:
        """Release the underlying connection."""
        close, self._close = self._close, None
        self._closed = True
        if close is not None:
            close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Response({self.status})"


_CASE_INSENSITIVE = (requests.structures.CaseInsensitiveDict, urllib3._collections.HTTPHeaderDict)


class Transport(Protocol):
    """What :class:`arta.Client` needs of an HTTP stack: send one request, get one response.

    ``handle_request`` sends ``request`` **once** and returns the response,
    whatever its status (a 404 or a 503 is an answer, not an error; redirects
    are not followed). Retries, auth and polling live above the transport,
    never inside it: the client decides what may be sent again.

    The request carries its body (:meth:`Request.encode` gives the bytes),
    its ``(connect, read)`` timeout, its ``deadline`` and a ``stream``
    flag. It returns or raises by the deadline (see :class:`Request`;
    :func:`bounded_timeouts`, :func:`answer_bound` and :func:`overdue`
    say how). Without
    ``stream`` the response holds the whole body and no connection; with it,
    the body is an iterator of chunks and the response must be closed
    (:meth:`Response.iter_bytes` and ``with`` do it).

    Failures are :class:`~arta.errors.TransportError` subclasses, and which
    one matters:

    - :class:`~arta.errors.ConnectError`: the connection was never made
      (refused, unreachable, DNS, connect timeout, TLS handshake or proxy
      refusal), so nothing was sent and anything may be sent again;
    - :class:`~arta.errors.NoResponseError`: the request was (or may have
      been) sent and no complete answer came (read timeout, connection
      dropped, body cut short). A submit must then not be blindly re-sent,
      since the job may exist.

    A body that is not streamed is read within bounds (:func:`read_body`):
    one over the size cap raises :class:`~arta.errors.MalformedResponse`
    (a protocol error, never retried), one whose whole answer takes longer
    than a few read timeouts a ``NoResponseError``.

    Neither message may hold the query string or a header value (they carry
    the API key and the token): :func:`describe` names a request safely,
    and :func:`arta.redact.scrub_chain` cleans the library errors chained
    as causes.
    ``close`` releases pooled connections.
    """

    def handle_request(self, request: Request) -> Response:
        """Send ``request`` once and return the response."""
        ...

    def close(self) -> None:
        """Release pooled connections."""
        ...


def describe(request: Request) -> str:
    """``"METHOD scheme://host/path"``: a request named without its query, headers or password."""
    # The query carries the API key (and nothing a reader of an error needs).
    return redact(f"{request.method} {request.url.split('?', 1)[0]}")


def secrets_of(request: Request) -> tuple[str, ...]:
    """The values in ``request`` that must not appear in any error text.

    Header values (``Authorization`` is the ID token), form values (the
    refresh token), the query string (the API key); whatever a library may
    quote back in its message.
    """
    values = [*request.headers.values(), *(request.form or {}).values(),
              request.url.partition("?")[2]]
    return tuple(value for value in values if isinstance(value, str) and len(value) >= 8)


def _causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and what it wraps (``reason``, ``args[0]``, cause, context), at most 20."""
    todo: list[BaseException] = [error]
    seen: set[int] = set()
    while todo and len(seen) < 20:  # a bound, in case a chain loops
        cause = todo.pop(0)
        if id(cause) in seen:
            continue
        seen.add(id(cause))
        yield cause
        reason = getattr(cause, "reason", None)
        first = cause.args[0] if cause.args else None
        todo += [c for c in (reason, first, cause.__cause__, cause.__context__)
                 if isinstance(c, BaseException)]


def connect_failure(error: BaseException) -> str:
    """Why no connection was made, in a user's words: DNS, refused, TLS, unreachable.

    Transports wrap the socket's error in two or three layers of their own;
    the user needs the bottom one to know whether they are offline.
    """
    for cause in _causes(error):
        if isinstance(cause, ssl.SSLError):
            return "could not connect (TLS handshake failed; certificate not trusted?)"
        if isinstance(cause, socket.gaierror) or type(cause).__name__ == "NameResolutionError":
            return "could not connect (DNS lookup failed; offline, or no such host?)"
        if isinstance(cause, ConnectionRefusedError):
            return "could not connect (connection refused; nothing listens there)"
        if isinstance(cause, OSError) and cause.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return "could not connect (network unreachable; offline?)"
    return "could not connect"


_RENEWED_AFTER_FORK: weakref.WeakSet[Any] = weakref.WeakSet()


def check_sizes(pool_size: object, max_body_bytes: object) -> None:
    """Refuse a transport's ``pool_size`` or ``max_body_bytes`` that is not a positive int."""
    for name, value in (("pool_size", pool_size), ("max_body_bytes", max_body_bytes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigurationError(f"{name} must be a positive int, not {value!r}")


def renew_after_fork(transport: Any) -> None:
    """Have ``transport._after_fork()`` called in a forked child, to drop its parent's connections.

    Two processes sending on one pooled socket interleave their requests and
    read each other's answers (a submit answered with another job's record
    id); the locks guarding the pools may also have been held at the fork.
    """
    _RENEWED_AFTER_FORK.add(transport)


def _after_fork_in_child() -> None:
    for transport in list(_RENEWED_AFTER_FORK):
        transport._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def environment_proxies(given: Mapping[str, str] | None) -> tuple[dict[str, str], str | None]:
    """The proxies by scheme (the environment's, as requests reads them, under ``given``) and ``NO_PROXY``.

    Read once, when a transport is made: the environment is not read per request.
    """
    found = {scheme: url for scheme, url in getproxies().items() if scheme != "no"}
    return {**found, **(given or {})}, os.environ.get("no_proxy") or os.environ.get("NO_PROXY")
