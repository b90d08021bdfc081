"""The Generation state machine and the rules that keep a submitted job from being lost."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FAST_POLL, png_size

import arta
from arta.emulator import Emulator
from arta.errors import ConnectError
from arta.generation import Generation, Status
from arta.protocol import JobState

ROOT = Path(__file__).resolve().parent.parent
FAST_RETRY = arta.RetryPolicy(attempts=4, first_delay=0.01, max_delay=0.05, jitter=0.01)


@pytest.fixture
def client(emulator: Emulator, tmp_path: Path) -> arta.Client:
    """A client that retries fast, so fault tests take milliseconds."""
    with arta.Client(emulator.url, home=tmp_path / "home", poll_policy=FAST_POLL,
                     retry_policy=FAST_RETRY, timeout=30, request_timeout=(2, 2)) as c:
        yield c


# -- the state machine -------------------------------------------------------


def test_transitions_only_move_forward_and_repeats_are_no_ops() -> None:
    generation = Generation("r1")
    moves = [generation.apply(JobState("r1", status)) for status in
             ("IN_QUEUE", "IN_QUEUE", "IN_PROGRESS", "IN_QUEUE", "DONE", "IN_PROGRESS", "FAILED")]
    assert moves == [True, False, True, False, True, False, False]
    assert generation.status is Status.DONE and generation.done
    assert [s for s, _ in generation.history] == [
        Status.SUBMITTED, Status.IN_QUEUE, Status.IN_PROGRESS, Status.DONE]


def test_a_status_the_protocol_does_not_know_is_failed_with_the_raw_value_kept() -> None:
    generation = Generation("r2")
    assert generation.apply(JobState("r2", "CANCELLED_BY_ADMIN", error_code="X"))
    assert generation.status is Status.FAILED and generation.raw_status == "CANCELLED_BY_ADMIN"
    with pytest.raises(arta.GenerationFailed) as caught:
        generation.result()
    assert "CANCELLED_BY_ADMIN" in str(caught.value) and caught.value.record_id == "r2"


def test_events_yield_each_transition(emulator: Emulator, client: arta.Client) -> None:
    emulator.app.set_speed(5.0)  # 0.5 s in progress: seen even when polls come late
    generation = client.submit("a fox")
    assert [g.status for g in generation.events()] == [Status.IN_PROGRESS, Status.DONE]
    assert list(generation.events()) == []  # already finished: nothing more to see


# -- ends that are not DONE ----------------------------------------------------


def test_a_failed_job_raises_generation_failed_with_the_reason(emulator: Emulator,
                                                                client: arta.Client) -> None:
    emulator.app.inject("submit", "fail")
    with pytest.raises(arta.GenerationFailed) as caught:
        client.generate("a fox")
    error = caught.value
    assert error.record_id and error.record_id in str(error)
    assert error.error_code == "GENERATION_FAILED" and error.error_details
    assert error.error_details in str(error)
    assert "resume" not in str(error)  # a failed job gives nothing more: not "resumable"


def test_an_unknown_status_from_the_service_fails_the_job(emulator: Emulator,
                                                          client: arta.Client) -> None:
    generation = client.submit("a fox")
    emulator.app.set_job_status(generation.record_id, "CANCELLED_BY_ADMIN", "ADMIN", "cancelled")
    with pytest.raises(arta.GenerationFailed, match="CANCELLED_BY_ADMIN") as caught:
        generation.wait().result()
    assert caught.value.record_id == generation.record_id and generation.status is Status.FAILED


def test_a_stuck_job_times_out_with_its_record_id(emulator: Emulator, client: arta.Client) -> None:
    emulator.app.inject("submit", "stuck")
    with pytest.raises(arta.GenerationTimeout) as caught:
        client.generate("a fox", timeout=0.5)
    error = caught.value
    assert error.record_id == emulator.app.last_record_id()
    assert "still IN_PROGRESS after 0.5s" in str(error)
    assert f"Client().resume({error.record_id!r})" in str(error)
    assert "arta status" not in str(error)  # a library error carries no CLI syntax


def test_result_waits_like_a_future_and_says_how_it_ended(emulator: Emulator,
                                                         client: arta.Client) -> None:
    generation = client.submit("a fox")
    assert not generation.done
    result = generation.result()  # blocks until the job ends, as Future.result() does
    assert generation.status is Status.DONE and result.record_id == generation.record_id
    assert result.urls and generation.result().urls == result.urls  # ended: no wait again

    emulator.app.inject("submit", "stuck")
    stuck = client.submit("a fox")
    with pytest.raises(arta.GenerationTimeout) as caught:
        stuck.result(timeout=0.3)
    assert caught.value.record_id == stuck.record_id


@pytest.mark.parametrize("fault", ["drop", "slow", "badjson", "500", "502"])
def test_a_submit_without_a_usable_answer_is_not_sent_again(
    emulator: Emulator, client: arta.Client, fault: str,
) -> None:
    emulator.app.slow_seconds = 3.0
    emulator.app.inject("submit", fault)
    with pytest.raises(arta.SubmitOutcomeUnknown) as caught:
        client.submit("a fox", seed=123)
    assert "was not sent again" in str(caught.value) and "seed 123" in str(caught.value)
    assert caught.value.params.seed == 123
    assert emulator.stats()["submits"] == (1 if fault in ("drop", "slow", "badjson") else 0)
    assert emulator.stats()["duplicate_submits"] == 0


@pytest.mark.parametrize("fault", ["429", "503"])
def test_a_submit_the_server_surely_did_not_take_is_sent_again(
    emulator: Emulator, client: arta.Client, fault: str,
) -> None:
    emulator.app.inject("submit", fault, times=2)
    started = time.monotonic()
    generation = client.submit("a fox")
    assert time.monotonic() - started >= 2 * 0.99  # Retry-After: 1, honoured twice
    assert generation.record_id and emulator.stats()["submits"] == 1


def test_a_submit_that_never_connected_is_sent_again(emulator: Emulator, tmp_path: Path) -> None:
    class RefusesFirstSubmit(arta.transport.RequestsTransport):
        """The real transport, but the first submit fails to connect."""

        refused = 0

        def handle_request(self, request: arta.transport.Request) -> arta.transport.Response:
            if request.method == "POST" and request.url.endswith("/text2image") and not self.refused:
                self.refused += 1
                raise ConnectError("could not connect (injected)")
            return super().handle_request(request)

    transport = RefusesFirstSubmit()
    with arta.Client(emulator.url, home=tmp_path, transport=transport,
                     retry_policy=FAST_RETRY, poll_policy=FAST_POLL) as client:
        assert client.generate("a fox").images
    assert transport.refused == 1 and emulator.stats()["submits"] == 1


# -- polls and downloads ride out transient faults ------------------------------


@pytest.mark.parametrize("fault", ["429", "500", "502", "503", "drop", "badjson"])
def test_polls_and_downloads_retry_transient_faults(
    emulator: Emulator, client: arta.Client, fault: str, tmp_path: Path,
) -> None:
    emulator.app.inject("status", fault, times=2)
    emulator.app.inject("image", fault, times=2)
    result = client.generate("a fox")
    assert png_size(result.save(tmp_path)[0]) == (512, 512)
    assert emulator.stats()["faults"] == 4


def test_exhausted_poll_retries_raise_a_typed_error_with_the_record_id(
    emulator: Emulator, client: arta.Client,
) -> None:
    generation = client.submit("a fox")
    emulator.app.inject("status", "500", times=FAST_RETRY.attempts)
    with pytest.raises(arta.errors.ServiceError) as caught:
        generation.wait()
    assert caught.value.status == 500 and caught.value.record_id == generation.record_id
    assert generation.wait().done  # the job was never lost: it can still be waited for


def test_a_slow_poll_is_retried_after_the_read_timeout(emulator: Emulator, tmp_path: Path) -> None:
    emulator.app.slow_seconds = 2.0
    with arta.Client(emulator.url, home=tmp_path, poll_policy=FAST_POLL, retry_policy=FAST_RETRY,
                     request_timeout=(1, 0.3)) as client:
        generation = client.submit("a fox")
        emulator.app.inject("status", "slow")
        assert generation.wait(timeout=10).status is Status.DONE


# -- resume anywhere -------------------------------------------------------------

_SUBMIT_AND_EXIT = """
import arta, sys
print(arta.Client(sys.argv[1]).submit("a fox that outlives its process", seed=77).record_id)
"""


def _submit_in_a_process_that_exits(emulator: Emulator, home: Path) -> str:
    done = subprocess.run([sys.executable, "-c", _SUBMIT_AND_EXIT, emulator.url], check=True,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "ARTA_HOME": str(home)})
    return done.stdout.strip()


def test_a_job_from_a_process_that_exited_is_finished_by_resume(
    emulator: Emulator, tmp_path: Path,
) -> None:
    record_id = _submit_in_a_process_that_exits(emulator, tmp_path / "home")
    with arta.Client(emulator.url, home=tmp_path / "other-home", poll_policy=FAST_POLL) as client:
        generation = client.resume(record_id)
        paths = generation.wait(timeout=10).result().save(tmp_path / "out")
    assert generation.seed == 77 and png_size(paths[0]) == (512, 512)


def test_a_job_from_a_process_that_exited_is_finished_by_arta_status(
    emulator: Emulator, tmp_path: Path,
) -> None:
    record_id = _submit_in_a_process_that_exits(emulator, tmp_path / "home")
    done = subprocess.run(
        [sys.executable, "-m", "arta.cli", "status", record_id, "--wait", "-o", str(tmp_path / "out")],
        check=False, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), "ARTA_ENDPOINT": emulator.url})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"{record_id} DONE"
    assert png_size(Path(done.stdout.splitlines()[1])) == (512, 512)


def test_a_stopped_wait_ends_promptly_and_the_job_goes_on(emulator: Emulator,
                                                          client: arta.Client) -> None:
    import threading

    emulator.app.inject("submit", "stuck")
    generation = client.submit("a fox")
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    with pytest.raises(arta.GenerationCancelled) as caught:
        generation.wait(poll_policy=arta.PollPolicy(first_delay=60), stop=stop)
    assert caught.value.record_id == generation.record_id  # stopped mid-sleep, not after 60 s
    polls = emulator.stats()["polls"]
    time.sleep(0.3)
    assert emulator.stats()["polls"] == polls  # nothing polls on behind our back
