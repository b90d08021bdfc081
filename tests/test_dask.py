"""arta on a Dask cluster: two worker processes, each with its own ARTA_HOME as if on its own host.

One LocalCluster and one emulator serve the whole module, so that the
module as a whole proves one sign-up for every worker, driver and test.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FAST_POLL, SHELL_SETTINGS, png_size

import arta
from arta.batch import BatchJob, Manifest
from arta.dask import DaskTokenStore, generate, job_key, run_batch_on_dask
from arta.dask import map as dask_map
from arta.dask.cluster import WORKER_CONFIG
from arta.emulator import Emulator

distributed = pytest.importorskip("distributed")
dask_module = pytest.importorskip("dask")
cloudpickle = pytest.importorskip("cloudpickle")


# The task functions below travel to the workers by value: the workers
# cannot import this test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

# The workers make their clients with the default transport whatever
# ARTA_TEST_TRANSPORT says: a second pass through httpx would repeat the first.
pytestmark = pytest.mark.skipif(
    os.environ.get("ARTA_TEST_TRANSPORT", "requests").strip().lower() not in ("", "requests"),
    reason="the Dask engine runs the default transport on its workers")

ROOT = Path(__file__).resolve().parent.parent


class SeparateHomes(distributed.WorkerPlugin):  # type: ignore[misc]
    """Give each worker its own ARTA_HOME (as on its own host), and no proxy."""

    def __init__(self, base: str) -> None:
        self.base = base

    def setup(self, worker: Any) -> None:
        os.environ["ARTA_HOME"] = os.path.join(self.base, f"worker-{worker.name}")
        for name in SHELL_SETTINGS:
            os.environ.pop(name, None)


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator(queue_seconds=0.05, progress_seconds=0.1) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    for name in ("distributed", "distributed.nanny", "distributed.scheduler"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    homes = tmp_path_factory.mktemp("hosts")
    with dask_module.config.set(WORKER_CONFIG), distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=4,
                                  host="127.0.0.1", dashboard_address=None,
                                  silence_logs=logging.CRITICAL) as local, \
            distributed.Client(local, set_as_default=False) as client:
        client.register_plugin(SeparateHomes(str(homes)))
        yield local


@pytest.fixture
def dask(cluster: Any) -> Iterator[Any]:
    """A client of the module's cluster, with both workers up (a test may have killed one)."""
    with distributed.Client(cluster.scheduler_address, set_as_default=False) as client:
        client.wait_for_workers(2, timeout=60)
        yield client


def _options(emu: Emulator) -> dict[str, Any]:
    return {"endpoint": emu.url, "poll_policy": FAST_POLL, "timeout": 60}


def _jobs(count: int, tag: str) -> list[BatchJob]:
    return [BatchJob(line, {"prompt": f"{tag}: a fox, variation {line}"})
            for line in range(1, count + 1)]


def _delta(emu: Emulator, before: dict[str, int]) -> dict[str, int]:
    return {name: value - before.get(name, 0) for name, value in emu.stats().items()}


def _worker_pids(dask: Any) -> dict[str, int]:
    return dask.run(os.getpid)  # type: ignore[no-any-return]


def _check_images(folder: Path, manifest: Manifest, jobs: list[BatchJob]) -> None:
    latest = manifest.latest()
    assert all(latest[job.key]["event"] == "done" for job in jobs)
    files = [Path(f) for job in jobs for f in latest[job.key]["files"]]
    assert len(files) == len(set(files)) == len(jobs)
    for path in files:
        assert png_size(path) == (512, 512)
    assert sorted(folder.glob("*.png")) == sorted(files)


def test_importing_arta_dask_imports_no_dask() -> None:
    code = ("import sys, arta, arta.dask; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('dask', 'distributed', 'cloudpickle', 'msgpack', 'toolz')))")
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.stdout.strip() == "[]"


