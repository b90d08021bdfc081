"""The learned poll policy against fixed 2 s polling: one matrix of loads, and its CPU per poll.

Every (load, policy) pair runs against its own emulator in its own
process, with its own client process and an empty ``ARTA_HOME`` (so the
learned policy starts cold), all pairs at once. Each job is submitted and
waited on in its own thread (``client.submit(...).wait(poll_policy=...)``)
when the load says it arrives. Per job: the status requests (the answers
in ``generation.seen`` after the submit's) and the lateness, from the
emulator's ``finished_at`` (``GET /emulator/jobs/{id}``) to the moment
``wait()`` returned. Baseline: the old provider's fixed 2 s poll, measured
in the same run on the same load (same seeds, same arrival times).

Loads (the emulator's service-like timing model, 8-20 s a job, unless flat):

- burst: ``COLD`` jobs at once into a FIFO queue of ``--capacity`` slots,
  then (once they ended) ``--jobs`` more at once;
- steady: Poisson arrivals at 95% of the capacity's throughput;
- flat: no capacity, queue 0-3 s, progress 2-12 s (whatever the parameters),
  arrivals at 2 a second;
- step: as steady, every job twice as slow from the middle of the warm jobs;
- combos: as steady, each job one of 180 parameter combinations.

Cold rows are the first ``COLD`` jobs of each load (a new ``ARTA_HOME``);
warm rows the rest. Goals (issue 19): warm <= 0.5x requests and median
lateness, p95 <= 1x; cold <= 1x requests, <= 0.7x median; after the step,
back under 0.6x on both within 50 jobs.

Then what any policy could reach on each warm row (``--oracle`` prints only
that, with no server): the loads planned as the emulator plans them, fixed
2 s polls simulated on them, and bounds on the fewest polls of a policy that
knows each job's start and the distribution of its end. Last, the client
CPU of one ``next_delay`` call: the learned policy (warm, jobs queued and
running) beside ``PollPolicy()``, in this process.

    python benchmarks/polling.py [--jobs 150] [--capacity 24] [--loads burst,steady,...] [--oracle]
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import multiprocessing
import random
import statistics
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

import arta
from arta.emulator import Emulator, TimingModel
from arta.emulator.schedule import Schedule
from arta.generation import Generation, Status
from arta.params import GenerationParams
from arta.polling.learned import LearnedPollPolicy
from arta.polling.stats import PollStats

COLD = 50
WINDOW = 25
POLICIES = ("fixed 2 s", "learned")
LOADS = ("burst", "steady", "flat", "step", "combos")
STYLES, STEPS, IMAGES, RATIOS = ("Flux", "Anime", "Watercolor", "F Pro"), (20, 30, 40), (1, 2), \
    ("1:1", "16:9", "9:21")
COMBO_STYLES, COMBO_STEPS = ("Flux", "Anime", "Watercolor", "F Pro", "Cinematic Art"), \
    (15, 20, 25, 30, 35, 40)


def make_policy(name: str, home: str) -> arta.polling.PollPlanner:
    """The policy under test; the learned one keeps its statistics in ``home``."""
    if name.startswith("fixed"):
        return arta.PollPolicy(first_delay=0, interval=2, growth=1, max_delay=2, jitter=0)
    return LearnedPollPolicy(home)


def job_params(load: str, index: int) -> dict[str, Any]:
    """The parameters of job ``index``: the same for both policies."""
    rng = random.Random(index)
    if load == "flat":
        return {"seed": index}
    if load == "combos":  # 5 x 6 x 2 x 3 = 180 combinations
        return {"style": rng.choice(COMBO_STYLES), "steps": rng.choice(COMBO_STEPS),
                "n": rng.choice(IMAGES), "aspect_ratio": rng.choice(RATIOS), "seed": index}
    return {"style": rng.choice(STYLES), "steps": rng.choice(STEPS), "n": rng.choice(IMAGES),
            "aspect_ratio": rng.choice(RATIOS), "seed": index}


def arrivals(load: str, jobs: int, capacity: int) -> list[float]:
    """Seconds from the start at which each job is submitted (burst: None-free phases, see run)."""
    if load == "burst":
        return [0.0] * jobs
    if load == "flat":
        rate = 2.0
    else:
        timing = TimingModel()
        mean = statistics.mean(timing.mean_seconds(p["style"], p["steps"], p["n"],
                                                   p["aspect_ratio"])
                               for p in (job_params(load, i) for i in range(jobs)))
        rate = 0.95 * capacity / mean
    rng, at, out = random.Random(1), 0.0, []
    for _ in range(jobs):
        out.append(at)
        at += rng.expovariate(rate)
    return out


def serve(options: dict[str, Any], conn: Connection) -> None:
    """The emulator's process: send its URL, obey ``("speed", x)``, stop on ``("stop",)``."""
    with Emulator(**options) as emulator:
        conn.send(emulator.url)
        while True:
            command = conn.recv()
            if command[0] != "speed":
                return
            emulator.app.set_speed(command[1])
            conn.send("ok")


