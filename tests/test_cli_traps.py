"""The command line's traps, each run as a user runs it: in a subprocess (or a pty).

Nothing paid for is lost at the last step (issue 12, section 1), and the
command line has no traps (section 3).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from test_cli_exit_codes import ROOT, _one_error_line, arta_cli
from test_terminal import run_in_terminal

import arta
from arta.emulator import Emulator


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(condition: Callable[[], bool], what: str, limit: float = 30) -> None:
    deadline = time.monotonic() + limit  # a guard against a hang, not a speed bound
    while not condition():
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.02)


# -- 1. nothing paid for is lost at the last step ------------------------------


def test_an_unwritable_output_folder_fails_before_anything_is_submitted(
    emulator: Emulator, tmp_path: Path,
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    for output in (str(a_file), str(a_file / "below"), "/proc/arta-cannot-be-here"):
        done = arta_cli("generate", "a fox", "--json", "-o", output, emulator=emulator,
                        home=tmp_path / "home")
        assert done.returncode == 2, done.stderr
        line = _one_error_line(done.stderr)
        assert f"cannot save images in {output!r}" in line and "nothing was sent" in line
    assert emulator.stats()["submits"] == 0


def test_a_save_failing_after_the_submit_keeps_the_record_id_and_says_how_to_save(
    emulator: Emulator, tmp_path: Path,
) -> None:
    emulator.app.set_faults("submit:stuck=1")
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "arta", "generate", "a fox", "--json", "--poll-interval", "0.05",
         "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=_env(ARTA_ENDPOINT=emulator.url, ARTA_HOME=str(tmp_path / "home")))
    _wait_for(lambda: emulator.stats()["submits"] == 1, "the submit")
    out.rmdir()  # the folder was fine when checked, and then it went away...
    out.write_text("...and a file took its name")
    record_id = emulator.app.last_record_id()
    assert record_id is not None
    emulator.app.set_job_status(record_id, "DONE")
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 1, stderr  # the documented code: images not saved
    record = json.loads(stdout)
    assert record["record_id"] == record_id and record["status"] == "DONE"
    assert record["error"].startswith("SaveError") and record["files"] == []
    assert record_id in _one_error_line(stderr)
    assert f"save its images with: arta status {record_id} --wait -o {out}" in stderr


def test_status_says_when_it_did_not_save_and_the_hint_saves(emulator: Emulator,
                                                             tmp_path: Path) -> None:
    with arta.Client(emulator.url, home=tmp_path / "home") as client:
        record_id = client.submit("a fox").record_id
    shown = arta_cli("status", record_id, "--wait", "--poll-interval", "0.05",
                     emulator=emulator, home=tmp_path / "home")
    assert shown.returncode == 0 and shown.stdout == f"{record_id} DONE\n"
    assert "not saved; add -o DIR" in shown.stderr
    saved = arta_cli("status", record_id, "--wait", "-o", str(tmp_path / "o"),
                     emulator=emulator, home=tmp_path / "home")
    assert saved.returncode == 0 and len(list((tmp_path / "o").glob("*.png"))) == 1


def test_the_emulator_s_hints_do_not_promise_a_job_that_dies_with_it(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "arta", "generate", "a fox", "--emulator", "--timeout", "0.2",
         "-o", str(tmp_path)], capture_output=True, text=True, timeout=60, check=False,
        env=_env(ARTA_HOME=str(tmp_path / "home")))
    assert done.returncode == 4, done.stderr
    assert "emulator, which stopped with it: there is nothing to resume" in done.stderr
    assert "arta status" not in done.stderr and "goes on at the service" not in done.stderr


def _interrupted_while_waiting(script: str, emulator: Emulator, tmp_path: Path,
                               ) -> tuple[int, str, str]:
    """Run ``script`` (a job stuck at the emulator), Ctrl-C it once it polls; how it ended."""
    emulator.app.set_faults("submit:stuck=1")
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=_env(ARTA_ENDPOINT=emulator.url, ARTA_HOME=str(tmp_path)))
    _wait_for(lambda: emulator.stats()["polls"] >= 1, "a poll")
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=30)
    return process.returncode, stdout, stderr


def test_ctrl_c_in_a_plain_script_logs_and_carries_the_record_id(emulator: Emulator,
                                                                 tmp_path: Path) -> None:
    script = ("import arta\n"
              "try:\n"
              "    arta.generate('a fox')\n"
              "except KeyboardInterrupt as interrupt:\n"
              "    print(type(interrupt).__name__, interrupt.record_id)\n")
    _, stdout, stderr = _interrupted_while_waiting(script, emulator, tmp_path)
    record_id = emulator.app.last_record_id()
    assert stdout == f"GenerationInterrupted {record_id}\n", stderr
    assert f"interrupted: job {record_id} goes on at the service" in stderr  # the WARNING


def test_an_uncaught_ctrl_c_in_a_script_exits_as_interrupted(emulator: Emulator,
                                                              tmp_path: Path) -> None:
    """Killed by SIGINT (130 in a shell), as any Python script, after its exit functions."""
    script = ("import atexit, arta\n"
              "atexit.register(print, 'exit functions ran')\n"
              "arta.generate('a fox')\n")
    returncode, stdout, stderr = _interrupted_while_waiting(script, emulator, tmp_path)
    assert returncode == -signal.SIGINT, stderr
    assert stdout == "exit functions ran\n"
    record_id = emulator.app.last_record_id()
    assert f"GenerationInterrupted: interrupted while waiting for job {record_id}" in stderr


# -- 3. a command line without traps --------------------------------------------


def test_global_flags_work_before_and_after_the_command(emulator: Emulator,
                                                        tmp_path: Path) -> None:
    for args in (["-v", "generate", "a fox"], ["generate", "-v", "a fox"]):
        done = arta_cli(*args, "-o", str(tmp_path / "o"), emulator=emulator,
                        home=tmp_path / " ".join(args))
        assert done.returncode == 0
        assert "arta: INFO: signed up a new anonymous account" in done.stderr, args
    with Emulator(queue_seconds=0.2, progress_seconds=0.2) as slow:
        env = _env(ARTA_ENDPOINT=slow.url, ARTA_HOME=str(tmp_path / "q"), TERM="xterm")
        code, output = run_in_terminal("-q", "generate", "a fox", "--poll-interval", "0.05",
                                       "-o", str(tmp_path / "q"), env=env)
    assert code == 0 and "IN_QUEUE" not in output and "IN_PROGRESS" not in output


def test_python_dash_m_arta_runs_the_command() -> None:
    done = subprocess.run([sys.executable, "-m", "arta", "--version"], capture_output=True,
                          text=True, timeout=60, check=False, env=_env())
    assert done.returncode == 0 and done.stdout == f"arta {arta.__version__}\n"


def test_offline_the_error_names_the_cause_and_the_way_out(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "arta", "generate", "a fox", "-o", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False,
        env=_env(ARTA_ENDPOINT=f"http://127.0.0.1:{_closed_port()}",
                 ARTA_HOME=str(tmp_path / "home")))
    assert done.returncode == 5
    assert "could not connect (connection refused" in _one_error_line(done.stderr)
    assert "add --emulator" in done.stderr and "ARTA_ENDPOINT" in done.stderr


def test_each_way_of_not_connecting_is_named() -> None:
    from arta.transport.base import connect_failure

    def wrapped(cause: BaseException) -> Exception:  # as requests and httpx wrap it
        try:
            try:
                raise cause
            except OSError as error:
                raise RuntimeError("Max retries exceeded with url: /x?key=...") from error
        except RuntimeError as outer:
            return outer

    assert "DNS lookup failed" in connect_failure(wrapped(socket.gaierror(-2, "unknown")))
    assert "refused" in connect_failure(wrapped(ConnectionRefusedError(111, "refused")))
    import ssl

    assert "TLS handshake failed" in connect_failure(wrapped(ssl.SSLError(1, "bad cert")))
    assert "unreachable" in connect_failure(wrapped(OSError(101, "Network is unreachable")))


def test_no_traceback_shows_the_firebase_key(tmp_path: Path) -> None:
    script = ("import arta\n"
              "arta.generate('a fox', retry_policy=arta.RetryPolicy(attempts=1))\n")
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
        check=False, env=_env(ARTA_ENDPOINT=f"http://127.0.0.1:{_closed_port()}",
                              ARTA_HOME=str(tmp_path)))
    assert "arta.errors.ConnectError: could not connect (connection refused" in done.stderr
    assert arta.config.API_KEY not in done.stderr  # redacted in the chained errors too
    assert "key=AIza" not in done.stderr
    debug = subprocess.run(  # urllib3 logs each request line, query included, at DEBUG
        [sys.executable, "-m", "arta", "-vv", "generate", "a fox", "--emulator", "-o",
         str(tmp_path / "o")], capture_output=True, text=True, timeout=60, check=False,
        env=_env(ARTA_HOME=str(tmp_path / "h")))
    assert debug.returncode == 0 and "signupNewUser?key=REDACTED" in debug.stderr
    assert arta.config.API_KEY not in debug.stderr


def test_a_reader_that_goes_away_ends_the_command_quietly() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # `| head -1` that has already had its line
    try:
        done = subprocess.run([sys.executable, "-m", "arta", "styles", "--json"],
                              stdout=write_end, stderr=subprocess.PIPE, text=True,
                              timeout=60, check=False, env=_env())
    finally:
        os.close(write_end)
    assert done.returncode == 141 and done.stderr == ""


def test_styles_as_json_sorted() -> None:
    done = subprocess.run([sys.executable, "-m", "arta", "styles", "--json"],
                          capture_output=True, text=True, timeout=60, check=False, env=_env())
    records = [json.loads(line) for line in done.stdout.splitlines()]
    names = [record["name"] for record in records]
    assert names == sorted(arta.STYLES) and len(names) == len(arta.STYLES)
    assert all(arta.styles.STYLE_ALIASES[alias] == record["name"]
               for record in records for alias in record["aliases"])


def test_json_records_carry_the_prompt_the_seed_and_the_image_urls(emulator: Emulator,
                                                                   tmp_path: Path) -> None:
    done = arta_cli("generate", "a fox", "-n", "2", "--seed", "9", "--json", "-o",
                    str(tmp_path), emulator=emulator, home=tmp_path / "h")
    record = json.loads(done.stdout)
    assert record["prompt"] == "a fox" and record["seed"] == 9 and record["style"]
    assert len(record["images"]) == 2 and all(u.startswith(emulator.url) for u in record["images"])
    status = arta_cli("status", record["record_id"], "--json", emulator=emulator,
                      home=tmp_path / "h")
    assert json.loads(status.stdout)["images"] == record["images"]


def test_token_ignores_an_endpoint_it_never_calls(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "arta", "token"], capture_output=True,
                          text=True, timeout=60, check=False,
                          env=_env(ARTA_ENDPOINT="not a url", ARTA_HOME=str(tmp_path)))
    assert done.returncode == 0 and done.stdout.startswith("no token in ")