def test_200_jobs_one_signup_no_duplicates(emu: Emulator, cluster: Any, tmp_path: Path) -> None:
    before = emu.stats()
    jobs = _jobs(200, "batch")
    manifest = Manifest(tmp_path / "out" / "arta-manifest.jsonl")
    seen: list[arta.batch.JobReport] = []
    outcomes = run_batch_on_dask(jobs, manifest, tmp_path / "out",
                                 scheduler=cluster.scheduler_address,
                                 client_options=_options(emu), concurrency=16,
                                 on_outcome=seen.append).outcomes
    assert [o.event for o in outcomes] == ["done"] * 200 and len(seen) == 200
    _check_images(tmp_path / "out", manifest, jobs)
    delta = _delta(emu, before)
    assert (delta["submits"], delta["duplicate_submits"]) == (200, 0)
    assert emu.stats()["signups"] == 1  # the whole module: driver, workers, every test
    # Every job: its intent, then its record id, then done.
    events = [json.loads(line)["event"] for line in manifest.path.read_text().splitlines()]
    assert events.count("intent") == events.count("submitted") == events.count("done") == 200
    # Run again: all skipped, nothing sent.
    again = run_batch_on_dask(jobs, manifest, tmp_path / "out",
                              scheduler=cluster.scheduler_address,
                              client_options=_options(emu)).outcomes
    assert {o.event for o in again} == {"skipped"} and _delta(emu, before)["submits"] == 200


def _values_sent(dask_worker: Any) -> int:
    return dask_worker.transfer_outgoing_count_total  # type: ignore[no-any-return]


def test_jobs_the_workers_write_reach_the_driver_without_a_fetch(
        emu: Emulator, dask: Any, cluster: Any, tmp_path: Path) -> None:
    # Each worker announces the jobs whose images it wrote: the driver has
    # their values without asking a worker for them.
    sent = sum(dask.run(_values_sent).values())
    jobs = _jobs(20, "announced")
    manifest = Manifest(tmp_path / "arta-manifest.jsonl")
    outcomes = run_batch_on_dask(jobs, manifest, tmp_path / "driver",
                                 scheduler=cluster.scheduler_address,
                                 client_options=_options(emu),
                                 output_on_workers=tmp_path / "out").outcomes
    assert [o.event for o in outcomes] == ["done"] * 20
    _check_images(tmp_path / "out", manifest, jobs)
    assert sum(dask.run(_values_sent).values()) == sent


def test_a_worker_killed_mid_run(emu: Emulator, dask: Any, cluster: Any,
                                 tmp_path: Path) -> None:
    before = emu.stats()
    jobs = _jobs(60, "kill a worker")
    shared = tmp_path / "shared"
    victim = next(iter(_worker_pids(dask).values()))
    killed: list[int] = []

    def kill_once(outcome: arta.batch.JobReport) -> None:
        if not killed and outcome.event == "done":
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)

    manifest = Manifest(tmp_path / "arta-manifest.jsonl")
    outcomes = run_batch_on_dask(jobs, manifest, tmp_path / "unused",
                                 scheduler=cluster.scheduler_address,
                                 client_options=_options(emu), concurrency=16,
                                 on_outcome=kill_once, output_on_workers=shared).outcomes
    assert killed and victim not in _worker_pids(dask).values()
    assert [o.event for o in outcomes] == ["done"] * 60, [o.error for o in outcomes]
    _check_images(shared, manifest, jobs)
    delta = _delta(emu, before)
    assert (delta["submits"], delta["duplicate_submits"]) == (60, 0)
    assert emu.stats()["signups"] == 1


def _generate_killed_after_submit(marker: str, endpoint: str) -> tuple[arta.Result, int]:
    def die_once(generation: arta.Generation) -> None:
        if not os.path.exists(marker):
            Path(marker).write_text(f"{os.getpid()} {generation.record_id}")
            os.kill(os.getpid(), signal.SIGKILL)

    result = generate("a fox that survives", steps=20, on_change=die_once,
                      client_options={"endpoint": endpoint, "poll_policy": FAST_POLL})
    return result, os.getpid()


def test_generate_in_a_task_whose_worker_dies_after_the_submit(
        emu: Emulator, dask: Any, tmp_path: Path) -> None:
    before = emu.stats()
    marker = tmp_path / "first-run"
    future = dask.submit(_generate_killed_after_submit, str(marker), emu.url, pure=False)
    result, pid = future.result(timeout=120)
    first_pid, first_record_id = marker.read_text().split()
    assert int(first_pid) != pid  # the task really ran twice, in two processes
    assert result.record_id == first_record_id and len(result.images) == 1
    assert result.params is not None and result.params.steps == 20
    delta = _delta(emu, before)
    assert (delta["submits"], delta["duplicate_submits"]) == (1, 0)
    assert emu.stats()["signups"] == 1


