"""`arta batch`: 200 prompts, 8 worker processes, one sign-up, and a resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import png_size

import arta
from arta.batch import Manifest, read_jobs
from arta.emulator import Emulator

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = 200


@pytest.fixture
def batch_emulator() -> Emulator:
    with Emulator(queue_seconds=(0, 0.1), progress_seconds=(0.1, 0.3)) as emu:
        yield emu


def _batch_command(tmp_path: Path, emulator: Emulator, *extra: str) -> tuple[list[str], dict]:
    prompts = tmp_path / "prompts.txt"
    if not prompts.exists():
        prompts.write_text("".join(f"a fox, variation {i}\n" for i in range(PROMPTS)))
    command = [sys.executable, "-m", "arta.cli", "batch", str(prompts), "--workers", "8",
               "-o", str(tmp_path / "out"), "--poll-interval", "0.05", *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ARTA_ENDPOINT": emulator.url,
           "ARTA_HOME": str(tmp_path / "home")}
    return command, env


def _check_all_done(tmp_path: Path) -> None:
    jobs = read_jobs(tmp_path / "prompts.txt")
    latest = Manifest(tmp_path / "out" / "arta-manifest.jsonl").latest()
    assert len(latest) == PROMPTS
    assert all(latest[job.key]["event"] == "done" for job in jobs)
    files = [Path(f) for record in latest.values() for f in record["files"]]
    assert len(files) == PROMPTS == len(set(files))
    for path in files:
        assert png_size(path) == (512, 512)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == sorted(p.name for p in files)


def test_a_batch_of_200_with_8_workers(batch_emulator: Emulator, tmp_path: Path) -> None:
    command, env = _batch_command(tmp_path, batch_emulator, "--json")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240,
                          check=False)
    assert done.returncode == 0, done.stderr
    _check_all_done(tmp_path)
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(records) == PROMPTS and {r["event"] for r in records} == {"done"}
    stats = batch_emulator.stats()
    assert (stats["signups"], stats["submits"], stats["duplicate_submits"]) == (1, PROMPTS, 0)
    # Run again: everything is already done, nothing is sent.
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120,
                           check=False)
    assert again.returncode == 0 and batch_emulator.stats()["submits"] == PROMPTS
    assert {json.loads(line)["event"] for line in again.stdout.splitlines()} == {"skipped"}


def _submitted_in_manifest(path: Path) -> int:
    if not path.exists():
        return 0
    return sum('"event": "submitted"' in line for line in path.read_text().splitlines())


def test_a_batch_killed_half_way_resumes_without_duplicates(batch_emulator: Emulator,
                                                            tmp_path: Path) -> None:
    command, env = _batch_command(tmp_path, batch_emulator)
    manifest = tmp_path / "out" / "arta-manifest.jsonl"
    batch = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            text = manifest.read_text() if manifest.exists() else ""
            # Half-way, at a moment when every submit the service took is in the
            # manifest: SIGKILL can land anywhere, but a submit whose answer
            # never reached the manifest is a job no one can know of.
            if text.count('"event": "done"') >= PROMPTS // 2 and \
                    batch_emulator.stats()["submits"] == _submitted_in_manifest(manifest):
                os.killpg(batch.pid, signal.SIGKILL)  # the batch and all its workers
                break
            time.sleep(0.005)
        batch.wait(timeout=30)
    finally:
        if batch.poll() is None:
            os.killpg(batch.pid, signal.SIGKILL)
    assert batch.returncode == -signal.SIGKILL
    unfinished = PROMPTS - manifest.read_text().count('"event": "done"')
    assert 0 < unfinished <= PROMPTS // 2
    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240,
                             check=False)
    assert resumed.returncode == 0, resumed.stderr
    _check_all_done(tmp_path)
    stats = batch_emulator.stats()
    assert stats["duplicate_submits"] == 0 and stats["submits"] == PROMPTS
    assert f"{PROMPTS - unfinished} from an earlier run" in resumed.stderr


def test_bad_lines_are_refused_before_anything_is_sent(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"prompt": "a fox", "n": 2}\n{"prompt": "a cat", "n": 9}\n')
    with pytest.raises(arta.InvalidInputError, match=r"jobs.jsonl, line 2: n must be from 1 to 4"):
        read_jobs(jobs)
    jobs.write_text('{"prompt": "a fox", "colour": "red"}\n')
    with pytest.raises(arta.InvalidInputError, match="unknown field.*colour"):
        read_jobs(jobs)


def test_jsonl_parameters_reach_the_service(batch_emulator: Emulator, tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('# two jobs\n{"prompt": "a fox", "n": 2, "aspect_ratio": "16:9", "seed": 5}\n'
                    '\n{"prompt": "a cat", "style": "watercolor"}\n')
    done = subprocess.run(
        [sys.executable, "-m", "arta.cli", "batch", str(jobs), "-o", str(tmp_path / "out"),
         "--poll-interval", "0.05", "--json"], capture_output=True, text=True, timeout=120,
        check=False, env={**os.environ, "PYTHONPATH": str(ROOT), "ARTA_ENDPOINT": batch_emulator.url})
    assert done.returncode == 0, done.stderr
    fox, cat = sorted((json.loads(line) for line in done.stdout.splitlines()),
                      key=lambda r: r["line"])
    assert (fox["line"], len(fox["files"]), cat["line"]) == (2, 2, 4)
    assert all(png_size(Path(f)) == (512, 288) for f in fox["files"])
