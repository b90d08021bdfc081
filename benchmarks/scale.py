"""Thousands of jobs in flight from one process: ``arta batch``, ``arta.aio`` and a service with a capacity.

Every case runs against the emulator in a process of its own (``arta
emulator``), so its threads and CPU are not the client's. Each is compared
with an *ideal* measured in the same run: the slowest job, plus the time
the emulator needs to accept that many submits (measured first, by 16
threads submitting through one client, nothing else running).

1. ``arta batch`` of N jobs (no capacity limit, in progress 2-4 s) with
   ``--concurrency 256`` in one process, beside ``--workers 8 --concurrency 8``
   (what the old process-per-job batch could keep in flight): wall time,
   peak threads and RSS of the batch's processes, and their CPU.
2. N concurrent ``await arta.aio.generate`` (in progress 4-8 s) in this
   process: wall, peak threads, and how late a 10 ms ticker woke up in the
   same event loop (p50, p99).
3. 300 jobs through ``arta batch --concurrency 256`` into a service with
   ``--capacity 20 --max-jobs-per-user 32``: utilisation of the 20 slots
   while jobs remain, 429 answers per submit, failed jobs, duplicate submits.
4. With ``--dask``: case 1 again through ``--engine dask --scheduler local:2``.

    python benchmarks/scale.py [--jobs 1000] [--aio-jobs 2000] [--dask] [--only-batch]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a clone, installed or not: imports below need it

import requests

import arta
import arta.aio

TICK = 0.010
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@contextmanager
def emulator(*flags: str) -> Iterator[str]:
    """``arta emulator --port 0 FLAGS`` in its own process; yield its URL."""
    server = subprocess.Popen([sys.executable, "-m", "arta.cli", "emulator", "--port", "0",
                               *flags], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True, env=ENV)
    try:
        assert server.stdout is not None
        yield server.stdout.readline().strip()
    finally:
        server.terminate()
        server.wait(timeout=10)


def accept_time(url: str, jobs: int) -> float:
    """Seconds for 16 threads of one client to have ``jobs`` submits accepted."""
    with tempfile.TemporaryDirectory() as home, arta.Client(url, home=home) as client:
        client.auth.token()
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: client.submit(f"probe {i}"), range(jobs)))
        took = time.perf_counter() - started
    requests.post(f"{url}/emulator/reset", timeout=10)
    return took


@dataclass
class Usage:
    """What a process tree used: wall, CPU, peak threads and peak RSS (sampled)."""

    wall: float = 0.0
    cpu: float = 0.0
    threads: int = 0
    rss_mb: float = 0.0
    samples: list[tuple[int, float]] = field(default_factory=list)


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo += [int(child) for child in task.read_text().split()]
            except OSError:
                pass
    return pids


def _status(pid: int) -> tuple[int, float]:
    threads, rss = 0, 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                threads = int(line.split()[1])
            elif line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
    except OSError:
        pass
    return threads, rss


def run_measured(command: list[str], env: dict[str, str]) -> tuple[Usage, int]:
    """Run ``command``; sample its process tree's threads and RSS; return usage and exit code."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    usage = Usage()
    while process.poll() is None:
        statuses = [_status(pid) for pid in _tree(process.pid)]
        usage.threads = max(usage.threads, sum(t for t, _ in statuses))
        usage.rss_mb = max(usage.rss_mb, sum(r for _, r in statuses))
        time.sleep(0.1)
    usage.wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    usage.cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if process.returncode != 0:
        print(f"  ({command[3:6]} exited {process.returncode}: {process.stderr.read()[-500:]})")
    return usage, process.returncode


def batch_case(url: str, jobs: int, *options: str) -> tuple[Usage, Path]:
    """``arta batch`` of ``jobs`` prompts with ``options``; return its usage and output folder."""
    folder = Path(tempfile.mkdtemp(prefix="arta-scale-"))
    prompts = folder / "prompts.txt"
    prompts.write_text("".join(f"scale fox {i}\n" for i in range(jobs)))
    command = [sys.executable, "-m", "arta.cli", "batch", str(prompts), "-o",
               str(folder / "out"), "-q", *options]
    env = {**ENV, "ARTA_ENDPOINT": url, "ARTA_HOME": str(folder / "home")}
    usage, _ = run_measured(command, env)
    return usage, folder


ONE_PROCESS = ("--concurrency 256 (one process)", ("--concurrency", "256"))
WORKERS = ("--workers 2 --concurrency 256", ("--workers", "2", "--concurrency", "256"))


def batch_table(url: str, jobs: int, ideal: float,
                cases: list[tuple[str, tuple[str, ...]]]) -> None:
    """Run each batch case against ``url`` and print its row beside ``ideal``."""
    print(f"   ideal (accept {jobs} submits + slowest job): {ideal:.1f} s")
    print(f"   {'case':<36} {'wall s':>7} {'x ideal':>8} {'threads':>8} {'CPU s':>7} "
          f"{'RSS MB':>7}")
    for name, options in cases:
        requests.post(f"{url}/emulator/reset", timeout=10)
        usage, _ = batch_case(url, jobs, *options)
        print(f"   {name:<36} {usage.wall:>7.1f} {usage.wall / ideal:>7.2f}x "
              f"{usage.threads:>8} {usage.cpu:>7.1f} {usage.rss_mb:>7.0f}")


