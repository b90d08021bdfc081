"""asyncio: several generations awaited at once, without blocking the event loop.

``arta.aio`` runs the synchronous core on a bounded thread pool; a
semaphore keeps this script's own jobs in flight to a polite number::

    $ python examples/asyncio_pipeline.py images/

Offline, against the bundled emulator::

    $ arta emulator --port 8765 &
    $ ARTA_ENDPOINT=http://127.0.0.1:8765 python examples/asyncio_pipeline.py images/
"""

from __future__ import annotations

import asyncio
import sys

import arta
import arta.aio

PROMPTS = ["a koi pond at night", "a paper boat on a river", "a snowy mountain village"]


async def make(prompt: str, folder: str, limit: asyncio.Semaphore) -> str:
    """One job: generate, then save without blocking the loop."""
    async with limit:
        result = await arta.aio.generate(prompt, style="Watercolor", seed=len(prompt))
        paths = await arta.aio.save(result, folder)
    return f"{prompt!r} (seed {result.seed}): {', '.join(map(str, paths))}"


async def main(folder: str) -> int:
    """Run every prompt concurrently, at most 2 at a time; print each as it ends."""
    limit = asyncio.Semaphore(2)
    failed = 0
    for done in asyncio.as_completed([make(prompt, folder, limit) for prompt in PROMPTS]):
        try:
            print(await done)
        except arta.ArtaError as error:
            failed += 1
            print(f"FAILED: {error}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "images")))
