"""The same batch in one process (``arta batch``) and through Dask on one machine (``local:2``).

The emulator runs in its own process (jobs queued 0-0.1 s, then in progress
0.5-1.0 s; reset before each case so that every case gets the same job
durations). Each case runs as a child process of this script and counts its
own CPU and that of every process it started (``RUSAGE_CHILDREN`` for those
ended, ``psutil`` for those alive at its end: the fork server of
``local:N``, with the workers it started), split between the driver's
process (with the scheduler and the nannies, for ``local:N``) and the
others; a Dask case also splits it in time (before the cluster starts,
starting it, the run, stopping it) and, at the cluster's close, by thread
in each process. The case samples the thread count of each process.
Cases, with the same number of jobs in flight:

- ``run_batch(concurrency=C)``: one process, its jobs waiting in the poll loop;
- ``run_batch_on_dask(scheduler="local:2", concurrency=C)``: a LocalCluster
  of 2 worker processes started by the driver (its start-up counts); the
  driver submits on the same engine, each worker waits on its own;
- Dask's floor: the same ``local:2`` and the same hand-offs
  (:class:`arta.dask.handoff.HandOffs`), C at a time, of tasks that do no
  arta work: each awaits a job's length (0.6-1.2 s), announces the job and
  returns a value of ``fetch_job``'s shape. What it costs, less the
  process's start (imports, the job file), is what Dask alone costs for this
  load, against the budget the goal leaves it (0.5 x the first case's CPU).

Ratios are against the first case, measured in the same run; ``--runs N``
repeats the cases N times (a table each).

    python benchmarks/dask_batch.py [--jobs 1000] [--in-flight 64] [--runs 1]
                                    [--cases process,dask,floor]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a clone, installed or not

import requests

_EMULATOR = (
    "from arta.emulator import Emulator\n"
    "Emulator(port=0, queue_seconds=(0, 0.1), progress_seconds=(0.5, 1.0), seed=7)"
    ".serve_forever(lambda e: print(e.url, flush=True))\n"
)

# Dask's floor: a task of fetch_job's shape (same arguments, same announcement, same
# value) that awaits a job's length instead of a job. In a module of its own, so that
# it travels by reference as fetch_job does (a function of __main__ is pickled whole).
_FLOOR_TASK = """
import asyncio, random
from arta.dask.handoff import ENDED_TOPIC

async def idle_job(record_id, options, seen):
    import distributed  # as fetch_job does: the driver's "before" excludes it in every case
    await asyncio.sleep(random.Random(record_id).uniform(0.6, 1.2))
    value = {"seed": 1, "blurred": False, "files": [f"{options['output_on_workers']}/{record_id}.png"]}
    distributed.get_worker().log_event(ENDED_TOPIC, {"record_id": record_id, **value})
    return value
"""

_CASE = """
import contextlib, json, os, re, resource, sys, threading, time
import psutil
import arta
import arta.dask.batch
from arta.batch import Manifest, read_jobs, run_batch
from arta.dask import run_batch_on_dask
from arta.dask.handoff import HandOffs
from floor_task import idle_job  # beside this script: the workers import it, as they do fetch_job

POLL = arta.PollPolicy(first_delay=0.4, interval=0.3, growth=1.1, max_delay=0.6, jitter=0.05)
peaks, marks = {}, {}  # pid -> the most threads seen; CPU s at the cluster's start and stop

def sample(stop):
    # The list of processes is read every 2 s only: it reads every process of
    # the machine, and cost this sampler more than 1 s of CPU a case at 0.2 s.
    me, processes, rounds = psutil.Process(), [], 0
    while not stop.wait(0.2):
        if rounds % 10 == 0:
            processes = [me, *me.children(recursive=True)]
        rounds += 1
        for process in processes:
            try:
                peaks[process.pid] = max(peaks.get(process.pid, 0), process.num_threads())
            except psutil.Error:
                pass

def cpu_now():
    # This process (the driver, the scheduler, the nannies) and each process it started.
    seconds = lambda times: times.user + times.system
    me = psutil.Process()
    return {"driver": seconds(me.cpu_times()),
            "others": sum(seconds(child.cpu_times()) for child in me.children(recursive=True))}