def run(load: str, policy_name: str, jobs: int, capacity: int, out: Any) -> None:
    """A client process: every job of one (load, policy); put ``[(polls, lateness)]`` in ``out``."""
    options: dict[str, Any] = ({"queue_seconds": (0, 3), "progress_seconds": (2, 12), "seed": 7}
                               if load == "flat" else
                               {"queue_seconds": 0, "progress_seconds": None,
                                "capacity": capacity, "seed": 7})
    parent, child = multiprocessing.Pipe()
    server = multiprocessing.Process(target=serve, args=(options, child))
    server.start()
    url = parent.recv()
    total = COLD + jobs
    change = COLD + jobs // 2
    lock = threading.Lock()
    try:
        with tempfile.TemporaryDirectory() as home, \
                arta.Client(url, home=home, pool_size=64) as client:
            policy = make_policy(policy_name, home)
            client.auth.token()  # sign up before the clock starts

            def one(index: int) -> tuple[str, int, float]:
                if load == "step" and index == change:
                    with lock:
                        parent.send(("speed", 2.0))
                        parent.recv()
                generation = client.submit(f"benchmark fox {index}", **job_params(load, index))
                generation.wait(timeout=900, poll_policy=policy)
                return generation.record_id, len(generation.seen) - 1, time.time()

            with ThreadPoolExecutor(total) as pool:
                if load == "burst":  # two bursts: the cold one, then (after it) the warm one
                    done = list(pool.map(one, range(COLD)))
                    done += list(pool.map(one, range(COLD, total)))
                else:
                    started, futures = time.monotonic(), []
                    for index, at in enumerate(arrivals(load, total, capacity)):
                        time.sleep(max(0.0, started + at - time.monotonic()))
                        futures.append(pool.submit(one, index))
                    done = [future.result() for future in futures]
        records = []
        for record_id, polls, returned in done:
            with urllib.request.urlopen(f"{url}/emulator/jobs/{record_id}") as answer:
                finished = json.load(answer)["finished_at"]
            records.append((polls, returned - finished))
        out.put((load, policy_name, records))
    finally:
        parent.send(("stop",))
        server.join()


def summary(records: list[tuple[int, float]]) -> tuple[float, float, float]:
    """Requests per job, median and p95 lateness."""
    late = sorted(lateness for _, lateness in records)
    return (statistics.mean(p for p, _ in records), statistics.median(late),
            late[round(0.95 * (len(late) - 1))])


def row(label: str, fixed: list[tuple[int, float]], learned: list[tuple[int, float]],
        cold: bool) -> str:
    """One line of the matrix: the learned policy against fixed 2 s, and whether it meets the goal."""
    f, lr = summary(fixed), summary(learned)
    ratios = (lr[0] / f[0], lr[1] / f[1], lr[2] / f[2])
    ok = (ratios[0] <= 1.0 and ratios[1] <= 0.7) if cold else \
        (ratios[0] <= 0.5 and ratios[1] <= 0.5 and ratios[2] <= 1.0)
    return (f"| {label:<24} | {f[0]:5.2f} | {lr[0]:5.2f} | {ratios[0]:4.2f}x | {f[1]:4.2f} | "
            f"{lr[1]:4.2f} | {ratios[1]:4.2f}x | {f[2]:4.2f} | {lr[2]:4.2f} | {ratios[2]:5.2f}x "
            f"| {'yes' if ok else 'NO'} |")


