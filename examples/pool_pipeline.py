"""A multiprocessing.Pool pipeline: many prompts, several processes, one shared token.

Each worker process calls ``arta.generate`` as it is: the default client is
made once per process, and every process finds the one token in the shared,
file-locked token store, so the whole pool signs up once. A job that fails
is reported with its record id; the others still save their images::

    $ python examples/pool_pipeline.py images/

Offline, against the bundled emulator::

    $ arta emulator --port 8765 &
    $ ARTA_ENDPOINT=http://127.0.0.1:8765 python examples/pool_pipeline.py images/
"""

from __future__ import annotations

import multiprocessing
import sys
from pathlib import Path

import arta

PROMPTS = [
    "a lighthouse in a storm",
    "a fox in the snow",
    "a red dragon over a castle",
    "a city of glass at dawn",
]


def make(job: tuple[str, str]) -> tuple[str, list[str] | str]:
    """Generate one prompt and save it: what each worker process runs."""
    prompt, folder = job
    try:
        paths = arta.generate(prompt, style="Fantasy Art").save(folder)
    except arta.ArtaError as error:  # carries the record id of a submitted job
        return prompt, f"{type(error).__name__}: {error}"
    return prompt, [str(path) for path in paths]


def main(folder: str) -> int:
    """Run every prompt through a pool of 4 processes; print one line per job."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    with multiprocessing.Pool(4) as pool:
        outcomes = pool.map(make, [(prompt, folder) for prompt in PROMPTS])
    failed = 0
    for prompt, outcome in outcomes:
        if isinstance(outcome, str):
            failed += 1
            print(f"FAILED {prompt!r}: {outcome}")
        else:
            print(f"{prompt!r}: {', '.join(outcome)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "images"))
