"""What ``-v`` and ``ARTA_LOG`` tell a user: the story of a job, one line per event."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from arta.emulator import Emulator

ROOT = Path(__file__).resolve().parent.parent
ID = r"[0-9a-f-]{36}"


@pytest.fixture
def service() -> Iterator[Emulator]:
    """Slow enough that polls every 0.05 s see each status, even on a loaded machine."""
    with Emulator(queue_seconds=0.5, progress_seconds=1.5) as emu:
        yield emu


def _run(args: list[str], service: Emulator, home: Path,
         **env: str) -> subprocess.CompletedProcess[str]:
    inherited = {name: value for name, value in os.environ.items() if name != "ARTA_LOG"}
    full = {**inherited, "PYTHONPATH": str(ROOT), "ARTA_ENDPOINT": service.url,
            "ARTA_HOME": str(home), **env}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=full,
                          timeout=60, check=False)


def _story(record_id: str, path: str) -> list[str]:
    return [
        r"arta: INFO: reusing the stored token \(valid 60 more minutes\)",
        rf"arta: INFO: submitted {record_id} seed=7",
        rf"arta: INFO: job {record_id}: IN_QUEUE",
        rf"arta: INFO: job {record_id}: IN_PROGRESS after \d+\.\ds IN_QUEUE",
        rf"arta: INFO: job {record_id}: DONE after \d+\.\ds IN_PROGRESS",
        rf"arta: INFO: job {record_id}: saved {re.escape(path)}",
    ]


def _assert_lines(stderr: str, patterns: list[str]) -> None:
    lines = stderr.splitlines()
    assert len(lines) == len(patterns), stderr
    for line, pattern in zip(lines, patterns):
        assert re.fullmatch(pattern, line), (line, pattern)


def test_verbose_tells_the_story_of_one_job_line_by_line(service: Emulator,
                                                        tmp_path: Path) -> None:
    generate = ["-m", "arta", "generate", "a fox", "--seed", "7", "--poll-interval", "0.05",
                "-o", str(tmp_path / "out")]
    first = _run(["-m", "arta", "-v", *generate[2:]], service, tmp_path / "home")
    assert first.returncode == 0, first.stderr
    assert first.stderr.splitlines()[0] == "arta: INFO: signed up a new anonymous account"
    again = _run(["-m", "arta", "-v", *generate[2:]], service, tmp_path / "home")
    assert again.returncode == 0, again.stderr
    record_id = service.app.last_record_id()
    _assert_lines(again.stderr, _story(record_id, again.stdout.strip()))


def test_a_retry_is_told_with_its_reason(service: Emulator, tmp_path: Path) -> None:
    service.app.inject("status", "503")
    done = _run(["-m", "arta", "-v", "generate", "a fox", "--poll-interval", "0.05", "-o",
                 str(tmp_path)], service, tmp_path / "home")
    assert done.returncode == 0, done.stderr
    assert re.search(r"^arta: INFO: attempt 1 failed \(status: the service failed \(HTTP 503\)"
                     r".*; retrying in \d\.\d\ds$", done.stderr, re.MULTILINE), done.stderr


def test_more_vs_add_times_names_requests_and_then_file_locks(service: Emulator,
                                                              tmp_path: Path) -> None:
    args = ["generate", "a fox", "--poll-interval", "0.05", "-o", str(tmp_path / "out")]
    debug = _run(["-m", "arta", "-vv", *args], service, tmp_path / "vv")
    assert debug.returncode == 0, debug.stderr
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.search(rf"^{stamp} arta\.client INFO: submitted {ID} seed=\d+$", debug.stderr,
                     re.MULTILINE), debug.stderr
    assert re.search(rf'^{stamp} urllib3\.connectionpool DEBUG: .*"POST /api/v1/text2image ',
                     debug.stderr, re.MULTILINE), debug.stderr
    assert "key=REDACTED" in debug.stderr and "filelock" not in debug.stderr
    locks = _run(["-m", "arta", "-vvv", *args], service, tmp_path / "vvv")
    assert locks.returncode == 0, locks.stderr
    assert re.search(rf"^{stamp} filelock DEBUG: Lock \d+ acquired on ", locks.stderr,
                     re.MULTILINE), locks.stderr


def test_arta_log_turns_the_story_on_for_a_script(service: Emulator, tmp_path: Path) -> None:
    code = ("import arta, sys\n"
            "arta.set_default_client(arta.Client(poll_policy=arta.PollPolicy(\n"
            "    first_delay=0.05, interval=0.05, growth=1, max_delay=0.05, jitter=0)))\n"
            "print(arta.generate('a fox', seed=7).save(sys.argv[1])[0])\n")
    script = ["-c", code, str(tmp_path / "out")]
    quiet = _run(script, service, tmp_path / "home")
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr  # nothing by default
    told = _run(script, service, tmp_path / "home", ARTA_LOG="info")
    assert told.returncode == 0, told.stderr
    _assert_lines(told.stderr, _story(service.app.last_record_id(), told.stdout.strip()))
    debug = _run(script, service, tmp_path / "home", ARTA_LOG="DEBUG")
    assert re.search(r' urllib3\.connectionpool DEBUG: .*"GET /api/v1/text2image/', debug.stderr)


def test_a_bad_arta_log_is_named_before_any_request(service: Emulator, tmp_path: Path) -> None:
    done = _run(["-m", "arta", "generate", "a fox", "-o", str(tmp_path)], service,
                tmp_path / "home", ARTA_LOG="verbose")
    assert done.returncode == 2
    assert "arta: error: ARTA_LOG must be 'info' or 'debug' (or unset), not 'verbose'" \
        in done.stderr
    assert service.stats()["signups"] == 0 and service.stats()["submits"] == 0
