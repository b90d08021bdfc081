"""The shared ``poll_stats.json``: merged by concurrent processes, bounded, never fatal when corrupt.

And the learned policy end to end: against the emulator, and from the CLI.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import many_processes

import arta
from arta.cli import commands as cli
from arta.cli.args import build_parser
from arta.emulator import Emulator
from arta.polling.learned import LearnedPollPolicy
from arta.polling.stats import FORMAT, PollStats
from arta.styles import STYLES

KEY = ("Flux", 30, 1, "1:1")


def _record_many(path: str, worker: int, count: int) -> None:
    stats = PollStats(path, flush_interval=0)  # every record is a locked read-merge-write
    for index in range(count):
        at = 1000.0 + worker * count + index
        stats.record((STYLES[worker + 1], 30, 1, "1:1"), (9.0, 10.0, at), (0.0, 1.0, at))
        stats.record(KEY, (9.0, 10.0, at), None)
    stats.flush()


def test_concurrent_writer_processes_lose_no_observation(tmp_path: Path) -> None:
    path = tmp_path / "poll_stats.json"
    workers, count = 8, 15
    processes = [many_processes().Process(
        target=_record_many, args=(str(path), worker, count)) for worker in range(workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    data = json.loads(path.read_text(encoding="utf-8"))  # never torn: it parses
    assert data["format"] == FORMAT
    counts = {entry["style"]: entry["count"] for entry in data["classes"]}
    assert counts == {"Flux": workers * count, **{STYLES[w + 1]: count for w in range(workers)}}
    assert data["queue"]["count"] == workers * count
    assert not list(tmp_path.glob(".poll_stats.*"))  # no temp file left behind


def _one_class(**fields: Any) -> bytes:
    """A stats file of one class of ``Flux, 30 steps, n=1, 1:1`` with ``fields`` changed."""
    entry = {"style": "Flux", "steps": 30, "n": 1, "aspect_ratio": "1:1", "count": 1,
             "recent": [[1, 2, 2]], **fields}
    return json.dumps({"format": FORMAT, "classes": [entry],
                       "queue": {"count": 0, "recent": []}}).encode()


@pytest.mark.parametrize("content", [
    b"garbage{",
    b'{"format": "something else", "classes": []}',
    b'{"format": "arta-poll-stats/1", "classes": {"not": "a list"}, "queue": {}}',
    (b'{"format": "arta-poll-stats/1", "classes": [{"style": "Flux", "steps": 30, "n": 1, '
    b'"aspect_ratio": "1:1", "count": 1, "recent": [[NaN, 1, 2]]}], '
    b'"queue": {"count": 0, "recent": []}}'),
    b"[" * 100_000 + b"]" * 100_000,
    b"\xff\xfe not utf-8 \x80",
    b"[]",
    # issue 18, item 4: well-formed, but no job can have these (each paid a submit, then failed)
    *(_one_class(**fields) for fields in (
        {"steps": 0}, {"aspect_ratio": "7:3"}, {"steps": 10**400},
        {"recent": [[1e-300, 1e300, 2]]})),
], ids=["garbage", "foreign", "wrong-shape", "nan", "deep-nesting", "not-utf8", "a-list",
        "steps-0", "ratio-7:3", "steps-10**400", "durations-1e300"])
def test_a_corrupt_file_is_ignored_with_a_warning_and_rebuilt(
        tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "poll_stats.json"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="arta.polling.stats"):
        stats = PollStats(path, flush_interval=0)
    assert stats.state().classes == {}
    assert "unusable" in caplog.text and "will be rebuilt" in caplog.text
    stats.record(KEY, (9.0, 10.0, 1.0), None)  # the next write rebuilds it
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["format"] == FORMAT and data["classes"][0]["count"] == 1


def test_the_file_keeps_the_most_recently_updated_classes_only(tmp_path: Path) -> None:
    stats = PollStats(tmp_path / "poll_stats.json", flush_interval=0, max_classes=4, keep=3)
    for index in range(10):
        for repeat in range(5):
            stats.record(("Flux", 10 + index, 1, "1:1"), (1.0, 2.0, index * 10.0 + repeat), None)
    data = json.loads(stats.path.read_text(encoding="utf-8"))
    assert sorted(entry["steps"] for entry in data["classes"]) == [16, 17, 18, 19]
    assert all(len(entry["recent"]) == 3 and entry["count"] == 5 for entry in data["classes"])


def test_writes_are_batched_not_one_per_job(tmp_path: Path) -> None:
    stats = PollStats(tmp_path / "poll_stats.json", flush_interval=3600)
    stats.record(KEY, (9.0, 10.0, 1.0), None)  # the first write goes at once
    written = stats.path.read_text(encoding="utf-8")
    for index in range(50):
        stats.record(KEY, (9.0, 10.0, 2.0 + index), None)
    assert stats.path.read_text(encoding="utf-8") == written  # not yet: within the interval
    assert stats.state().classes[KEY].count == 51  # though this process knows them all
    stats.flush()  # as at exit
    assert json.loads(stats.path.read_text(encoding="utf-8"))["classes"][0]["count"] == 51


def test_after_a_few_jobs_of_one_class_the_next_needs_fewer_polls_than_fixed(
        tmp_path: Path) -> None:
    fixed = arta.PollPolicy(first_delay=0.05, interval=0.05, growth=1, max_delay=0.05, jitter=0)
    with Emulator(queue_seconds=0, progress_seconds=0.8) as emulator, \
            arta.Client(emulator.url, home=tmp_path, timeout=60) as client:
        learned = LearnedPollPolicy(tmp_path, fallback=fixed, min_delay=0.02,
                                    lateness_per_poll=0.02)

        def polls(policy: arta.polling.PollPlanner) -> int:
            before = emulator.stats()["polls"]
            client.submit("a fox", seed=1).wait(poll_policy=policy)
            return emulator.stats()["polls"] - before

        fixed_polls = polls(fixed)
        for _ in range(4):
            polls(learned)
        assert polls(learned) < fixed_polls
    assert (tmp_path / "poll_stats.json").exists()


def test_arta_stats_shows_what_was_learned(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARTA_HOME", str(tmp_path))
    assert cli.main(["stats"]) == 0
    assert "no finished job seen yet" in capsys.readouterr().out
    stats = PollStats(tmp_path / "poll_stats.json", flush_interval=0)
    for index in range(4):
        stats.record(("Anime", 20, 2, "16:9"), (11.5, 12.5, float(index)), (0.5, 1.5, index))
    assert cli.main(["stats"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "poll_stats.json") in out
    row = next(line for line in out.splitlines() if line.startswith("Anime"))
    assert row.split()[:5] == ["Anime", "20", "2", "16:9", "4"]
    assert 11.0 < float(row.split()[5].rstrip("s")) < 13.0
    assert "queue:" in out


def test_poll_interval_on_the_command_line_is_a_fixed_policy() -> None:
    args = build_parser().parse_args(["generate", "a fox", "--poll-interval", "1.5"])
    policy = cli._client_options(args)["poll_policy"]
    assert policy == arta.PollPolicy(first_delay=1.5, interval=1.5, growth=1, max_delay=1.5,
                                     jitter=0)


def test_an_observation_stamped_in_the_future_is_read_as_made_now(tmp_path: Path) -> None:
    path = tmp_path / "poll_stats.json"
    path.write_bytes(_one_class(recent=[[9.0, 10.0, time.time() + 10**6]]))  # issue 18, item 12
    stats = PollStats(path, flush_interval=0)
    [(lo, hi, at)] = stats.state().classes[("Flux", 30, 1, "1:1")].recent
    assert (lo, hi) == (9.0, 10.0) and at <= time.time()  # so it ages out like any other


def _hold_lock(lock_path: str, ready: Any, release: Any) -> None:
    import filelock
    with filelock.FileLock(lock_path):
        ready.set()
        release.wait(300)


def test_a_lock_held_by_another_process_does_not_hold_up_the_end_of_a_wait(
        tmp_path: Path) -> None:
    # issue 18, item 12: the flush ran before the wait ended and waited for the lock
    path = tmp_path / "poll_stats.json"
    context = many_processes()
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(f"{path}.lock", ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        stats = PollStats(path, flush_interval=0, lock_timeout=300)
        recording = threading.Thread(target=stats.record, args=(KEY, (9.0, 10.0, 1.0), None),
                                     daemon=True)
        recording.start()
        recording.join(30)  # a bound on a hang, not a speed: the lock is held for 300 s
        assert not recording.is_alive()
        assert stats.state().classes[KEY].count == 1  # learned at once, written later
    finally:
        release.set()
        holder.join(60)
    stats.flush()
    assert json.loads(path.read_text(encoding="utf-8"))["classes"][0]["count"] == 1


def test_a_fifo_in_place_of_the_file_does_not_hang_a_client(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "poll_stats.json"
    os.mkfifo(path)  # issue 18, item 12: opening it for reading blocked for ever
    made: list[arta.Client] = []
    with caplog.at_level(logging.WARNING, logger="arta.polling.stats"):
        thread = threading.Thread(target=lambda: made.append(arta.Client(home=tmp_path)),
                                  daemon=True)
        thread.start()
        thread.join(30)  # a bound on a hang, not a speed
    assert made, "Client() hung on a FIFO"
    made[0].close()
    assert "not a regular file" in caplog.text and "will be rebuilt" in caplog.text


def test_arta_stats_never_prints_terminal_escapes_from_the_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARTA_HOME", str(tmp_path))
    (tmp_path / "poll_stats.json").write_bytes(
        _one_class(style="\x1b]0;owned\x07\x1b[2J", recent=[[9, 10, 2], [9, 10, 3], [9, 10, 4]]))
    assert cli.main(["stats"]) == 0  # issue 18, item 12: the escapes reached the terminal
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out


def test_temp_files_of_killed_writers_are_swept_by_the_next_write(tmp_path: Path) -> None:
    # issue 18, item 15: 23 of them after 40 kill rounds, never removed
    dead = [tmp_path / f".poll_stats.dead{index}.tmp" for index in range(3)]
    for temp in dead:
        temp.write_text("{", encoding="utf-8")
        os.utime(temp, (time.time() - 3600, time.time() - 3600))
    young = tmp_path / ".poll_stats.writing.tmp"  # maybe a live writer's: left alone
    young.write_text("{", encoding="utf-8")
    stats = PollStats(tmp_path / "poll_stats.json", flush_interval=0)
    stats.record(KEY, (9.0, 10.0, 1.0), None)
    assert not any(temp.exists() for temp in dead)
    assert young.exists()


def test_arta_stats_shows_the_fitted_cost_of_the_work_and_each_style(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARTA_HOME", str(tmp_path))
    stats = PollStats(tmp_path / "poll_stats.json", flush_interval=0)
    for index, (style, steps) in enumerate([("Anime", 20), ("Anime", 40), ("Flux", 20),
                                            ("Flux", 40)] * 3):
        seconds = steps / 4 * (1.5 if style == "Flux" else 1.0)  # time in proportion to steps
        stats.record((style, steps, 1, "1:1"), (seconds - 0.1, seconds + 0.1, float(index)),
                     None)
    assert cli.main(["stats"]) == 0
    out = capsys.readouterr().out
    steps_slope = float(out.split("steps^")[1].split()[0])
    assert 0.8 < steps_slope < 1.2  # it learned that time grows in proportion to the steps
    styles = out.split("styles (time of 30 steps, one 1:1 image): ")[1].splitlines()[0]
    anime, flux = (float(part.split()[-1].rstrip("s")) for part in styles.split(", "))
    assert anime == pytest.approx(7.5, rel=0.1) and flux == pytest.approx(11.25, rel=0.1)
