"""Status requests per job, and how late a finished job is noticed: fixed, default and learned polls.

Every (workload, policy) pair runs against its own emulator in its own
process, with its own client process and an empty ``ARTA_HOME`` (so the
learned policy starts cold), all pairs at once. ``THREADS`` client threads
each loop ``client.submit(...).wait(poll_policy=...)``. Per job: the status
requests (the answers in ``generation.seen`` after the submit's) and the
lateness, from the emulator's ``finished_at`` (``GET
/emulator/jobs/{id}``) to the moment ``wait()`` returned. Baseline: the old
provider's fixed 2 s poll, measured in the same run.

Workloads:

- service: capacity 16 (FIFO), the service-like timing model, jobs of
  mixed parameters (4 styles x 3 step counts x 1-2 images x 3 ratios);
  the first ``WARMUP`` jobs are reported apart. Goal for the learned
  policy: <= 0.5x the requests and <= 0.5x the median lateness of fixed
  2 s, p95 no worse.
- flat: no capacity limit, queue 0-3 s, progress 2-12 s (the old
  reference). Goal: no worse than fixed 2 s by more than 10% on either axis.
- drift: as service, but every job from number ``jobs/2`` on is twice as
  slow. Reported by windows of 25 jobs, to count the jobs it takes to be
  back within the service goals.

    python benchmarks/polling.py [--jobs 300] [--threads 48]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import resource
import statistics
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

import arta
from arta.emulator import Emulator

WARMUP = 50
WINDOW = 25
POLICIES = ("fixed 2 s (old provider)", "PollPolicy() default", "learned")
STYLES, STEPS, IMAGES, RATIOS = ("Flux", "Anime", "Watercolor", "F Pro"), (20, 30, 40), (1, 2), \
    ("1:1", "16:9", "9:21")


def make_policy(name: str, home: str) -> arta.polling.PollPlanner:
    """The policy under test; the learned one keeps its statistics in ``home``."""
    if name.startswith("fixed"):
        return arta.PollPolicy(first_delay=0, interval=2, growth=1, max_delay=2, jitter=0)
    if name.startswith("PollPolicy"):
        return arta.PollPolicy()
    return arta.polling.LearnedPollPolicy(home)


def emulator_options(workload: str) -> dict[str, Any]:
    """The emulator of each workload."""
    if workload == "flat":
        return {"queue_seconds": (0, 3), "progress_seconds": (2, 12), "seed": 7}
    return {"queue_seconds": 0, "progress_seconds": None, "capacity": 16, "seed": 7}


def serve(options: dict[str, Any], conn: Connection) -> None:
    """The emulator's process: send its URL, obey ``("speed", x)``, stop on ``("stop",)``."""
    with Emulator(**options) as emulator:
        conn.send(emulator.url)
        while True:
            command = conn.recv()
            if command[0] == "speed":
                emulator.app.set_speed(command[1])
                conn.send("ok")
            else:
                return


def job_params(index: int) -> dict[str, Any]:
    """The same mixed parameters for every policy."""
    rng = random.Random(index)
    return {"style": rng.choice(STYLES), "steps": rng.choice(STEPS), "n": rng.choice(IMAGES),
            "aspect_ratio": rng.choice(RATIOS), "seed": index}


def run(workload: str, policy_name: str, jobs: int, threads: int, out: Any) -> None:
    """A client process: every job of one (workload, policy); put ``[(polls, lateness)]`` in ``out``."""
    parent, child = multiprocessing.Pipe()
    server = multiprocessing.Process(target=serve, args=(emulator_options(workload), child))
    server.start()
    url = parent.recv()
    speed_lock = threading.Lock()
    try:
        with tempfile.TemporaryDirectory() as home, \
                arta.Client(url, home=home, pool_size=threads) as client:
            policy = make_policy(policy_name, home)
            client.auth.token()  # sign up before the clock starts

            def one(index: int) -> tuple[str, int, float]:
                if workload == "drift" and index == jobs // 2:
                    with speed_lock:
                        parent.send(("speed", 2.0))
                        parent.recv()
                params = job_params(index) if workload != "flat" else {"seed": index}
                generation = client.submit(f"benchmark fox {index}", **params)
                generation.wait(timeout=600, poll_policy=policy)
                return generation.record_id, len(generation.seen) - 1, time.time()

            with ThreadPoolExecutor(threads) as pool:
                done = list(pool.map(one, range(jobs)))
            if isinstance(policy, arta.polling.LearnedPollPolicy):
                policy.stats.flush()
        records = []
        for record_id, polls, returned in done:
            with urllib.request.urlopen(f"{url}/emulator/jobs/{record_id}") as answer:
                finished = json.load(answer)["finished_at"]
            records.append((polls, returned - finished))
        usage = resource.getrusage(resource.RUSAGE_SELF)
        out.put((workload, policy_name, records, (usage.ru_utime + usage.ru_stime) / jobs))
    finally:
        parent.send(("stop",))
        server.join()


