"""A transport with no sockets: requests go straight to the emulator's ``EmulatorApp.handle``.

For fast tests, the library's and your own::

    from arta.emulator import EmulatorApp
    from arta.transport import InProcessTransport

    app = EmulatorApp(queue_seconds=0, progress_seconds=0)
    with arta.Client(transport=InProcessTransport(app)) as client:
        client.generate("a fox").save(tmp_path)
    assert app.stats()["signups"] == 1

Bodies are encoded into bytes exactly as on the wire (:meth:`Request.encode`),
so the app parses them as it parses a socket's.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Protocol, runtime_checkable
from urllib.parse import urlsplit

from arta.errors import ConnectError, NoResponseError, TransportError
from arta.transport.base import (
    CHUNK_SIZE,
    Request,
    Response,
    describe,
)
from arta.transport.deadlines import bounded_timeouts, too_late_to_send

if TYPE_CHECKING:
    from arta.emulator.messages import Request as AppRequest
    from arta.emulator.messages import Response as AppResponse

__all__ = ["SERVICE_HOSTS", "App", "HasApp", "InProcessTransport"]

#: The hosts of the real service (docs/protocol.rst): a request to one of them goes
#: to the app as ``/{host}/{path}``, the way a client reaches the emulator
#: through ``ARTA_ENDPOINT``. So a client with no endpoint set works too.
SERVICE_HOSTS: frozenset[str] = frozenset({
    "www.googleapis.com",
    "identitytoolkit.googleapis.com",
    "securetoken.googleapis.com",
    "img-gen-prod.ai-arta.com",
})


@runtime_checkable
class App(Protocol):
    """What the transport calls: :class:`arta.emulator.EmulatorApp`, or your own double."""

    def handle(self, request: AppRequest) -> AppResponse:
        """Answer one request."""
        ...


class HasApp(Protocol):
    """A running :class:`arta.emulator.Emulator`: its app, and the URL clients use."""

    @property
    def app(self) -> App:
        """The app behind the server."""
        ...

    @property
    def url(self) -> str:
        """The server's base URL."""
        ...


class InProcessTransport:
    """Hands each request to ``app.handle`` in this thread: no socket, no server, no port.

    ``app`` is an :class:`~arta.emulator.EmulatorApp`, a (started)
    :class:`~arta.emulator.Emulator` (its app is used, and its URL served),
    or any object with the same ``handle(Request) -> Response``.

    Which URLs reach the app: those on ``base_url`` (default: the emulator's
    URL, else the app's ``base_url``), those on ``hosts``, and those on the
    real service's hosts (:data:`SERVICE_HOSTS`), which arrive as
    ``/{host}/{path}``. Any other host raises
    :class:`~arta.errors.ConnectError`, as a refused connection would.

    The emulator's injected faults are honoured: an answer marked ``drop``
    raises :class:`~arta.errors.NoResponseError`, and one whose ``delay``
    (or the app's own slowness) passes the request's read timeout raises it
    after waiting out the read timeout, as a socket would. A request's
    deadline caps that wait the same way, and is checked between the chunks
    of a streamed answer; the app's own work cannot be cut short (it runs
    in the caller's thread). An app's answer
    body may also be an iterable of bytes, streamed as it comes. Exceptions
    from the app are not caught: a bug in a test double shows its traceback
    (a double may raise :class:`~arta.errors.TransportError` subclasses to
    simulate the network).
    """

    def __init__(
        self,
        app: App | HasApp,
        *,
        base_url: str | None = None,
        hosts: Iterable[str] = (),
    ) -> None:
        from arta.emulator.messages import Request as AppRequest

        self._app_request = AppRequest  # the emulator package loads only when used
        if isinstance(app, App):
            self.app: App = app
        else:
            self.app = app.app
            if base_url is None:
                try:
                    base_url = app.url
                except RuntimeError:  # an emulator not started has no URL yet
                    base_url = None
        if base_url is None:
            base_url = getattr(self.app, "base_url", None)
        self.base_url = base_url.rstrip("/") if base_url else None
        own = {urlsplit(self.base_url).netloc.lower()} if self.base_url else set()
        self._own_hosts = frozenset(own | {host.lower() for host in hosts})

    def handle_request(self, request: Request) -> Response:
        """Encode ``request`` as on the wire, call the app, and return its answer."""
        started = time.monotonic()
        late = too_late_to_send(request, started)
        if late is not None:
            raise late
        target, host = self._route(request)
        headers, content = request.encode()
        # What a socket client adds, so that the app sees what its server would.
        headers.setdefault("Host", host)
        if content is not None:
            headers["Content-Length"] = str(len(content))
        answer = self.app.handle(self._app_request(request.method, target, headers, content or b""))
        # An injected ``delay`` is how long the server would wait before answering.
        delay = float(getattr(answer, "delay", 0) or 0)
        read_timeout = bounded_timeouts(request, started)[1]
        remaining = read_timeout - (time.monotonic() - started)
        if delay > remaining:
            # A socket client gives up at its read timeout (or deadline): wait
            # out what is left of it, then fail as a socket would.
            time.sleep(max(0.0, remaining))
            if read_timeout < request.read_timeout:
                raise NoResponseError(f"no whole answer before the deadline: {describe(request)}")
            raise NoResponseError(
                f"no answer within the {request.read_timeout:g}s read timeout: {describe(request)}")
        if delay > 0:
            time.sleep(delay)
        if getattr(answer, "drop", False):
            raise NoResponseError(f"the connection was closed with no answer: {describe(request)}")
        body: bytes | Iterable[bytes] = answer.body
        if request.method.upper() == "HEAD":
            body = b""
        if isinstance(body, (bytes, bytearray, memoryview)):
            data = bytes(body)
            if request.stream:
                return Response(answer.status, answer.headers, chunks=_slices(data), close=_noop)
            return Response(answer.status, answer.headers, content=data)
        stream = iter(body)
        if request.stream:
            chunks = stream if request.deadline is None else _by(request, stream)
            return Response(answer.status, answer.headers, chunks=chunks,
                            close=getattr(stream, "close", _noop))
        return Response(answer.status, answer.headers, content=b"".join(stream))

    def _route(self, request: Request) -> tuple[str, str]:
        """The request target for the app, and the ``Host`` header."""
        parts = urlsplit(request.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise TransportError(f"invalid URL: {describe(request)}")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        netloc = parts.netloc.lower()
        if netloc in self._own_hosts:
            return path, parts.netloc
        if (parts.hostname or "") in SERVICE_HOSTS:
            return f"/{parts.hostname}{path}", parts.netloc
        raise ConnectError(f"nothing in this process serves {netloc}: {describe(request)}")

    def close(self) -> None:
        """Nothing to release: there is no connection."""

    def __repr__(self) -> str:
        return f"InProcessTransport({type(self.app).__name__}, base_url={self.base_url!r})"


def _slices(data: bytes) -> Iterator[bytes]:
    """``data`` in chunks, as a socket would deliver a streamed body."""
    view = memoryview(data)
    for start in range(0, len(data), CHUNK_SIZE):
        yield bytes(view[start:start + CHUNK_SIZE])


def _by(request: Request, chunks: Iterator[bytes]) -> Iterator[bytes]:
    """``chunks``, until the deadline of ``request`` (checked as each one is asked for)."""
    deadline = request.deadline
    for chunk in chunks:
        if deadline is not None and time.monotonic() > deadline:
            raise NoResponseError(f"no whole answer before the deadline: {describe(request)}")
        yield chunk


def _noop() -> None:
    """Closing an in-memory body releases nothing."""
