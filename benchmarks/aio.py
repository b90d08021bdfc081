"""200 concurrent ``await arta.aio.generate(...)`` in one event loop, beside 200 plain threads.

The same 200 generations run four ways against the emulator (in its own
process, so that its threads and CPU are not counted; reset before each case
so that every case gets the same job durations: queued 0.2-0.6 s, then in
progress 0.4-1.0 s), all through the process's default client and one poll
policy (the default one, scaled down to these short jobs):

- the baseline: 200 ``threading.Thread``, each calling the sync
  ``arta.generate``;
- ``await arta.aio.generate`` x 200 under ``asyncio.gather``, on the shared
  pool at its default size (32 threads), then at 64 and 200.

For each: the wall time, the peak number of threads in the process, and
the lag of a 10 ms ticker running in an event loop meanwhile (p50 and p99 of
how late each tick woke up), so the table shows what the loop feels. In the
baseline the ticker runs in a loop on the main thread, which starts the 200
threads (as the pool starts its threads from the loop's thread). Ratios are
against the baseline, measured in the same run.

    python benchmarks/aio.py [--jobs 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a clone, installed or not: imports below need it

import requests

import arta
import arta.aio

TICK = 0.010
POLL = arta.PollPolicy(first_delay=0.4, interval=0.3, growth=1.1, max_delay=0.6, jitter=0.05)
_EMULATOR = (
    "from arta.emulator import Emulator\n"
    "Emulator(port=0, queue_seconds=(0.2, 0.6), progress_seconds=(0.4, 1.0), seed=7)"
    ".serve_forever(lambda e: print(e.url, flush=True))\n"
)


@dataclass
class Measure:
    """What one case gave."""

    wall: float
    threads: int
    lags: list[float]
    errors: int

    def lag(self, percent: int) -> float:
        """The ``percent`` percentile of the ticker's lag, in milliseconds."""
        if len(self.lags) < 2:
            return 0.0
        return statistics.quantiles(self.lags, n=100)[percent - 1] * 1000


async def tick(until: Callable[[], bool], lags: list[float], threads: list[int]) -> None:
    """Sleep 10 ms at a time until ``until()``; note how late each wake-up was, and the threads."""
    while not until():
        started = time.perf_counter()
        await asyncio.sleep(TICK)
        lags.append(max(0.0, time.perf_counter() - started - TICK))
        threads.append(threading.active_count())


def with_threads(prompts: list[str]) -> Measure:
    """The baseline: one plain thread per generation, through the sync API."""
    lock = threading.Lock()
    left, errors, ended = [len(prompts)], [0], [0.0]

    def one(prompt: str) -> None:
        try:
            arta.generate(prompt, poll_policy=POLL)
        except arta.ArtaError:
            errors[0] += 1
        with lock:
            left[0] -= 1
            ended[0] = time.perf_counter()

    async def main() -> Measure:
        lags: list[float] = []
        threads: list[int] = []
        ticker = asyncio.ensure_future(tick(lambda: left[0] == 0, lags, threads))
        await asyncio.sleep(0)  # the ticker runs from here on
        started = time.perf_counter()
        # Started from the loop's thread, as the pool starts its threads: the
        # ticker sees what starting them costs in both cases.
        workers = [threading.Thread(target=one, args=(prompt,)) for prompt in prompts]
        for worker in workers:
            worker.start()
        await ticker
        for worker in workers:
            worker.join()
        return Measure(ended[0] - started, max(threads), lags, errors[0])

    return asyncio.run(main())


def with_aio(prompts: list[str], max_workers: int) -> Measure:
    """``await arta.aio.generate`` for every prompt at once, on a shared pool of ``max_workers``."""
    arta.aio.set_default_max_workers(max_workers)
    time.sleep(0.2)  # let the previous pool's idle threads end before counting

    async def main() -> Measure:
        lags: list[float] = []
        threads: list[int] = []
        started = time.perf_counter()
        ended: list[float] = []
        jobs = asyncio.gather(*(arta.aio.generate(prompt, poll_policy=POLL) for prompt in prompts),
                              return_exceptions=True)
        jobs.add_done_callback(lambda _: ended.append(time.perf_counter()))
        await tick(jobs.done, lags, threads)
        results = await jobs
        errors = sum(isinstance(result, BaseException) for result in results)
        return Measure(ended[0] - started, max(threads), lags, errors)

    return asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    args = parser.parse_args()
    prompts = [f"benchmark fox {index}" for index in range(args.jobs)]

    server = subprocess.Popen([sys.executable, "-c", _EMULATOR], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        with tempfile.TemporaryDirectory() as home:
            # The default client (behind arta.generate and arta.aio.generate)
            # reads these on first use; sign up before any clock starts.
            os.environ.update(ARTA_ENDPOINT=url, ARTA_HOME=home)
            arta.default_client().auth.token()

            cases: list[tuple[str, Callable[[], Measure]]] = [
                (f"threads: {args.jobs} x arta.generate", lambda: with_threads(prompts)),
                (f"aio, pool {arta.aio.DEFAULT_MAX_WORKERS} (default)",
                 lambda: with_aio(prompts, arta.aio.DEFAULT_MAX_WORKERS)),
                ("aio, pool 64", lambda: with_aio(prompts, 64)),
                (f"aio, pool {args.jobs}", lambda: with_aio(prompts, args.jobs)),
            ]
            print(f"{args.jobs} generations, queued 0.2-0.6 s then in progress 0.4-1.0 s; "
                  f"ticker every {TICK * 1000:.0f} ms\n")
            print(f"{'case':<30} {'wall s':>7} {'threads':>8} {'lag p50 ms':>11} "
                  f"{'lag p99 ms':>11}   vs threads (wall, threads, lag p99)")
            baseline: Measure | None = None
            for name, run in cases:
                requests.post(f"{url}/emulator/reset", timeout=10)  # the same job durations
                measure = run()
                baseline = baseline or measure
                failed = f"   {measure.errors} FAILED" if measure.errors else ""
                p99_ratio = measure.lag(99) / baseline.lag(99) if baseline.lag(99) else 0.0
                print(f"{name:<30} {measure.wall:>7.2f} {measure.threads:>8} "
                      f"{measure.lag(50):>11.2f} {measure.lag(99):>11.2f}   "
                      f"{measure.wall / baseline.wall:.2f}x, "
                      f"{measure.threads / baseline.threads:.2f}x, {p99_ratio:.2f}x{failed}")
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
