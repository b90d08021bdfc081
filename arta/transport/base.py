"""The transport seam: :class:`Request` and :class:`Response` as data, and the :class:`Transport` protocol.

Nothing here does I/O. A request is a value (method, URL, headers, at most
one body, timeouts, a stream flag); :meth:`Request.encode` turns its body
into the exact bytes and ``Content-Type`` that go on the wire, so that every
transport (and the in-process one, which has no wire) sends the same thing.
"""

from __future__ import annotations

import errno
import json
import socket
import ssl
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, NamedTuple, Protocol, Union
from urllib.parse import urlencode

import requests.structures
import urllib3.filepost

from arta.errors import MalformedResponse, NoResponseError
from arta.redact import redact

if TYPE_CHECKING:  # typing.Self is 3.11+; only the type checker needs it
    from typing_extensions import Self

__all__ = [
    "ACCEPT_ENCODING",
    "BODY_TIME_FACTOR",
    "CHUNK_SIZE",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_TIMEOUT",
    "EncodedRequest",
    "Request",
    "Response",
    "Timeout",
    "Transport",
    "connect_failure",
    "describe",
    "read_body",
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

#: Largest body read for a request that is not streamed (the protocol's JSON
#: answers are a few kilobytes), counted after decompression: a gzip bomb or
#: an endless body ends in :class:`~arta.errors.MalformedResponse` here,
#: not in a ``MemoryError``. Transports take ``max_body_bytes`` to change it.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024

#: A body that is not streamed must arrive whole within this many read
#: timeouts: the read timeout bounds the silence between two bytes, this
#: bounds a server dripping one byte at a time.
BODY_TIME_FACTOR = 4

#: The encodings :func:`read_body` can undo (with a bound on the output).
ACCEPT_ENCODING = "gzip, deflate"

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
        self.headers: MutableMapping[str, str] = requests.structures.CaseInsensitiveDict(headers)
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


class Transport(Protocol):
    """What :class:`arta.Client` needs of an HTTP stack: send one request, get one response.

    ``handle_request`` sends ``request`` **once** and returns the response,
    whatever its status (a 404 or a 503 is an answer, not an error; redirects
    are not followed). Retries, auth and polling live above the transport,
    never inside it: the client decides what may be sent again.

    The request carries its body (:meth:`Request.encode` gives the bytes),
    its ``(connect, read)`` timeout and a ``stream`` flag. Without
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
    (a protocol error, never retried), one that takes longer than a few
    read timeouts a ``NoResponseError``.

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
    refresh token); whatever a library may quote back in its message.
    """
    values = [*request.headers.values(), *(request.form or {}).values()]
    return tuple(value for value in values if isinstance(value, str) and len(value) >= 8)


def _decoder(encoding: str) -> zlib._Decompress | None:
    name = encoding.strip().lower()
    if name in ("", "identity"):
        return None
    if name in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if name == "deflate":
        return zlib.decompressobj(zlib.MAX_WBITS | 32)  # zlib or gzip header, as sent
    raise MalformedResponse(f"the answer is encoded as {encoding!r}, which was not asked for")


def read_body(raw: Iterator[bytes], headers: Mapping[str, str], request: Request, *,
              limit: int = DEFAULT_MAX_BODY_BYTES) -> bytes:
    """Read a whole body from ``raw`` (bytes as they arrive, still encoded), within bounds.

    - A ``Content-Length`` over ``limit`` is refused before a byte is read.
    - ``gzip``/``deflate`` are undone here, never producing more than
      ``limit + 1`` bytes at a time: a 4 MB gzip bomb costs a megabyte.
    - The body must be whole within :data:`BODY_TIME_FACTOR` read timeouts.

    Over the limit: :class:`~arta.errors.MalformedResponse` (not retried).
    Too slow: :class:`~arta.errors.NoResponseError`.
    """
    declared = headers.get("Content-Length", "")
    if declared.strip().isdigit() and int(declared) > limit:
        raise MalformedResponse(
            f"{describe(request)} announced a {int(declared)}-byte answer, over the "
            f"{limit}-byte limit")
    decoder = _decoder(headers.get("Content-Encoding", ""))
    budget = BODY_TIME_FACTOR * request.read_timeout
    deadline = time.monotonic() + budget
    parts: list[bytes] = []
    size = 0

    def add(data: bytes) -> None:
        nonlocal size
        size += len(data)
        if size > limit:
            raise MalformedResponse(
                f"{describe(request)}: the answer is larger than the {limit}-byte limit")
        parts.append(data)

    for chunk in raw:
        if decoder is None:
            add(chunk)
        else:
            data = chunk
            while data:
                try:
                    add(decoder.decompress(data, limit - size + 1))
                except zlib.error as error:
                    raise MalformedResponse(
                        f"{describe(request)}: the compressed answer is corrupt") from error
                data = decoder.unconsumed_tail
        if time.monotonic() > deadline:
            raise NoResponseError(
                f"the answer did not arrive whole within {budget:g}s "
                f"({BODY_TIME_FACTOR} x the read timeout): {describe(request)}")
    if decoder is not None:
        add(decoder.flush())
    return b"".join(parts)
    return f"{request.method} {request.url.split('?', 1)[0]}"


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


