"""A user's own tests, with the ``arta_emulator`` fixture that installing arta provides.

No conftest and no import of the fixture: the plugin is registered by the
package. Each test gets a fresh emulator, a throw-away token folder and a
fast poll; ``arta.generate`` in the code under test reaches the emulator
unchanged, and any connection off loopback fails the test::

    $ pytest examples/test_my_pipeline.py
"""

from __future__ import annotations

from pathlib import Path

import pytest

import arta


def thumbnails(prompts: list[str], folder: Path) -> list[Path]:
    """The code under test: one image per prompt, saved in ``folder``."""
    return [arta.generate(prompt, style="Low Poly").save(folder)[0] for prompt in prompts]


def test_one_image_per_prompt(arta_emulator, tmp_path: Path) -> None:
    paths = thumbnails(["a fox", "a cat"], tmp_path)
    assert [path.read_bytes()[:8] for path in paths] == [b"\x89PNG\r\n\x1a\n"] * 2
    assert arta_emulator.stats()["submits"] == 2 and arta_emulator.stats()["signups"] == 1


def test_a_failed_job_is_reported_with_its_record_id(arta_emulator, tmp_path: Path) -> None:
    arta_emulator.inject("submit", "fail")
    with pytest.raises(arta.GenerationFailed) as caught:
        thumbnails(["a fox"], tmp_path)
    assert caught.value.record_id == arta_emulator.emulator.app.last_record_id()


def test_a_flaky_status_endpoint_is_survived(arta_emulator, tmp_path: Path) -> None:
    arta_emulator.set_faults("status:503=0.3", fault_seed=7)
    assert len(thumbnails(["a fox", "a cat", "an owl"], tmp_path)) == 3
