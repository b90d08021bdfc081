"""A wait with ``timeout=T`` ends by T + 1 s, whatever the server does: one table, every facade.

Each server behaviour (:mod:`hostile_server`: sign-up and submit answer
normally, only the status poll misbehaves) is met through each way a user
waits: ``Client.generate``, ``Generation.wait``, ``arta.aio.generate``, a
per-job timeout in ``Client.map``, and ``arta generate --timeout``. All rows
run at once (each waits on the network, not the CPU); each row times its own
call, from the call to its end, and must end in ``GenerationTimeout``
carrying the record id.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
from hostile_server import HostileServer

import arta

ROOT = Path(__file__).resolve().parent.parent

#: The timeout every row asks for, and the slack the wait may take beyond it.
T, SLACK = 2.0, 1.0

BEHAVIOURS = {
    "drip-status-headers": "status line and headers one byte every 2 s",
    "drip-status-body": "the body one byte a second",
    "silent-status": "takes the request and never answers",
    "status-retry-after-huge": "503 with Retry-After: 1000000000",
}
FACADES = ["generate", "wait", "aio", "map", "cli"]


@dataclass(frozen=True)
class Ended:
    """How one row's call ended: after how long, with which error, naming which job."""

    seconds: float
    error: str
    record_id: str | None


def _client(endpoint: str, home: Path) -> arta.Client:
    return arta.Client(endpoint, home=home)


def _generate(endpoint: str, home: Path) -> None:
    with _client(endpoint, home) as client:
        client.generate("a fox", timeout=T)


def _wait(endpoint: str, home: Path) -> None:
    with _client(endpoint, home) as client:
        client.submit("a fox").wait(timeout=T)


def _aio(endpoint: str, home: Path) -> None:
    asyncio.run(arta.aio.generate("a fox", timeout=T, endpoint=endpoint, home=home))


def _map(endpoint: str, home: Path) -> None:
    with _client(endpoint, home) as client:
        for outcome in client.map(["a fox"], timeout=T):
            if outcome.error is not None:
                raise outcome.error


def _timed(call: Callable[[str, Path], None], endpoint: str, home: Path) -> Ended:
    started = time.monotonic()
    try:
        call(endpoint, home)
    except Exception as error:  # noqa: BLE001 - the row checks what it was
        return Ended(time.monotonic() - started, type(error).__name__,
                     getattr(error, "record_id", None))
    return Ended(time.monotonic() - started, "none", None)


#: The command line in a child of its own (its logging and exit are the CLI's), timing
#: ``main`` itself so that the interpreter's start does not count.
_CLI = """
import json, sys, time
from arta.cli import main
started = time.monotonic()
code = main(["generate", "a fox", "--timeout", sys.argv[1], "--endpoint", sys.argv[2], "--json"])
print(json.dumps({"seconds": time.monotonic() - started, "code": code}), file=sys.stderr)
"""


def _cli(endpoint: str, home: Path) -> tuple[Ended, str]:
    env = {**os.environ, "ARTA_HOME": str(home), "PYTHONPATH": str(ROOT), "NO_PROXY": "*"}
    done = subprocess.run([sys.executable, "-c", _CLI, str(T), endpoint], check=False, env=env,
                          capture_output=True, text=True, timeout=120)
    timing = json.loads(done.stderr.strip().splitlines()[-1])
    error = "GenerationTimeout" if timing["code"] == 4 else f"exit {timing['code']}"
    return Ended(timing["seconds"], error, None), done.stdout + done.stderr


@pytest.fixture(scope="module")
def ended(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[tuple[str, str], Any]]:
    """Every row's outcome: all rows at once, against one hostile server."""
    calls = {"generate": _generate, "wait": _wait, "aio": _aio, "map": _map}
    with HostileServer() as server, concurrent.futures.ThreadPoolExecutor(20) as pool:
        futures = {}
        for behaviour in BEHAVIOURS:
            for facade in FACADES:
                home = tmp_path_factory.mktemp(f"{behaviour}-{facade}")
                endpoint = f"{server.url}/{behaviour}"
                if facade == "cli":
                    futures[behaviour, facade] = pool.submit(_cli, endpoint, home)
                else:
                    futures[behaviour, facade] = pool.submit(_timed, calls[facade], endpoint, home)
        yield {key: future.result() for key, future in futures.items()}


@pytest.mark.parametrize("facade", FACADES)
@pytest.mark.parametrize("behaviour", list(BEHAVIOURS))
def test_a_wait_ends_by_its_timeout_whatever_the_server_does(
    ended: dict[tuple[str, str], Any], behaviour: str, facade: str,
) -> None:
    outcome = ended[behaviour, facade]
    if facade == "cli":
        outcome, output = outcome
        assert "record_id" in output  # the job is named, to be resumed
    assert outcome.error == "GenerationTimeout", (BEHAVIOURS[behaviour], outcome)
    assert outcome.seconds <= T + SLACK, (BEHAVIOURS[behaviour], outcome)
    if facade != "cli":
        assert outcome.record_id, outcome  # nothing submitted is lost
