"""The same batch in one process (``arta batch``) and through Dask on one machine (``local:2``).

The emulator runs in its own process (jobs queued 0-0.1 s, then in progress
0.5-1.0 s; reset before each case so that every case gets the same job
durations). Each case runs as a child process of this script, so that its
CPU, its workers' and (for Dask) its scheduler's are all counted
(``RUSAGE_CHILDREN`` once it has exited), and split between the driver's
process (with the scheduler, for ``local:N``) and the processes it started
(the workers); the case samples the thread count of its own process and of
each process it started. Cases, with the same number of jobs in flight:

- ``run_batch(concurrency=C)``: one process, its jobs waiting in the poll loop;
- ``run_batch_on_dask(scheduler="local:2", concurrency=C)``: a LocalCluster
  of 2 worker processes started by the driver (its start-up counts); the
  driver submits on the same engine, each worker waits on its own.

Ratios are against the first case, measured in the same run; ``--runs N``
repeats the pair N times (a table each).

    python benchmarks/dask_batch.py [--jobs 1000] [--in-flight 64] [--runs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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

_CASE = """
import json, sys, threading
import psutil
import arta
from arta.batch import Manifest, read_jobs, run_batch
from arta.dask import run_batch_on_dask

engine, endpoint, prompts, out, in_flight = sys.argv[1:6]
POLL = arta.PollPolicy(first_delay=0.4, interval=0.3, growth=1.1, max_delay=0.6, jitter=0.05)
options = {"endpoint": endpoint, "poll_policy": POLL, "timeout": 120}
jobs, manifest = read_jobs(prompts), Manifest(out + "/arta-manifest.jsonl")
peaks = {}  # pid -> the most threads seen

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

if __name__ == "__main__":
    stop = threading.Event()
    threading.Thread(target=sample, args=(stop,), daemon=True).start()
    if engine == "process":
        report = run_batch(jobs, manifest, out, concurrency=int(in_flight),
                           client_options=options)
    else:
        report = run_batch_on_dask(jobs, manifest, out, scheduler="local:2",
                                   client_options=options, concurrency=int(in_flight))
    stop.set()
    assert all(o.event == "done" for o in report.outcomes), [o.error for o in report.outcomes]
    import os, resource
    cpu = {name: usage.ru_utime + usage.ru_stime for name, usage in (
        ("driver", resource.getrusage(resource.RUSAGE_SELF)),  # with the scheduler, for local:N
        ("others", resource.getrusage(resource.RUSAGE_CHILDREN)))}  # the workers, once ended
    print(json.dumps({"driver": peaks.pop(os.getpid()), "others": sorted(peaks.values()),
                      "cpu": cpu}))
"""


def run_case(engine: str, url: str, prompts: Path, in_flight: int) -> dict[str, Any]:
    """Wall time, CPU seconds (the case's process and all it started), threads seen."""
    requests.post(f"{url}/emulator/reset", timeout=10)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory() as out:
        script = Path(out) / "case.py"
        script.write_text(_CASE)
        start = time.perf_counter()
        env = {**os.environ, "ARTA_HOME": f"{out}/home"}  # a token of this emulator's
        done = subprocess.run([sys.executable, str(script), engine, url, str(prompts), out,
                               str(in_flight)], check=True, cwd=ROOT, capture_output=True,
                              text=True, env=env)
        wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    threads = json.loads(done.stdout.splitlines()[-1])
    split = threads.pop("cpu")
    stats = requests.get(f"{url}/emulator/stats", timeout=10).json()
    return {"wall": wall, "cpu": cpu, "split": split, "threads": threads, "signups": stats["signups"],
            "submits": stats["submits"], "polls": stats["polls"]}


def print_run(jobs: int, in_flight: int, results: list[tuple[str, dict[str, Any]]]) -> None:
    """One run's table: each case, and its ratios to the first."""
    base = results[0][1]
    print(f"{jobs} jobs (in progress 0.5-1.0 s), {in_flight} in flight\n")
    print(f"| {'engine':<50} | {'wall s':>6} | {'x':>4} | {'CPU s':>5} | {'x':>4} "
          f"| CPU s: driver, workers | threads: driver | other processes |")
    print(f"|{'-' * 52}|{'-' * 8}|{'-' * 6}|{'-' * 7}|{'-' * 6}|{'-' * 24}|{'-' * 18}"
          f"|{'-' * 17}|")
    for label, row in results:
        threads = row["threads"]
        others = ", ".join(map(str, threads["others"])) or "-"
        split = f"{row['split']['driver']:.1f}, {row['split']['others']:.1f}"
        print(f"| {label:<50} | {row['wall']:6.1f} | {row['wall'] / base['wall']:4.2f} "
              f"| {row['cpu']:5.1f} | {row['cpu'] / base['cpu']:4.2f} | {split:>22} "
              f"| {threads['driver']:>15} | {others:>15} |")
    print("\nsign-ups, submits, polls per case:",
          [(r["signups"], r["submits"], r["polls"]) for _, r in results], "\n", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    server = subprocess.Popen([sys.executable, "-c", _EMULATOR], stdout=subprocess.PIPE,
                              text=True, cwd=ROOT)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        with tempfile.TemporaryDirectory() as folder:
            prompts = Path(folder) / "prompts.txt"
            prompts.write_text("".join(f"a fox, variation {i}\n" for i in range(args.jobs)))
            rows = [(f"arta batch, 1 process, concurrency {args.in_flight}", "process"),
                    (f"arta batch --engine dask, local:2, concurrency {args.in_flight}", "dask")]
            for _ in range(args.runs):
                print_run(args.jobs, args.in_flight,
                          [(label, run_case(engine, url, prompts, args.in_flight))
                           for label, engine in rows])
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