def thread_cpu():
    # CPU s by thread name (numbers dropped: "arta-io-3" is "arta-io"), threads alive only.
    names = {thread.native_id: re.sub(r"([-_ ]?\\d+)+$", "", thread.name)
             for thread in threading.enumerate()}
    cpu = {}
    for thread in psutil.Process().threads():
        name = names.get(thread.id, "(not Python's)")
        cpu[name] = round(cpu.get(name, 0) + thread.user_time + thread.system_time, 2)
    return cpu

@contextlib.contextmanager
def timed_connect(*args, **kwargs):
    marks["starting"] = cpu_now()
    with connect(*args, **kwargs) as dask:
        marks["up"] = cpu_now()
        yield dask
        marks["closing"] = cpu_now()
        marks["threads"] = [thread_cpu(), *dask.run(thread_cpu).values()]

connect, arta.dask.batch.connect = arta.dask.batch.connect, timed_connect

def floor(count, out, in_flight, options):
    # run_batch_on_dask's hand-offs (HandOffs, as the driver makes them on local:2), no arta work.
    options = {"client_options": options, "timeout": options["timeout"], "secede": False,
               "token": "host", "output_on_workers": out}
    window = threading.BoundedSemaphore(in_flight)
    with timed_connect("local:2", slots=in_flight) as dask, HandOffs(dask, options, idle_job) as jobs:
        endings = []
        for number in range(count):
            window.acquire()
            endings.append(jobs.launch(f"floor-{number:05d}", [(time.time(), "IN_QUEUE")]))
            endings[-1].add_done_callback(lambda _: window.release())
        assert all("files" in ending.result() for ending in endings)

if __name__ == "__main__":
    engine, endpoint, prompts, out, in_flight = sys.argv[1:6]
    options = {"endpoint": endpoint, "poll_policy": POLL, "timeout": 120}
    jobs, manifest = read_jobs(prompts), Manifest(out + "/arta-manifest.jsonl")
    stop = threading.Event()
    threading.Thread(target=sample, args=(stop,), daemon=True).start()
    if engine == "process":
        report = run_batch(jobs, manifest, out, concurrency=int(in_flight),
                           client_options=options)
    elif engine == "dask":
        report = run_batch_on_dask(jobs, manifest, out, scheduler="local:2",
                                   client_options=options, concurrency=int(in_flight))
    else:
        report = None
        floor(len(jobs), out, int(in_flight), options)
    stop.set()
    assert report is None or all(o.event == "done" for o in report.outcomes), [
        o.error for o in report.outcomes]
    # The driver (with the scheduler and the nannies, for local:N), and every process it
    # started: those ended, and those still alive (the fork server, with the workers it
    # started and waited for).
    seconds = lambda usage: usage.ru_utime + usage.ru_stime
    alive = psutil.Process().children(recursive=True)
    cpu = {"driver": seconds(resource.getrusage(resource.RUSAGE_SELF)),
           "others": seconds(resource.getrusage(resource.RUSAGE_CHILDREN)) + sum(
               sum(child.cpu_times()[:4]) for child in alive)}
    print(json.dumps({"driver": peaks.pop(os.getpid()), "others": sorted(peaks.values()),
                      "cpu": cpu, "marks": marks}))
