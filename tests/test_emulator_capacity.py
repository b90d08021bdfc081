"""The emulator as a service with a capacity and a timing model, seen from a client's socket.

The emulator's clock is a fake one that the test moves: timelines are
computed from it, so nothing here sleeps.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from arta.emulator import Emulator, TimingModel
from arta.styles import ASPECT_RATIOS

ROOT = Path(__file__).resolve().parent.parent
SIGNUP = "/www.googleapis.com/identitytoolkit/v3/relyingparty/signupNewUser?key=k"
TEXT2IMAGE = "/api/v1/text2image"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def serve(clock: Clock, **options: Any) -> Emulator:
    return Emulator(clock=clock, **options).start()


def account(emu: Emulator) -> dict[str, str]:
    """The Authorization header of a new account."""
    answer = requests.post(f"{emu.url}{SIGNUP}", json={}, timeout=5)
    return {"Authorization": answer.json()["idToken"]}


def submit(emu: Emulator, auth: dict[str, str], **fields: str) -> requests.Response:
    return requests.post(f"{emu.url}{TEXT2IMAGE}", data={"prompt": "a fox", **fields},
                         headers=auth, timeout=5)


def submit_ok(emu: Emulator, auth: dict[str, str], **fields: str) -> str:
    answer = submit(emu, auth, **fields)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["record_id"])


def timeline(emu: Emulator, record_id: str) -> dict[str, Any]:
    answer = requests.get(f"{emu.url}/emulator/jobs/{record_id}", timeout=5)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def status(emu: Emulator, auth: dict[str, str], record_id: str) -> str:
    answer = requests.get(f"{emu.url}{TEXT2IMAGE}/{record_id}/status", headers=auth, timeout=5)
    return str(answer.json()["status"])


@pytest.fixture
def fifo(clock: Clock) -> Iterator[Emulator]:
    emu = serve(clock, capacity=2, queue_seconds=0, progress_seconds=(1, 3), seed=4)
    yield emu
    emu.stop()


# -- capacity: K slots, first submitted first served ---------------------------


def test_a_capacity_of_two_runs_six_jobs_two_at_a_time_in_submit_order(
    fifo: Emulator, clock: Clock
) -> None:
    auth = account(fifo)
    record_ids = []
    for _ in range(6):
        record_ids.append(submit_ok(fifo, auth))
        clock.now += 0.25

    lines = [timeline(fifo, record_id) for record_id in record_ids]

    starts = [line["started_at"] for line in lines]
    assert starts == sorted(starts)
    assert all(line["started_at"] >= line["submitted_at"] for line in lines)
    # Sweep the IN_PROGRESS intervals: never more than two at once, and two do overlap.
    edges = sorted([(line["started_at"], 1) for line in lines]
                   + [(line["finished_at"], -1) for line in lines])
    running, most = 0, 0
    for _, step in edges:
        running += step
        most = max(most, running)
    assert most == 2
    # The third job waited for the first slot to be free, not for a timer.
    first_free = min(lines[0]["finished_at"], lines[1]["finished_at"])
    assert lines[2]["started_at"] == first_free


def test_statuses_follow_the_slots(fifo: Emulator, clock: Clock) -> None:
    auth = account(fifo)
    record_ids = [submit_ok(fifo, auth) for _ in range(3)]
    third = timeline(fifo, record_ids[2])

    assert [status(fifo, auth, r) for r in record_ids] == ["IN_PROGRESS", "IN_PROGRESS",
                                                           "IN_QUEUE"]
    clock.now = third["started_at"]
    assert status(fifo, auth, record_ids[2]) == "IN_PROGRESS"
    clock.now = third["finished_at"]
    assert [status(fifo, auth, r) for r in record_ids] == ["DONE"] * 3


def test_the_jobs_endpoint_answers_the_timeline_and_404(fifo: Emulator, clock: Clock) -> None:
    record_id = submit_ok(fifo, account(fifo), style="Watercolor", steps="20", seed="5")

    line = timeline(fifo, record_id)
    missing = requests.get(f"{fifo.url}/emulator/jobs/no-such-job", timeout=5)

    assert set(line) == {"record_id", "status", "submitted_at", "started_at", "finished_at",
                         "params"}
    assert line["record_id"] == record_id and line["status"] == "IN_PROGRESS"
    assert line["submitted_at"] == clock.now == line["started_at"] < line["finished_at"]
    assert line["params"] == {"prompt": "a fox", "negative_prompt": "", "style": "Watercolor",
                              "images_num": 1, "cfg_scale": 7.0, "steps": 20,
                              "aspect_ratio": "1:1", "seed": 5}
    assert line == fifo.app.job_timeline(record_id)
    assert missing.status_code == 404 and missing.json() == {"detail": "Record not found"}


def test_a_stuck_job_holds_its_slot_forever(clock: Clock) -> None:
    emu = serve(clock, capacity=1, queue_seconds=0, progress_seconds=1)
    try:
        emu.app.inject("submit", "stuck")
        auth = account(emu)
        stuck, after = submit_ok(emu, auth), submit_ok(emu, auth)
        clock.now += 1000

        assert timeline(emu, stuck)["finished_at"] is None
        assert status(emu, auth, after) == "IN_QUEUE"
    finally:
        emu.stop()


# -- one account's unfinished jobs ---------------------------------------------


def test_a_submit_past_the_per_user_limit_gets_429_with_retry_after(clock: Clock) -> None:
    emu = serve(clock, max_jobs_per_user=2, queue_seconds=0, progress_seconds=10)
    try:
        auth, other = account(emu), account(emu)
        submit_ok(emu, auth)
        clock.now += 2.5
        submit_ok(emu, auth)

        refused = submit(emu, auth)
        clock.now += 7.3  # 0.2 s before the first job ends
        refused_late = submit(emu, auth)
        submit_ok(emu, other)  # the limit is per account
        clock.now += 0.2
        submit_ok(emu, auth)

        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "8"  # ceil(10 - 2.5)
        assert "at most 2" in refused.json()["detail"]
        assert refused_late.headers["Retry-After"] == "1"  # at least 1
        stats = emu.stats()
        assert stats["rejected_429"] == 2 and stats["submits"] == 4
        assert stats["max_in_flight_per_user"] == 2
    finally:
        emu.stop()


def test_max_in_flight_per_user_is_counted_without_a_limit(clock: Clock) -> None:
    emu = serve(clock, queue_seconds=0, progress_seconds=5)
    try:
        auth = account(emu)
        for _ in range(3):
            submit_ok(emu, auth)
        clock.now += 6
        submit_ok(emu, auth)

        assert emu.stats()["max_in_flight_per_user"] == 3
        assert emu.stats()["rejected_429"] == 0
    finally:
        emu.stop()


# -- busy slot time --------------------------------------------------------------


def test_busy_slot_seconds_sums_the_slots_busy_time_up_to_now(clock: Clock) -> None:
    emu = serve(clock, capacity=2, queue_seconds=0, progress_seconds=4)
    try:
        auth = account(emu)
        for _ in range(3):  # slots busy 0-4 and 0-4, then 4-8
            submit_ok(emu, auth)

        seen = []
        for advance in (2, 4, 94):
            clock.now += advance
            seen.append(requests.get(f"{emu.url}/emulator/stats", timeout=5)
                        .json()["busy_slot_seconds"])
        emu.app.reset()

        assert seen == [4.0, 10.0, 12.0]
        assert emu.stats()["busy_slot_seconds"] == 0
    finally:
        emu.stop()


# -- the timing model ------------------------------------------------------------


def test_model_time_grows_with_steps_images_and_megapixels() -> None:
    model = TimingModel()
    base = model.mean_seconds("Watercolor", 30, 1, "1:1")

    assert model.mean_seconds("Watercolor", 60, 1, "1:1") > base
    assert model.mean_seconds("Watercolor", 30, 2, "1:1") > base
    assert model.mean_seconds("Watercolor", 30, 1, "16:9") < base  # fewer pixels
    assert model.megapixels("1:1") == pytest.approx(1024 * 1024 / 1e6)
    assert model.mean_seconds("Flux", 30, 1, "1:1") > base  # a heavier model's base


@pytest.mark.parametrize("ratio", ASPECT_RATIOS)
def test_model_defaults_give_8_to_20_seconds_for_common_parameters(ratio: str) -> None:
    model = TimingModel()
    for style in ("Flux", "Watercolor", "SDXL 1.0"):
        for images in (1, 2):
            assert 7.5 <= model.mean_seconds(style, 30, images, ratio) <= 20.5


def test_jobs_draw_their_time_from_the_model_within_the_noise(clock: Clock) -> None:
    emu = serve(clock, progress_seconds=None, queue_seconds=0, seed=9)
    try:
        auth = account(emu)
        model = emu.app.timing
        for ratio in ("1:1", "9:21"):
            for _ in range(5):
                line = timeline(emu, submit_ok(emu, auth, aspect_ratio=ratio, style="Anime"))
                mean = model.mean_seconds("Anime", 30, 1, ratio)
                took = line["finished_at"] - line["started_at"]
                assert mean * 0.9 <= took <= mean * 1.1
    finally:
        emu.stop()


def test_flat_progress_seconds_ignores_the_parameters(clock: Clock) -> None:
    emu = serve(clock, progress_seconds=3, queue_seconds=0)
    try:
        auth = account(emu)
        small = timeline(emu, submit_ok(emu, auth, steps="5", aspect_ratio="9:21"))
        large = timeline(emu, submit_ok(emu, auth, steps="150", images_num="4"))

        assert small["finished_at"] - small["started_at"] == 3
        assert large["finished_at"] - large["started_at"] == 3
    finally:
        emu.stop()


def test_set_speed_slows_the_jobs_submitted_from_then_on(clock: Clock) -> None:
    emu = serve(clock, timing=TimingModel(noise=0), queue_seconds=0)
    try:
        auth = account(emu)
        before = timeline(emu, submit_ok(emu, auth))
        emu.app.set_speed(2.0)
        after = timeline(emu, submit_ok(emu, auth))

        took = [line["finished_at"] - line["started_at"] for line in (before, after)]
        assert took[1] == pytest.approx(2 * took[0])
        assert took[0] == pytest.approx(TimingModel().mean_seconds("Flux", 30, 1, "1:1"))
    finally:
        emu.stop()


def test_the_speed_can_be_set_from_another_process(clock: Clock) -> None:
    emu = serve(clock, progress_seconds=4, queue_seconds=0)
    try:
        url = f"{emu.url}/emulator/speed"
        slower = requests.post(url, json={"scale": 1.5}, timeout=5)
        bad = [requests.post(url, json=body, timeout=5) for body in ({"scale": -1}, {}, [2])]
        line = timeline(emu, submit_ok(emu, account(emu)))

        assert slower.json() == {"scale": 1.5}
        assert [answer.status_code for answer in bad] == [400, 400, 400]
        assert line["finished_at"] - line["started_at"] == 6
    finally:
        emu.stop()


def test_bad_capacity_and_timing_options_are_refused() -> None:
    with pytest.raises(ValueError, match="capacity"):
        Emulator(capacity=0)
    with pytest.raises(ValueError, match="not both"):
        Emulator(progress_seconds=5, timing=TimingModel())
    with pytest.raises(ValueError, match="noise"):
        TimingModel(noise=1.5)


# -- the command line --------------------------------------------------------------


def test_the_emulator_command_takes_capacity_and_the_per_user_limit() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    bad = subprocess.run([sys.executable, "-m", "arta.cli", "emulator", "--capacity", "0"],
                         capture_output=True, text=True, timeout=30, check=False, env=env)
    assert bad.returncode == 2 and "--capacity" in bad.stderr
    server = subprocess.Popen(
        [sys.executable, "-m", "arta.cli", "emulator", "--capacity", "2",
         "--max-jobs-per-user", "3", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        auth = {"Authorization": requests.post(f"{url}{SIGNUP}", json={}, timeout=5)
                .json()["idToken"]}
        answers = [requests.post(f"{url}{TEXT2IMAGE}", data={"prompt": "a fox"}, headers=auth,
                                 timeout=5) for _ in range(4)]
        stats = requests.get(f"{url}/emulator/stats", timeout=5).json()
        lines = [requests.get(f"{url}/emulator/jobs/{a.json()['record_id']}", timeout=5).json()
                 for a in answers[:3]]

        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert stats["rejected_429"] == 1 and stats["submits"] == 3
        # Model timing (no --progress-seconds): 8-20 s, and the third job waits for a slot.
        assert all(7 <= line["finished_at"] - line["started_at"] <= 23 for line in lines)
        assert lines[2]["started_at"] >= min(lines[0]["finished_at"], lines[1]["finished_at"])
    finally:
        server.terminate()
        server.wait(timeout=10)

