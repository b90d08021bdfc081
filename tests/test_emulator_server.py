"""The emulator's HTTP/1.1 framing, byte for byte over a raw socket: what any client may send."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from arta.emulator import Emulator

STATS = "/emulator/stats"


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator(queue_seconds=0, progress_seconds=0) as emulator:
        yield emulator


def exchange(emu: Emulator, data: bytes) -> bytes:
    """Send ``data`` on a new connection; everything answered until the server closes it."""
    host, port = emu.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(data)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_keep_alive_answers_each_request_and_close_ends_the_connection(emu: Emulator) -> None:
    answer = exchange(emu, f"GET {STATS} HTTP/1.1\r\nHost: x\r\n\r\n"
                           f"GET {STATS} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())

    first, second = answer.split(b"HTTP/1.1 200 OK\r\n")[1:]
    assert b"Connection: close" not in first and b"Connection: close\r\n" in second
    assert b'"signups":0' in first and b"Content-Length:" in first


def test_an_http_1_0_request_gets_its_answer_and_the_connection_closes(emu: Emulator) -> None:
    answer = exchange(emu, f"GET {STATS} HTTP/1.0\r\n\r\n".encode())

    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in head
    assert body.startswith(b'{"signups":')


def test_expect_100_continue_is_answered_before_the_body(emu: Emulator) -> None:
    answer = exchange(emu, b"POST /emulator/faults HTTP/1.1\r\nContent-Length: 0\r\n"
                           b"Expect: 100-continue\r\nConnection: close\r\n\r\n")

    assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"NONSENSE\r\n\r\n", b"400 Bad Request"),
    (b"GET / SPDY/3\r\n\r\n", b"400 Bad Request"),
    (b"BREW /pot HTTP/1.1\r\n\r\n", b"501 Not Implemented"),
    (b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", b"431 Request Header Fields Too Large"),
    (b"POST /api/v1/text2image HTTP/1.1\r\nContent-Length: nine\r\n\r\n", b"400 Bad Request"),
])
def test_unreadable_requests_get_an_error_and_a_closed_connection(
    emu: Emulator, request_bytes: bytes, status: bytes
) -> None:
    answer = exchange(emu, request_bytes)

    assert answer.startswith(b"HTTP/1.1 " + status + b"\r\n")
    assert b"Connection: close" in answer and b'{"detail": ' in answer
