"""Google's real Firebase Auth Emulator (npm ``firebase-tools``), run for the tests.

PROTOCOL.md section 9: it speaks sign-up and refresh for real, at the legacy
v3 paths too, and can count the accounts it created (= sign-ups made).

Where the ``firebase`` command comes from, in order: ``ARTA_FIREBASE_BIN``;
``.ci/node/node_modules/.bin/firebase`` (what ``.ci/run`` installs with
``npm install --prefix .ci/node firebase-tools@VERSION``); ``firebase`` on
``PATH``. Without it the tests that need it skip, unless
``ARTA_REQUIRE_FIREBASE=1`` (as in CI), where they fail instead.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests

#: The firebase-tools release the tests are known to pass with (.ci/run installs it).
FIREBASE_TOOLS_VERSION = "15.34.2"
PROJECT = "demo-arta"
ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def firebase_command() -> str | None:
    """The ``firebase`` executable to use, or None if there is none."""
    candidates = [os.environ.get("ARTA_FIREBASE_BIN"),
                  str(ROOT / ".ci" / "node" / "node_modules" / ".bin" / "firebase"),
                  shutil.which("firebase")]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def skip_or_fail(reason: str) -> None:
    """Skip (locally) or fail (when ARTA_REQUIRE_FIREBASE is set, as in CI)."""
    if os.environ.get("ARTA_REQUIRE_FIREBASE"):
        pytest.fail(reason)
    pytest.skip(reason)


class GoogleAuthEmulator:
    """One Firebase Auth Emulator process on free loopback ports."""

    def __init__(self, command: str) -> None:
        self.port = _free_port()
        self.host = f"127.0.0.1:{self.port}"
        self._folder = tempfile.TemporaryDirectory(prefix="arta-firebase-")
        config = {"emulators": {
            "auth": {"host": "127.0.0.1", "port": self.port},
            "hub": {"host": "127.0.0.1", "port": _free_port()},
            "logging": {"host": "127.0.0.1", "port": _free_port()},
            "ui": {"enabled": False}, "singleProjectMode": True}}
        Path(self._folder.name, "firebase.json").write_text(json.dumps(config))
        self._log = open(Path(self._folder.name, "emulator.log"), "w+")  # noqa: SIM115
        self._process = subprocess.Popen(
            [command, "emulators:start", "--only", "auth", "--project", PROJECT],
            cwd=self._folder.name, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,  # so stop() can end node and its children
            env={**os.environ, "NO_UPDATE_NOTIFIER": "1", "CI": "1"},
        )

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Block until the emulator answers, or raise with its log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            try:
                requests.get(f"http://{self.host}/", timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.25)
        self._log.seek(0)
        raise RuntimeError(f"the Firebase Auth Emulator did not start:\n{self._log.read()[-3000:]}")

    def account_count(self) -> int:
        """How many accounts exist: each anonymous sign-up made one."""
        answer = requests.post(
            f"http://{self.host}/identitytoolkit.googleapis.com/v1/projects/{PROJECT}/accounts:query",
            headers={"Authorization": "Bearer owner"}, json={}, timeout=10)
        answer.raise_for_status()
        return int(answer.json().get("recordsCount", 0))

    def wipe(self) -> None:
        """Delete every account."""
        requests.delete(f"http://{self.host}/emulator/v1/projects/{PROJECT}/accounts",
                        timeout=10).raise_for_status()

    def stop(self) -> None:
        """Stop the emulator and everything it started."""
        if self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGINT)
            try:
                self._process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()
        self._log.close()
        self._folder.cleanup()
