"""What the transport conformance suite talks to: one app, served over loopback or called in-process.

:class:`CaseApp` answers the cases (echo a body, send a large body, answer
late, drop the connection, cut a body short) through the emulator's own
``handle(Request) -> Response`` shape, so the in-process transport calls it
directly while :class:`AppServer` serves the very same app on 127.0.0.1 for
the socket transports. The few cases no app can produce have their own
servers here: a port that refuses, a port that never completes a
connection, a forwarding proxy that counts what it forwards, a TLS server.
Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import select
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from arta.emulator import Request, Response
from arta.emulator.forms import FormError, parse_form

if TYPE_CHECKING:  # typing.Self is 3.11+
    from typing_extensions import Self

#: A recognisable byte pattern, so that a reordered or repeated chunk shows.
PATTERN = bytes(range(256))


def pattern_bytes(size: int) -> bytes:
    """``size`` bytes of :data:`PATTERN`, repeated."""
    return (PATTERN * (size // len(PATTERN) + 1))[:size]


def pattern_chunks(size: int, chunk: int = 256 * 1024) -> Iterator[bytes]:
    """The same bytes as :func:`pattern_bytes`, produced a chunk at a time (flat memory)."""
    block = PATTERN * (chunk // len(PATTERN))
    sent = 0
    while sent < size:
        piece = block[: min(len(block), size - sent)]
        sent += len(piece)
        yield piece


def _dripping(size: int) -> Iterator[bytes]:
    """``size`` bytes, one a second."""
    for index in range(size):
        if index:
            time.sleep(1.0)
        yield b" "


def dropped(response: Response) -> Response:
    """``response`` marked as the emulator marks a ``drop`` fault: never sent, connection closed."""
    # An attribute set on the instance, not a subclass default: the emulator's
    # Response may declare ``drop`` as a field, whose default would win.
    response.drop = True  # type: ignore[attr-defined,misc]
    return response


@dataclass
class CutResponse(Response):
    """An answer whose body stops after ``send`` bytes, with the connection closed."""

    send: int = 0


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(payload).encode("utf-8")
    return Response(status, {"Content-Type": "application/json", **(headers or {})}, body)


class CaseApp:
    """The server side of the conformance cases, routed by path.

    ``/echo``              what arrived: method, target, headers, body, parsed form/JSON
    ``/bytes/N``           N bytes of :data:`PATTERN`, produced in chunks
    ``/slow/S``            200, after S seconds (the app itself is slow)
    ``/late/S``            200, marked to be sent after S seconds (the emulator's ``delay``)
    ``/drop``              no answer: the connection is closed
    ``/cut/N``             headers for N bytes, half of them, then the connection closed
    ``/status/C``          status C (with ``Retry-After: 7`` for 429 and 503)
    ``/drip/N``            N bytes, produced one a second (a body that takes N seconds)

    ``seen`` lists ``(method, target)`` of every request that reached it, to
    prove that nothing was sent twice.
    """

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def handle(self, request: Request) -> Response:
        """Answer one request (the emulator's app shape)."""
        with self._lock:
            self.seen.append((request.method, request.target))
        parts = [part for part in request.path.split("/") if part]
        route, arg = (parts + ["", ""])[:2]
        if route == "echo":
            return self._echo(request)
        if route == "bytes":
            size = int(arg)
            response = Response(200, {"Content-Type": "application/octet-stream",
                                      "Content-Length": str(size)}, b"")
            response.body = pattern_chunks(size)  # type: ignore[assignment]  # streamed, see AppServer
            return response
        if route == "slow":
            time.sleep(float(arg))
            return _json(200, {"slept": float(arg)})
        if route == "late":
            # The emulator's ``delay`` mark: the server, not the app, waits.
            response = _json(200, {"late": float(arg)})
            response.delay = float(arg)  # type: ignore[attr-defined,misc]
            return response
        if route == "drop":
            return dropped(Response(0, {}, b""))
        if route == "cut":
            size = int(arg)
            return CutResponse(200, {"Content-Type": "application/octet-stream",
                                     "Content-Length": str(size)}, pattern_bytes(size), send=size // 2)
        if route == "drip":
            response = Response(200, {"Content-Type": "application/octet-stream",
                                      "Content-Length": arg}, b"")
            response.body = _dripping(int(arg))  # type: ignore[assignment]  # streamed
            return response
        if route == "status":
            code = int(arg)
            retry = {"Retry-After": "7"} if code in (429, 503) else {}
            return _json(code, {"detail": f"status {code}"}, retry)
        return _json(404, {"detail": "Not Found"})

    @staticmethod
    def _echo(request: Request) -> Response:
        content_type = request.header("Content-Type") or ""
        form = None
        if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            try:
                form = parse_form(content_type, request.body)
            except FormError as error:
                return _json(422, {"detail": str(error)})
        payload = json.loads(request.body) if content_type.startswith("application/json") else None
        return _json(200, {
            "method": request.method,
            "target": request.target,
            "headers": {name.lower(): value for name, value in request.headers.items()},
            "content_type": content_type,
            "length": len(request.body),
            "form": form,
            "json": payload,
        })


class _AppHandler(BaseHTTPRequestHandler):
    """Serves ``server.app`` over HTTP/1.1, honouring ``drop``, ``delay``, cut and streamed bodies."""

    protocol_version = "HTTP/1.1"
    server: AppServer

    def setup(self) -> None:
        super().setup()
        self.server.count_connection()

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        response = self.server.app.handle(Request(self.command, self.path, dict(self.headers), body))
        delay = float(getattr(response, "delay", 0) or 0)
        if delay > 0:
            time.sleep(delay)
        if getattr(response, "drop", False):
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        payload: bytes | Iterable[bytes] = response.body
        headers = dict(response.headers)
        if isinstance(payload, bytes):
            headers["Content-Length"] = str(len(payload))
        self.send_response(response.status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        try:
            if isinstance(response, CutResponse):
                self.wfile.write(response.body[: response.send])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
            elif isinstance(payload, bytes):
                self.wfile.write(payload)
            else:
                for chunk in payload:
                    self.wfile.write(chunk)
        except OSError:
            self.close_connection = True  # the client hung up (a timeout, an early close)

    do_GET = _dispatch
    do_POST = _dispatch
    do_PUT = _dispatch
    do_DELETE = _dispatch
    do_HEAD = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


class _LoopbackServer(ThreadingHTTPServer):
    """A quiet threaded server on 127.0.0.1 that serves from ``with`` to its end."""

    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up, failed TLS handshakes: part of the tests, so stay quiet."""

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()
        self.server_close()


class AppServer(_LoopbackServer):
    """An app (``handle(Request) -> Response``) served on 127.0.0.1, optionally over TLS."""

    # Many threads connect at once in the tests; the default backlog of 5
    # overflows, and Linux then resets some of the connections.
    request_queue_size = 128

    def __init__(self, app: Any, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _AppHandler)
        self.app = app
        self.connections = 0
        self._count_lock = threading.Lock()
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server_address[1]}"

    def count_connection(self) -> None:
        with self._count_lock:
            self.connections += 1


class ForwardingProxy(_LoopbackServer):
    """A tiny HTTP proxy on 127.0.0.1: forwards absolute-form requests, tunnels CONNECT.

    ``exchanges`` holds ``(method, absolute URL, body)`` of each request it
    forwarded, ``tunnels`` the CONNECT targets. It refuses any target that
    is not loopback.
    """

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.exchanges: list[tuple[str, str, bytes]] = []
        self.tunnels: list[str] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    @property
    def forwarded(self) -> list[str]:
        """The request lines forwarded, in order (``"POST http://..."``)."""
        return [f"{method} {url}" for method, url, _ in self.exchanges]

    def paths(self) -> list[str]:
        """The paths forwarded, in order."""
        return [urlsplit(url).path for _, url, _ in self.exchanges]


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ForwardingProxy

    def _forward(self) -> None:
        target = urlsplit(self.path)
        if target.hostname not in ("127.0.0.1", "localhost") or target.scheme != "http":
            self.send_error(403, "this test proxy only reaches loopback over http")
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        self.server.exchanges.append((self.command, self.path, body or b""))
        headers = {name: value for name, value in self.headers.items()
                   if name.lower() not in ("proxy-connection", "connection", "keep-alive")}
        upstream = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=10)
        try:
            path = target.path + (f"?{target.query}" if target.query else "")
            upstream.request(self.command, path or "/", body=body, headers=headers)
            answer = upstream.getresponse()
            content = answer.read()
        except OSError:
            self.send_error(502, "upstream failed")
            return
        finally:
            upstream.close()
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def do_CONNECT(self) -> None:
        host, _, port = self.path.rpartition(":")
        if host not in ("127.0.0.1", "localhost"):
            self.send_error(403, "this test proxy only reaches loopback")
            return
        self.server.tunnels.append(self.path)
        upstream = socket.create_connection((host, int(port)), timeout=10)
        self.send_response(200, "Connection established")
        self.end_headers()
        self.close_connection = True
        sockets = [self.connection, upstream]
        try:
            while True:
                readable, _, _ = select.select(sockets, [], [], 10)
                if not readable:
                    return
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    (upstream if source is self.connection else self.connection).sendall(data)
        finally:
            upstream.close()

    do_GET = _forward
    do_POST = _forward
    do_PUT = _forward
    do_DELETE = _forward
    do_HEAD = _forward

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


def refused_url() -> str:
    """A loopback URL where nothing listens: connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/echo"


@contextlib.contextmanager
def unanswered_connect() -> Iterator[str | None]:
    """A loopback URL whose connections never complete (None where the OS cannot do that).

    A listening socket with a backlog of 0 that never accepts, its one
    queue slot taken: Linux then drops further SYNs, so a connect times out,
    which is what a black-holed host does.
    """
    listener = socket.socket()
    filler = socket.socket()
    probe = socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = listener.getsockname()
        filler.settimeout(1)
        filler.connect(address)
        probe.settimeout(0.2)
        try:
            probe.connect(address)
        except (TimeoutError, socket.timeout):
            yield f"http://127.0.0.1:{address[1]}/echo"
        else:
            yield None  # the OS accepted it anyway: this trick does not work here
    finally:
        for sock in (probe, filler, listener):
            sock.close()


def self_signed_certificate(folder: Path) -> tuple[Path, Path] | None:
    """A certificate and key for 127.0.0.1 made with the openssl command, or None without it."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    cert, key = folder / "cert.pem", folder / "key.pem"
    done = subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=False, capture_output=True, timeout=60,
    )
    return (cert, key) if done.returncode == 0 else None


class DropSubmits:
    """Wraps an app: submits are performed, then their answer dropped (the emulator's ``drop``)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def handle(self, request: Request) -> Response:
        """Pass the request on; drop the answer of a submit."""
        response: Response = self.app.handle(request)
        if request.method == "POST" and request.path.endswith("/text2image"):
            return dropped(response)
        return response
