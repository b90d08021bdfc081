"""`arta.generate` end to end, over loopback sockets against the emulator."""

from __future__ import annotations

import multiprocessing
import pickle
from pathlib import Path

import pytest
from conftest import FAST_POLL, png_size

import arta
from arta.emulator import Emulator


def test_generate_and_save_pngs_of_the_requested_shape(client: arta.Client, tmp_path: Path) -> None:
    result = client.generate("a red dragon over a castle", style="Fantasy Art", n=2,
                             aspect_ratio="16:9", seed=42)
    assert result.seed == 42 and len(result.images) == 2
    assert all(image.mime == "image/png" and not image.blurred for image in result.images)
    paths = result.save(tmp_path / "images")
    assert [p.name for p in paths] == [f"{result.record_id}-0-s42.png", f"{result.record_id}-1-s42.png"]
    for path in paths:
        assert png_size(path) == (512, 288)
    assert not list((tmp_path / "images").glob(".arta-*"))  # no temp file left behind


def test_same_prompt_style_and_seed_give_identical_bytes(client: arta.Client, tmp_path: Path) -> None:
    first = client.generate("a lighthouse", style="Watercolor", seed=7).save(tmp_path / "a")
    second = client.generate("a lighthouse", style="Watercolor", seed=7).save(tmp_path / "b")
    other = client.generate("a lighthouse", style="Watercolor", seed=8).save(tmp_path / "c")
    assert first[0].read_bytes() == second[0].read_bytes()
    assert first[0].read_bytes() != other[0].read_bytes()


def test_generation_moves_forward_through_every_state(emulator: Emulator,
                                                      client: arta.Client) -> None:
    emulator.app.set_speed(5.0)  # 0.5 s in progress: seen even when polls come late
    seen = []
    generation = client.submit("a lighthouse", aspect_ratio="2:3")
    assert generation.status is arta.Status.IN_QUEUE and generation.record_id
    generation.wait(on_change=lambda g: seen.append(g.status))
    assert seen == [arta.Status.IN_PROGRESS, arta.Status.DONE]
    assert [status for status, _ in generation.history] == [
        arta.Status.SUBMITTED, arta.Status.IN_QUEUE, arta.Status.IN_PROGRESS, arta.Status.DONE]
    assert generation.done and len(generation.result().images) == 1


def test_a_job_is_resumed_by_another_client(emulator: Emulator, client: arta.Client, tmp_path: Path) -> None:
    generation = client.submit("a fox in the snow")
    copy = pickle.loads(pickle.dumps(generation))  # plain data: no live client inside
    with arta.Client(emulator.url, home=tmp_path / "other", poll_policy=FAST_POLL) as other:
        resumed = other.resume(generation.record_id)
        resumed.wait(timeout=10)
        copy.attach(other).wait(timeout=10)
    assert resumed.status is copy.status is arta.Status.DONE
    assert resumed.result().urls == copy.result().urls


def test_waiting_past_the_timeout_raises_with_the_record_id(tmp_path: Path) -> None:
    with Emulator(queue_seconds=60) as slow, \
            arta.Client(slow.url, home=tmp_path, poll_policy=FAST_POLL) as client, \
            pytest.raises(arta.GenerationTimeout) as caught:
        client.generate("a very patient fox", timeout=0.3)
    record_id = caught.value.record_id
    assert record_id and record_id in str(caught.value)
    assert f"Client().resume({record_id!r})" in str(caught.value)


def test_resuming_an_unknown_record_id_fails_clearly(client: arta.Client) -> None:
    with pytest.raises(arta.errors.JobNotFoundError) as caught:  # a RejectedError too
        client.resume("no-such-job")
    assert caught.value.status == 404 and caught.value.record_id == "no-such-job"
    assert isinstance(caught.value, arta.errors.RejectedError) and "resume" not in str(caught.value)


def test_configuration_from_the_environment(emulator: Emulator, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARTA_ENDPOINT", emulator.url)
    monkeypatch.setenv("ARTA_HOME", str(tmp_path / "home"))
    paths = arta.generate("a fox", seed=1).save(tmp_path / "out")
    assert png_size(paths[0]) == (512, 512)
    assert arta.default_client().settings.token_file.parent == tmp_path / "home"
    assert arta.default_client().settings.token_file.exists()
    assert arta.default_client().settings.submit_url == f"{emulator.url}/api/v1/text2image"


def _generate_in_worker(prompt: str) -> str:
    return arta.generate(prompt, seed=3).record_id


def test_a_process_pool_shares_one_sign_up(emulator: Emulator, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARTA_ENDPOINT", emulator.url)
    monkeypatch.setenv("ARTA_HOME", str(tmp_path / "shared"))
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        record_ids = pool.map(_generate_in_worker, [f"fox {i}" for i in range(8)])
    assert len(set(record_ids)) == 8
    assert emulator.stats()["signups"] == 1


def test_results_and_errors_pickle(client: arta.Client, tmp_path: Path) -> None:
    result = pickle.loads(pickle.dumps(client.generate("a fox", seed=5)))
    assert result.transport is None and png_size(result.save(tmp_path)[0]) == (512, 512)
    error = pickle.loads(pickle.dumps(arta.GenerationFailed("x", record_id="r1", error_code="E")))
    assert (error.record_id, error.error_code, str(error).count("record_id")) == ("r1", "E", 1)
