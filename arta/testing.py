"""Test your own code against the emulator: ``mock_arta()``, and the ``arta_emulator`` fixture.

With pytest, nothing to import: installing ``arta`` registers a plugin
(:mod:`arta.pytest_plugin`) whose ``arta_emulator`` fixture runs each test
against a fresh emulator::

    import arta

    def test_my_pipeline(arta_emulator, tmp_path):
        arta.generate("a red dragon").save(tmp_path)      # your code, unchanged
        assert arta_emulator.stats()["submits"] == 1

    def test_my_pipeline_survives_a_flaky_service(arta_emulator):
        arta_emulator.set_faults("status:503=0.3", fault_seed=1)
        arta_emulator.inject("submit", "503")               # the next submit fails
        arta.generate("a red dragon")

Without pytest (unittest, a script), :func:`mock_arta` does the same as a
context manager or a decorator, in the manner of moto's ``mock_aws``::

    @mock_arta()
    def check_pipeline():
        arta.generate("a red dragon")

Either way, for its duration: an :class:`~arta.emulator.Emulator` serves on
loopback with fast timings; ``ARTA_ENDPOINT`` points at it and
``ARTA_HOME`` at a throw-away folder (your real token file is never
touched); the process's default client (what ``arta.generate`` and
``arta.aio`` use) polls fast and is swapped with
:func:`arta.set_default_client`; and a guard makes any connection or
datagram to a non-loopback address, and any DNS look-up, fail with
:class:`UnexpectedNetworkAccess`.
Everything is restored afterwards, so each test gets a fresh service.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from arta.api import set_default_client
from arta.client import Client
from arta.emulator import Emulator, FaultPlan
from arta.generation import PollPolicy
from arta.retry import RetryPolicy

__all__ = ["FAST_POLL", "FAST_RETRY", "MockArta", "UnexpectedNetworkAccess", "mock_arta"]

#: Polls for an emulator whose jobs last a fraction of a second.
FAST_POLL = PollPolicy(first_delay=0.02, growth=1.5, max_delay=0.1, jitter=0.01)

#: Retries that do not wait out the emulator's ``Retry-After: 1`` in full.
FAST_RETRY = RetryPolicy(attempts=4, first_delay=0.01, max_delay=0.05, jitter=0.01,
                         max_retry_after=0.05)

_ENV = ("ARTA_ENDPOINT", "ARTA_HOME", "FIREBASE_AUTH_EMULATOR_HOST")


class UnexpectedNetworkAccess(AssertionError):
    """Code under test tried to reach a non-loopback address while the emulator stood in."""


def _loopback(host: Any) -> bool:
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return str(host) == "localhost"


def _local_name(host: Any) -> bool:
    """A host that needs no DNS query: none, ``localhost``, or any numeric address."""
    if host is None or (isinstance(host, (str, bytes)) and not host):
        return True
    name = host.decode("ascii", "replace") if isinstance(host, bytes) else str(host)
    if name.lower().rstrip(".") in ("localhost", "localhost.localdomain") \
            or name.lower().rstrip(".").endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name.strip("[]").split("%")[0])
    except ValueError:
        return False
    return True  # an address: no look-up; connecting to it is guarded on its own


def _refuse(what: str) -> UnexpectedNetworkAccess:
    return UnexpectedNetworkAccess(
        f"{what} while arta's emulator stands in for the service: only loopback is allowed")


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """Until the block ends (all threads): fail any connection, datagram or DNS look-up off loopback.

    Guarded: ``connect``, ``connect_ex``, ``sendto``, ``sendmsg`` to an
    address that is not loopback, and ``getaddrinfo``/``gethostbyname``/
    ``gethostbyname_ex`` of a name, ``gethostbyaddr`` of anything but loopback
    (each would be a DNS query).
    """
    sock = socket.socket
    saved_methods = {name: getattr(sock, name)
                     for name in ("connect", "connect_ex", "sendto", "sendmsg")}
    saved_lookups = {name: getattr(socket, name) for name in
                     ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr")}

    def check(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple) \
                and not _loopback(address[0]):
            raise _refuse(f"a connection or datagram to {address[0]}")

    def connect(self: socket.socket, address: Any) -> None:
        check(self, address)
        saved_methods["connect"](self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        check(self, address)
        return int(saved_methods["connect_ex"](self, address))

    def sendto(self: socket.socket, data: Any, *flags_and_address: Any) -> int:
        check(self, flags_and_address[-1])
        return int(saved_methods["sendto"](self, data, *flags_and_address))

    def sendmsg(self: socket.socket, buffers: Any, *rest: Any) -> int:
        if len(rest) >= 3:  # ancdata, flags, address
            check(self, rest[2])
        return int(saved_methods["sendmsg"](self, buffers, *rest))

    def lookup(name: str) -> Any:
        real = saved_lookups[name]
        # A reverse look-up asks DNS even of an address: only loopback's is local.
        local = _loopback if name == "gethostbyaddr" else _local_name

        def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
            if not local(host):
                raise _refuse(f"a DNS look-up of {host!r}")
            return real(host, *args, **kwargs)
        return guarded

    replaced = {"connect": connect, "connect_ex": connect_ex, "sendto": sendto,
                "sendmsg": sendmsg}
    for name, function in replaced.items():
        setattr(sock, name, function)
    for name in saved_lookups:
        setattr(socket, name, lookup(name))
    try:
        yield
    finally:
        for name, method in saved_methods.items():
            setattr(sock, name, method)
        for name, function in saved_lookups.items():
            setattr(socket, name, function)


class MockArta(contextlib.ContextDecorator):
    """What :func:`mock_arta` returns and the ``arta_emulator`` fixture yields.

    Inside the block: :attr:`emulator` (the running
    :class:`~arta.emulator.Emulator`; its test hooks are on
    ``emulator.app``), :attr:`url`, :attr:`home` (the throw-away
    ``ARTA_HOME``) and :attr:`client` (the default client, also what
    ``arta.generate`` uses). Faults: :meth:`inject` and :meth:`set_faults`.
    """

    def __init__(self, *, queue_seconds: float | tuple[float, float] = 0.05,
                 progress_seconds: float | tuple[float, float] = 0.1,
                 faults: FaultPlan | str | None = None, fault_seed: int | None = None,
                 home: str | os.PathLike[str] | None = None, allow_network: bool = False,
                 **emulator_options: Any) -> None:
        self._options = dict(queue_seconds=queue_seconds, progress_seconds=progress_seconds,
                             faults=faults, fault_seed=fault_seed, **emulator_options)
        self._home = home
        self._allow_network = allow_network
        self._stack: contextlib.ExitStack | None = None
        self.emulator: Emulator | None = None
        self.client: Client | None = None
        self.home: Path | None = None

    def __enter__(self) -> MockArta:  # noqa: PYI034 (typing.Self is 3.11+)
        if self._stack is not None:
            raise RuntimeError("mock_arta() is already active; it does not nest")
        stack = contextlib.ExitStack()
        try:
            self._start(stack)
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def _start(self, stack: contextlib.ExitStack) -> None:
        self.emulator = stack.enter_context(Emulator(**self._options))
        if self._home is None:
            self.home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="arta-")))
        else:
            self.home = Path(self._home)
        saved = {name: os.environ.get(name) for name in _ENV}
        stack.callback(_restore_env, saved)
        os.environ.pop("FIREBASE_AUTH_EMULATOR_HOST", None)
        os.environ["ARTA_ENDPOINT"] = self.emulator.url
        os.environ["ARTA_HOME"] = str(self.home)
        self.client = stack.enter_context(Client(
            self.emulator.url, home=self.home, poll_policy=FAST_POLL, retry_policy=FAST_RETRY,
            timeout=60))
        previous = set_default_client(self.client)
        stack.callback(set_default_client, previous)
        if not self._allow_network:
            stack.enter_context(_loopback_only())

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    def _running(self) -> Emulator:
        if self.emulator is None or self._stack is None:
            raise RuntimeError("mock_arta() is not active: use it in a `with` block")
        return self.emulator

    @property
    def url(self) -> str:
        """The emulator's base URL (also in ``ARTA_ENDPOINT`` meanwhile)."""
        return self._running().url

    def stats(self) -> dict[str, float]:
        """The emulator's counters: ``signups``, ``submits``, ``polls``, ``downloads``, ..."""
        return self._running().stats()

    def fault_counts(self) -> dict[str, int]:
        """The faults injected so far, by ``"endpoint:fault"``."""
        return self._running().fault_counts()

    def inject(self, endpoint: str, fault: str, times: int = 1) -> None:
        """Make the next ``times`` requests to ``endpoint`` suffer ``fault`` (e.g. "503")."""
        self._running().app.inject(endpoint, fault, times)

    def set_faults(self, faults: FaultPlan | str | None, *,
                   fault_seed: int | None = None) -> None:
        """Put a random fault plan in force, e.g. ``"status:503=0.2"`` (None: no faults)."""
        self._running().app.set_faults(faults, fault_seed=fault_seed)


def _restore_env(saved: dict[str, str | None]) -> None:
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def mock_arta(*, queue_seconds: float | tuple[float, float] = 0.05,
              progress_seconds: float | tuple[float, float] = 0.1,
              faults: FaultPlan | str | None = None, fault_seed: int | None = None,
              home: str | os.PathLike[str] | None = None, allow_network: bool = False,
              **emulator_options: Any) -> MockArta:
    """Stand the emulator in for the service: a context manager, or a decorator.

    ``queue_seconds``/``progress_seconds`` time each job; ``faults`` and
    ``fault_seed`` are an :class:`~arta.emulator.Emulator`'s, as is any other
    keyword; ``home`` is the ``ARTA_HOME`` to use (default: a temporary
    folder, deleted after); ``allow_network`` lifts the loopback guard.
    As a decorator, each call of the function gets a fresh emulator.
    """
    return MockArta(queue_seconds=queue_seconds, progress_seconds=progress_seconds,
                    faults=faults, fault_seed=fault_seed, home=home,
                    allow_network=allow_network, **emulator_options)