def test_map_returns_outcomes_and_a_second_map_resumes(emu: Emulator, dask: Any) -> None:
    before = emu.stats()
    emu.app.inject("submit", "fail")  # the first submit's job ends FAILED
    prompts = ["a map of foxes", {"prompt": "a map of owls", "aspect_ratio": "16:9"},
               "a map of bears"]
    futures = dask_map(prompts, client=dask, client_options=_options(emu), concurrency=2)
    assert [f.key for f in futures] == [job_key({"prompt": "a map of foxes"}, 0), *(
        job_key(p if isinstance(p, dict) else {"prompt": p}, i) for i, p in
        enumerate(prompts) if i)]
    outcomes = dask.gather(futures)
    failed = [o for o in outcomes if isinstance(o, arta.GenerationFailed)]
    results = [o for o in outcomes if isinstance(o, arta.Result)]
    assert len(failed) == 1 and failed[0].record_id and len(results) == 2
    assert _delta(emu, before)["submits"] == 3
    del futures
    # Mapping the same list again on the same scheduler pays for nothing new.
    again = dask.gather(dask_map(prompts, client=dask, client_options=_options(emu)))
    assert sorted(o.record_id for o in again) == sorted(o.record_id for o in outcomes)
    assert _delta(emu, before)["submits"] == 3


def test_submit_drops_end_as_submit_outcome_unknown_with_their_params(
        emu: Emulator, cluster: Any, tmp_path: Path) -> None:
    before = emu.stats()
    emu.app.inject("submit", "drop", times=3)
    jobs = _jobs(10, "drops")
    manifest = Manifest(tmp_path / "arta-manifest.jsonl")
    outcomes = run_batch_on_dask(jobs, manifest, tmp_path / "out",
                                 scheduler=cluster.scheduler_address,
                                 client_options=_options(emu), concurrency=4).outcomes
    failed = [o for o in outcomes if o.event == "failed"]
    assert len(failed) == 3 and all("SubmitOutcomeUnknown" in (o.error or "") for o in failed)
    latest = manifest.latest()
    intents = {r["job"]: r for r in manifest.records() if r["event"] == "intent"}
    for outcome in failed:
        job = jobs[outcome.line - 1]
        record = latest[job.key]
        assert record["error_type"] == "SubmitOutcomeUnknown" and record["record_id"] is None
        # The parameters sent, seed included, were fsynced before the submit.
        assert intents[job.key]["params"]["prompt"] == job.params["prompt"]
        assert intents[job.key]["params"]["seed"] == record["seed"] == outcome.seed
    assert _delta(emu, before)["submits"] == 10  # the dropped ones did reach the service


def test_the_driver_killed_and_run_again(emu: Emulator, cluster: Any, tmp_path: Path) -> None:
    before = emu.stats()
    count = 80
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"driver kill: a fox, variation {i}\n" for i in range(count)))
    out = tmp_path / "out"
    manifest = out / "arta-manifest.jsonl"
    command = [sys.executable, str(ROOT / "tests" / "dask_driver.py"),
               cluster.scheduler_address, emu.url, str(prompts), str(out)]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and driver.poll() is None and (
            not manifest.exists() or manifest.read_text().count('"done"') < 20):
        time.sleep(0.02)
    driver.send_signal(signal.SIGKILL)
    driver.wait(30)
    latest = Manifest(manifest).latest()
    assert 20 <= sum(r["event"] == "done" for r in latest.values()) < count
    on_the_wire = sum(r["event"] == "intent" for r in latest.values())
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) == on_the_wire  # the rerun counts them
    final = Manifest(manifest).latest()
    assert len(final) == count and {r["event"] for r in final.values()} == {"done"}
    delta = _delta(emu, before)
    assert count <= delta["submits"] <= count + on_the_wire
    assert delta["duplicate_submits"] <= on_the_wire
    assert emu.stats()["signups"] == 1


