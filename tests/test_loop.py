"""The poll loop under every wait: many jobs, one scheduler thread, errors with record ids."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from pathlib import Path

import pytest
from conftest import FAST_POLL

import arta
from arta.emulator import Emulator
from arta.engine.window import AdaptiveWindow
from arta.errors import ServiceError
from arta.loop import FEW_THREADS, SLACK_SHARE, PollLoop, _coalesced
from arta.retry import RetryPolicy

SLOW_POLL = arta.PollPolicy(first_delay=0.3, interval=0.3, growth=1, max_delay=0.3, jitter=0)


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(("arta-loop", "arta-io"))]


def test_many_waits_share_one_scheduler_thread_and_a_bounded_pool(
        emulator: Emulator, tmp_path: Path) -> None:
    with arta.Client(emulator.url, home=tmp_path, poll_policy=FAST_POLL, pool_size=4) as client:
        generations = [client.submit(f"fox {i}") for i in range(40)]
        futures = [g.future() for g in generations]
        concurrent.futures.wait(futures, timeout=60)
        names = [t.name for t in loop_threads()]
        assert all(f.result().record_id for f in futures)
    assert names.count("arta-loop") == 1
    assert sum(name.startswith("arta-io") for name in names) <= 4
    for thread in loop_threads():  # close() stopped them (an idle I/O thread ends at once)
        thread.join(timeout=10)
    assert not loop_threads()


def test_jobs_with_their_own_policies_deadlines_failures_and_stops(
        emulator: Emulator, client: arta.Client) -> None:
    emulator.app.inject("submit", "fail")
    failing = client.submit("a failing fox")
    emulator.app.inject("submit", "stuck")
    stuck = client.submit("a stuck fox")
    emulator.app.inject("submit", "stuck")
    stopped = client.submit("a stopped fox")
    fast = [client.submit(f"fox {i}") for i in range(5)]
    slow = client.submit("a slow fox")
    emulator.app.inject("submit", "stuck")
    stuck_fast = client.submit("a stuck fox, asked often")
    emulator.app.inject("submit", "stuck")
    stuck_slow = client.submit("a stuck fox, asked seldom")
    stop = threading.Event()

    def wait(generation: arta.Generation, **options: object) -> BaseException | None:
        try:
            generation.wait(**options)  # type: ignore[arg-type]
        except arta.ArtaError as error:
            return error
        return None

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        outcomes = {
            "failing": pool.submit(wait, failing),
            "stuck": pool.submit(wait, stuck, timeout=0.5),
            "stopped": pool.submit(wait, stopped, stop=stop),
            "slow": pool.submit(wait, slow, poll_policy=SLOW_POLL),
            **{f"fast{i}": pool.submit(wait, g) for i, g in enumerate(fast)},
            "stuck_fast": pool.submit(wait, stuck_fast, timeout=1.0),
            "stuck_slow": pool.submit(wait, stuck_slow, timeout=1.0, poll_policy=SLOW_POLL),
        }
        threading.Timer(0.4, stop.set).start()
        results = {name: future.result(timeout=60) for name, future in outcomes.items()}

    assert results["failing"] is None and failing.status is arta.Status.FAILED
    with pytest.raises(arta.GenerationFailed) as failed:
        failing.result()
    assert failed.value.record_id == failing.record_id
    timeout = results["stuck"]
    assert isinstance(timeout, arta.GenerationTimeout) and timeout.record_id == stuck.record_id
    cancelled = results["stopped"]
    assert isinstance(cancelled, arta.GenerationCancelled)
    assert cancelled.record_id == stopped.record_id
    assert results["slow"] is None and slow.status is arta.Status.DONE
    assert all(results[f"fast{i}"] is None and g.done for i, g in enumerate(fast))
    # In the same second of waiting on a job that never ends, the slow policy
    # (every 0.3 s) asked less often than the fast one (every 0.1 s at most).
    assert all(isinstance(results[name], arta.GenerationTimeout)
               for name in ("stuck_fast", "stuck_slow"))
    assert len(stuck_slow.seen) < len(stuck_fast.seen)


def test_closing_the_client_ends_every_wait_with_its_record_id(
        emulator: Emulator, tmp_path: Path) -> None:
    emulator.app.set_faults("submit:stuck=1")
    client = arta.Client(emulator.url, home=tmp_path, poll_policy=FAST_POLL)
    generations = [client.submit(f"fox {i}") for i in range(5)]
    futures = [g.future() for g in generations]
    client.close()
    for generation, future in zip(generations, futures):
        error = future.exception(timeout=10)
        assert isinstance(error, arta.GenerationCancelled)
        assert error.record_id == generation.record_id


def test_a_wait_that_the_server_asks_to_outlast_ends_at_once(
        emulator: Emulator, client: arta.Client) -> None:
    """A Retry-After longer than the time left is a timeout now, not after a long sleep."""
    generation = client.submit("a fox")
    emulator.app.set_faults("status:429=1")  # answered with Retry-After: 1
    with pytest.raises(arta.GenerationTimeout) as caught:
        generation.wait(timeout=0.5)
    assert caught.value.record_id == generation.record_id
    assert "asked to wait" in str(caught.value)


def test_future_and_callbacks(client: arta.Client) -> None:
    generation = client.submit("a fox")
    called = threading.Event()
    generation.add_done_callback(lambda future: called.set())
    result = generation.future().result(timeout=30)
    assert generation.future() is generation.future()  # one wait, however often asked
    assert called.wait(5) and result.record_id == generation.record_id and result.images


def test_as_completed_yields_each_job_as_it_ends(emulator: Emulator, client: arta.Client) -> None:
    emulator.app.inject("submit", "fail")
    generations = [client.submit(f"fox {i}") for i in range(6)]
    ended = list(arta.as_completed(generations, timeout=60))
    assert sorted(g.record_id for g in ended) == sorted(g.record_id for g in generations)
    failed = [g for g in ended if g.status is arta.Status.FAILED]
    assert len(failed) == 1
    with pytest.raises(arta.GenerationFailed):
        failed[0].result()


def test_as_completed_past_its_timeout_names_the_running_jobs(
        emulator: Emulator, client: arta.Client) -> None:
    emulator.app.set_faults("submit:stuck=1")
    generations = [client.submit(f"fox {i}") for i in range(2)]
    with pytest.raises(arta.GenerationTimeout) as caught:
        list(arta.as_completed(generations, timeout=0.3))
    assert all(g.record_id in str(caught.value) for g in generations)
    # Issue 18, item 11: giving up ends the waits too; no poll goes on behind the caller.
    assert all(g.future().cancelled() for g in generations)
    assert client.loop.in_flight == 0


def test_a_cancelled_future_ends_its_wait_and_a_known_end_costs_no_poll(
        emulator: Emulator, client: arta.Client) -> None:
    emulator.app.inject("submit", "stuck")
    stuck = client.submit("a stuck fox")
    assert stuck.future().cancel()  # a wait, not a running call: it can be called off
    assert stuck.future().cancelled() and client.loop.in_flight == 0
    done = client.submit("a fox").wait(timeout=60)
    polls = emulator.stats()["polls"]
    assert done.future().result(timeout=1).record_id == done.record_id
    assert emulator.stats()["polls"] == polls  # DONE already: the future is settled at once


def test_map_yields_outcomes_and_errors_as_values(emulator: Emulator, client: arta.Client) -> None:
    emulator.app.inject("submit", "fail")
    items = ["fox 0", {"prompt": "fox 1", "n": 2}, {"prompt": "fox 2", "n": 9}, "fox 3"]
    outcomes = list(client.map(items, concurrency=2, style="Anime"))
    by_index = {o.index: o for o in outcomes}
    assert sorted(by_index) == [0, 1, 2, 3]
    bad = by_index[2]
    assert isinstance(bad.error, arta.errors.InvalidParameterError) and bad.record_id is None
    failed = [o for o in outcomes if isinstance(o.error, arta.GenerationFailed)]
    assert len(failed) == 1 and failed[0].record_id  # the failure carries its record id
    done = [o for o in outcomes if o.ok]
    assert len(done) == 2 and all(o.params and o.params.style == "Anime" for o in done)
    assert emulator.stats()["submits"] == 3  # the bad item cost no request


def test_map_in_order(client: arta.Client) -> None:
    outcomes = list(client.map([f"fox {i}" for i in range(8)], concurrency=3, ordered=True))
    assert [o.index for o in outcomes] == list(range(8)) and all(o.ok for o in outcomes)
    assert [o.unwrap().params.prompt for o in outcomes] == [f"fox {i}" for i in range(8)]  # type: ignore[union-attr]


@pytest.mark.parametrize("installed", ["tqdm", "rich", "neither"])
def test_map_shows_progress_with_what_is_installed(
    client: arta.Client, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    installed: str,
) -> None:
    import importlib.util

    find_spec = importlib.util.find_spec
    hidden = {"tqdm": {"rich"}, "rich": {"tqdm"}, "neither": {"tqdm", "rich"}}[installed]
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in hidden else find_spec(name, *a))
    outcomes = list(client.map([f"fox {i}" for i in range(3)], concurrency=3, progress=True))
    assert all(outcome.ok for outcome in outcomes)
    shown = capsys.readouterr().err
    if installed == "tqdm":
        assert "arta map: 100%" in shown and "3/3" in shown, shown
    elif installed == "rich":
        assert "arta map" in shown and "0 in flight, 0 failed" in shown, shown
    else:  # the built-in line: stderr is no terminal here, so one line at the end
        assert shown.splitlines()[-1].startswith("arta: map: 3/3 done, 0 in flight"), shown


def test_map_without_progress_prints_nothing(client: arta.Client,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert all(o.ok for o in client.map(["fox"], concurrency=1))
    assert capsys.readouterr().err == ""


def test_map_refuses_bad_defaults_before_any_request(
        emulator: Emulator, client: arta.Client) -> None:
    with pytest.raises(arta.errors.InvalidStyleError):
        client.map(["a fox"], style="no such style")
    assert emulator.stats()["submits"] == 0


def test_429s_on_submit_shrink_the_window_and_no_job_fails(
        emulator: Emulator, client: arta.Client) -> None:
    emulator.app.set_faults("submit:429=0.3", fault_seed=3)  # each 429 asks for 1 s
    outcomes = list(client.map([f"fox {i}" for i in range(12)], concurrency=16))
    assert all(o.ok for o in outcomes), [str(o.error) for o in outcomes if not o.ok]
    rejected = emulator.app.fault_counts().get("submit:429", 0)
    assert rejected > 0 and client.window.rejections == rejected
    assert emulator.stats()["duplicate_submits"] == 0


def test_the_window_grows_halves_once_per_round_and_recovers() -> None:
    window = AdaptiveWindow(limit=32, initial=4)
    tickets = [window.acquire() for _ in range(5)]
    assert tickets[-1] is None and window.in_flight == 4  # four in flight, no room
    for _ in range(4):
        window.accepted()
    assert window.size == 8  # slow start: +1 per accepted submit
    busy, quick = ServiceError("busy", status=429), RetryPolicy(first_delay=0.01, jitter=0)
    window.rejected(0, busy, quick)
    window.rejected(0, busy, quick)  # the same round's news: halved once, not twice
    assert window.size == 4 and window.rejections == 2 and window.in_flight == 2
    for _ in range(4):
        window.accepted()
    assert 4 < window.size < 6  # congestion avoidance: about +1 per window of accepts
    for _ in range(1000):
        window.accepted()
    assert window.size == 32  # never above the asked concurrency


def test_the_window_finds_a_per_user_limit_and_no_job_fails(tmp_path: Path) -> None:
    """AIMD against --max-jobs-per-user: the cap shrinks on 429 and recovers; nothing fails."""
    with Emulator(queue_seconds=0, progress_seconds=0.3, max_jobs_per_user=4) as emulator, \
            arta.Client(emulator.url, home=tmp_path, poll_policy=FAST_POLL) as client:
        sizes: list[float] = []
        outcomes = []
        for outcome in client.map([f"fox {i}" for i in range(24)], concurrency=16):
            outcomes.append(outcome)
            sizes.append(client.window.size)
        stats = emulator.stats()
    assert all(o.ok for o in outcomes), [str(o.error) for o in outcomes if not o.ok]
    assert stats["rejected_429"] > 0 and client.window.rejections == stats["rejected_429"]
    assert stats["max_in_flight_per_user"] <= 4 and stats["duplicate_submits"] == 0
    assert stats["submits"] == 24  # each job taken once, whatever 429s it met on the way
    assert min(sizes) < 16  # it shrank below the asked concurrency...
    assert sizes[-1] >= 1  # ...and never to nothing


def test_a_sign_up_failure_is_a_token_error_not_a_submit_failure(tmp_path: Path) -> None:
    """Issue 11, item 25: nothing was submitted, so nothing "may or may not exist"."""
    with Emulator(faults="signup:500=1") as emulator, \
            arta.Client(emulator.url, home=tmp_path,
                        retry_policy=arta.RetryPolicy(attempts=2, first_delay=0.01)) as client, \
            pytest.raises(arta.ArtaError) as caught:
        client.submit("a fox")
    assert not isinstance(caught.value, arta.SubmitOutcomeUnknown)
    assert "sign-up" in str(caught.value) and emulator.stats()["submits"] == 0


class _CtrlCAfterSubmit:
    """A transport that sends each request, then acts as if Ctrl-C came before a submit's answer."""

    def __init__(self, inner: arta.transport.Transport) -> None:
        self.inner = inner

    def handle_request(self, request: arta.transport.Request) -> arta.transport.Response:
        response = self.inner.handle_request(request)
        if request.method == "POST" and request.url.endswith("/text2image"):
            response.close()
            raise KeyboardInterrupt
        return response

    def close(self) -> None:
        self.inner.close()


