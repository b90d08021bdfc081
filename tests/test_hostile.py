"""A hostile server against a real client: every attack of issue 11, one table row each.

Each row runs the client in a child process (``hostile_child.py``) under an
address-space limit, against :mod:`hostile_server` on loopback, and checks:

- the typed error it must end in (never a ``MemoryError``, ``RecursionError``,
  ``RuntimeError: can't start new thread`` or a raw ``ValueError``);
- a time bound, a generous multiple of the timeout the row asks for;
- a memory bound: the child's resident memory may grow by at most
  ``MEMORY_GROWTH_MB``, and its address space is capped besides;
- that it reached no host but loopback, and that its traceback shows no secret;
- how often the server was asked (a refused answer is not fetched 4 times).

All rows run at once (each waits on the network, not the CPU), so the table
costs about as long as its slowest row.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hostile_server import REFRESH_SECRET, SECRET, HostileServer

ROOT = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).with_name("hostile_child.py")

#: Address space the child may take beyond what it holds after ``import arta``.
HEADROOM_MB = 400
#: The most its resident memory may grow during the call.
MEMORY_GROWTH_MB = 120
#: Extra seconds a child gets to start (imports, a loaded machine) before it is
#: killed. Only a guard: each child times its own call and stops at its bound.
START_SLACK = 90.0



@dataclass(frozen=True)
class Row:
    """One attack: the mode served, the call made, and what must come of it."""

    mode: str
    call: str
    error: str  # a class the raised error must be an instance of
    asked: float = 1.0  # the timeout the row asks for (read timeout, or the wait's)
    multiple: float = 10.0  # the call must end within asked * multiple seconds
    at_most: dict[str, int] = field(default_factory=dict)  # call -> most requests served
    endpoint: str | None = None  # else the hostile server's URL + /mode
    secrets: tuple[str, ...] = ()

    @property
    def bound(self) -> float:
        return self.asked * self.multiple


ROWS = [
    # item 5: JSON bodies are capped, streamed, and a refusal is not retried
    Row("bomb", "resume", "MalformedResponse", at_most={"status": 1}),
    Row("endless", "resume", "MalformedResponse", at_most={"status": 1}),
    Row("declared", "resume", "MalformedResponse", at_most={"status": 1}),
    # item 10, second bullet: a body dripping a byte at a time ends, 4 tries included
    Row("drip", "resume", "NoResponseError", asked=0.5, multiple=40),
    # item 7: nesting too deep is a typed error
    Row("deep", "resume", "MalformedResponse", at_most={"status": 1}),
    # item 6: thousands of images (resumed: no n known) and more than n (submitted here)
    Row("many", "resume", "MalformedResponse", at_most={"image": 0}),
    Row("more-than-n", "save", "MalformedResponse", at_most={"image": 0}),
    # item 13: image URLs that are not http(s), or on a metadata address
    Row("file-url", "save", "DownloadError", at_most={"image": 0}),
    Row("ftp-url", "save", "DownloadError", at_most={"image": 0}),
    Row("bare-path", "save", "DownloadError", at_most={"image": 0}),
    Row("malformed-url", "save", "DownloadError", at_most={"image": 0}),
    Row("metadata-v4", "save", "DownloadError"),
    Row("metadata-v6", "save", "DownloadError"),
    # issue 18, item 9: other spellings of 169.254.169.254
    Row("metadata-decimal", "save", "DownloadError", at_most={"image": 0}),
    Row("metadata-hex", "save", "DownloadError", at_most={"image": 0}),
    Row("metadata-octal", "save", "DownloadError", at_most={"image": 0}),
    Row("metadata-short", "save", "DownloadError", at_most={"image": 0}),
    # item 23: terminal escapes from the server never reach the error text
    Row("escapes", "result", "GenerationFailed"),
    # item 10, first and third bullets: the poll loop's deadline
    Row("retry-after-huge", "wait", "GenerationTimeout", asked=0.5, multiple=20),
    Row("retry-after-date", "wait", "GenerationTimeout", asked=0.5, multiple=20),
    # item 9: a non-finite or negative lifetime, refused after one sign-up, nothing submitted
    Row("expires-nan", "token", "MalformedResponse", at_most={"signup": 1}),
    Row("expires-inf", "token", "MalformedResponse", at_most={"signup": 1}),
    Row("expires-negative", "token", "MalformedResponse", at_most={"signup": 1}),
    # item 22: a token quoted back by requests' InvalidHeader, a password in the endpoint
    Row("token-newline", "submit", "ArtaError", at_most={"submit": 0}, secrets=(SECRET,)),
    Row("password", "submit", "ConnectError",
        endpoint="http://arta:pw-hostile-secret@127.0.0.1:9/password",
        secrets=("pw-hostile-secret",)),
    # issue 18, item 8: a server quoting the request's token or refresh token back
    Row("echo-token", "submit", "SubmitOutcomeUnknown", secrets=(SECRET,)),
    Row("echo-failed", "result", "GenerationFailed", secrets=(SECRET,)),
    Row("echo-refresh", "refresh", "AuthError", secrets=(REFRESH_SECRET,)),
]


def _row(param: Any) -> Row:
    return param.values[0] if hasattr(param, "values") else param


def _ids(param: Any) -> str:
    return _row(param).mode


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[HostileServer, dict[str, dict[str, Any]]]]:
    """Every row's outcome: all children run at once, each killed past its bound."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}",
           "MALLOC_ARENA_MAX": "2", "NO_PROXY": "*"}
    with HostileServer() as server:
        children = []
        for param in ROWS:
            row = _row(param)
            work = tmp_path_factory.mktemp(row.mode)
            spec = {"endpoint": row.endpoint or f"{server.url}/{row.mode}",
                    "home": str(work / "home"), "folder": str(work / "out"),
                    "call": row.call, "asked": row.asked, "read_timeout": row.asked, "bound": row.bound,
                    "headroom_mb": HEADROOM_MB, "secrets": list(row.secrets)}
            child = subprocess.Popen([sys.executable, str(CHILD), json.dumps(spec)], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            children.append((row, child, time.monotonic()))
        results: dict[str, dict[str, Any]] = {}
        for row, child, started in children:
            left = started + row.bound + START_SLACK - time.monotonic()
            try:
                out, err = child.communicate(timeout=max(left, 0.1))
            except subprocess.TimeoutExpired:
                child.kill()
                child.communicate()
                results[row.mode] = {"killed": f"still running {row.bound + START_SLACK:g}s on"}
                continue
            lines = out.strip().splitlines()
            results[row.mode] = json.loads(lines[-1]) if lines else {
                "crashed": f"exit {child.returncode}: {err[-2000:]}"}
        yield server, results


@pytest.mark.parametrize("param", ROWS, ids=[_ids(p) for p in ROWS])
def test_hostile_server(outcomes: tuple[HostileServer, dict[str, dict[str, Any]]],
                        param: Any) -> None:
    row = _row(param)
    server, results = outcomes
    outcome = results[row.mode]
    assert "killed" not in outcome and "crashed" not in outcome, outcome
    print(f"{row.mode:<18} {outcome['error'] or '-':<20} {outcome['elapsed']:6.2f}s "
          f"(bound {row.bound:g}s) rss +{outcome['rss_growth_mb']:.1f} MB")  # shown by -rP
    assert row.error in outcome["classes"], \
        f"{row.mode}: expected {row.error}, got {outcome['error']}: {outcome.get('message')}"
    assert outcome["elapsed"] <= row.bound, f"{row.mode} took {outcome['elapsed']:.1f}s"
    assert outcome["rss_growth_mb"] <= MEMORY_GROWTH_MB, outcome
    assert outcome["contacted"] == [], "reached a host that is not loopback"
    assert outcome["leaked"] == [], "a secret is in the traceback"
    assert not outcome["escapes"], "a terminal escape from the server is in the error text"
    for call, most in row.at_most.items():
        assert server.counts[row.mode][call] <= most, (call, dict(server.counts[row.mode]))
    if row.call in ("resume", "result", "save", "wait"):
        assert outcome["record_id"], "an error after the submit carries the record id"