def aio_case(url: str, jobs: int) -> tuple[float, int, list[float], int]:
    """``jobs`` concurrent ``await arta.aio.generate`` here; wall, peak threads, lags, errors."""
    with tempfile.TemporaryDirectory() as home:
        client = arta.Client(url, home=home)
        previous = arta.set_default_client(client)
        client.auth.token()  # sign up before the clock starts

        async def main() -> tuple[float, int, list[float], int]:
            lags: list[float] = []
            threads = [threading.active_count()]
            started = time.perf_counter()
            gathered = asyncio.gather(*(arta.aio.generate(f"aio fox {i}") for i in range(jobs)),
                                      return_exceptions=True)
            ended: list[float] = []
            gathered.add_done_callback(lambda _: ended.append(time.perf_counter()))
            while not gathered.done():
                tick = time.perf_counter()
                await asyncio.sleep(TICK)
                lags.append(max(0.0, time.perf_counter() - tick - TICK))
                threads.append(threading.active_count())
            results = await gathered
            errors = sum(isinstance(r, BaseException) for r in results)
            return ended[0] - started, max(threads), lags, errors

        try:
            return asyncio.run(main())
        finally:
            arta.set_default_client(previous)
            client.close()


def capacity_case(url: str, jobs: int) -> dict[str, float]:
    """300 jobs into a capacity-20 service; utilisation, 429s, failures, duplicates."""
    usage, folder = batch_case(url, jobs, "--concurrency", "256")
    stats = requests.get(f"{url}/emulator/stats", timeout=10).json()
    records = [json.loads(line) for line in (folder / "out" / "arta-manifest.jsonl")
               .read_text().splitlines() if line.strip()]
    ids = {r["record_id"] for r in records if r.get("event") == "done"}
    timelines = [requests.get(f"{url}/emulator/jobs/{i}", timeout=10).json() for i in ids]
    first = min(t["submitted_at"] for t in timelines)
    last = max(t["finished_at"] for t in timelines)
    return {"wall": usage.wall, "done": len(ids),
            "utilisation": stats["busy_slot_seconds"] / (20 * (last - first)),
            "rejected_429": stats["rejected_429"], "submits": stats["submits"],
            "duplicates": stats["duplicate_submits"]}


def pct(values: list[float], percent: int) -> float:
    """The ``percent`` percentile of ``values`` (seconds) in milliseconds."""
    return statistics.quantiles(values, n=100)[percent - 1] * 1000 if len(values) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--aio-jobs", type=int, default=2000)
    parser.add_argument("--capacity-jobs", type=int, default=300)
    parser.add_argument("--dask", action="store_true", help="add the Dask row")
    parser.add_argument("--only-batch", action="store_true", help="cases 1 and 1b only")
    args = parser.parse_args()

    print(f"1. arta batch, {args.jobs} jobs in progress 2-4 s, no capacity limit")
    with emulator("--queue-seconds", "0", "--progress-seconds", "2-4") as url:
        ideal = accept_time(url, args.jobs) + 4.0
        cases = [ONE_PROCESS, WORKERS,
                 ("--workers 8 --concurrency 8", ("--workers", "8", "--concurrency", "8"))]
        if args.dask:
            cases.append(("--engine dask --scheduler local:2",
                          ("--engine", "dask", "--scheduler", "local:2", "--concurrency", "256")))
        batch_table(url, args.jobs, ideal, cases)

    # Where process workers could still win: jobs so short that one process's
    # CPU, not the service, sets the pace.
    print(f"\n1b. arta batch, {args.jobs} jobs in progress 0-0.5 s, no capacity limit")
    with emulator("--queue-seconds", "0", "--progress-seconds", "0-0.5") as url:
        ideal = accept_time(url, args.jobs) + 0.5
        batch_table(url, args.jobs, ideal, [ONE_PROCESS, WORKERS])
    if args.only_batch:
        return

    print(f"\n2. {args.aio_jobs} concurrent await arta.aio.generate, in progress 4-8 s")
    with emulator("--queue-seconds", "0", "--progress-seconds", "4-8") as url:
        ideal = accept_time(url, args.aio_jobs) + 8.0
        wall, threads, lags, errors = aio_case(url, args.aio_jobs)
        print(f"   ideal {ideal:.1f} s; wall {wall:.1f} s ({wall / ideal:.2f}x ideal), "
              f"threads {threads}, loop lag p50 {pct(lags, 50):.1f} ms, "
              f"p99 {pct(lags, 99):.1f} ms, errors {errors}")

    print(f"\n3. {args.capacity_jobs} jobs into --capacity 20 --max-jobs-per-user 32, "
          "--concurrency 256")
    with emulator("--queue-seconds", "0", "--progress-seconds", "2-4", "--capacity", "20",
                  "--max-jobs-per-user", "32") as url:
        got = capacity_case(url, args.capacity_jobs)
        print(f"   wall {got['wall']:.1f} s, done {got['done']:.0f}, utilisation "
              f"{got['utilisation']:.0%}, 429s {got['rejected_429']:.0f} of "
              f"{got['submits']:.0f} submits ({got['rejected_429'] / got['submits']:.1%}), "
              f"duplicate submits {got['duplicates']:.0f}")


if __name__ == "__main__":
    main()
