"""A driver for the Dask batch engine, run as its own process by tests/test_dask.py.

    python dask_driver.py SCHEDULER ENDPOINT PROMPTS OUT

It is what ``arta batch PROMPTS --engine dask --scheduler SCHEDULER -o OUT``
will do, so that a test can kill it with SIGKILL and run it again.
"""

from __future__ import annotations

import sys

import arta
from arta.batch import Manifest, read_jobs
from arta.batch.manifest import RunLock
from arta.dask import run_batch_on_dask

POLL = arta.PollPolicy(first_delay=0.02, growth=1.5, max_delay=0.1, jitter=0.01)


def main(scheduler: str, endpoint: str, prompts: str, out: str) -> int:
    jobs = read_jobs(prompts)
    manifest = Manifest(f"{out}/arta-manifest.jsonl")
    with RunLock(manifest.path):  # as the CLI holds it
        report = run_batch_on_dask(
            jobs, manifest, out, scheduler=scheduler,
            client_options={"endpoint": endpoint, "poll_policy": POLL, "timeout": 60},
            concurrency=8)
    print(report.possibly_resubmitted)
    return 0 if all(o.event in ("done", "skipped") for o in report.outcomes) else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
