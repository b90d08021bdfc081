"""The pytest plugin that ``pip install arta-client`` registers (entry point ``pytest11``).

Only pytest loads this module, so pytest stays out of arta's runtime
dependencies. It offers one fixture, ``arta_emulator``: see
:mod:`arta.testing` for what it sets up and restores.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # arta itself is imported only by a test that asks for the fixture
    from arta.testing import MockArta

__all__ = ["arta_emulator"]


@pytest.fixture
def arta_emulator(tmp_path: Path) -> Iterator[MockArta]:
    """A fresh emulator for this test: default client, ``ARTA_ENDPOINT``, ``ARTA_HOME`` on it.

    ``arta.generate`` and ``arta.aio`` reach it without any change to the
    code under test; ``arta_emulator.inject("submit", "503")`` and
    ``arta_emulator.set_faults("status:503=0.2")`` make it misbehave; any
    connection off loopback fails the test.
    """
    from arta.testing import mock_arta

    with mock_arta(home=tmp_path / "arta-home") as emulator:
        yield emulator
