"""arta.aio: the sync core, awaited from asyncio on a bounded thread pool."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, Callable, TypeVar

import pytest
from conftest import FAST_POLL, png_size

import arta
import arta.aio
from arta.aio import AsyncClient, AsyncGeneration
from arta.emulator import Emulator
from arta.generation import Status

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


@pytest.fixture
def phased() -> Iterator[Emulator]:
    """Jobs long enough in each phase (0.3 s) that a fast poll sees every one."""
    with Emulator(queue_seconds=0.3, progress_seconds=0.3) as emu:
        yield emu


def run(main: Callable[[AsyncClient], Awaitable[T]], emulator: Emulator, tmp_path: Path,
        **options: Any) -> T:
    """``asyncio.run(main(client))`` with an AsyncClient of ``emulator`` that polls fast."""

    async def body() -> T:
        async with AsyncClient(endpoint=emulator.url, home=tmp_path / "home",
                               poll_policy=FAST_POLL, timeout=30, **options) as client:
            return await main(client)

    return asyncio.run(body())


async def polls_stopped(emulator: Emulator, seconds: float = 0.4, settle: float = 0.2) -> bool:
    """True if the emulator's poll count does not grow for ``seconds``, after ``settle``.

    A poll already on the wire when its wait ended still arrives: on a busy
    machine it can reach the emulator some time later. ``settle`` lets it.
    """
    await asyncio.sleep(settle)
    before = emulator.stats()["polls"]
    await asyncio.sleep(seconds)
    return emulator.stats()["polls"] == before


# -- the calls ---------------------------------------------------------------


def test_await_generate_uses_the_default_client_and_saves(
        emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARTA_ENDPOINT", emulator.url)

    async def main() -> tuple[arta.Result, list[Path]]:
        result = await arta.aio.generate("a red dragon", style="fantasy_art", n=2,
                                         poll_policy=FAST_POLL)
        return result, await arta.aio.save(result, tmp_path / "out")

    result, paths = asyncio.run(main())
    assert len(result.urls) == 2 and result.params is not None
    assert result.params.style == "Fantasy Art"
    assert [png_size(path) for path in paths] == [(512, 512)] * 2
    assert emulator.stats()["signups"] == 1


def test_generate_with_client_options_makes_a_client_for_the_call(
        emulator: Emulator, tmp_path: Path) -> None:
    result = asyncio.run(arta.aio.generate("a fox", seed=7, poll_policy=FAST_POLL,
                                           endpoint=emulator.url, home=tmp_path / "h"))
    assert result.seed == 7 and list((tmp_path / "h").glob("auth_ARTA.*.json"))


def test_async_for_sees_each_transition_once(phased: Emulator, tmp_path: Path) -> None:
    async def main(client: AsyncClient) -> tuple[AsyncGeneration, list[Status]]:
        generation = await client.submit("a lighthouse", aspect_ratio="16:9")
        assert generation.status is Status.IN_QUEUE  # the submit's answer
        seen = [update.status async for update in generation]
        return generation, seen

    generation, seen = run(main, phased, tmp_path)
    assert seen == [Status.IN_PROGRESS, Status.DONE]
    assert generation.done and len(generation.result().urls) == 1


def test_resume_picks_up_a_job_by_its_record_id(emulator: Emulator, tmp_path: Path) -> None:
    async def main(client: AsyncClient) -> AsyncGeneration:
        record_id = (await client.submit("a fox")).record_id
        resumed = await client.resume(record_id)
        await resumed.wait()
        return resumed

    resumed = run(main, emulator, tmp_path)
    assert resumed.status is Status.DONE and resumed.params is None
    assert resumed.result().urls


def test_on_change_runs_on_the_loop_thread_and_may_be_a_coroutine(
        phased: Emulator, tmp_path: Path) -> None:
    seen: list[tuple[Status, bool]] = []

    async def on_change(generation: AsyncGeneration) -> None:
        seen.append((generation.status, threading.current_thread() is threading.main_thread()))

    run(lambda client: client.generate("a fox", on_change=on_change), phased, tmp_path)
    # First the job just submitted (its record id is known from then on),
    # then each transition; all on the loop's (main) thread.
    assert seen == [(Status.IN_QUEUE, True), (Status.IN_PROGRESS, True), (Status.DONE, True)]


def test_a_failed_job_raises_generation_failed_with_its_record_id(
        emulator: Emulator, tmp_path: Path) -> None:
    emulator.app.inject("submit", "fail")
    with pytest.raises(arta.GenerationFailed) as caught:
        run(lambda client: client.generate("a fox"), emulator, tmp_path)
    assert caught.value.record_id == emulator.app.last_record_id()


def test_a_timeout_raises_generation_timeout_with_its_record_id(
        emulator: Emulator, tmp_path: Path) -> None:
    emulator.app.inject("submit", "stuck")
    with pytest.raises(arta.GenerationTimeout) as caught:
        run(lambda client: client.generate("a fox", timeout=0.3), emulator, tmp_path)
    assert caught.value.record_id == emulator.app.last_record_id()


def test_bad_input_fails_before_any_request(emulator: Emulator, tmp_path: Path) -> None:
    with pytest.raises(arta.errors.InvalidStyleError, match="Fantasy Art"):
        run(lambda client: client.submit("a fox", style="fantasy arts"), emulator, tmp_path)
    assert emulator.stats()["submits"] == emulator.stats()["signups"] == 0


# -- the event loop and the pool -------------------------------------------------


def test_the_event_loop_keeps_ticking_while_jobs_run(phased: Emulator, tmp_path: Path) -> None:
    async def main(client: AsyncClient) -> list[float]:
        gaps: list[float] = []
        jobs = asyncio.gather(*(client.generate(f"fox {i}") for i in range(8)))
        last = time.monotonic()
        while not jobs.done():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now
        await jobs
        return gaps

    gaps = run(main, phased, tmp_path)
    # The jobs take 0.6 s or more; a blocked loop would show one long gap.
    assert len(gaps) > 20 and max(gaps) < 0.2, max(gaps)


def test_the_pool_bounds_the_threads(phased: Emulator, tmp_path: Path) -> None:
    async def main(client: AsyncClient) -> tuple[int, list[arta.Result]]:
        prefix = client.client.loop.io_thread_prefix  # this client's I/O threads, no others

        def pool_threads() -> int:  # waiting jobs hold none of them
            return sum(t.name.startswith(prefix) for t in threading.enumerate())

        peak = 0
        jobs = asyncio.gather(*(client.generate(f"fox {i}") for i in range(6)))
        while not jobs.done():
            peak = max(peak, pool_threads())
            await asyncio.sleep(0.01)
        return peak, await jobs

    peak, results = run(main, phased, tmp_path, max_workers=2)
    assert 1 <= peak <= 2 and len(results) == 6  # six jobs through at most two threads, none lost


def test_one_client_serves_one_loop_after_another(emulator: Emulator, tmp_path: Path) -> None:
    client = AsyncClient(endpoint=emulator.url, home=tmp_path, poll_policy=FAST_POLL)
    first = asyncio.run(client.generate("a fox", seed=1))
    second = asyncio.run(client.generate("a fox", seed=2))
    asyncio.run(client.aclose())
    assert (first.seed, second.seed) == (1, 2) and emulator.stats()["signups"] == 1


def test_bad_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(arta.ConfigurationError, match="at least 1"):
        AsyncClient(max_workers=0)
    with pytest.raises(arta.ConfigurationError, match="not both"):
        AsyncClient(arta.Client(home=tmp_path), home=tmp_path)


def test_import_arta_loads_neither_facade_until_asked() -> None:
    code = ("import sys, arta; print('arta.aio' in sys.modules, 'arta.provider' in sys.modules); "
            "arta.aio.AsyncClient, arta.provider.ARTA; print('arta.aio' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.stdout.split() == ["False", "False", "True"]


# -- cancellation ----------------------------------------------------------------


def test_cancelling_an_awaited_wait_stops_polling_and_keeps_the_record_id(
        emulator: Emulator, tmp_path: Path) -> None:
    emulator.app.inject("submit", "stuck")  # IN_PROGRESS forever

    async def main(client: AsyncClient) -> tuple[AsyncGeneration, float, bool, Status]:
        generation = await client.submit("a fox")
        waiting = asyncio.ensure_future(generation.wait())
        await asyncio.sleep(0.3)
        assert not await polls_stopped(emulator, 0.3, settle=0)  # it is polling...
        started = time.monotonic()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        took = time.monotonic() - started
        stopped = await polls_stopped(emulator)  # ...and then it is not
        resumed = await client.resume(generation.record_id)  # the job is not lost
        return generation, took, stopped, resumed.status

    generation, took, stopped, status = run(main, emulator, tmp_path)
    assert took < 5 and stopped  # promptly: not a thread that polls on
    assert generation.record_id in emulator.app.jobs() and status is Status.IN_PROGRESS


def test_cancelling_an_async_for_stops_polling(emulator: Emulator, tmp_path: Path) -> None:
    emulator.app.inject("submit", "stuck")

    async def main(client: AsyncClient) -> tuple[list[Status], bool]:
        generation = await client.submit("a fox")
        seen: list[Status] = []

        async def follow() -> None:
            async for update in generation:
                seen.append(update.status)

        task = asyncio.ensure_future(follow())
        await asyncio.sleep(0.4)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return seen, await polls_stopped(emulator)

    seen, stopped = run(main, emulator, tmp_path)
    assert seen == [Status.IN_PROGRESS] and stopped


def test_leaving_an_async_for_early_stops_polling(emulator: Emulator, tmp_path: Path) -> None:
    emulator.app.inject("submit", "stuck")

    async def main(client: AsyncClient) -> bool:
        generation = await client.submit("a fox")
        async for update in generation:
            assert update.status is Status.IN_PROGRESS
            break
        return await polls_stopped(emulator)

    assert run(main, emulator, tmp_path)


def test_a_cancelled_generate_leaves_its_record_id_reachable(
        emulator: Emulator, tmp_path: Path) -> None:
    emulator.app.inject("submit", "stuck")
    caught: list[BaseException] = []

    async def job(client: AsyncClient) -> None:
        try:
            await client.generate("a fox")
        except asyncio.CancelledError as cancelled:
            caught.append(cancelled)
            raise

    async def main(client: AsyncClient) -> tuple[AsyncGeneration | None, bool]:
        task = asyncio.ensure_future(job(client))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return client.last_generation, await polls_stopped(emulator)

    last, stopped = run(main, emulator, tmp_path)
    record_id = emulator.app.last_record_id()
    assert stopped and last is not None and last.record_id == record_id
    assert getattr(caught[0], "record_id", None) == record_id