def step_windows(fixed: list[tuple[int, float]], learned: list[tuple[int, float]],
                 jobs: int) -> None:
    """Per window of jobs after the slow-down: the learned policy's ratios."""
    change = COLD + jobs // 2
    print(f"\nstep: every job 2x slower from job {change}; learned vs fixed 2 s by windows")
    for start in range(change, COLD + jobs, WINDOW):
        f, lr = summary(fixed[start:start + WINDOW]), summary(learned[start:start + WINDOW])
        print(f"  jobs {start:>3}-{start + WINDOW - 1:<3} requests {lr[0] / f[0]:.2f}x, "
              f"median lateness {lr[1] / f[1]:.2f}x, p95 {lr[2] / f[2]:.2f}x")


def simulated_jobs(load: str, jobs: int, capacity: int) -> list[tuple[float, float, float, float]]:
    """Each warm job's ``(submit, start, end, width)`` as the emulator plans them, without a server.

    ``width``: how wide the end's distribution is given the start (the timing
    model's +-noise, or flat's 2-12 s), all an oracle cannot know in advance.
    """
    timing, rng, schedule = TimingModel(), random.Random(7), Schedule(None if load == "flat" else capacity)
    total, change = COLD + jobs, COLD + jobs // 2
    times = arrivals(load, total, capacity)
    out: list[tuple[float, float, float, float]] = []
    for index in range(total):
        sub = times[index] if load != "burst" or index < COLD else max(e for _, _, e, _ in out[:COLD])
        if load == "flat":
            ready, width = sub + rng.uniform(0, 3), 10.0
            seconds = rng.uniform(2, 12)
        else:
            p, scale = job_params(load, index), 2.0 if load == "step" and index >= change else 1.0
            width = 2 * timing.noise * scale * timing.mean_seconds(p["style"], p["steps"], p["n"],
                                                                   p["aspect_ratio"])
            ready, seconds = sub, scale * timing.draw(p["style"], p["steps"], p["n"],
                                                      p["aspect_ratio"], rng)
        start, end = schedule.place("u", ready, seconds, sub)
        out.append((sub, start, end, width))
    return out[COLD:]


def fewest_polls(widths: list[float], late: float, p95: float, step: float = 0.1) -> float:
    """A lower bound on the polls per job of any policy whose median lateness is <= ``late``
    and p95 <= ``p95``, for jobs whose end is uniform over ``width`` after a known start.

    Lagrangian dual of "fewest polls" (weak duality: every (lam, mu) gives a bound): per job, a
    dynamic programme over the gaps between polls; a poll is paid by the jobs not done before it.
    """
    counts = collections.Counter(max(1, round(w / step)) for w in widths)
    ell, over = late / step, p95 / step
    best = 0.0
    for lam in (0, 2, 4, 6, 8, 10, 12, 14, 16, 20, 24, 32):
        for mu in (0, 1, 2, 4, 8, 16):
            value = 0.0
            for n, count in counts.items():
                v = [0.0]
                for r in range(1, n + 1):
                    v.append(min(r - lam * min(g, ell) + mu * max(0.0, g - over) + v[r - g]
                                 for g in range(1, r + 1)))
                value += count * v[n] / n
            best = max(best, value / len(widths) + lam / 2 - mu / 20)
    return best


def oracle(loads: list[str], jobs: int, capacity: int) -> None:
    """What any policy could reach on each warm row, computed from the loads (no server)."""
    print("\noracle (no server): fixed 2 s simulated on the same load, and a policy that knows each"
          "\njob's start and the distribution of its end, needing median <= 0.5x and p95 <= 1x:")
    for load in loads:
        sims = simulated_jobs(load, jobs, capacity)
        polls = [math.ceil((end - sub) / 2) for sub, _, end, _ in sims]
        late = sorted(sub + 2 * k - end for (sub, _, end, _), k in zip(sims, polls))
        fixed = statistics.mean(polls) + 1, statistics.median(late), late[round(0.95 * (len(late) - 1))]
        widths = [w for _, _, _, w in sims]
        # one schedule that meets both: ceil(w / 2L) even gaps after the earliest end
        even = statistics.mean((math.ceil(w / fixed[1]) + 1) / 2 for w in widths)
        low = fewest_polls(widths, fixed[1] / 2, fixed[2])
        print(f"  {load:<7} fixed {fixed[0]:5.2f} req, median {fixed[1]:.2f}, p95 {fixed[2]:.2f}; "
              f"oracle {low:.2f}-{even:.2f} req = {low / fixed[0]:.2f}-{even / fixed[0]:.2f}x "
              f"({'an oracle reaches 0.5x' if even <= fixed[0] / 2 else 'out of reach of any policy' if low > fixed[0] / 2 else 'open'})")


