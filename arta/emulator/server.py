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

import json
import logging
import selectors
import socket
import sys
import threading
import time
from collections.abc import Mapping
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from arta.emulator.app import EmulatorApp
from arta.emulator.messages import Request

__all__ = ["EmulatorHTTPServer", "EmulatorRequestHandler"]

log = logging.getLogger(__name__)

_MAX_BODY = 16 * 1024 * 1024  # no form is anywhere near this; refuse rather than buffer
_MAX_LINE = 65536  # as http.server: a longer request or header line is refused
_MAX_HEADERS = 100
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_REASONS = {status.value: status.phrase for status in HTTPStatus}
_DATE_CACHE: list[object] = [None, ""]


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
    """Turns each HTTP request into an app call and writes the app's answer.

    It reads the request line and headers itself, into a plain dict, and
    writes each answer with one ``sendall``: the standard library's parsing
    (an email parser per request) and its write per header line were most
    of a poll's cost, and every extra system call gives the GIL away once
    more, which makes a busy server's latency grow with its thread count.
    """

    protocol_version = "HTTP/1.1"
    server: EmulatorHTTPServer

    def setup(self) -> None:
        """Register the connection with the server (see ``close_connections``)."""
        super().setup()
        # An answer is one write, but a client's request may come in two;
        # Nagle's algorithm must not hold either back for a delayed ACK.
        if self.connection.family in (socket.AF_INET, socket.AF_INET6):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection, True)

    def finish(self) -> None:
        """Unregister the connection."""
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def handle_one_request(self) -> None:
        """Read one request, answer it; set ``close_connection`` when the connection ends."""
        self.command = ""  # until a request line is read; _write checks it for HEAD
        try:
            line = self.rfile.readline(_MAX_LINE + 1)
        except OSError:  # reset, or closed by close_connections()
            line = b""
        if not line:
            self.close_connection = True
            return
        parts = line.decode("iso-8859-1").split()
        if len(line) > _MAX_LINE or len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self._refuse(400, "bad request line")
            return
        self.command, self.path, self.request_version = parts
        headers = self._read_headers()
        if headers is None:
            self._refuse(431, "request header fields too large")
            return
        lower = {name.lower(): value for name, value in headers.items()}
        connection = lower.get("connection", "").lower()
        self.close_connection = connection == "close" or (
            self.request_version == "HTTP/1.0" and connection != "keep-alive")
        if self.command not in _METHODS:
            self._refuse(501, f"unsupported method {self.command!r}")
            return
        if lower.get("expect", "").lower() == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._dispatch(headers, lower)

    def _read_headers(self) -> dict[str, str] | None:
        """The header lines up to the blank one, or None when there are too many or too long."""
        headers: dict[str, str] = {}
        for _ in range(_MAX_HEADERS):
            line = self.rfile.readline(_MAX_LINE + 1)
            if line in (b"\r\n", b"\n", b""):
                return headers
            if len(line) > _MAX_LINE:
                return None
            name, _, value = line.decode("iso-8859-1").partition(":")
            name, value = name.strip(), value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        return None

    def _read_body(self, lower: dict[str, str]) -> bytes:
        """The request body, by Content-Length or chunked transfer coding."""
        if "chunked" in lower.get("transfer-encoding", "").lower():
            return self._read_chunked()
        length_header = lower.get("content-length")
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

    def _dispatch(self, headers: dict[str, str], lower: dict[str, str]) -> None:
        try:
            body = self._read_body(lower)
        except _BadRequest as exc:
            self._refuse(400, str(exc))
            return
        response = self.server.app.handle(Request(self.command, self.path, headers, body))
        # The app's locks are not held here: other requests go on meanwhile.
        if response.delay > 0 and self.server.pause(response.delay):
            self._hang_up()
            return
        if response.drop:
            self._hang_up()
            return
        self._write(response.status, response.headers, response.body)

    def _write(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        """The status line, headers and body, in one write (and, at DEBUG, a line saying so)."""
        path = getattr(self, "path", "").split("?", 1)[0]  # the query holds the key
        log.debug("%s %s -> %d", self.command, path, status)
        reason = _REASONS.get(status, "")
        lines = [f"HTTP/1.1 {status} {reason}", "Server: arta-emulator", f"Date: {_http_date()}"]
        lines += [f"{name}: {value}" for name, value in headers.items()
                  if name.lower() != "content-length"]
        lines.append(f"Content-Length: {len(body)}")
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("iso-8859-1")
        self.wfile.write(head if self.command == "HEAD" else head + body)

    def _refuse(self, status: int, detail: str) -> None:
        """Answer a request that cannot be read, and close the connection."""
        self.close_connection = True
        body = json.dumps({"detail": detail}).encode()
        try:
            self._write(status, {"Content-Type": "application/json"}, body)
        except OSError:
            pass  # the client is gone

    def _hang_up(self) -> None:
        """Close the connection with no answer: the client sees EOF or a reset, not a hang."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # the client is already gone: nothing left to close
        # socketserver closes the socket itself once this handler returns.

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: test output stays clean, and nothing can leak a token."""


def _http_date() -> str:
    """The Date header's value, formatted once per second."""
    now = int(time.time())
    cached = _DATE_CACHE
    if cached[0] != now:
        cached[:] = [now, formatdate(now, usegmt=True)]
    return str(cached[1])