"""


def run_case(engine: str, url: str, prompts: Path, in_flight: int) -> dict[str, Any]:
    """Wall time, CPU seconds (the case's process and all it started), threads seen."""
    requests.post(f"{url}/emulator/reset", timeout=10)
    with tempfile.TemporaryDirectory() as out:
        script = Path(out) / "case.py"
        script.write_text(_CASE)
        (Path(out) / "floor_task.py").write_text(_FLOOR_TASK)
        start = time.perf_counter()
        env = {**os.environ, "ARTA_HOME": f"{out}/home"}  # a token of this emulator's
        done = subprocess.run([sys.executable, str(script), engine, url, str(prompts), out,
                               str(in_flight)], check=True, cwd=ROOT, capture_output=True,
                              text=True, env=env)
        wall = time.perf_counter() - start
    threads = json.loads(done.stdout.splitlines()[-1])
    split, marks = threads.pop("cpu"), threads.pop("marks")
    cpu = sum(split.values())
    stats = requests.get(f"{url}/emulator/stats", timeout=10).json()
    return {"engine": engine, "wall": wall, "cpu": cpu, "split": split, "marks": marks, "threads": threads, "signups": stats["signups"],
            "submits": stats["submits"], "polls": stats["polls"]}


def phases(row: dict[str, Any]) -> str:
    """A Dask case's CPU: before the cluster starts (imports, the job file), starting it,
    the run, stopping it."""
    marks, split = row["marks"], row["split"]
    if not marks:
        return "-"
    before, up, closing = (sum(marks[name].values()) for name in ("starting", "up", "closing"))
    return (f"{before:.1f}, {up - before:.1f}, {closing - up:.1f}, "
            f"{sum(split.values()) - closing:.1f}")


def print_run(jobs: int, in_flight: int, results: list[tuple[str, dict[str, Any]]]) -> None:
    """One run's table: each case, and its ratios to the first."""
    base = results[0][1]
    print(f"{jobs} jobs (in progress 0.5-1.0 s), {in_flight} in flight\n")
    print(f"| {'engine':<50} | {'wall s':>6} | {'x':>4} | {'CPU s':>5} | {'x':>4} "
          f"| CPU s: driver, workers | CPU s: before, start, run, stop | threads: driver "
          f"| other processes |")
    print(f"|{'-' * 52}|{'-' * 8}|{'-' * 6}|{'-' * 7}|{'-' * 6}|{'-' * 24}|{'-' * 33}"
          f"|{'-' * 17}|{'-' * 17}|")
    for label, row in results:
        threads = row["threads"]
        others = ", ".join(map(str, threads["others"])) or "-"
        split = f"{row['split']['driver']:.1f}, {row['split']['others']:.1f}"
        print(f"| {label:<50} | {row['wall']:6.1f} | {row['wall'] / base['wall']:4.2f} "
              f"| {row['cpu']:5.1f} | {row['cpu'] / base['cpu']:4.2f} | {split:>22} "
              f"| {phases(row):>31} | {threads['driver']:>15} | {others:>15} |")
    for label, row in results:
        for number, threads in enumerate(row["marks"].get("threads", [])):
            process = "worker" if number else "driver"
            busy = sorted(threads.items(), key=lambda item: -item[1])
            print(f"{label[:30]}, {process}, CPU s by thread at the cluster's close: " + ", ".join(
                f"{name} {seconds:.2f}" for name, seconds in busy if seconds >= 0.05))
    print(f"\nthe budget for Dask (0.5 x the first case's CPU): {0.5 * base['cpu']:.1f} s")
    for _, row in results:
        if row["engine"] == "floor":  # all but the process's start, its imports, the job file
            print(f"Dask's floor: {row['cpu'] - sum(row['marks']['starting'].values()):.1f} s")
    print("sign-ups, submits, polls per case:",
          [(r["signups"], r["submits"], r["polls"]) for _, r in results], "\n", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--cases", default="process,dask,floor",
                        help="which cases, in order (ratios are to the first)")
    args = parser.parse_args()
    server = subprocess.Popen([sys.executable, "-c", _EMULATOR], stdout=subprocess.PIPE,
                              text=True, cwd=ROOT)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        with tempfile.TemporaryDirectory() as folder:
            prompts = Path(folder) / "prompts.txt"
            prompts.write_text("".join(f"a fox, variation {i}\n" for i in range(args.jobs)))
            labels = {"process": f"arta batch, 1 process, concurrency {args.in_flight}",
                      "dask": f"arta batch --engine dask, local:2, concurrency {args.in_flight}",
                      "floor": f"Dask's floor: {args.jobs} idle tasks of the same shape"}
            rows = [(labels[case], case) for case in args.cases.split(",")]
            for _ in range(args.runs):
                print_run(args.jobs, args.in_flight,
                          [(label, run_case(engine, url, prompts, args.in_flight))
                           for label, engine in rows])
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