def summary(records: list[tuple[int, float]]) -> tuple[float, float, float]:
    """Requests per job, median and p95 lateness."""
    late = sorted(lateness for _, lateness in records)
    return (statistics.mean(p for p, _ in records), statistics.median(late),
            late[round(0.95 * (len(late) - 1))])


def table(title: str, rows: dict[str, list[tuple[int, float]]]) -> None:
    """One table: each policy against the first (fixed 2 s)."""
    print(f"\n{title}")
    print(f"  {'policy':<26} {'req/job':>7} {'median s':>8} {'p95 s':>6}   vs fixed 2 s: "
          "req, median, p95")
    base = summary(rows[POLICIES[0]])
    for name, records in rows.items():
        polls, median, p95 = summary(records)
        print(f"  {name:<26} {polls:>7.2f} {median:>8.2f} {p95:>6.2f}   "
              f"{polls / base[0]:.2f}x, {median / base[1]:.2f}x, {p95 / base[2]:.2f}x")


def drift_windows(fixed: list[tuple[int, float]], learned: list[tuple[int, float]],
                  jobs: int) -> None:
    """Per window of jobs after the slow-down: the learned policy's ratios, and when it recovers."""
    print(f"\ndrift: every job 2x slower from job {jobs // 2}; learned vs fixed 2 s by windows")
    recovered = None
    for start in range(WARMUP, jobs, WINDOW):
        f, lr = summary(fixed[start:start + WINDOW]), summary(learned[start:start + WINDOW])
        ratios = (lr[0] / f[0], lr[1] / f[1], lr[2] / f[2])
        ok = ratios[0] <= 0.5 and ratios[1] <= 0.5 and ratios[2] <= 1.0
        if start >= jobs // 2 and ok and recovered is None:
            recovered = start - jobs // 2
        print(f"  jobs {start:>3}-{start + WINDOW - 1:<3} req {lr[0]:5.2f} vs {f[0]:5.2f} "
              f"({ratios[0]:.2f}x)  median {lr[1]:.2f} vs {f[1]:.2f} ({ratios[1]:.2f}x)  "
              f"p95 {lr[2]:.2f} vs {f[2]:.2f} ({ratios[2]:.2f}x){'' if ok else '  outside goals'}")
    print("  back within the goals "
          + (f"from the window starting {recovered} jobs after the change"
             if recovered is not None else "in no window of this run"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--threads", type=int, default=48)
    parser.add_argument("--workloads", default="service,flat,drift")
    parser.add_argument("--save", metavar="PATH", help="also write every job's (polls, lateness)")
    args = parser.parse_args()
    workloads = args.workloads.split(",")
    runs = [(w, p) for w in workloads for p in POLICIES if not (w == "drift" and "default" in p)]
    out: Any = multiprocessing.Queue()
    started = time.monotonic()
    processes = [multiprocessing.Process(target=run, args=(w, p, args.jobs, args.threads, out))
                 for w, p in runs]
    for process in processes:
        process.start()
    results: dict[str, dict[str, list[tuple[int, float]]]] = {w: {} for w in workloads}
    cpu: dict[tuple[str, str], float] = {}
    for _ in runs:
        workload, name, records, cpu[workload, name] = out.get()
        results[workload][name] = records
    for process in processes:
        process.join()
    if args.save:
        with open(args.save, "w", encoding="utf-8") as file:
            json.dump(results, file)
    print(f"{args.jobs} jobs per run, {args.threads} client threads, all runs at once "
          f"({time.monotonic() - started:.0f} s)")
    order = {name: i for i, name in enumerate(POLICIES)}
    for workload in workloads:
        rows = dict(sorted(results[workload].items(), key=lambda kv: order[kv[0]]))
        if workload == "drift":
            drift_windows(rows[POLICIES[0]], rows["learned"], args.jobs)
            continue
        label = {"service": "service-like: capacity 16, timing model, mixed parameters",
                 "flat": "flat: queue 0-3 s, progress 2-12 s, no capacity limit"}[workload]
        table(f"{label}; jobs 0-{WARMUP - 1} (warm-up)",
              {k: v[:WARMUP] for k, v in rows.items()})
        table(f"{label}; jobs {WARMUP}-{args.jobs - 1}", {k: v[WARMUP:] for k, v in rows.items()})
        print("  client CPU per job (whole run): " + ", ".join(
            f"{name} {1000 * cpu[workload, name]:.0f} ms" for name in rows))


if __name__ == "__main__":
    main()
