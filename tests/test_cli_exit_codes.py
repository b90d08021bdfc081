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

from arta.config import Settings
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
    assert "resum" not in done.stderr  # a failed job cannot be resumed: no hint says so


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
    assert record_id in _one_error_line(done.stderr)
    assert f"arta: resume with: arta status {record_id} --wait -o .\n" in done.stderr


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
    assert f"Resume it with: arta status {record_id} --wait -o ." in stderr
    assert "Traceback" not in stderr


def test_an_unknown_record_id_exits_6_no_such_job(emulator: Emulator, tmp_path: Path) -> None:
    done = arta_cli("status", "no-such-job", "--json", emulator=emulator, home=tmp_path)
    assert done.returncode == 6
    line = _one_error_line(done.stderr)
    assert "knows no job 'no-such-job'" in line and "resume" not in done.stderr
    record = json.loads(done.stdout)
    assert record["record_id"] == "no-such-job" and record["error"].startswith("JobNotFoundError")


@pytest.mark.parametrize("args", [["batch", "/no/such/file.txt"], ["batch", "x", "--workers", "0"],
                                  ["generate", "a fox", "--poll-interval", "0"]])
def test_usage_mistakes_exit_2(args: list[str], tmp_path: Path) -> None:
    (tmp_path / "x").write_text("a fox\n")
    done = subprocess.run([sys.executable, "-m", "arta.cli", *args], capture_output=True,
                          text=True, cwd=tmp_path, timeout=60, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2
    # A file problem is arta's one error line; a bad flag value is argparse's usage error.
    if len(args) > 2:
        assert "error: argument" in done.stderr and "Traceback" not in done.stderr
    else:
        _one_error_line(done.stderr)


def test_token_command_never_prints_the_token_unless_asked(emulator: Emulator,
                                                           tmp_path: Path) -> None:
    assert "no token" in arta_cli("token", emulator=emulator, home=tmp_path).stdout
    assert arta_cli("generate", "a fox", "--poll-interval", "0.05", "-o", str(tmp_path / "o"),
                    emulator=emulator, home=tmp_path).returncode == 0
    token_file = Settings.resolve(emulator.url, tmp_path, env={}).token_file
    secret = json.loads(token_file.read_text())["idToken"]
    info = arta_cli("token", "--info", emulator=emulator, home=tmp_path)
    assert info.returncode == 0 and "state:    fresh" in info.stdout
    assert secret not in info.stdout + info.stderr
    shown = arta_cli("token", "--show-token", emulator=emulator, home=tmp_path)
    assert f"id token: {secret}" in shown.stdout
    cleared = arta_cli("token", "--clear", emulator=emulator, home=tmp_path)
    assert cleared.returncode == 0 and not token_file.exists()


def test_blurred_images_are_reported(emulator: Emulator, tmp_path: Path) -> None:
    done = arta_cli("generate", "an nsfw fox", "--json", "--poll-interval", "0.05", "-o",
                    str(tmp_path), emulator=emulator, home=tmp_path / "h")
    assert done.returncode == 0 and json.loads(done.stdout)["blurred"] == [0]
    assert "image(s) 0 were blurred by the service's content filter" in done.stderr


def test_ctrl_c_in_a_batch_names_the_running_jobs_and_the_resume_command(
    emulator: Emulator, tmp_path: Path,
) -> None:
    emulator.app.set_faults("submit:stuck=1")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a fox\na cat\n")
    batch = subprocess.Popen(
        [sys.executable, "-m", "arta.cli", "batch", str(prompts), "-w", "2", "-o",
         str(tmp_path / "out"), "--poll-interval", "0.05"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "ARTA_ENDPOINT": emulator.url,
             "ARTA_HOME": str(tmp_path / "home")})
    manifest = tmp_path / "out" / "arta-manifest.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (
            not manifest.exists() or manifest.read_text().count("submitted") < 2):
        time.sleep(0.05)
    os.killpg(batch.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
    _, stderr = batch.communicate(timeout=60)
    assert batch.returncode == 130, stderr
    for record_id in emulator.app.jobs():
        assert record_id in stderr
    assert f"Resume the batch with: arta batch {prompts}" in stderr


def test_the_emulator_command_injects_the_faults_it_is_given(tmp_path: Path) -> None:
    import requests

    bad = subprocess.run([sys.executable, "-m", "arta.cli", "emulator", "--faults", "submit:boom=1"],
                         capture_output=True, text=True, timeout=30, check=False,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert bad.returncode == 2 and "unknown fault 'boom'" in bad.stderr
    server = subprocess.Popen(
        [sys.executable, "-m", "arta.cli", "emulator", "--port", "0", "--faults",
         "status:503=1", "--fault-seed", "3", "--queue-seconds", "0-1"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        import arta

        with arta.Client(url, home=tmp_path, retry_policy=arta.RetryPolicy(
                attempts=2, first_delay=0.01, max_retry_after=0.01)) as client:
            generation = client.submit("a fox")
            with pytest.raises(arta.errors.ServiceError) as caught:
                generation.refresh()
        assert caught.value.status == 503 and caught.value.record_id == generation.record_id
        stats = requests.get(f"{url}/emulator/stats", timeout=5).json()
        assert stats["faults"] == 2 and stats["submits"] == 1
    finally:
        server.terminate()
        server.wait(timeout=10)
