"""``arta.testing``: the emulator in a user's own test suite, used exactly as a user would.

A pytester run of a small user test file: the plugin comes from the
installed package's ``pytest11`` entry point, nothing is imported from this
repository's conftest.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest

import arta
from arta.testing import UnexpectedNetworkAccess, mock_arta

pytest_plugins = ["pytester"]

USER_TESTS = '''
import socket

import pytest

import arta


def test_first_generation(arta_emulator, tmp_path):
    paths = arta.generate("a fox", n=2).save(tmp_path)
    assert [p.read_bytes()[:4] for p in paths] == [b"\\x89PNG"] * 2
    assert arta_emulator.stats()["submits"] == 1


def test_second_generation_gets_its_own_emulator(arta_emulator, tmp_path):
    # The bug: this one failed with ConnectError to the first test's closed port.
    result = arta.generate("a cat")
    assert result.urls[0].startswith(arta_emulator.url)
    assert arta_emulator.stats()["submits"] == 1


def test_a_failed_job(arta_emulator):
    arta_emulator.inject("submit", "fail")
    with pytest.raises(arta.GenerationFailed):
        arta.generate("a fox")


def test_a_flaky_service_is_survived(arta_emulator):
    arta_emulator.set_faults("status:503=0.5", fault_seed=3)
    arta_emulator.inject("submit", "503")
    arta.generate("a fox")
    assert arta_emulator.fault_counts()["submit:503"] == 1
    assert arta_emulator.fault_counts()["status:503"] >= 1


def test_the_internet_is_out_of_reach(arta_emulator):
    with pytest.raises(AssertionError, match="only loopback"):
        socket.create_connection(("192.0.2.1", 80), timeout=1)  # TEST-NET-1
'''


def test_a_user_suite_runs_each_test_against_its_own_emulator(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The user's machine: a home of its own (pytester sets HOME), no arta settings.
    for name in ("ARTA_HOME", "ARTA_ENDPOINT", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    pytester.makepyfile(test_user=USER_TESTS)
    outcome = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    outcome.assert_outcomes(passed=5)
    assert not (pytester.path / ".cache" / "arta").exists()  # no token in the real home


def test_mock_arta_as_a_context_manager_restores_everything(tmp_path: Path) -> None:
    before = {name: os.environ.get(name) for name in ("ARTA_ENDPOINT", "ARTA_HOME")}
    default = arta.default_client()
    with mock_arta() as service:
        assert os.environ["ARTA_ENDPOINT"] == service.url
        assert arta.default_client() is service.client
        assert service.home is not None
        home = service.home
        arta.generate("a fox").save(tmp_path)
        assert service.client.settings.token_file.exists()
        assert service.client.settings.token_file.parent == home
        assert service.stats()["downloads"] == 1
        with pytest.raises(UnexpectedNetworkAccess):
            socket.create_connection(("192.0.2.1", 80), timeout=1)
    assert {name: os.environ.get(name) for name in before} == before
    assert arta.default_client() is default and not home.exists()


def test_mock_arta_as_a_decorator_gives_each_call_a_fresh_emulator() -> None:
    urls = []

    @mock_arta()
    def pipeline() -> None:
        arta.generate("a fox")
        urls.append(os.environ["ARTA_ENDPOINT"])

    pipeline()
    pipeline()
    assert len(set(urls)) == 2


class _ReachedTheWire(AssertionError):
    """What the test's tripwire raises: the call got past the plugin's guard."""


def _tripwire(real: Any = None) -> Any:
    """Stands in, under the guard, for what would reach the network: nothing leaves the test.

    A look-up of loopback goes on to ``real`` (the emulator looks up its own
    address as it starts, before the guard is in place).
    """
    def wire(*args: Any, **kwargs: Any) -> Any:
        if real is not None and args and args[0] in ("127.0.0.1", "localhost"):
            return real(*args, **kwargs)
        raise _ReachedTheWire("the call got past the guard")
    return wire


@pytest.mark.parametrize("attempt", [
    lambda: socket.socket().connect_ex(("192.0.2.1", 80)),
    lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("192.0.2.1", 53)),
    lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", 0, ("192.0.2.1", 53)),
    lambda: socket.getaddrinfo("example.com", 443),
    lambda: socket.gethostbyname("example.com"),
    lambda: socket.gethostbyaddr("192.0.2.1"),
], ids=["connect_ex", "udp-sendto", "udp-sendto-flags", "getaddrinfo", "gethostbyname",
        "gethostbyaddr"])
def test_the_guard_refuses_connect_ex_datagrams_and_dns_lookups(
        attempt: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    with mock_arta():  # loopback and local names still work under the guard
        assert socket.getaddrinfo("localhost", 80)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.sendto(b"x", ("127.0.0.1", 9))
    for name in ("connect_ex", "sendto"):
        monkeypatch.setattr(socket.socket, name, _tripwire())
    for name in ("getaddrinfo", "gethostbyname", "gethostbyaddr"):
        monkeypatch.setattr(socket, name, _tripwire(getattr(socket, name)))
    with mock_arta(), pytest.raises(UnexpectedNetworkAccess):
        attempt()
