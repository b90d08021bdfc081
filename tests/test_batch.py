"""`arta batch` as a user runs it: workers, one sign-up, resumes after SIGKILL, one run at a time.

Each run is a real ``python -m arta.cli batch`` process against an emulator
on loopback; what the service saw is read from the emulator's counters.
"""

from __future__ import annotations

import json
import os
import random
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import FAST_POLL, png_size

import arta
from arta.batch import Manifest, read_jobs, run_batch
from arta.batch.manifest import ManifestError
from arta.cli import main
from arta.emulator import Emulator

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def batch_emulator() -> Emulator:
    with Emulator(queue_seconds=(0, 0.1), progress_seconds=(0.1, 0.3)) as emu:
        yield emu


def _batch(tmp_path: Path, emulator: Emulator, prompts: int, *extra: str) -> tuple[list[str], dict]:
    """The command and environment of a batch of ``prompts`` prompts into tmp_path/out."""
    file = tmp_path / "prompts.txt"
    if not file.exists():
        file.write_text("".join(f"a fox, variation {i}\n" for i in range(prompts)))
    command = [sys.executable, "-m", "arta.cli", "batch", str(file), "-o",
               str(tmp_path / "out"), "--poll-interval", "0.05", *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ARTA_ENDPOINT": emulator.url,
           "ARTA_HOME": str(tmp_path / "home")}
    return command, env


def _run(command: list[str], env: dict, **options: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120,
                          check=False, **options)


def _check_all_done(tmp_path: Path, prompts: int) -> None:
    """Every job done in the manifest, each with its own image, named as `arta generate` names them."""
    jobs = read_jobs(tmp_path / "prompts.txt")
    states = Manifest(tmp_path / "out" / "arta-manifest.jsonl").states()
    assert [states[job.key].event for job in jobs] == ["done"] * prompts
    files = [Path(f) for job in jobs for f in states[job.key].files]
    assert len(files) == prompts == len(set(files))
    for job in jobs:
        state = states[job.key]
        assert [Path(f).name for f in state.files] == [f"{state.record_id}-0-s{state.seed}.png"]
    assert all(png_size(path) == (512, 512) for path in files)
    # Nothing but the images and the manifest in sight (the lock files are hidden).
    visible = sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith("."))
    assert visible == sorted([*(p.name for p in files), "arta-manifest.jsonl"])


def test_a_batch_with_workers_makes_one_sign_up_and_a_rerun_sends_nothing(
    batch_emulator: Emulator, tmp_path: Path,
) -> None:
    command, env = _batch(tmp_path, batch_emulator, 12, "--workers", "2", "--concurrency", "8",
                          "--json")
    done = _run(command, env)
    assert done.returncode == 0, done.stderr
    _check_all_done(tmp_path, 12)
    *records, summary = (json.loads(line) for line in done.stdout.splitlines())
    assert len(records) == 12 and {r["event"] for r in records} == {"done"}
    assert summary == {"event": "summary", "total": 12, "done": 12, "skipped": 0, "failed": 0,
                       "not_started": 0, "possibly_resubmitted": 0,
                       "manifest": str(tmp_path / "out" / "arta-manifest.jsonl")}
    assert {r["prompt"] for r in records} == {f"a fox, variation {i}" for i in range(12)}
    stats = batch_emulator.stats()
    assert (stats["signups"], stats["submits"], stats["duplicate_submits"]) == (1, 12, 0)
    # Not a terminal: the progress is plain lines (every 5 s, and at the end), no redraws.
    assert "arta: batch: 12/12 done, 0 in flight, 0 queued, 0 failed, " in done.stderr
    assert "\r" not in done.stderr
    again = _run(command, env)
    assert again.returncode == 0 and batch_emulator.stats()["submits"] == 12
    assert {json.loads(line)["event"] for line in again.stdout.splitlines()} == \
        {"skipped", "summary"}


