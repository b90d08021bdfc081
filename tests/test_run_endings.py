"""How a run of many jobs ends when it does not end well (issue 18, items 2, 6, 7 and 10).

The input raising, Ctrl-C, a batch's driver killed, the client closed under a running ``map``:
in each case every job that was submitted is handed back with its record
id, and nothing is submitted afterwards.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FAST_POLL
from hostile_server import HostileServer

import arta
from arta.emulator import Emulator
from arta.errors import ClientClosedError, RunInterrupted

ROOT = Path(__file__).resolve().parent.parent
#: Only a guard against a hang (the bug this file pins), never a speed limit.
HANG = 120.0


class InputBroke(Exception):
    """What the caller's input raises."""


def _prompts(count: int, then_raise: bool = True) -> Iterator[str]:
    for index in range(count):
        yield f"a fox, number {index}"
    if then_raise:
        raise InputBroke(f"the input broke after {count} items")


def _in_thread(function: Any) -> dict[str, Any]:
    """Run ``function`` on a thread; its result or error, or "hung" if it never ends."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = function()
        except BaseException as error:  # noqa: BLE001 - what it raised is the answer
            box["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HANG)
    if thread.is_alive():
        box["hung"] = True
    return box


def _until(condition: Any) -> None:
    deadline = time.monotonic() + HANG
    while not condition():
        assert time.monotonic() < deadline, "the condition never came true"
        time.sleep(0.02)


# -- item 6: the input raises ------------------------------------------------------


@pytest.mark.parametrize(("items", "concurrency"), [(10, 4), (10, 64), (3, 8)])
def test_an_input_that_raises_ends_the_map_after_its_jobs_are_reported(
        client: arta.Client, emulator: Emulator, items: int, concurrency: int) -> None:
    seen: list[arta.Outcome] = []

    def consume() -> None:
        seen.extend(client.map(_prompts(items), concurrency=concurrency))

    box = _in_thread(consume)
    assert "hung" not in box, "map hung after its input raised"
    assert isinstance(box.get("error"), InputBroke), box  # not cut short in silence
    submitted = emulator.stats()["submits"]
    assert len(seen) == items == submitted  # every paid job reported before the error
    assert all(outcome.ok and outcome.record_id for outcome in seen)
    time.sleep(0.5)  # (whatever was going to be sent late would be by now)
    assert emulator.stats()["submits"] == submitted  # nothing submitted after map raised


def test_the_input_is_read_on_the_thread_that_iterates(client: arta.Client) -> None:
    readers = set()

    def items() -> Iterator[str]:
        for index in range(12):
            readers.add(threading.get_ident())
            yield f"a fox {index}"

    assert all(outcome.ok for outcome in client.map(items(), concurrency=3))
    assert readers == {threading.get_ident()}


# -- item 7: Ctrl-C ---------------------------------------------------------------


def test_ctrl_c_during_map_hands_back_every_submitted_job(tmp_path: Path) -> None:
    with Emulator(queue_seconds=60, progress_seconds=1) as slow, \
            arta.Client(slow.url, home=tmp_path, poll_policy=FAST_POLL) as client:
        main = threading.main_thread().ident
        assert main == threading.get_ident()

        def interrupt() -> None:
            _until(lambda: slow.stats()["submits"] >= 16)
            assert main is not None
            signal.pthread_kill(main, signal.SIGINT)  # Ctrl-C, in the thread iterating

        threading.Thread(target=interrupt, daemon=True).start()
        with pytest.raises(RunInterrupted) as caught:
            for _ in client.map(_prompts(40, then_raise=False), concurrency=16):
                pass
        submitted = slow.stats()["submits"]
        assert len(caught.value.record_ids) == submitted >= 16
        assert str(caught.value.record_ids[0]) in str(caught.value)
        time.sleep(0.5)
        assert slow.stats()["submits"] == submitted  # and nothing more goes out


def test_ctrl_c_while_the_cli_saves_the_images_names_the_job(tmp_path: Path) -> None:
    with HostileServer() as server:
        out = tmp_path / "out"
        child = subprocess.Popen(
            [sys.executable, "-m", "arta", "generate", "a fox", "-o", str(out), "--quiet"],
            stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), "ARTA_ENDPOINT": f"{server.url}/slow-image",
                 "ARTA_HOME": str(tmp_path / "home"), "NO_PROXY": "*"})
        _until(lambda: list(out.glob(".arta-*.part")))  # the job is DONE, its image on its way
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=HANG)
    assert child.returncode == 130
    assert "job-slow-image" in err and "arta status job-slow-image" in err, err


def test_leaving_a_map_early_logs_the_jobs_it_leaves_running(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    uuid = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
    with Emulator(queue_seconds=60, progress_seconds=1) as slow, \
            arta.Client(slow.url, home=tmp_path, poll_policy=FAST_POLL) as client, \
            caplog.at_level(logging.WARNING, logger="arta"):
        items = ["", *(f"a fox {index}" for index in range(7))]  # the first fails at once
        with contextlib.closing(client.map(items, concurrency=8)) as outcomes:
            for outcome in outcomes:
                assert outcome.error is not None
                _until(lambda: slow.stats()["submits"] == 7)
                break  # (Ctrl-C in a loop body ends the same way)
        _until(lambda: len(set(uuid.findall(caplog.text))) == 7)  # each paid job, by its id


# -- item 2: arta batch --workers, its driver killed ---------------------------------


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie no one has reaped yet is dead


def _workers_of(pid: int) -> list[int]:
    """The batch's worker processes (spawned by ``pid``), read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent == pid and b"spawn_main" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers in /proc")
