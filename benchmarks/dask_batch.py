"""The same batch in one process (the engine's poll loop) and through Dask on one machine.

The emulator runs in its own process (jobs queued 0-0.1 s, then in progress
0.5-1.0 s; reset before each case so that every case gets the same job
durations). Each case runs as a child process of this script, so that its
CPU, its workers' and (for Dask) its scheduler's are all counted
(``RUSAGE_CHILDREN`` once it has exited). Cases, with the same number of
jobs in flight:

- ``run_batch(concurrency=C)``: one process, its jobs waiting in the poll loop;
- ``run_batch_on_dask(scheduler="local:2", concurrency=C)``: a LocalCluster
  of 2 processes started by the driver (its start-up counts), each job
  holding a worker thread while it waits.

Ratios are against the first case, measured in the same run.

    python benchmarks/dask_batch.py [--jobs 200] [--in-flight 64]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a clone, installed or not

import requests

_EMULATOR = (
    "from arta.emulator import Emulator\n"
    "Emulator(port=0, queue_seconds=(0, 0.1), progress_seconds=(0.5, 1.0), seed=7)"
    ".serve_forever(lambda e: print(e.url, flush=True))\n"
)

_CASE = """
import sys
import arta
from arta.batch import Manifest, read_jobs, run_batch
from arta.dask import run_batch_on_dask

engine, endpoint, prompts, out, in_flight = sys.argv[1:6]
POLL = arta.PollPolicy(first_delay=0.4, interval=0.3, growth=1.1, max_delay=0.6, jitter=0.05)
options = {"endpoint": endpoint, "poll_policy": POLL, "timeout": 120}
jobs, manifest = read_jobs(prompts), Manifest(out + "/arta-manifest.jsonl")
if __name__ == "__main__":
    if engine == "process":
        report = run_batch(jobs, manifest, out, concurrency=int(in_flight),
                           client_options=options)
    else:
        report = run_batch_on_dask(jobs, manifest, out, scheduler="local:2",
                                   client_options=options, concurrency=int(in_flight))
    assert all(o.event == "done" for o in report.outcomes), [o.error for o in report.outcomes]
"""


def run_case(engine: str, url: str, prompts: Path, in_flight: int) -> tuple[float, float]:
    """Wall time and CPU seconds (the case's process and all it started)."""
    requests.post(f"{url}/emulator/reset", timeout=10)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory() as out:
        script = Path(out) / "case.py"
        script.write_text(_CASE)
        start = time.perf_counter()
        subprocess.run([sys.executable, str(script), engine, url, str(prompts), out,
                        str(in_flight)], check=True, cwd=ROOT)
        wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--in-flight", type=int, default=64)
    args = parser.parse_args()
    server = subprocess.Popen([sys.executable, "-c", _EMULATOR], stdout=subprocess.PIPE,
                              text=True, cwd=ROOT)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        with tempfile.TemporaryDirectory() as folder:
            prompts = Path(folder) / "prompts.txt"
            prompts.write_text("".join(f"a fox, variation {i}\n" for i in range(args.jobs)))
            rows = [(f"run_batch, 1 process, concurrency {args.in_flight}", "process"),
                    (f"run_batch_on_dask, local:2, concurrency {args.in_flight}", "dask")]
            results = [(label, *run_case(engine, url, prompts, args.in_flight))
                       for label, engine in rows]
    finally:
        server.terminate()
        server.wait()
    base_wall, base_cpu = results[0][1], results[0][2]
    print(f"{args.jobs} jobs (in progress 0.5-1.0 s), {args.in_flight} in flight\n")
    print(f"| {'engine':<42} | {'wall s':>7} | {'x':>5} | {'CPU s':>6} | {'x':>5} |")
    print(f"|{'-' * 44}|{'-' * 9}|{'-' * 7}|{'-' * 8}|{'-' * 7}|")
    for label, wall, cpu in results:
        print(f"| {label:<42} | {wall:7.1f} | {wall / base_wall:5.2f} | {cpu:6.1f} "
              f"| {cpu / base_cpu:5.2f} |")


if __name__ == "__main__":
    main()