def test_a_second_run_on_the_same_manifest_is_refused_at_once(batch_emulator: Emulator,
                                                               tmp_path: Path) -> None:
    batch_emulator.app.set_faults("submit:stuck=1")  # the first run lasts until stopped
    command, env = _batch(tmp_path, batch_emulator, 3)
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    try:
        deadline = time.monotonic() + 60
        while batch_emulator.stats()["submits"] < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        second = _run(command, env)
        assert second.returncode == 2
        assert re.search(rf"another arta batch \(pid {first.pid} on \S+, started", second.stderr)
        stats = batch_emulator.stats()
        assert (stats["submits"], stats["duplicate_submits"]) == (3, 0)
    finally:
        first.send_signal(signal.SIGINT)
    assert first.wait(timeout=60) == 130
    assert not (tmp_path / "out" / ".arta-manifest.jsonl.owner").exists()  # let go at its end


def _possibly_resubmitted(stderr: str) -> int:
    """What a run said, before any submit, of the jobs it sends again."""
    found = re.search(r"warning: (\d+) job\(s\) may have been submitted by an earlier run", stderr)
    return int(found.group(1)) if found else 0


def test_sigkill_at_random_moments_never_loses_a_job_nor_pays_twice_unknowingly(
    batch_emulator: Emulator, tmp_path: Path,
) -> None:
    prompts = 30
    command, env = _batch(tmp_path, batch_emulator, prompts, "--concurrency", "64")
    chance = random.Random(os.environ.get("ARTA_TEST_SEED", "kill"))
    said = 0
    for _ in range(12):
        with open(tmp_path / "stderr.txt", "w+") as stderr:
            batch = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
                                     start_new_session=True)
            try:
                batch.wait(timeout=chance.uniform(0.3, 1.5))
            except subprocess.TimeoutExpired:
                os.killpg(batch.pid, signal.SIGKILL)
                batch.wait(timeout=30)
            stderr.seek(0)
            said += _possibly_resubmitted(stderr.read())
    last = _run(command, env, stdin=subprocess.DEVNULL)
    assert last.returncode == 0, last.stderr
    said += _possibly_resubmitted(last.stderr)
    _check_all_done(tmp_path, prompts)
    stats = batch_emulator.stats()
    # Every extra submit repeated an earlier one exactly, seed included...
    assert stats["submits"] - stats["duplicate_submits"] == prompts
    # ...and a run said so before sending it.
    assert said >= stats["duplicate_submits"]
    assert stats["signups"] == 1
    print(f"{said} said possibly resubmitted, {stats['duplicate_submits']} duplicate submits")


@pytest.mark.parametrize("flag", [["--poll-interval", "nan"], ["--timeout", "-5"],
                                  ["--timeout", "nan"], ["--timeout", "inf"],
                                  ["--poll-interval", "0"], ["--workers", "0"],
                                  ["--concurrency", "0"], ["--concurrency", "many"]])
def test_every_flag_is_checked_before_any_request(emulator: Emulator, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str],
                                                  flag: list[str]) -> None:
    (tmp_path / "p.txt").write_text("a fox\n")
    monkeypatch.setenv("ARTA_ENDPOINT", emulator.url)
    with pytest.raises(SystemExit) as exited:
        main(["batch", str(tmp_path / "p.txt"), "-o", str(tmp_path / "out"), *flag])
    assert exited.value.code == 2 and f"argument {flag[0]}" in capsys.readouterr().err
    stats = emulator.stats()
    assert (stats["signups"], stats["submits"]) == (0, 0)