def test_workers_die_with_their_driver_killed_by_sigkill_and_a_rerun_pays_nothing_twice(
        tmp_path: Path) -> None:
    prompts = 120
    with Emulator(queue_seconds=(0.5, 1.5), progress_seconds=(0.5, 1.0)) as emulator:
        (tmp_path / "prompts.txt").write_text("".join(f"a fox {i}\n" for i in range(prompts)))
        command = [sys.executable, "-m", "arta.cli", "batch", str(tmp_path / "prompts.txt"),
                   "-o", str(tmp_path / "out"), "--workers", "2", "--concurrency", "8", "--json"]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "ARTA_ENDPOINT": emulator.url,
               "ARTA_HOME": str(tmp_path / "home")}
        driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        _until(lambda: emulator.stats()["submits"] >= 10)
        workers = _workers_of(driver.pid)
        assert len(workers) == 2
        driver.kill()
        driver.wait()
        _until(lambda: not any(map(_alive, workers)))
        submitted = emulator.stats()["submits"]
        assert submitted < prompts  # they did not go on with the batch
        time.sleep(0.5)
        assert emulator.stats()["submits"] == submitted
        again = subprocess.run([*command, "--concurrency", "64"], env=env, capture_output=True,
                               text=True, timeout=HANG, check=False)
        summary = json.loads(again.stdout.splitlines()[-1])
        assert again.returncode == 0 and summary["done"] == prompts, again.stderr
        assert emulator.stats()["submits"] <= prompts + summary["possibly_resubmitted"]


# -- item 10: close() under a running map ------------------------------------------


def test_close_ends_a_running_map_and_every_later_call(tmp_path: Path) -> None:
    with Emulator(queue_seconds=60, progress_seconds=1) as slow:
        before = set(threading.enumerate())
        client = arta.Client(slow.url, home=tmp_path, poll_policy=FAST_POLL)
        generation = client.submit("a fox")

        def close_after_submits() -> None:
            _until(lambda: slow.stats()["submits"] >= 1 + 8)
            client.close()

        closer = threading.Thread(target=close_after_submits, daemon=True)
        closer.start()
        box = _in_thread(lambda: list(client.map(_prompts(60, then_raise=False), concurrency=8)))
        closer.join(HANG)
        assert "hung" not in box and "error" not in box, box
        submitted = slow.stats()["submits"] - 1
        outcomes = box["result"]
        assert len([o for o in outcomes if o.record_id]) == submitted  # each handed back
        assert all(isinstance(o.error, arta.errors.GenerationCancelled) for o in outcomes)
        time.sleep(0.5)
        assert slow.stats()["submits"] == submitted + 1  # no submit after close

        for call in (lambda: client.submit("a fox"), lambda: client.resume(generation.record_id),
                     lambda: generation.wait(timeout=5), lambda: client.generate("a fox"),
                     lambda: list(client.map(["a fox"]))):
            with pytest.raises(ClientClosedError):
                call()
        assert slow.stats()["submits"] == submitted + 1
        # The client's threads (its loop's, its I/O threads); not the transports'
        # process-wide deadline watchdog, one thread for all clients.
        mine = [t for t in set(threading.enumerate()) - before
                if t.name.startswith("arta-") and t.name != "arta-watchdog"]
        for thread in mine:
            thread.join(HANG)
        assert [t.name for t in mine if t.is_alive()] == []
