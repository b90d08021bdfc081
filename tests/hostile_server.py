"""A hostile ARTA service on loopback: every route serves one attack (issue 11).

A client reaches a mode through its endpoint: ``http://127.0.0.1:PORT/<mode>``
makes every call (sign-up, refresh, submit, status, images) go to
``/<mode>/...``, so that many clients can attack in parallel, each its own way.
The server counts what each mode was asked, by call.

Leaving the ``with`` block stops the server at once: the waits of the slow
modes end, and every connection still open is shut down, so that no handler
thread outlives its test by more than a moment.
"""

from __future__ import annotations

import collections
import http.server
import json
import select
import socket
import threading
import time
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from arta.emulator.png import encode_rgb

if TYPE_CHECKING:
    from typing_extensions import Self

PNG = encode_rgb(4, 3, [bytes(4 * 3)] * 3)
SECRET = "hostile-secret-token-value"
REFRESH_SECRET = "hostile-secret-refresh-value"

Handler = Callable[["_Handler", str], None]


def gzip_bomb(megabytes: int) -> bytes:
    """``megabytes`` MB of zeros, gzipped to about a thousandth (one block, repeated)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    head = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    return head + block * (megabytes - 1)  # no trailer: nobody should reach the end


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HostileServer

    def log_message(self, *args: object) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.server.opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.closed(self.connection)

    def hung_up(self) -> bool:
        """True if the client closed its end (or the server is stopping)."""
        if self.server.stopping.is_set():
            return True
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    body = b""

    def _route(self) -> tuple[str, str]:
        mode, _, rest = self.path.lstrip("/").partition("/")
        return mode, rest

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length)
        self._dispatch()

    def _dispatch(self) -> None:
        mode, rest = self._route()
        call = ("signup" if "signupNewUser" in rest else "refresh" if "securetoken" in rest
                else "status" if rest.partition("?")[0].endswith("/status") else "submit"
                if rest.startswith("api/v1/text2image") else "image")
        self.server.count(mode, call)
        self.server.enter(call)
        try:
            ATTACKS.get((mode, call), _ATTACKS_BY_CALL[call])(self, mode)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up on us: that is the point
        finally:
            self.server.leave(call)

    # -- answers ------------------------------------------------------------

    def send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        headers = {"Content-Type": "application/json", **(headers or {})}
        headers.setdefault("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def json(self, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.send(status, json.dumps(data).encode(), headers)

    def image_url(self, mode: str, name: str) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/{mode}/img/{name}"


def _signup(handler: _Handler, mode: str, expires: str = "3600", token: str = "") -> None:
    handler.json({"idToken": token or f"hostile-id-{mode}", "refreshToken": f"hostile-r-{mode}",
                  "expiresIn": expires, "localId": "u1"})


def _refresh(handler: _Handler, mode: str) -> None:
    handler.json({"id_token": f"hostile-id-{mode}", "refresh_token": f"hostile-r-{mode}",
                  "expires_in": "3600", "user_id": "u1"})


def _submit(handler: _Handler, mode: str) -> None:
    handler.json({"record_id": f"job-{mode}", "status": "IN_QUEUE", "seed": 1})


def _done(handler: _Handler, urls: list[str]) -> None:
    handler.json({"record_id": "job", "status": "DONE",
                  "response": [{"url": url, "MIME": "image/png"} for url in urls]})


def _image(handler: _Handler, mode: str) -> None:
    handler.send(200, PNG, {"Content-Type": "image/png"})


def _slow_image(handler: _Handler, mode: str) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "image/png")
    handler.send_header("Content-Length", str(len(PNG)))
    handler.end_headers()
    handler.wfile.write(PNG[:8])
    handler.wfile.flush()
    for _ in range(600):  # a minute, unless the client hangs up
        time.sleep(0.1)
        handler.wfile.write(b"")  # (nothing: the rest never comes in time)
    handler.wfile.write(PNG[8:])


def _endless_chunked(handler: _Handler, mode: str) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    chunk = b" " * 65536
    frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    while True:
        handler.wfile.write(frame)


def _huge_declared(handler: _Handler, mode: str) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(400 * 1024 * 1024))
    handler.end_headers()
    for _ in range(400 * 16):
        handler.wfile.write(b" " * 65536)


def _dripping(handler: _Handler, mode: str) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    for _ in range(1000):
        handler.wfile.write(b" ")
        handler.wfile.flush()
        time.sleep(0.1)


def _drip_status_headers(handler: _Handler, mode: str) -> None:
    """A status answer whose status line and headers come one byte every 2 s (a new read timeout each)."""
    handler.close_connection = True  # whatever it sent, the connection is spent
    body = json.dumps({"record_id": "job", "status": "IN_QUEUE"}).encode()
    head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    for byte in head:
        handler.wfile.write(bytes([byte]))
        if handler.server.stopping.wait(2.0) or handler.hung_up():
            return
    handler.wfile.write(body)


def _drip_status_body(handler: _Handler, mode: str) -> None:
    """Headers at once, then a 1000-byte body one byte a second."""
    handler.close_connection = True  # whatever it sent, the connection is spent
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    for _ in range(1000):
        handler.wfile.write(b" ")
        if handler.server.stopping.wait(1.0) or handler.hung_up():
            return


def _silent(handler: _Handler, mode: str) -> None:
    """The request is read, then nothing: the connection is held until the client hangs up."""
    handler.close_connection = True  # whatever it sent, the connection is spent
    while not handler.server.stopping.wait(0.2):
        if handler.hung_up():
            return
    handler.close_connection = True


def _bomb(handler: _Handler, mode: str) -> None:
    handler.send(200, handler.server.bomb, {"Content-Encoding": "gzip"})


def _deep(handler: _Handler, mode: str) -> None:
    handler.send(200, b"[" * 200_000 + b"]" * 200_000)


def _many_images(handler: _Handler, mode: str) -> None:
    _done(handler, [handler.image_url(mode, f"{i}.png") for i in range(10_000)])


def _escapes(handler: _Handler, mode: str) -> None:
    handler.json({"record_id": "job", "status": "FAILED", "error_code": "\x1b]0;pwned\x07E1",
                  "error_details": "\x1b[2J\x1b[31mcleared\x1b[0m\r\x08"})


def _retry_after(value: str) -> Handler:
    def attack(handler: _Handler, mode: str) -> None:
        handler.json({"detail": "busy"}, 503, {"Retry-After": value})
    return attack


def _urls(*urls: str) -> Handler:
    return lambda handler, mode: _done(handler, list(urls))


def _signup_with(expires: str = "3600", token: str = "") -> Handler:
    return lambda handler, mode: _signup(handler, mode, expires, token)


_ATTACKS_BY_CALL: dict[str, Handler] = {
    "signup": _signup, "refresh": _refresh, "submit": _submit,
    "status": lambda handler, mode: _done(handler, [handler.image_url(mode, "0.png")]),
    "image": _image,
}

#: (mode, call) -> the attack served instead of a plain answer.
ATTACKS: dict[tuple[str, str], Handler] = {
    ("bomb", "status"): _bomb,
    ("endless", "status"): _endless_chunked,
    ("declared", "status"): _huge_declared,
    ("drip", "status"): _dripping,
    ("deep", "status"): _deep,
    ("many", "status"): _many_images,
    ("more-than-n", "status"): lambda handler, mode: _done(
        handler, [handler.image_url(mode, f"{i}.png") for i in range(3)]),
    ("file-url", "status"): _urls("file:///etc/passwd"),
    ("ftp-url", "status"): _urls("ftp://127.0.0.1/x.png"),
    ("bare-path", "status"): _urls("/img/x.png"),
    ("malformed-url", "status"): _urls("http://[::1/x.png"),
    ("metadata-v4", "status"): _urls("http://169.254.169.254/latest/meta-data/x.png"),
    ("metadata-v6", "status"): _urls("http://[fd00:ec2::254]/latest/x.png"),
    # issue 18, item 9: the same address spelt as the system also reads it
    ("metadata-decimal", "status"): _urls("http://2852039166/latest/x.png"),
    ("metadata-hex", "status"): _urls("http://0xa9fea9fe/latest/x.png"),
    ("metadata-octal", "status"): _urls("http://0251.0376.0251.0376/latest/x.png"),
    ("metadata-short", "status"): _urls("http://169.254.43518/latest/x.png"),
    ("escapes", "status"): _escapes,
    ("slow-image", "image"): _slow_image,
    ("announced-huge", "image"): lambda handler, mode: handler.send(
        200, PNG, {"Content-Type": "image/png", "Content-Length": str(10**12)}),
    ("fast-image", "image"): lambda handler, mode: (time.sleep(0.05), _image(handler, mode)),
    ("expires-zero", "refresh"): lambda handler, mode: handler.json(
        {"id_token": "hostile-id-zero", "refresh_token": "r", "expires_in": "0", "user_id": "u"}),
    ("retry-after-huge", "status"): _retry_after("99999999"),
    ("retry-after-date", "status"): _retry_after("Fri, 31 Dec 2100 23:59:59 GMT"),
    ("expires-nan", "signup"): _signup_with("NaN"),
    ("expires-inf", "signup"): _signup_with("inf"),
    ("expires-negative", "signup"): _signup_with("-5"),
    ("expires-zero", "signup"): _signup_with("0"),
    ("token-newline", "signup"): _signup_with(token=f" {SECRET}\nx"),
    # Issue 18, item 8: the request's own secrets quoted back, as an error and as a failure.
    ("echo-token", "signup"): _signup_with(token=SECRET),
    ("echo-token", "submit"): lambda handler, mode: handler.json(
        {"detail": f"bad header Authorization: {handler.headers['Authorization']}"}, 500),
    ("echo-failed", "signup"): _signup_with(token=SECRET),
    ("echo-failed", "status"): lambda handler, mode: handler.json(
        {"record_id": "job", "status": "FAILED", "error_code": "E",
         "error_details": f"token {handler.headers['Authorization']} refused"}),
    ("echo-refresh", "refresh"): lambda handler, mode: handler.json(
        {"error": {"code": 400, "message": handler.body.decode()}}, 400),
    # Only the status call misbehaves (sign-up, submit and images answer as usual):
    # the deadline of one poll, and of the wait, is what these test.
    ("drip-status-headers", "status"): _drip_status_headers,
    ("drip-status-body", "status"): _drip_status_body,
    ("silent-status", "status"): _silent,
    ("status-retry-after-huge", "status"): _retry_after("1000000000"),
    # Every submit refused as congestion (issue 18, items 1 and 5): without a
    # Retry-After (the service's likely case), with 0, and with one of 31 years.
    ("submit-429", "submit"): lambda handler, mode: handler.json({"detail": "busy"}, 429),
    ("submit-503", "submit"): lambda handler, mode: handler.json({"detail": "busy"}, 503),
    ("submit-429-zero", "submit"): lambda handler, mode: handler.json(
        {"detail": "busy"}, 429, {"Retry-After": "0"}),
    ("submit-429-huge", "submit"): lambda handler, mode: handler.json(
        {"detail": "busy"}, 429, {"Retry-After": "1000000000"}),
}


class HostileServer(http.server.ThreadingHTTPServer):
    """The hostile service; ``counts[mode][call]`` says how often each was asked."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.counts: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter)
        self._lock = threading.Lock()
        self.bomb = gzip_bomb(1024)  # 1 MB on the wire, 1 GB unpacked
        self.active: collections.Counter[str] = collections.Counter()
        self.most_active: collections.Counter[str] = collections.Counter()
        self.stopping = threading.Event()  # set on exit: the slow modes stop waiting
        self._connections: set[socket.socket] = set()
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def count(self, mode: str, call: str) -> None:
        with self._lock:
            self.counts[mode][call] += 1

    def enter(self, call: str) -> None:
        with self._lock:
            self.active[call] += 1
            self.most_active[call] = max(self.most_active[call], self.active[call])

    def leave(self, call: str) -> None:
        with self._lock:
            self.active[call] -= 1

    def opened(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)

    def closed(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:  # a handler blocked on one returns at once
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by its handler