def _tiny_files() -> None:
    """Under `ulimit -f`: no file may grow past 4 kB (the images are bigger, the manifest smaller)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not death (Python does it too)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4000, 4000))


def test_images_that_cannot_be_saved_are_recorded_and_a_rerun_saves_them(
    batch_emulator: Emulator, tmp_path: Path,
) -> None:
    command, env = _batch(tmp_path, batch_emulator, 3)
    limited = _run(command, env, preexec_fn=_tiny_files)
    assert limited.returncode == 1, limited.stderr
    assert "Traceback" not in limited.stderr
    states = Manifest(tmp_path / "out" / "arta-manifest.jsonl").states()
    assert len(states) == 3
    for state in states.values():
        assert (state.event, state.error_type) == ("failed", "SaveError"), limited.stderr
        assert state.record_id in batch_emulator.app.jobs()
    assert limited.stderr.count("File too large") == 3, limited.stderr
    assert "0 of 3 done (0 from an earlier run), 3 failed" in limited.stderr
    assert not list((tmp_path / "out").glob("*.png"))
    again = _run(command, env)
    assert again.returncode == 0, again.stderr
    _check_all_done(tmp_path, 3)
    stats = batch_emulator.stats()
    assert (stats["submits"], stats["duplicate_submits"]) == (3, 0)


def test_batch_with_its_own_emulator_reads_prompts_as_written(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes("\ufeffa fox\fin snow\na cat\u2028at noon\u0085\n".encode())
    done = subprocess.run(
        [sys.executable, "-m", "arta.cli", "batch", str(prompts), "--emulator",
         "-o", str(tmp_path / "out"), "--json", "--poll-interval", "0.05"],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT), "ARTA_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stderr
    *records, summary = (json.loads(line) for line in done.stdout.splitlines())
    assert sorted(r["prompt"] for r in records) == ["a cat\u2028at noon", "a fox\fin snow"]
    assert summary["done"] == 2
    assert not (tmp_path / "home").exists()  # a throw-away token store


def test_jsonl_parameters_reach_the_service(batch_emulator: Emulator, tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('# two jobs\n{"prompt": "a fox", "n": 2, "aspect_ratio": "16:9", "seed": 5}\n'
                    '\n{"prompt": "a cat", "style": "watercolor"}\n')
    done = subprocess.run(
        [sys.executable, "-m", "arta.cli", "batch", str(jobs), "-o", str(tmp_path / "out"),
         "--poll-interval", "0.05", "--json"], capture_output=True, text=True, timeout=120,
        check=False, env={**os.environ, "PYTHONPATH": str(ROOT), "ARTA_ENDPOINT": batch_emulator.url})
    assert done.returncode == 0, done.stderr
    fox, cat = sorted((json.loads(line) for line in done.stdout.splitlines()[:-1]),
                      key=lambda r: r["line"])
    assert (fox["line"], len(fox["files"]), fox["seed"], cat["line"]) == (2, 2, 5, 4)
    assert all(png_size(Path(f)) == (512, 288) for f in fox["files"])


def test_bad_lines_are_refused_before_anything_is_sent(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"prompt": "a fox", "n": 2}\n{"prompt": "a cat", "n": 9}\n')
    with pytest.raises(arta.InvalidInputError, match=r"jobs.jsonl, line 2: n must be from 1 to 4"):
        read_jobs(jobs)
    jobs.write_text('{"prompt": "a fox", "colour": "red"}\n')
    with pytest.raises(arta.InvalidInputError, match="unknown field.*colour"):
        read_jobs(jobs)


def test_gallery_is_a_contact_sheet_of_the_batch(batch_emulator: Emulator, tmp_path: Path) -> None:
    pytest.importorskip("arta.batch.gallery")
    batch_emulator.app.inject("submit", "fail", times=1)
    command, env = _batch(tmp_path, batch_emulator, 3, "--gallery")
    done = _run(command, env)
    assert done.returncode == 1, done.stderr  # one job failed
    page = (tmp_path / "out" / "index.html").read_text()
    for i in range(3):
        assert f"a fox, variation {i}" in page
    images = list((tmp_path / "out").glob("*.png"))
    assert len(images) == 2
    for image in images:  # linked relative to the page: it opens from the file system
        assert f'href="{image.name}"' in page
    assert "GENERATION_FAILED" in page or "GenerationFailed" in page


def test_the_progress_counts_add_up_as_jobs_run_side_by_side(emulator: Emulator,
                                                                tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("".join(f"a fox {i}\n" for i in range(10)))
    jobs = read_jobs(tmp_path / "p.txt")
    emulator.app.inject("submit", "fail", times=1)
    seen: list[dict[str, int]] = []
    with arta.Client(emulator.url, home=tmp_path / "home", poll_policy=FAST_POLL) as client:
        report = run_batch(jobs, Manifest(tmp_path / "out" / "m.jsonl"), tmp_path / "out",
                           client=client, concurrency=4, on_counts=seen.append)
    assert (report.count("done"), report.count("failed")) == (9, 1)
    assert seen[-1] == {"queued": 0, "in_flight": 0, "done": 9, "failed": 1}
    assert all(sum(counts.values()) == 10 for counts in seen)
    assert max(counts["in_flight"] for counts in seen) > 1  # jobs at once, from one thread
    assert [c["done"] + c["failed"] for c in seen] == sorted(c["done"] + c["failed"] for c in seen)


class _FillingManifest(Manifest):
    """A manifest on a disk that fills up after ``room`` records."""

    def __init__(self, path: Path, room: int) -> None:
        super().__init__(path)
        self.room = room
        self.intents = 0

    def append(self, record: dict[str, Any]) -> None:
        if self.room <= 0:
            raise ManifestError(f"the manifest {self.path} could not be written: No space left")
        self.room -= 1
        self.intents += record["event"] == "intent"
        super().append(record)


def test_no_job_is_submitted_once_the_manifest_cannot_be_written(emulator: Emulator,
                                                                 tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("".join(f"a fox {i}\n" for i in range(40)))
    manifest = _FillingManifest(tmp_path / "out" / "m.jsonl", room=9)
    with arta.Client(emulator.url, home=tmp_path / "home", poll_policy=FAST_POLL) as client:
        report = run_batch(read_jobs(tmp_path / "p.txt"), manifest, tmp_path / "out",
                           client=client, concurrency=4)
    assert report.manifest_error is not None and "No space left" in report.manifest_error
    # Every submit the service saw had its intent on disk first, and the run stopped.
    assert emulator.stats()["submits"] <= manifest.intents < 40
    unrecorded = [o for o in report.outcomes if o.manifest_error and o.record_id]
    assert all(o.record_id in emulator.app.jobs() for o in unrecorded)


def test_on_a_terminal_the_progress_is_a_bar_with_rate_and_time_left(tmp_path: Path) -> None:
    import pty

    (tmp_path / "p.txt").write_text("a fox\na cat\n")
    leader, follower = pty.openpty()
    batch = subprocess.Popen(
        [sys.executable, "-m", "arta.cli", "batch", str(tmp_path / "p.txt"), "--emulator",
         "-o", str(tmp_path / "out"), "--poll-interval", "0.05"],
        stdout=subprocess.DEVNULL, stderr=follower, stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT), "ARTA_HOME": str(tmp_path / "home")})
    os.close(follower)
    screen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed: the batch ended
            break
        if not chunk:
            break
        screen += chunk
    os.close(leader)
    assert batch.wait(timeout=60) == 0, screen
    text = screen.decode()
    assert re.search(r"\r\x1b\[Karta: \[[#.]{24}\] \d/2 done, \d in flight, \d queued, 0 failed, "
                     r"(--|[\d.]+) jobs/min, ETA \S+", text), text
    assert "arta: batch: 2 of 2 done" in text


class _Recorder:
    """A progress display that keeps what it was told."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def __enter__(self) -> _Recorder:  # noqa: PYI034 - a test double, never subclassed
        self.calls.append(("enter", None))
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.calls.append(("exit", None))

    def resumed(self, done: int) -> None:
        self.calls.append(("resumed", done))

    def update(self, *, done: int, in_flight: int, queued: int, failed: int) -> None:
        self.calls.append(("update", (done, in_flight, queued, failed)))

    def message(self, text: str) -> None:
        self.calls.append(("message", text))


def test_run_batch_shows_progress_and_a_rerun_counts_earlier_jobs_apart(
    emulator: Emulator, tmp_path: Path,
) -> None:
    (tmp_path / "p.txt").write_text("".join(f"a fox {i}\n" for i in range(4)))
    manifest = Manifest(tmp_path / "out" / "m.jsonl")
    with arta.Client(emulator.url, home=tmp_path / "home", poll_policy=FAST_POLL) as client:
        first = _Recorder()
        run_batch(read_jobs(tmp_path / "p.txt"), manifest, tmp_path / "out", client=client,
                  concurrency=4, progress=first)
        with (tmp_path / "p.txt").open("a") as file:
            file.write("a cat 4\na cat 5\n")
        second = _Recorder()
        run_batch(read_jobs(tmp_path / "p.txt"), manifest, tmp_path / "out", client=client,
                  concurrency=4, progress=second)
    for recorder, earlier, total in ((first, 0, 4), (second, 4, 6)):
        kinds = [kind for kind, _ in recorder.calls]
        assert kinds[0] == "enter" and kinds[-1] == "exit"
        assert ("resumed", earlier) in recorder.calls
        updates = [value for kind, value in recorder.calls if kind == "update"]
        assert updates[-1] == (total, 0, 0, 0)