def test_the_token_store_travels_and_finds_its_scheduler(emu: Emulator, dask: Any) -> None:
    import pickle

    store = DaskTokenStore(client=dask)
    token = store.load()
    assert token is not None  # the module's earlier work left one in the scheduler
    copy = pickle.loads(pickle.dumps(store))
    assert "_client" not in copy.__getstate__() and repr(copy) == "DaskTokenStore('token')"
    # A worker reads the very same token.
    seen = dask.submit(lambda s: s.load().user_id, store, pure=False).result(timeout=60)
    assert seen == token.user_id


def _generate_with_key(key: str, endpoint: str) -> arta.Result | arta.ArtaError:
    try:
        return generate("a fox behind a flaky proxy", key=key, seed=7,
                        client_options={"endpoint": endpoint, "poll_policy": FAST_POLL})
    except arta.ArtaError as error:
        return error


def _generate_refused_at_first(key: str, endpoint: str) -> arta.Result | arta.ArtaError:
    no_retry = arta.RetryPolicy(attempts=1, first_delay=0.05, max_delay=0.2, jitter=0.01)
    try:
        return generate("a fox at a busy door", key=key, client_options={
            "endpoint": endpoint, "poll_policy": FAST_POLL, "retry_policy": no_retry})
    except arta.ArtaError as error:
        return error


def test_a_submit_refused_as_congestion_pauses_and_is_sent_again(emu: Emulator,
                                                                  dask: Any) -> None:
    """429 and 503 alike (the one congestion rule), paused by the retry policy's backoff."""
    before = emu.stats()
    emu.app.inject("submit", "503", times=1)
    emu.app.inject("submit", "429", times=1)
    outcome = dask.submit(_generate_refused_at_first, "refused-job", emu.url,
                          pure=False).result(60)
    assert isinstance(outcome, arta.Result), outcome
    assert _delta(emu, before)["submits"] == 1  # only the accepted one made a job


def test_a_rerun_after_a_dropped_submit_raises_instead_of_guessing(
        emu: Emulator, dask: Any) -> None:
    before = emu.stats()
    emu.app.inject("submit", "drop")
    first = dask.submit(_generate_with_key, "dropped-job", emu.url, pure=False).result(60)
    again = dask.submit(_generate_with_key, "dropped-job", emu.url, pure=False).result(60)
    for error in (first, again):
        assert isinstance(error, arta.SubmitOutcomeUnknown)
        assert error.params.seed == 7 and error.params.prompt == "a fox behind a flaky proxy"
    assert "earlier run" in str(again)
    assert _delta(emu, before)["submits"] == 1  # the re-run sent nothing


def _timed_generate(prompt: str, endpoint: str) -> list[tuple[float, str]]:
    seen: list[tuple[float, str]] = []
    generate(prompt, concurrency=2, on_change=lambda g: seen.append((time.time(), str(g.status))),
             client_options={"endpoint": endpoint, "poll_policy": FAST_POLL})
    return seen


def test_concurrency_caps_jobs_in_flight_across_the_cluster(emu: Emulator, dask: Any) -> None:
    futures = [dask.submit(_timed_generate, f"a capped fox {i}", emu.url, pure=False)
               for i in range(8)]
    spans = [(seen[0][0], seen[-1][0]) for seen in dask.gather(futures)]
    assert all(status == "DONE" for seen in dask.gather(futures) for _, status in seen[-1:])
    # At no moment were more than 2 of the 8 jobs between submit and DONE,
    # though the cluster has 8 threads.
    most = max(sum(start <= moment < end for start, end in spans) for moment, _ in spans)
    assert most <= 2