def test_ctrl_c_during_a_submit_says_the_job_may_exist_with_its_seed(
        emulator: Emulator, tmp_path: Path) -> None:
    """Issue 11, item 24: not a bare "interrupted": the params and seed to recognise the job."""
    inner = arta.transport.RequestsTransport()
    with arta.Client(emulator.url, home=tmp_path, transport=_CtrlCAfterSubmit(inner)) as client, \
            pytest.raises(arta.errors.SubmitInterrupted) as caught:
        client.submit("a fox", seed=4242)
    inner.close()
    assert isinstance(caught.value, KeyboardInterrupt)
    assert caught.value.params.seed == 4242 and "seed 4242" in str(caught.value)
    assert emulator.stats()["submits"] == 1  # the job it speaks of does exist


def test_the_io_pool_grows_for_calls_that_wait_and_stays_small_for_quick_ones() -> None:
    loop = PollLoop(io_threads=8)

    def io_threads() -> int:
        return sum(t.name.startswith(loop.io_thread_prefix) for t in threading.enumerate())

    try:
        quick = [loop.call_io(sum, range(100)) for _ in range(2000)]
        concurrent.futures.wait(quick, timeout=60)
        few = io_threads()
        slow = [loop.call_io(time.sleep, 0.2) for _ in range(40)]  # a distant service
        concurrent.futures.wait(slow, timeout=60)
        many = io_threads()
    finally:
        loop.close()
    assert all(f.result() == 4950 for f in quick) and all(f.done() for f in slow)
    assert few <= FEW_THREADS  # quick calls are bound by the CPU: more threads only contend
    assert many == 8  # calls that wait on the network get every thread allowed


def test_timers_set_around_the_same_time_fire_together_and_never_early() -> None:
    now = time.monotonic()
    # 40 polls due over 80 ms, two seconds from now: a grid of 62.5 ms, so 2 or 3 wakes.
    wanted = [now + 2.0 + i * 0.002 for i in range(40)]
    rounded = [_coalesced(when, now) for when in wanted]
    assert len(set(rounded)) <= 3
    assert all(when <= late <= when + 2.0 * SLACK_SHARE for when, late in zip(wanted, rounded))
    assert _coalesced(now + 0.01, now) == now + 0.01  # a short timer keeps its time

    loop = PollLoop()
    fired: list[tuple[float, float]] = []
    everyone = threading.Event()
    try:
        start = time.monotonic()
        for i in range(40):
            when = start + 0.3 + i * 0.001

            def record(when: float = when) -> None:
                fired.append((when, time.monotonic()))
                if len(fired) == 40:
                    everyone.set()

            loop.call_at(when, record)
        assert everyone.wait(30)
    finally:
        loop.close()
    assert all(at >= when for when, at in fired)  # late by the slack at most, never early
