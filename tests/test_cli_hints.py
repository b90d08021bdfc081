"""Hints that fit: each error says what to do next in the terms of where it is read."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

import arta
from arta.emulator import Emulator
from arta.errors import SaveError

ROOT = Path(__file__).resolve().parent.parent


def _env(**extra: str) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items()
                 if k not in ("ARTA_ENDPOINT", "FIREBASE_AUTH_EMULATOR_HOST", "ARTA_LOG")}
    return {**inherited, "PYTHONPATH": str(ROOT), **extra}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _arta(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "arta", *args], capture_output=True, text=True,
                          timeout=60, check=False, env=_env(**env))


def test_a_connection_error_names_the_endpoint_that_is_set(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    done = _arta("generate", "a fox", "-o", str(tmp_path), ARTA_ENDPOINT=endpoint,
                 ARTA_HOME=str(tmp_path / "home"))
    assert done.returncode == 5, done.stderr
    assert f"the endpoint is '{endpoint}', from ARTA_ENDPOINT" in done.stderr
    assert "set ARTA_ENDPOINT" not in done.stderr  # it is set: no advice to set it
    assert "arta: to try arta offline, add --emulator" in done.stderr


def test_a_library_error_offline_says_which_setting_to_look_at(tmp_path: Path) -> None:
    auth = f"127.0.0.1:{_closed_port()}"
    script = ("import arta\n"
              "try:\n"
              "    arta.generate('a fox', retry_policy=arta.RetryPolicy(attempts=1))\n"
              "except arta.TransportError as error:\n"
              "    print(error)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=False,
                          env=_env(FIREBASE_AUTH_EMULATOR_HOST=auth, ARTA_HOME=str(tmp_path)))
    assert done.returncode == 0, done.stderr
    assert "ARTA_ENDPOINT is not set, so this is the real service" in done.stdout
    assert f"sign-up and refresh go to 'http://{auth}' (FIREBASE_AUTH_EMULATOR_HOST)" \
        in done.stdout


def test_command_line_errors_carry_command_line_hints_only(emulator: Emulator,
                                                          tmp_path: Path) -> None:
    emulator.app.set_faults("submit:stuck=1")
    done = _arta("generate", "a fox", "--timeout", "0.5", "--poll-interval", "0.05", "-o",
                 str(tmp_path), ARTA_ENDPOINT=emulator.url, ARTA_HOME=str(tmp_path / "home"))
    assert done.returncode == 4, done.stderr
    record_id = emulator.app.last_record_id()
    assert f"arta status {record_id} --wait -o" in done.stderr
    assert "Client()" not in done.stderr and f"(record_id {record_id})" in done.stderr


def test_a_save_error_on_a_result_says_to_save_again_elsewhere(emulator: Emulator,
                                                               tmp_path: Path) -> None:
    blocked = tmp_path / "a file"
    blocked.write_text("not a folder")
    with arta.Client(emulator.url, home=tmp_path / "home") as client:
        result = client.generate("a fox")
        with pytest.raises(SaveError) as raised:
            result.save(blocked)
        assert "its images are still at the service: call save() again with a folder that " \
               "can be written" in str(raised.value)
        assert result.save(tmp_path / "elsewhere")  # ...which works


def test_an_interrupted_batch_writes_the_gallery_of_what_it_has(emulator: Emulator,
                                                                tmp_path: Path) -> None:
    emulator.app.inject("submit", "stuck")  # the first job never ends; the second does
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a fox\nan owl\n")
    out = tmp_path / "out"
    batch = subprocess.Popen(
        [sys.executable, "-m", "arta", "batch", str(prompts), "--gallery", "--concurrency", "2",
         "--poll-interval", "0.05", "-o", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env=_env(ARTA_ENDPOINT=emulator.url, ARTA_HOME=str(tmp_path / "home")))
    manifest = out / "arta-manifest.jsonl"
    deadline = time.monotonic() + 60  # a guard against a hang, not a speed bound
    while not (manifest.exists() and '"done"' in manifest.read_text()):
        assert time.monotonic() < deadline and batch.poll() is None, "no job ended"
        time.sleep(0.05)
    os.killpg(batch.pid, signal.SIGINT)
    _, stderr = batch.communicate(timeout=60)
    assert batch.returncode == 130, stderr
    page = (out / "index.html").read_text()
    assert page.count("<img ") == 1 and "an owl" in page and "a fox" not in page
    assert f"arta: gallery: {out / 'index.html'}" in stderr


def test_the_emulator_command_shows_its_port_and_logs_requests_at_v(tmp_path: Path) -> None:
    helped = _arta("emulator", "--help")
    assert "port (default: 8765; 0: any free port)" in helped.stdout
    assert "-v, --verbose         log each request the emulator answers" in helped.stdout
    server = subprocess.Popen([sys.executable, "-m", "arta", "emulator", "-v", "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=_env())
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        assert requests.get(f"{url}/emulator/stats?key=secret", timeout=10).status_code == 200
    finally:
        server.send_signal(signal.SIGINT)
        _, stderr = server.communicate(timeout=30)
    assert "GET /emulator/stats -> 200" in stderr and "secret" not in stderr