def test_rate_limited_submits_wait_and_never_fail(emu: Emulator, dask: Any, cluster: Any,
                                                  tmp_path: Path) -> None:
    before = emu.stats()
    impatient = {**_options(emu), "retry_policy": arta.RetryPolicy(attempts=1)}
    emu.app.inject("submit", "429", times=2)
    outcomes = dask.gather(dask_map(["a patient fox", "a patient owl"], client=dask,
                                    client_options=impatient, run="429"))
    assert all(isinstance(o, arta.Result) for o in outcomes), outcomes
    emu.app.inject("submit", "429", times=2)
    jobs = _jobs(6, "429 on the driver")
    batch = run_batch_on_dask(jobs, Manifest(tmp_path / "m.jsonl"), tmp_path / "out",
                              scheduler=cluster.scheduler_address,
                              client_options=impatient).outcomes
    assert [o.event for o in batch] == ["done"] * 6
    delta = _delta(emu, before)
    assert (delta["submits"], delta["duplicate_submits"], delta["faults"]) == (8, 0, 4)


def test_host_tokens_sign_up_once_per_host(emulator: Emulator, cluster: Any,
                                           tmp_path: Path) -> None:
    # An emulator of its own: its sign-ups are not the module's one.
    outcomes = run_batch_on_dask(_jobs(16, "host tokens"), Manifest(tmp_path / "m.jsonl"),
                                 tmp_path / "out", scheduler=cluster.scheduler_address,
                                 client_options=_options(emulator), concurrency=8,
                                 token="host").outcomes
    assert {o.event for o in outcomes} == {"done"}
    # The driver and each of the two workers: three hosts, three ARTA_HOMEs.
    assert emulator.stats()["signups"] == 3


@pytest.mark.parametrize("scheduler", ["local:0", "local:two", "local:"])
def test_a_bad_local_scheduler_is_refused_before_anything_starts(scheduler: str,
                                                                 tmp_path: Path) -> None:
    with pytest.raises(arta.InvalidInputError, match="local:N"):
        run_batch_on_dask(_jobs(1, "bad"), Manifest(tmp_path / "m.jsonl"), tmp_path,
                          scheduler=scheduler)
    assert not (tmp_path / "m.jsonl").exists()


def _token_in_a_task(endpoint: str, name: str) -> tuple[str, int]:
    client = arta.Client(endpoint, token_store=DaskTokenStore(name))
    return client.auth.token().user_id, os.getpid()


def test_eight_tasks_on_two_hosts_make_one_sign_up(emulator: Emulator, dask: Any) -> None:
    # An emulator of its own, and a token name no other test uses: the store starts empty.
    workers = sorted(_worker_pids(dask))
    futures = [dask.submit(_token_in_a_task, emulator.url, "race", pure=False,
                           workers=[workers[n % 2]]) for n in range(8)]
    answers = dask.gather(futures)
    assert len({pid for _, pid in answers}) == 2  # four tasks on each host, all at once
    assert len({user for user, _ in answers}) == 1 and emulator.stats()["signups"] == 1


def _profiling() -> bool:
    import dask as dask_in_worker

    return bool(dask_in_worker.config.get("distributed.worker.profile.enabled"))


def test_workers_run_without_the_profiler_where_it_deadlocks(dask: Any) -> None:
    # CPython gh-116969: before 3.11.9 the profiler can freeze a worker for good.
    expected = sys.version_info >= (3, 11, 9)
    assert set(dask.run(_profiling).values()) == {expected}


def test_arta_batch_runs_on_a_cluster_from_the_command_line(emu: Emulator, cluster: Any,
                                                             tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"cli fox {i}\n" for i in range(6)))
    before = emu.stats()
    command = [sys.executable, "-m", "arta", "batch", str(prompts), "-o", str(tmp_path / "out"),
               "--engine", "dask", "--scheduler", cluster.scheduler_address, "--json",
               "--poll-interval", "0.05"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ARTA_ENDPOINT": emu.url,
           "ARTA_HOME": str(tmp_path / "driver-home")}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    files = [Path(f) for r in records if r.get("event") == "done" for f in r["files"]]
    assert len(files) == 6 and all(png_size(f) == (512, 512) for f in files)
    delta = _delta(emu, before)
    assert delta["submits"] == 6 and delta["duplicate_submits"] == 0