def cpu_per_poll(calls: int = 20_000) -> None:
    """Client CPU of one ``next_delay``: the learned policy, warm, beside ``PollPolicy()``."""
    rng = random.Random(3)
    with tempfile.TemporaryDirectory() as home:
        stats = PollStats(f"{home}/poll_stats.json", flush_interval=3600)
        for index in range(400):  # a warm file: 400 jobs of the benchmark's classes
            p = job_params("steady", index)
            seconds = TimingModel().draw(p["style"], p["steps"], p["n"], p["aspect_ratio"], rng)
            stats.record((p["style"], p["steps"], p["n"], p["aspect_ratio"]),
                         (seconds - 0.3, seconds + 0.3, 1000.0 + index), (0.0, 5.0, 1000.0 + index))
        now = time.time()
        learned = LearnedPollPolicy(stats=stats, clock=lambda: now)
        generations = []
        for index in range(500):  # half queued, half running
            p = job_params("steady", index)
            generation = Generation(f"job{index}", params=GenerationParams.create("a fox", **p))
            generation.seen.append((now - 20 + index * 0.02, Status.IN_QUEUE))
            if index % 2:
                generation.seen.append((now - 5, Status.IN_PROGRESS))
            generations.append(generation)
        learned.models()  # the fit, once (it is redone only when the statistics change)
        print("\nclient CPU per next_delay call (500 jobs in flight, 20,000 calls):")
        for name, policy in (("PollPolicy() (fixed)", arta.PollPolicy()), ("learned", learned)):
            begin = time.process_time()
            for index in range(calls):
                policy.next_delay(generations[index % 500], 3)
            print(f"  {name:<22} {1e6 * (time.process_time() - begin) / calls:7.1f} us")
        begin = time.process_time()
        learned._fitted = (-1, None, None)
        learned._fitted_at = -1e18
        learned.models()
        print(f"  one refit of the model (400 jobs): {1e3 * (time.process_time() - begin):.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=150, help="warm jobs per load")
    parser.add_argument("--capacity", type=int, default=24)
    parser.add_argument("--loads", default=",".join(LOADS))
    parser.add_argument("--save", metavar="PATH", help="also write every job's (polls, lateness)")
    parser.add_argument("--oracle", action="store_true", help="only the oracle's bounds (no server)")
    args = parser.parse_args()
    loads = [load for load in args.loads.split(",") if load]
    if args.oracle:
        return oracle(loads, args.jobs, args.capacity)
    runs = [(load, p) for load in loads for p in POLICIES]
    out: Any = multiprocessing.Queue()
    started = time.monotonic()
    processes = [multiprocessing.Process(target=run, args=(load, p, args.jobs, args.capacity, out))
                 for load, p in runs]
    for process in processes:
        process.start()
    results: dict[str, dict[str, list[tuple[int, float]]]] = {load: {} for load in loads}
    for _ in runs:
        load, name, records = out.get()
        results[load][name] = records
    for process in processes:
        process.join()
    if args.save:
        with open(args.save, "w", encoding="utf-8") as file:
            json.dump(results, file)
    print(f"{COLD} cold + {args.jobs} warm jobs per load, capacity {args.capacity}, all runs at "
          f"once ({time.monotonic() - started:.0f} s)\n")
    print("| load                     | req fixed | learned | ratio | median fixed | learned | "
          "ratio | p95 fixed | learned | ratio | goal |")
    for load in loads:
        fixed, learned = results[load][POLICIES[0]], results[load]["learned"]
        print(row(f"{load}, cold (0-{COLD - 1})", fixed[:COLD], learned[:COLD], cold=True))
        print(row(f"{load}, warm", fixed[COLD:], learned[COLD:], cold=False))
    if "step" in loads:
        step_windows(results["step"][POLICIES[0]], results["step"]["learned"], args.jobs)
    oracle(loads, args.jobs, args.capacity)
    cpu_per_poll()


if __name__ == "__main__":
    main()
