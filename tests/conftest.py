"""Shared fixtures: an emulator on loopback, a client wired to it, and a network guard.

Every test runs with ``ARTA_HOME`` in a temporary folder and without
``ARTA_ENDPOINT``/``FIREBASE_AUTH_EMULATOR_HOST`` from the caller's shell, and
a socket guard fails any connection to a non-loopback address: tests never
reach the internet, even by mistake.
"""

from __future__ import annotations

import ipaddress
import multiprocessing
import multiprocessing.context
import os
import signal
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import arta
import arta.client
import arta.images
import arta.provider
import arta.result
from arta.emulator import Emulator
from arta.transport import HttpxTransport, InProcessTransport, Urllib3Transport

# A shell that starts the suite in the background (``cmd &``, ``nohup``)
# makes it ignore SIGINT, and the processes the tests start inherit that:
# their Ctrl-C tests would send a signal nobody receives. A handler, unlike
# SIG_IGN, is reset to the default across exec, so the children get Ctrl-C.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

#: The transports ARTA_TEST_TRANSPORT can make the default of every client in a test.
_DEFAULT_TRANSPORTS: dict[str, Callable[..., arta.transport.Transport]] = {
    "urllib3": Urllib3Transport, "httpx": HttpxTransport}

#: Poll fast: the emulator's jobs take a fraction of a second in tests.
FAST_POLL = arta.PollPolicy(first_delay=0.02, growth=1.5, max_delay=0.1, jitter=0.01)

_real_connect = socket.socket.connect


def _guarded_connect(self: socket.socket, address: Any) -> None:
    if self.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0]
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            raise AssertionError(f"a test tried to connect to {host}: only loopback is allowed")
    _real_connect(self, address)


#: The caller's shell settings no test sees: where to send requests, and proxies.
SHELL_SETTINGS = ("ARTA_ENDPOINT", "FIREBASE_AUTH_EMULATOR_HOST", "HTTP_PROXY", "HTTPS_PROXY",
                  "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy")
#: Loopback never goes through a proxy in a test.
NO_PROXY = "127.0.0.1,localhost"


def isolated_env(**settings: str) -> dict[str, str]:
    """This process's environment as a test sees it, plus ``settings``: for a child process.

    For code that runs before a test's own isolation does (a module's fixture).
    """
    env = {name: value for name, value in os.environ.items() if name not in SHELL_SETTINGS}
    return {**env, "NO_PROXY": NO_PROXY, **settings}


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    for name in SHELL_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ARTA_HOME", str(tmp_path / "arta-home"))
    monkeypatch.setenv("NO_PROXY", NO_PROXY)
    # Every client a test makes without naming a transport gets the one
    # ARTA_TEST_TRANSPORT names: the whole suite then runs on that transport.
    default = _DEFAULT_TRANSPORTS.get(os.environ.get("ARTA_TEST_TRANSPORT", "").strip().lower())
    if default is not None:
        for module in (arta.client, arta.images, arta.result, arta.provider):
            monkeypatch.setattr(module, "RequestsTransport", default)
    # Each test's default client is made from that test's environment.
    previous = arta.set_default_client(None)
    yield
    made = arta.set_default_client(previous)
    if made is not None:
        made.close()


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    """A fast emulator of the service on a free loopback port."""
    with Emulator(queue_seconds=0.05, progress_seconds=0.1) as emu:
        yield emu


def transport_from_env(emulator: Emulator) -> arta.transport.Transport | None:
    """The transport that ``ARTA_TEST_TRANSPORT`` names: requests (the default), urllib3, httpx, inprocess.

    None stands for requests: the client then makes its default transport,
    so the default path is the one tested.
    """
    kind = os.environ.get("ARTA_TEST_TRANSPORT", "").strip().lower() or "requests"
    if kind == "requests":
        return None
    if kind == "urllib3":
        return Urllib3Transport()
    if kind == "httpx":
        return HttpxTransport()
    if kind == "inprocess":
        return InProcessTransport(emulator)
    raise pytest.UsageError(
        f"ARTA_TEST_TRANSPORT must be requests, urllib3, httpx or inprocess, not {kind!r}")


@pytest.fixture
def client(emulator: Emulator, tmp_path: Path) -> Iterator[arta.Client]:
    """A client of ``emulator`` with its own token folder and a fast poll.

    Its transport is the one ``ARTA_TEST_TRANSPORT`` names, so that the whole
    suite can run on each transport.
    """
    transport = transport_from_env(emulator)
    try:
        with arta.Client(emulator.url, home=tmp_path / "client-home", poll_policy=FAST_POLL,
                         timeout=30, transport=transport) as c:
            yield c
    finally:
        if transport is not None:  # the client closes only a transport it made
            transport.close()


def many_processes() -> multiprocessing.context.ForkServerContext:
    """Processes for a test that starts many at once: each its own process, as with spawn.

    They are forked from a server process that imported arta and the test
    modules once, instead of each importing everything anew (which made a
    test of 64 processes spend a minute of CPU on imports).
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["arta", "test_token_store", "test_poll_stats"])
    return context


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR, checking the signature on the way."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height
