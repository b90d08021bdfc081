"""300 generations through one client while about 20% of the service's answers are faulted.

Every generation must end DONE with whole images, or in a typed error that
carries its record id; the only exception by nature is SubmitOutcomeUnknown,
where no answer ever named a record id, and which carries the parameters
(seed included) instead. Nothing hangs, and no job is ever submitted twice.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections import Counter
from pathlib import Path

from conftest import FAST_POLL, png_size

import arta
from arta.emulator import Emulator

JOBS = 300
# About a fifth of all answers, every fault kind on every endpoint it applies to.
FAULTS = "signup:503=0.2,refresh:500=0.2,submit:429=0.04,submit:503=0.04,submit:500=0.02,submit:502=0.02,submit:drop=0.02,submit:slow=0.01,submit:badjson=0.02,submit:fail=0.02,submit:stuck=0.01,status:429=0.04,status:500=0.03,status:502=0.03,status:503=0.04,status:drop=0.03,status:slow=0.01,status:badjson=0.02,image:429=0.04,image:500=0.03,image:502=0.03,image:503=0.03,image:drop=0.03,image:slow=0.02,image:badjson=0.05"


def test_300_generations_under_20_percent_faults(tmp_path: Path) -> None:
    retry = arta.RetryPolicy(attempts=6, first_delay=0.02, max_delay=0.2, jitter=0.02,
                             max_retry_after=0.05)  # the emulator asks for 1 s; cap it for speed
    with Emulator(queue_seconds=(0, 0.1), progress_seconds=(0, 0.2), faults=FAULTS,
                  fault_seed=20261127, slow_seconds=1.0) as emu, \
            arta.Client(emu.url, home=tmp_path / "home", poll_policy=FAST_POLL,
                        retry_policy=retry, request_timeout=(1.0, 0.4), timeout=3.0) as client:

        # Every kind once for sure (queued faults come first), then the seeded chaos.
        for rule in FAULTS.split(","):
            emu.app.inject(*rule.split("=")[0].split(":"))

        def one(index: int) -> tuple[str, str | None]:
            try:
                result = client.generate(f"chaos fox number {index}", seed=index)
                for path in result.save(tmp_path / "images"):
                    png_size(path)  # whole, valid PNGs only
                return "DONE", result.record_id
            except arta.SubmitOutcomeUnknown as error:
                assert error.params.seed == index
                return type(error).__name__, None
            except arta.ArtaError as error:
                assert error.record_id, f"{type(error).__name__} without a record id: {error}"
                return type(error).__name__, error.record_id

        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(one, i) for i in range(JOBS)]
            # The global bound: if anything hung, this raises instead of waiting forever.
            outcomes = [f.result(timeout=max(1.0, 120 - (time.monotonic() - started)))
                        for f in futures]
        stats, injected = emu.stats(), emu.fault_counts()

    kinds = Counter(kind for kind, _ in outcomes)
    print(f"\n{dict(kinds)} in {time.monotonic() - started:.1f}s; {stats}")
    assert stats["duplicate_submits"] == 0
    assert kinds["DONE"] >= JOBS * 0.7
    assert set(kinds) <= {"DONE", "SubmitOutcomeUnknown", "GenerationFailed", "GenerationTimeout",
                          "ServiceError", "RateLimitedError", "ProtocolError", "NoResponseError"}
    assert kinds["GenerationFailed"] >= 1 and kinds["GenerationTimeout"] >= 1
    # Each fault kind was really met, so each path above was really taken.
    met = {key.split(":")[1] for key in injected}
    assert met == {"429", "500", "502", "503", "drop", "slow", "badjson", "fail", "stuck"}
    assert stats["faults"] >= 0.1 * (stats["submits"] + stats["polls"] + stats["downloads"])