@pytest.mark.parametrize(("flags", "says"), [
    (["--scheduler", "local:2"], "need --engine dask"),
    (["--engine", "dask"], "needs --scheduler"),
    (["--engine", "dask", "--scheduler", "local:2", "--workers", "2"], "--workers is for"),
])
def test_dask_flags_are_checked_before_any_request(emulator: Emulator, tmp_path: Path,
                                                   flags: list[str], says: str) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a fox\n")
    done = subprocess.run(
        [sys.executable, "-m", "arta", "batch", str(prompts), "-o", str(tmp_path / "out"),
         *flags], capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT), "ARTA_ENDPOINT": emulator.url})
    assert done.returncode == 2 and says in done.stderr, done.stderr
    assert emulator.stats()["signups"] == 0 and emulator.stats()["submits"] == 0


# -- at cluster scale (issue 20) ---------------------------------------------


def _driver(scheduler: str, endpoint: str, prompts: Path, out: Path) -> list[str]:
    return [sys.executable, str(ROOT / "tests" / "dask_driver.py"), scheduler, endpoint,
            str(prompts), str(out)]


def _driver_env(home: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}",
            "ARTA_HOME": str(home)}


def _prompts(tmp_path: Path, count: int, tag: str) -> Path:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"{tag}: a fox, variation {i}\n" for i in range(count)))
    return prompts


def _run_until_done(command: list[str], env: dict[str, str], manifest: Path,
                    done: int) -> subprocess.Popen[bytes]:
    """Start the driver; return it once ``done`` jobs are recorded done (or it ended)."""
    driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    while driver.poll() is None and (
            not manifest.exists() or manifest.read_text().count('"done"') < done):
        time.sleep(0.02)
    return driver


