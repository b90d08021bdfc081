"""Status requests per generation, and how late a finished job is noticed, per poll policy.

Reference workload: 100 jobs submitted together to the emulator, each
queued 0-3 s and then in progress 2-12 s (the same draws for every policy).
For each policy: the status requests per generation, and the median and
p95 of the delay from the moment the emulator marks a job DONE to the
moment ``wait()`` returns. The old provider's fixed 2 s poll is the baseline,
measured in the same run.

    python benchmarks/polling.py [--jobs 100]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import tempfile
import time

import arta
from arta.emulator import Emulator

POLICIES = {
    # The old provider: a poll right after the submit, then one every 2 s.
    "fixed 2 s (old provider)": arta.PollPolicy(
        first_delay=0, interval=2, growth=1, max_delay=2, jitter=0),
    "fixed 1 s": arta.PollPolicy(first_delay=0, interval=1, growth=1, max_delay=1, jitter=0),
    "1 s x1.5 to 5 s": arta.PollPolicy(first_delay=1, interval=1.5, growth=1.5, max_delay=5),
    "2 s, then 1.5 s": arta.PollPolicy(first_delay=2, interval=1.5, growth=1, max_delay=1.5),
    "2 s, then 1 s x1.2 to 3 s": arta.PollPolicy(
        first_delay=2, interval=1, growth=1.2, max_delay=3),
    "default: 2 s, then 1.5 s x1.1 to 3 s": arta.PollPolicy(),
}


def measure(policy: arta.PollPolicy, emulator: Emulator, jobs: int) -> tuple[float, list[float]]:
    """Run ``jobs`` generations at once; return (polls per generation, notice delays)."""
    emulator.app.reset()  # same random draws for the timeline, counters at zero
    with tempfile.TemporaryDirectory() as home, \
            arta.Client(emulator.url, home=home, poll_policy=policy) as client:

        def one(index: int) -> float:
            generation = client.submit(f"benchmark fox {index}", seed=index)
            generation.wait(timeout=120)
            returned = time.time()
            finished = emulator.app.job_finished_at(generation.record_id)
            assert finished is not None
            return returned - finished

        client.auth.token()  # sign up before the clock starts
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            delays = list(pool.map(one, range(jobs)))
    return emulator.stats()["polls"] / jobs, delays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    args = parser.parse_args()
    print(f"{args.jobs} jobs, queue 0-3 s, progress 2-12 s\n")
    print(f"{'policy':<38} {'polls/gen':>9} {'median s':>9} {'p95 s':>7}   vs fixed 2 s (polls, median)")
    baseline: tuple[float, float] | None = None
    with Emulator(queue_seconds=(0, 3), progress_seconds=(2, 12), seed=7) as emulator:
        for name, policy in POLICIES.items():
            polls, delays = measure(policy, emulator, args.jobs)
            median = statistics.median(delays)
            p95 = statistics.quantiles(delays, n=20)[-1]
            baseline = baseline or (polls, median)
            print(f"{name:<38} {polls:>9.2f} {median:>9.2f} {p95:>7.2f}   "
                  f"{polls / baseline[0]:.2f}x, {median / baseline[1]:.2f}x")


if __name__ == "__main__":
    main()
