"""Each documented failure of the command line: its exit code, its stderr line, its --json."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from arta.emulator import Emulator

ROOT = Path(__file__).resolve().parent.parent


def arta_cli(*args: str, emulator: Emulator | None = None, home: Path | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if emulator is not None:
        env["ARTA_ENDPOINT"] = emulator.url
    if home is not None:
        env["ARTA_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "arta.cli", *args], capture_output=True,
                          text=True, env=env, timeout=timeout, check=False)


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("arta: error: ")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_done_exits_0_with_one_json_object(emulator: Emulator, tmp_path: Path) -> None:
    done = arta_cli("generate", "a fox", "-n", "2", "--seed", "4", "--json", "--poll-interval",
                    "0.05", "-o", str(tmp_path), emulator=emulator, home=tmp_path / "h")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["status"] == "DONE" and record["seed"] == 4 and record["error"] is None
    assert len(record["files"]) == 2 and all(Path(f).exists() for f in record["files"])


def test_a_failed_generation_exits_1(emulator: Emulator, tmp_path: Path) -> None:
    emulator.app.set_faults("submit:fail=1")
    done = arta_cli("generate", "a fox", "--json", "--poll-interval", "0.05",
                    emulator=emulator, home=tmp_path)
    assert done.returncode == 1
    record = json.loads(done.stdout)
    assert record["status"] == "FAILED" and record["error"].startswith("GenerationFailed")
    line = _one_error_line(done.stderr)
    assert "GENERATION_FAILED" in line and record["record_id"] in line


def test_auth_and_quota_exit_3(tmp_path: Path) -> None:
    with Emulator(signup_quota=0) as emulator:
        done = arta_cli("generate", "a fox", emulator=emulator, home=tmp_path)
    assert done.returncode == 3
    assert "TOO_MANY_ATTEMPTS_TRY_LATER" in _one_error_line(done.stderr)


def test_a_timeout_exits_4_and_says_how_to_resume(emulator: Emulator, tmp_path: Path) -> None:
    emulator.app.set_faults("submit:stuck=1")
    done = arta_cli("generate", "a fox", "--timeout", "0.5", "--json", "--poll-interval", "0.05",
                    emulator=emulator, home=tmp_path)
    assert done.returncode == 4
    record_id = json.loads(done.stdout)["record_id"]
    assert f"arta status {record_id} --wait" in _one_error_line(done.stderr)


def test_ctrl_c_exits_130_and_names_the_running_job(emulator: Emulator, tmp_path: Path) -> None:
    emulator.app.set_faults("submit:stuck=1")
    process = subprocess.Popen(
        [sys.executable, "-m", "arta.cli", "generate", "a fox", "--poll-interval", "0.05"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "ARTA_ENDPOINT": emulator.url,
             "ARTA_HOME": str(tmp_path)})
    deadline = time.monotonic() + 30
    while emulator.stats()["polls"] < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130
    record_id = emulator.app.last_record_id()
    assert f"Resume it with: arta status {record_id} --wait" in stderr and "Traceback" not in stderr


def test_an_unknown_record_id_exits_5(emulator: Emulator, tmp_path: Path) -> None:
    done = arta_cli("status", "no-such-job", emulator=emulator, home=tmp_path)
    assert done.returncode == 5 and "HTTP 404" in _one_error_line(done.stderr)


@pytest.mark.parametrize("args", [["batch", "/no/such/file.txt"], ["batch", "x", "--workers", "0"],
                                  ["generate", "a fox", "--poll-interval", "0"]])
def test_usage_mistakes_exit_2(args: list[str], tmp_path: Path) -> None:
    (tmp_path / "x").write_text("a fox\n")
    done = subprocess.run([sys.executable, "-m", "arta.cli", *args], capture_output=True,
                          text=True, cwd=tmp_path, timeout=60, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2
    _one_error_line(done.stderr)


def test_token_command_never_prints_the_token_unless_asked(emulator: Emulator,
                                                           tmp_path: Path) -> None:
    assert "no token" in arta_cli("token", home=tmp_path).stdout
    assert arta_cli("generate", "a fox", "--poll-interval", "0.05", "-o", str(tmp_path / "o"),
                    emulator=emulator, home=tmp_path).returncode == 0
    secret = json.loads((tmp_path / "auth_ARTA.json").read_text())["idToken"]
    info = arta_cli("token", "--info", home=tmp_path)
    assert info.returncode == 0 and "state:    fresh" in info.stdout
    assert secret not in info.stdout + info.stderr
    shown = arta_cli("token", "--show-token", home=tmp_path)
    assert f"id token: {secret}" in shown.stdout
    cleared = arta_cli("token", "--clear", home=tmp_path)
    assert cleared.returncode == 0 and not (tmp_path / "auth_ARTA.json").exists()