def test_a_local_cluster_driver_killed_and_run_again_signs_up_once(
        emulator: Emulator, tmp_path: Path) -> None:
    # local:N is one host: the driver and its workers share the host's token
    # file, so the second run (a new scheduler) costs no sign-up.
    count, home, out = 40, tmp_path / "home", tmp_path / "out"
    command = _driver("local:2", emulator.url, _prompts(tmp_path, count, "local"), out)
    driver = _run_until_done(command, _driver_env(home), out / "arta-manifest.jsonl", 10)
    driver.send_signal(signal.SIGKILL)
    driver.wait(30)
    on_the_wire = sum(r["event"] == "intent"
                      for r in Manifest(out / "arta-manifest.jsonl").latest().values())
    done = subprocess.run(command, env=_driver_env(home), capture_output=True, text=True,
                          timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    final = Manifest(out / "arta-manifest.jsonl").latest()
    assert len(final) == count and {r["event"] for r in final.values()} == {"done"}
    stats = emulator.stats()
    assert stats["signups"] == 1
    assert count <= stats["submits"] <= count + on_the_wire
    # The token is in the host's file only: 0600 in a 0700 folder.
    token_file, = home.glob("auth_ARTA*.json")
    assert (home.stat().st_mode & 0o777, token_file.stat().st_mode & 0o777) == (0o700, 0o600)


@pytest.fixture
def slower_emulator() -> Iterator[Emulator]:
    """Jobs of half a second: a run is still going a moment after it started."""
    with Emulator(queue_seconds=0.05, progress_seconds=0.5) as emulator:
        yield emulator


def test_a_scheduler_restarted_midway_costs_no_sign_up_and_no_duplicate(
        slower_emulator: Emulator, tmp_path: Path) -> None:
    emulator = slower_emulator
    count, home, out = 60, tmp_path / "home", tmp_path / "out"
    prompts, manifest = _prompts(tmp_path, count, "restart"), out / "arta-manifest.jsonl"

    def cluster() -> Any:
        return distributed.LocalCluster(n_workers=1, processes=True, threads_per_worker=2,
                                        host="127.0.0.1", dashboard_address="127.0.0.1:0",
                                        silence_logs=logging.CRITICAL)

    with cluster() as first:
        driver = _run_until_done(_driver(first.scheduler_address, emulator.url, prompts, out),
                                 _driver_env(home), manifest, 10)
    # The scheduler is gone: the driver records what ended and stops submitting.
    assert driver.wait(120) != 0
    assert not any(r["event"] == "intent" for r in Manifest(manifest).latest().values())
    with cluster() as second:
        done = subprocess.run(_driver(second.scheduler_address, emulator.url, prompts, out),
                              env=_driver_env(home), capture_output=True, text=True,
                              timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    final = Manifest(manifest).latest()
    assert len(final) == count and {r["event"] for r in final.values()} == {"done"}
    stats = emulator.stats()
    assert (stats["signups"], stats["submits"], stats["duplicate_submits"]) == (1, count, 0)


def test_one_worker_of_two_threads_carries_500_waiting_jobs(tmp_path: Path) -> None:
    import psutil

    now = [time.time()]  # the service's clock: frozen, its jobs wait until it moves
    slow = arta.PollPolicy(first_delay=2.0, interval=2.0, growth=1.0, max_delay=2.0, jitter=0.1)
    with Emulator(queue_seconds=0, progress_seconds=1, clock=lambda: now[0]) as emu, \
            dask_module.config.set(WORKER_CONFIG), distributed.LocalCluster(
                n_workers=1, processes=True, threads_per_worker=2, host="127.0.0.1",
                dashboard_address="127.0.0.1:0", silence_logs=logging.CRITICAL) as local, \
            distributed.Client(local, set_as_default=False) as client:
        worker = psutil.Process(next(iter(_worker_pids(client).values())))
        jobs = _jobs(500, "five hundred")
        reports: list[Any] = []
        batch = threading.Thread(target=lambda: reports.append(run_batch_on_dask(
            jobs, Manifest(tmp_path / "m.jsonl"), tmp_path / "out",
            scheduler=local.scheduler_address, concurrency=500,
            client_options={"endpoint": emu.url, "poll_policy": slow, "timeout": 600})))
        batch.start()
        carried, threads, since = 0, 0, None
        while carried < 500 and (since is None or time.monotonic() - since < 10):
            carried = max(client.run(_running_tasks).values())
            threads = max(threads, worker.num_threads())
            if since is None and emu.stats()["submits"] == 500:
                since = time.monotonic()  # all handed off: a few seconds to reach the worker
            time.sleep(0.1)
        now[0] += 60  # every job ends
        batch.join()
    assert carried == 500
    assert threads <= 24
    assert [o.event for o in reports[0].outcomes] == ["done"] * 500
    assert emu.stats()["signups"] == 1


def _running_tasks(dask_worker: Any) -> int:
    return len(dask_worker.state.all_running_tasks)


def _listening(process: Any) -> set[int]:
    import psutil

    return {c.laddr.port for c in process.net_connections("tcp") if c.status == psutil.CONN_LISTEN}


def _answer(port: int) -> bytes:
    """What port ``port`` says first: Dask's handshake, or its answer to a GET /health."""
    with socket.create_connection(("127.0.0.1", port), 5) as probe:
        probe.settimeout(1)
        try:
            return probe.recv(12)  # a Dask comm speaks first
        except OSError:
            pass
        probe.sendall(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")
        try:
            return probe.recv(12)
        except OSError:
            return b""


def test_a_local_cluster_serves_no_http() -> None:
    import psutil

    from arta.dask import connect

    this = psutil.Process()
    before, others = _listening(this), set(this.children(recursive=True))
    with connect("local:1"):
        ports = _listening(this) - before  # the scheduler's, in this process
        ports |= {port for child in set(this.children(recursive=True)) - others
                  for port in _listening(child)}  # the worker's and its nanny's
        answers = {port: _answer(port) for port in ports}
    assert len(answers) >= 2  # the scheduler's, the worker's (and its nanny's)
    assert not [a for a in answers.values() if a.startswith(b"HTTP/")], answers


def _housekeeping(dask_worker: Any) -> dict[str, Any]:
    timers = dask_worker.periodic_callbacks
    return {"tick ms": timers["tick"].callback_time, "profiler": "profile" in timers,
            "memory monitor ms": timers["memory_monitor"].callback_time}


def _stealing(dask_scheduler: Any) -> bool:
    return "stealing" in dask_scheduler.extensions


def test_a_local_cluster_has_a_slot_per_job_and_no_dashboard_timers() -> None:
    import psutil

    from arta.dask import connect

    with connect("local:1", slots=64) as client:
        slots = list(client.nthreads().values())
        threads = [psutil.Process(pid).num_threads() for pid in _worker_pids(client).values()]
        workers = list(client.run(_housekeeping).values())
        stealing = client.run_on_scheduler(_stealing)
    assert slots == [64] and threads[0] <= 24  # a slot is a thread only once a task runs on it
    assert workers == [{"tick ms": 1000, "profiler": False, "memory monitor ms": 1000}]
    assert not stealing


def test_the_cluster_token_is_seeded_from_the_driver_and_renewals_come_back(dask: Any) -> None:
    from arta.auth import MemoryTokenStore, Token

    now = time.time()
    # The driver's token is past the middle of its life: due for renewal, still good.
    aging = Token("driver-id-token", "driver-refresh", now - 3000, now + 600, "driver")
    host = MemoryTokenStore()
    host.save(aging)
    driver = DaskTokenStore("seeded", client=dask, host_store=host)
    # A new scheduler starts with the driver's token: no sign-up.
    assert DaskTokenStore("seeded", client=dask).load() == aging
    # A worker renews it in the scheduler...
    renewed = Token("worker-id-token", "worker-refresh", now, now + 3600, "driver")
    DaskTokenStore("seeded", client=dask).save(renewed)
    # ...and the driver, looking again, writes the renewal back to its own store.
    assert driver.load() == renewed and host.load() == renewed
    # A token in the scheduler fresher than the host's is what a new driver takes.
    DaskTokenStore("seeded", client=dask, host_store=host)
    assert host.load() == renewed


def _started(dask_worker: Any) -> dict[str, Any]:
    import psutil

    return {"parent": " ".join(psutil.Process().parent().cmdline()),
            "mark": os.environ.get("SET_AFTER_THE_FORK_SERVER"),
            "batch": dask_worker.batched_stream.interval}


def _scheduler_batches(dask_scheduler: Any) -> list[float]:
    streams = [*dask_scheduler.stream_comms.values(), *dask_scheduler.client_comms.values()]
    return sorted({stream.interval for stream in streams})


def test_a_local_cluster_forks_its_workers_and_batches_its_messages(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from arta.dask import connect
    from arta.dask.cluster import LOCAL_MESSAGE_BATCH

    with connect("local:1"):
        pass  # the fork server starts here, with the environment of now
    monkeypatch.setenv("SET_AFTER_THE_FORK_SERVER", "set later")
    with connect("local:1") as client:
        worker, = client.run(_started).values()
        scheduler = client.run_on_scheduler(_scheduler_batches)
        driver = client.scheduler_comm.interval
    # Forked from the fork server (Dask and arta imported once), not started afresh...
    assert "forkserver" in worker["parent"]
    # ...and yet with this process's environment as it is when the cluster starts.
    assert worker["mark"] == "set later"
    assert worker["batch"] == driver == LOCAL_MESSAGE_BATCH
    assert scheduler == [LOCAL_MESSAGE_BATCH]


@dataclasses.dataclass(frozen=True)
class FirstPollWitness:
    """A poll policy that writes down what the worker knew of a job at its first poll."""

    folder: str
    timeout: float = 60.0

    def next_delay(self, generation: Any, attempt: int) -> float:
        if attempt == 1:
            Path(self.folder, generation.record_id).write_text(
                json.dumps([status.value for _, status in generation.seen]))
        return 0.05

    def finished(self, generation: Any) -> None:
        pass


def test_a_worker_polls_a_job_knowing_the_submits_answer(emu: Emulator, cluster: Any,
                                                          tmp_path: Path) -> None:
    # A learned poll policy times its polls from the submit: the worker needs it too.
    witness = FirstPollWitness(str(tmp_path / "seen"))
    (tmp_path / "seen").mkdir()
    outcomes = run_batch_on_dask(_jobs(4, "seen"), Manifest(tmp_path / "m.jsonl"),
                                 tmp_path / "out", scheduler=cluster.scheduler_address,
                                 client_options={"endpoint": emu.url, "poll_policy": witness},
                                 ).outcomes
    assert [o.event for o in outcomes] == ["done"] * 4
    seen = {path.name: json.loads(path.read_text()) for path in (tmp_path / "seen").iterdir()}
    assert sorted(seen) == sorted(str(o.record_id) for o in outcomes)
    assert all(answers == ["IN_QUEUE"] for answers in seen.values()), seen
