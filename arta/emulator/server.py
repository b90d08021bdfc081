"""Put an :class:`~arta.emulator.app.EmulatorApp` behind a threaded HTTP/1.1 server.

Only the translation between sockets and :class:`~arta.emulator.messages.Request`
/ :class:`~arta.emulator.messages.Response` lives here. HTTP/1.1 with
keep-alive, because real clients pool connections and a test of a client
should exercise that; every answer has a Content-Length, since without it a
keep-alive client cannot tell where the body ends.

Two injected faults need the socket, so they are carried out here: a
:class:`~arta.emulator.messages.Response` marked ``drop`` closes the
connection without writing a byte, and one with a ``delay`` is written only
after it (cut short, with the connection closed, when the server stops).
"""

from __future__ import annotations

import selectors
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from arta.emulator.app import EmulatorApp
from arta.emulator.messages import Request

__all__ = ["EmulatorHTTPServer", "EmulatorRequestHandler"]

_MAX_BODY = 16 * 1024 * 1024  # no form is anywhere near this; refuse rather than buffer


class _BadRequest(Exception):
    """A request body that cannot be read; answered 400 and the connection closed."""


class EmulatorHTTPServer(ThreadingHTTPServer):
    """A :class:`ThreadingHTTPServer` serving one app, on daemon threads.

    It remembers its open connections so that :meth:`close_connections` can
    end idle keep-alive ones at shutdown, instead of leaving their threads
    blocked on a read.
    """

    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog of 5 overflows when a pool of clients
    # connects at once (a benchmark's 100 threads); a real service's is large.
    request_queue_size = 1024
    # handle_request() re-checks readiness with this timeout: should a pending
    # connection vanish before accept, the loop still gets back to the stop flag.
    timeout = 0.5

    def __init__(self, address: tuple[str, int], app: EmulatorApp) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.app = app
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._stopping = threading.Event()
        # A socket pair wakes the accept loop at once on stop(), where
        # serve_forever() would poll: tests start and stop many emulators.
        self._wake_reader, self._wake_writer = socket.socketpair()
        super().__init__(address, EmulatorRequestHandler)

    def serve_until_stopped(self) -> None:
        """Accept and serve connections until :meth:`stop_serving` is called."""
        with selectors.DefaultSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            selector.register(self._wake_reader, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _ in selector.select():
                    if key.fileobj is self and not self._stopping.is_set():
                        self.handle_request()

    def stop_serving(self) -> None:
        """Make :meth:`serve_until_stopped` and :meth:`pause` return promptly; from any thread."""
        self._stopping.set()
        try:
            self._wake_writer.send(b"\0")
        except OSError:
            pass  # already closed: nothing is serving

    def pause(self, seconds: float) -> bool:
        """Wait ``seconds``, or less if the server stops meanwhile; True if it is stopping.

        An Event wait rather than a sleep, so that stopping the emulator
        does not wait out a ``slow`` fault's 35 seconds.
        """
        return self._stopping.wait(seconds)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Drop a client that hung up mid-answer quietly; report anything else."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)

    def server_close(self) -> None:
        """Close the listening socket and the wake-up pair."""
        super().server_close()
        self._wake_reader.close()
        self._wake_writer.close()

    def track(self, connection: socket.socket, open_: bool) -> None:
        """Record that ``connection`` opened (``open_``) or closed."""
        with self._connections_lock:
            if open_:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def close_connections(self) -> None:
        """Shut down every open client connection; their threads then exit."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the peer


class EmulatorRequestHandler(BaseHTTPRequestHandler):
    """Turns each HTTP request into an app call and writes the app's answer."""

    protocol_version = "HTTP/1.1"
    server: EmulatorHTTPServer

    def setup(self) -> None:
        """Register the connection with the server (see ``close_connections``)."""
        super().setup()
        # Headers and body go out in two writes; with Nagle on, a keep-alive
        # client's delayed ACK would hold the body back ~40 ms per request.
        if self.connection.family in (socket.AF_INET, socket.AF_INET6):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection, True)

    def finish(self) -> None:
        """Unregister the connection."""
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def _read_body(self) -> bytes:
        """The request body, by Content-Length or chunked transfer coding."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunked()
        length_header = self.headers.get("Content-Length")
        if not length_header:
            return b""
        try:
            length = int(length_header)
        except ValueError:
            raise _BadRequest("bad Content-Length") from None
        if not 0 <= length <= _MAX_BODY:
            raise _BadRequest("bad Content-Length")
        body = self.rfile.read(length)
        if len(body) != length:
            raise _BadRequest("body shorter than Content-Length")
        return body

    def _read_chunked(self) -> bytes:
        chunks = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadRequest("bad chunk size") from None
            if size == 0:
                break
            total += size
            if total > _MAX_BODY:
                raise _BadRequest("body too large")
            chunks.append(self.rfile.read(size))
            self.rfile.readline(1024)  # the CRLF closing the chunk
        while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
            pass  # trailers: nothing here needs them
        return b"".join(chunks)

    def _dispatch(self) -> None:
        try:
            body = self._read_body()
        except _BadRequest as exc:
            self.close_connection = True
            self.send_error(400, str(exc))
            return
        request = Request(self.command, self.path, dict(self.headers.items()), body)
        response = self.server.app.handle(request)
        # The app's lock is not held here: other requests go on meanwhile.
        if response.delay > 0 and self.server.pause(response.delay):
            self._hang_up()
            return
        if response.drop:
            self._hang_up()
            return
        self.send_response(response.status)
        for name, value in response.headers.items():
            if name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def _hang_up(self) -> None:
        """Close the connection with no answer: the client sees EOF or a reset, not a hang."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # the client is already gone: nothing left to close
        # socketserver closes the socket itself once this handler returns.

    do_GET = _dispatch
    do_HEAD = _dispatch
    do_POST = _dispatch
    do_PUT = _dispatch
    do_PATCH = _dispatch
    do_DELETE = _dispatch
    do_OPTIONS = _dispatch

    def version_string(self) -> str:
        """The ``Server`` header."""
        return "arta-emulator"

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: test output stays clean, and nothing can leak a token."""
