"""The old provider's documented example, run against the offline emulator.

The body of :func:`seed_example` is the example from the old provider's
documentation, unchanged but for its import (``from arta.provider import
ARTA, Reasoning, ImageResponse``). Around it, :func:`main` starts the
emulator and points ``arta`` at it with ``ARTA_ENDPOINT`` (and a throw-away
``ARTA_HOME`` for the token), so it runs offline::

    $ python examples/seed_example.py
    Reasoning: None
    Reasoning: None
    Reasoning: 1 image(s) in 3.51s
    Image URLs: ['http://127.0.0.1:41234/images/8e4d.../0.png']

(The provider's "Waiting" and "Generating" updates carry a label and no
status, hence the two ``None``: that is what the example printed with the
old provider too.)
"""

from __future__ import annotations

import asyncio
import os
import tempfile

from arta.emulator import Emulator
from arta.provider import ARTA, ImageResponse, Reasoning


async def seed_example() -> None:
    """The documentation's example, as it is."""
    # Пример вызова create_async_generator
    async for result in ARTA.create_async_generator(
        model="Realistic tattoo",
        messages=[{"role": "user", "content": "Generate an image of dragon"}],
        prompt="dragon",
        n=1
    ):
        if isinstance(result, Reasoning):
            print(f"Reasoning: {result.status}")
        elif isinstance(result, ImageResponse):
            print(f"Image URLs: {result.images}")


def main() -> None:
    """Serve the emulator (jobs queue 1 s, then run 2 s) and run the example against it."""
    with tempfile.TemporaryDirectory() as home, Emulator() as emulator:
        os.environ["ARTA_ENDPOINT"] = emulator.url
        os.environ["ARTA_HOME"] = home
        asyncio.run(seed_example())


if __name__ == "__main__":
    main()
