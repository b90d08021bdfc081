"""Injected faults and timelines of the emulator, over loopback HTTP as a client meets them.

Each fault kind is provoked on the endpoints it applies to, deterministically
with ``app.inject`` (or a plan at probability 1), and the test checks both
sides: what the client receives, and what the service did or did not do.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from arta.emulator import (
    ENDPOINTS,
    FAULT_KINDS,
    Emulator,
    EmulatorApp,
    FaultPlan,
    FaultRule,
    Request,
    parse_faults,
    parse_seconds,
)

KEY = "AIzaSyB3-71wG0fIt0shj0ee4fvx1shcjJHGrrQ"
SIGNUP = "/www.googleapis.com/identitytoolkit/v3/relyingparty/signupNewUser"
REFRESH = "/securetoken.googleapis.com/v1/token"
TEXT2IMAGE = "/api/v1/text2image"
FORM = {"prompt": "a lighthouse in a storm", "style": "Flux", "images_num": "1",
        "aspect_ratio": "1:1", "seed": "4242"}
#: Which counter a request to each endpoint moves when it is performed.
COUNTER = {"signup": "signups", "refresh": "refreshes", "submit": "submits",
           "status": "polls", "image": "downloads"}


@dataclass
class Ready:
    """An emulator with an account and a finished job, so every endpoint can be called."""

    emu: Emulator
    id_token: str
    refresh_token: str
    record_id: str
    image_url: str

    def call(self, endpoint: str, timeout: float | tuple[float, float] = 5) -> requests.Response:
        """One well-formed request to ``endpoint``."""
        url = self.emu.url
        if endpoint == "signup":
            return requests.post(f"{url}{SIGNUP}?key={KEY}", json={}, timeout=timeout)
        if endpoint == "refresh":
            return requests.post(f"{url}{REFRESH}?key={KEY}", timeout=timeout, data={
                "grant_type": "refresh_token", "refresh_token": self.refresh_token})
        if endpoint == "submit":
            return requests.post(f"{url}{TEXT2IMAGE}", data=FORM, timeout=timeout,
                                 headers={"Authorization": self.id_token})
        if endpoint == "status":
            return poll(self.emu, self.id_token, self.record_id, timeout)
        assert endpoint == "image"
        return requests.get(self.image_url, timeout=timeout)


def poll(emu: Emulator, id_token: str, record_id: str,
         timeout: float | tuple[float, float] = 5) -> requests.Response:
    return requests.get(f"{emu.url}{TEXT2IMAGE}/{record_id}/status",
                        headers={"Authorization": id_token}, timeout=timeout)


def wait_for(emu: Emulator, id_token: str, record_id: str, status: str) -> dict[str, Any]:
    """Poll until the job reports ``status``; its last answer."""
    deadline = time.monotonic() + 3
    while True:
        body: dict[str, Any] = poll(emu, id_token, record_id).json()
        if body["status"] == status or time.monotonic() > deadline:
            assert body["status"] == status, body
            return body
        time.sleep(0.01)


def make_ready(emu: Emulator) -> Ready:
    account = requests.post(f"{emu.url}{SIGNUP}?key={KEY}", json={}, timeout=5).json()
    id_token = account["idToken"]
    answer = requests.post(f"{emu.url}{TEXT2IMAGE}", data=FORM, timeout=5,
                           headers={"Authorization": id_token})
    record_id = answer.json()["record_id"]
    done = wait_for(emu, id_token, record_id, "DONE")
    return Ready(emu, id_token, account["refreshToken"], record_id, done["response"][0]["url"])


@pytest.fixture
def ready() -> Iterator[Ready]:
    """Instant jobs, a short ``slow``, and everything in place to call any endpoint."""
    with Emulator(queue_seconds=0, progress_seconds=0, slow_seconds=1.0,
                  long_side=64) as emu:
        yield make_ready(emu)


# -- the spec parser ------------------------------------------------------------------


def test_parse_faults_reads_the_documented_example() -> None:
    plan = parse_faults("submit:drop=0.05,status:503=0.1,status:badjson=0.05,submit:fail=0.02")

    assert plan.rules == (
        FaultRule("submit", "drop", 0.05),
        FaultRule("status", "503", 0.1),
        FaultRule("status", "badjson", 0.05),
        FaultRule("submit", "fail", 0.02),
    )
    assert str(plan) == "submit:drop=0.05,status:503=0.1,status:badjson=0.05,submit:fail=0.02"
    assert parse_faults(str(plan)) == plan
    assert plan.for_endpoint("status") == plan.rules[1:3]
    assert plan and hash(plan) == hash(parse_faults(str(plan)))


@pytest.mark.parametrize("spec", [
    "", "   ",
    " Submit : DROP = 0.5 , image:slow=1",
    "status:500=0.7,status:502=0.2,status:503=0.1",  # adds up to 1 (give or take rounding)
    "signup:429=0,refresh:429=1e-3",
])
def test_parse_faults_accepts_good_specs(spec: str) -> None:
    plan = parse_faults(spec)
    assert isinstance(plan, FaultPlan)
    assert parse_faults(str(plan)) == plan


def test_an_empty_or_all_zero_plan_is_falsy() -> None:
    assert not parse_faults("")
    assert not parse_faults("submit:drop=0")
    assert parse_faults("submit:drop=0.01")


@pytest.mark.parametrize(("spec", "words"), [
    ("upload:drop=0.1", ["upload:drop=0.1", "unknown endpoint 'upload'",
                         "signup, refresh, submit, status, image"]),
    ("submit:timeout=0.1", ["submit:timeout=0.1", "unknown fault 'timeout'",
                            "429, 500, 502, 503, drop, slow, badjson, fail, stuck"]),
    ("status:404=0.1", ["unknown fault '404'"]),
    ("submit:drop=1.5", ["submit:drop=1.5", "'1.5' is not between 0 and 1"]),
    ("submit:drop=-0.1", ["'-0.1' is not between 0 and 1"]),
    ("submit:drop=nan", ["'nan' is not between 0 and 1"]),
    ("submit:drop=often", ["'often' is not a number"]),
    ("status:fail=0.1", ["status:fail=0.1", "only to submit"]),
    ("image:stuck=0.1", ["'stuck'", "only to submit"]),
    ("submit:drop", ["'submit:drop'", "ENDPOINT:FAULT=PROBABILITY"]),
    ("submit=0.1", ["ENDPOINT:FAULT=PROBABILITY"]),
    (":drop=0.1", ["ENDPOINT:FAULT=PROBABILITY"]),
    ("submit:drop=", ["ENDPOINT:FAULT=PROBABILITY"]),
    ("submit:drop=0.1,,status:503=0.1", ["empty part"]),
    ("submit:drop=0.1,submit:drop=0.2", ["submit:drop is given twice"]),
    ("status:503=0.6,status:429=0.5", ["status", "add up to 1.1, more than 1"]),
])
def test_parse_faults_rejects_each_bad_kind_with_a_message(spec: str, words: list[str]) -> None:
    with pytest.raises(ValueError) as caught:
        parse_faults(spec)
    for word in words:
        assert word in str(caught.value)


def test_a_plan_built_in_python_is_checked_too() -> None:
    assert FaultPlan((FaultRule("image", "slow", 1.0),)).targets("image")
    with pytest.raises(ValueError, match="unknown endpoint"):
        FaultPlan((FaultRule("nowhere", "drop", 0.1),))
    with pytest.raises(ValueError, match="between 0 and 1"):
        FaultPlan((FaultRule("submit", "drop", 2.0),))
    with pytest.raises(ValueError, match="add up to"):
        FaultPlan((FaultRule("submit", "drop", 0.9), FaultRule("submit", "fail", 0.2)))


def test_the_vocabulary_is_exported() -> None:
    assert ENDPOINTS == ("signup", "refresh", "submit", "status", "image")
    assert set(FAULT_KINDS) == {"429", "500", "502", "503", "drop", "slow", "badjson",
                                "fail", "stuck"}


def test_a_bad_spec_fails_at_construction_and_set_faults_keeps_the_old_plan() -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        Emulator(faults="submit:explode=0.1")
    app = EmulatorApp(faults="status:503=0.5")
    with pytest.raises(ValueError, match="unknown endpoint"):
        app.set_faults("nowhere:503=0.5")
    assert str(app.faults) == "status:503=0.5"
    app.set_faults(None)
    assert not app.faults


# -- the timeline parser --------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("2", (2.0, 2.0)), ("0", (0.0, 0.0)), ("0-3", (0.0, 3.0)), (" 0.5 - 1.5 ", (0.5, 1.5)),
    (".25", (0.25, 0.25)), ("2-2", (2.0, 2.0)),
])
def test_parse_seconds_accepts_seconds_and_ranges(text: str, expected: tuple[float, float]) -> None:
    assert parse_seconds(text) == expected


@pytest.mark.parametrize(("text", "words"), [
    ("", "MIN-MAX"), ("soon", "MIN-MAX"), ("-1", "MIN-MAX"), ("1-2-3", "MIN-MAX"),
    ("nan", "MIN-MAX"), ("inf", "MIN-MAX"), ("1e400", "MIN-MAX"), ("3-1", "MIN <= MAX"),
    ("1" * 400, "MIN <= MAX"),
])
def test_parse_seconds_rejects_with_a_message(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words) as caught:
        parse_seconds(text)
    assert repr(text) in str(caught.value)


def test_a_parsed_range_drives_the_timeline() -> None:
    app = EmulatorApp(queue_seconds=parse_seconds("0-3"), progress_seconds=parse_seconds("2"))
    assert app.queue_seconds == (0.0, 3.0)
    assert app.progress_seconds == (2.0, 2.0)


# -- 429 and 5xx: nothing is done ------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["submit", "status", "image"])
def test_429_on_the_image_service_has_retry_after_and_does_nothing(
    ready: Ready, endpoint: str
) -> None:
    before = ready.emu.stats()
    ready.emu.app.inject(endpoint, "429")

    answer = ready.call(endpoint)

    assert answer.status_code == 429
    assert answer.headers["Retry-After"] == "1"
    assert answer.json() == {"detail": "Too Many Requests"}
    after = ready.emu.stats()
    assert after[COUNTER[endpoint]] == before[COUNTER[endpoint]]
    assert after["faults"] == before["faults"] + 1
    assert ready.emu.fault_counts() == {f"{endpoint}:429": 1}
    assert ready.call(endpoint).status_code == 200  # only once


@pytest.mark.parametrize("endpoint", ["signup", "refresh"])
def test_429_on_firebase_uses_googles_envelope(ready: Ready, endpoint: str) -> None:
    before = ready.emu.stats()
    ready.emu.app.inject(endpoint, "429")

    answer = ready.call(endpoint)

    assert answer.status_code == 429
    assert answer.headers["Retry-After"] == "1"
    error = answer.json()["error"]
    assert error["code"] == 429
    assert error["status"] == "RESOURCE_EXHAUSTED"
    assert error["message"] != "TOO_MANY_ATTEMPTS_TRY_LATER"  # that one means: quota spent
    assert ready.emu.stats()[COUNTER[endpoint]] == before[COUNTER[endpoint]]


@pytest.mark.parametrize("code", [500, 502, 503])
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_server_errors_answer_that_status_and_do_nothing(
    ready: Ready, endpoint: str, code: int
) -> None:
    before = ready.emu.stats()
    jobs = len(ready.emu.app.jobs())
    ready.emu.app.inject(endpoint, str(code))

    answer = ready.call(endpoint)

    assert answer.status_code == code
    assert answer.content  # a small body, JSON or a proxy's HTML page
    assert int(answer.headers["Content-Length"]) == len(answer.content)
    if code == 503:
        assert answer.headers["Retry-After"] == "1"
    if code == 500:
        assert answer.headers["Content-Type"] == "application/json"
        answer.json()
    else:
        assert answer.headers["Content-Type"] == "text/html"
        assert str(code) in answer.text
    assert ready.emu.stats()[COUNTER[endpoint]] == before[COUNTER[endpoint]]
    assert len(ready.emu.app.jobs()) == jobs


# -- drop: no answer at all ------------------------------------------------------------


def test_a_dropped_submit_still_creates_the_job(ready: Ready) -> None:
    before = ready.emu.stats()
    ready.emu.app.inject("submit", "drop")

    with pytest.raises(requests.ConnectionError):
        ready.call("submit")

    assert ready.emu.stats()["submits"] == before["submits"] + 1
    assert ready.emu.stats()["faults"] == before["faults"] + 1
    record_id = ready.emu.app.last_record_id()
    assert record_id is not None and record_id != ready.record_id
    assert ready.emu.app.jobs()[-1] == record_id
    body = wait_for(ready.emu, ready.id_token, record_id, "DONE")
    assert body["record_id"] == record_id
    # The client's blind retry is what makes the duplicate.
    assert ready.call("submit").status_code == 200
    assert ready.emu.stats()["duplicate_submits"] == before["duplicate_submits"] + 2


@pytest.mark.parametrize("endpoint", ["signup", "refresh", "status", "image"])
def test_a_dropped_request_is_not_performed(ready: Ready, endpoint: str) -> None:
    before = ready.emu.stats()
    ready.emu.app.inject(endpoint, "drop")

    started = time.monotonic()
    with pytest.raises(requests.ConnectionError):
        ready.call(endpoint, timeout=5)

    assert time.monotonic() - started < 1  # closed at once: no hang until the timeout
    assert ready.emu.stats()[COUNTER[endpoint]] == before[COUNTER[endpoint]]
    assert ready.call(endpoint).status_code == 200  # the server is still there


def test_a_drop_on_a_keep_alive_session_only_loses_that_answer(ready: Ready) -> None:
    with requests.Session() as session:
        url = f"{ready.emu.url}{TEXT2IMAGE}/{ready.record_id}/status"
        headers = {"Authorization": ready.id_token}
        assert session.get(url, headers=headers, timeout=5).status_code == 200
        ready.emu.app.inject("status", "drop")
        with pytest.raises(requests.ConnectionError):
            session.get(url, headers=headers, timeout=5)
        assert session.get(url, headers=headers, timeout=5).status_code == 200


def test_drop_in_process_is_a_marked_response() -> None:
    app = EmulatorApp(faults="status:drop=1")
    answer = app.handle(Request("GET", f"{TEXT2IMAGE}/x/status"))
    assert answer.drop
    assert app.stats()["polls"] == 0


# -- slow: the answer comes after the client's read timeout ---------------------------


def test_a_slow_submit_times_out_but_the_job_exists(ready: Ready) -> None:
    before = ready.emu.stats()
    ready.emu.app.inject("submit", "slow")

    with pytest.raises(requests.ReadTimeout):
        ready.call("submit", timeout=(5, 0.3))

    assert ready.emu.stats()["submits"] == before["submits"] + 1
    record_id = ready.emu.app.last_record_id()
    assert record_id is not None and record_id != ready.record_id
    assert poll(ready.emu, ready.id_token, record_id).status_code == 200


def test_a_slow_answer_is_right_for_a_patient_client() -> None:
    with Emulator(queue_seconds=0, progress_seconds=0, slow_seconds=0.3, long_side=64) as emu:
        ready = make_ready(emu)
        polls = emu.stats()["polls"]
        emu.app.inject("status", "slow")
        started = time.monotonic()
        answer = ready.call("status", timeout=5)
        elapsed = time.monotonic() - started
        assert emu.stats()["polls"] == polls + 1

    assert elapsed >= 0.3
    assert answer.status_code == 200
    assert answer.json()["status"] == "DONE"


def test_stopping_does_not_wait_out_a_slow_answer() -> None:
    emu = Emulator(slow_seconds=30, faults="signup:slow=1").start()
    outcome: list[BaseException | requests.Response] = []

    def client() -> None:
        try:
            outcome.append(requests.post(f"{emu.url}{SIGNUP}?key={KEY}", json={}, timeout=10))
        except requests.RequestException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    deadline = time.monotonic() + 3
    while emu.stats()["signups"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)  # the request is in, its answer held back
    started = time.monotonic()
    emu.stop()
    thread.join(5)

    assert time.monotonic() - started < 10  # not the 30 s the answer was held for
    assert len(outcome) == 1 and isinstance(outcome[0], requests.ConnectionError)


# -- badjson: a well-formed answer with a broken body ---------------------------------


@pytest.mark.parametrize("endpoint", ["signup", "refresh", "submit", "status"])
def test_badjson_is_a_200_whose_json_does_not_decode(ready: Ready, endpoint: str) -> None:
    before = ready.emu.stats()
    ready.emu.app.inject(endpoint, "badjson")

    answer = ready.call(endpoint)

    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "application/json"
    assert int(answer.headers["Content-Length"]) == len(answer.content) > 0
    with pytest.raises(ValueError):
        answer.json()
    # The work was done; only its answer was mangled.
    assert ready.emu.stats()[COUNTER[endpoint]] == before[COUNTER[endpoint]] + 1


def test_a_badjson_submit_creates_the_job(ready: Ready) -> None:
    ready.emu.app.inject("submit", "badjson")
    answer = ready.call("submit")

    record_id = ready.emu.app.last_record_id()
    assert record_id is not None and record_id != ready.record_id
    assert answer.content.startswith(b'{"record_id":"' + record_id[:8].encode())
    wait_for(ready.emu, ready.id_token, record_id, "DONE")


def test_a_badjson_image_is_a_truncated_png(ready: Ready) -> None:
    whole = ready.call("image").content
    ready.emu.app.inject("image", "badjson")

    answer = ready.call("image")

    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "image/png"
    assert int(answer.headers["Content-Length"]) == len(answer.content)
    assert answer.content == whole[: len(whole) // 2]
    assert answer.content.startswith(b"\x89PNG\r\n\x1a\n")


# -- fail, stuck, and statuses set outright -------------------------------------------


@pytest.fixture
def timed() -> Iterator[Ready]:
    """Jobs that take a moment, so their way to the end can be watched."""
    with Emulator(queue_seconds=0.05, progress_seconds=0.05, long_side=64) as emu:
        yield make_ready(emu)


def test_fail_ends_the_job_failed_with_a_reason(timed: Ready) -> None:
    timed.emu.app.inject("submit", "fail")

    submitted = timed.call("submit").json()

    assert submitted["status"] == "IN_QUEUE"
    assert submitted["error_code"] is None and submitted["error_details"] is None
    body = wait_for(timed.emu, timed.id_token, submitted["record_id"], "FAILED")
    assert body["error_code"] == "GENERATION_FAILED"
    assert isinstance(body["error_details"], str) and body["error_details"].endswith(".")
    assert body["response"] is None
    image = requests.get(f"{timed.emu.url}/images/{submitted['record_id']}/0.png", timeout=5)
    assert image.status_code == 404
    assert timed.emu.fault_counts() == {"submit:fail": 1}


def test_stuck_stays_in_progress(timed: Ready) -> None:
    timed.emu.app.inject("submit", "stuck")
    record_id = timed.call("submit").json()["record_id"]

    wait_for(timed.emu, timed.id_token, record_id, "IN_PROGRESS")
    time.sleep(0.3)  # three times the whole timeline

    body = poll(timed.emu, timed.id_token, record_id).json()
    assert body["status"] == "IN_PROGRESS"
    assert body["response"] is None and body["error_code"] is None


def test_set_job_status_reports_an_unknown_status_for_good(timed: Ready) -> None:
    timed.emu.app.set_job_status(timed.record_id, "CANCELLED_BY_ADMIN",
                                 error_code="ADMIN", error_details="Cancelled by an admin.")

    for _ in range(2):
        body = poll(timed.emu, timed.id_token, timed.record_id).json()
        assert body["status"] == "CANCELLED_BY_ADMIN"
        assert body["error_code"] == "ADMIN"
        assert body["error_details"] == "Cancelled by an admin."
        assert body["response"] is None
        time.sleep(0.15)
    with pytest.raises(KeyError):
        timed.emu.app.set_job_status("no-such-record", "DONE")


# -- plans, seeds, inject ----------------------------------------------------------------


def codes(emu: Emulator, n: int) -> list[int]:
    """The status codes of ``n`` polls of a job that does not exist (404 unless faulted)."""
    token = requests.post(f"{emu.url}{SIGNUP}?key={KEY}", json={}, timeout=5).json()["idToken"]
    with requests.Session() as session:
        return [session.get(f"{emu.url}{TEXT2IMAGE}/none/status", timeout=5,
                            headers={"Authorization": token}).status_code for _ in range(n)]


def test_the_same_fault_seed_repeats_the_same_faults() -> None:
    spec = "status:503=0.25,status:429=0.25,status:500=0.25"
    runs = []
    for seed in (7, 7, 8):
        with Emulator(faults=spec, fault_seed=seed) as emu:
            runs.append(codes(emu, 40))
            assert emu.stats()["faults"] == sum(code != 404 for code in runs[-1])

    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    assert {404, 429, 500, 503} <= set(runs[0])


def test_reset_and_a_new_seed_restart_the_draws() -> None:
    with Emulator(faults="status:503=0.5", fault_seed=3) as emu:
        first = codes(emu, 20)
        emu.app.reset()
        assert codes(emu, 20) == first
        emu.app.set_faults("status:503=0.5", fault_seed=3)
        assert codes(emu, 20) == first


def test_faults_follow_their_probability_roughly() -> None:
    with Emulator(faults="status:503=0.2", fault_seed=1) as emu:
        share = codes(emu, 200).count(503) / 200
    assert math.isclose(share, 0.2, abs_tol=0.08)


def test_inject_comes_before_the_plan_and_counts_down(ready: Ready) -> None:
    ready.emu.app.set_faults("status:503=1")
    ready.emu.app.inject("status", "429", times=2)

    got = [ready.call("status").status_code for _ in range(3)]

    assert got == [429, 429, 503]
    assert ready.emu.fault_counts() == {"status:429": 2, "status:503": 1}
    assert ready.emu.stats()["faults"] == 3
    ready.emu.app.inject("status", "drop", times=3)
    ready.emu.app.reset()  # forgets queued faults; the plan stays
    assert ready.emu.fault_counts() == {}
    assert ready.emu.app.faults == parse_faults("status:503=1")


@pytest.mark.parametrize(("args", "words"), [
    (("nowhere", "drop"), "unknown endpoint"),
    (("submit", "explode"), "unknown fault"),
    (("status", "stuck"), "only to submit"),
    (("submit", "drop", 0), "times"),
])
def test_inject_checks_its_arguments(args: tuple[Any, ...], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        EmulatorApp().inject(*args)


def test_faults_never_touch_the_emulator_controls() -> None:
    every = ",".join(f"{endpoint}:503=1" for endpoint in ENDPOINTS)
    with Emulator(faults=every) as emu:
        for endpoint in ENDPOINTS:
            emu.app.inject(endpoint, "drop", times=5)
        answers = [requests.get(f"{emu.url}/emulator/stats", timeout=5) for _ in range(10)]
        answers.append(requests.get(f"{emu.url}/emulator/faults", timeout=5))
        answers.append(requests.post(f"{emu.url}/emulator/reset", timeout=5))
        stats = emu.stats()

    assert [a.status_code for a in answers] == [200] * 12
    assert answers[0].json() == dict.fromkeys(answers[0].json(), 0)
    assert stats["faults"] == 0


def test_stats_stay_plain_integers_with_faults(ready: Ready) -> None:
    ready.emu.app.inject("status", "503")
    ready.call("status")

    stats = requests.get(f"{ready.emu.url}/emulator/stats", timeout=5).json()

    assert set(stats) == {"signups", "refreshes", "submits", "duplicate_submits", "polls",
                          "downloads", "faults", "rejected_tokens", "rejected_429",
                          "max_in_flight_per_user", "busy_slot_seconds"}
    # Counters are whole numbers; busy_slot_seconds alone is a duration.
    assert all(type(value) is int for name, value in stats.items() if name != "busy_slot_seconds")
    assert type(stats["busy_slot_seconds"]) is float
    assert stats["faults"] == 1


def test_the_plan_can_be_set_over_http(ready: Ready) -> None:
    url = f"{ready.emu.url}/emulator/faults"

    answer = requests.post(url, json={"spec": "status:429=1", "fault_seed": 5}, timeout=5)
    assert answer.status_code == 200
    assert answer.json() == {"spec": "status:429=1", "fault_seed": 5, "counts": {}}
    assert ready.call("status").status_code == 429
    assert requests.get(url, timeout=5).json()["counts"] == {"status:429": 1}

    refused = requests.post(url, data=b"status:teapot=1", timeout=5,
                            headers={"Content-Type": "text/plain"})
    assert refused.status_code == 400
    assert "unknown fault 'teapot'" in refused.json()["detail"]
    assert requests.post(url, data=b"", timeout=5).json()["spec"] == ""
    assert ready.call("status").status_code == 200
