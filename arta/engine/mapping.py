"""Many jobs as an iterator: :meth:`arta.Client.map`'s items as jobs, and :func:`as_completed`.

``map_outcomes`` turns each item into a :class:`~arta.engine.run.Job` and
hands back the run's outcomes as they end (or in order); ``as_completed``
yields generations as their waits end, like :mod:`concurrent.futures`'.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from arta.engine.jobs import Job, Outcome
from arta.engine.run import JobRun
from arta.engine.window import AdaptiveWindow
from arta.errors import ArtaError, GenerationTimeout, InvalidInputError, RunInterrupted
from arta.generation import Generation, PollPlanner, Session
from arta.params import GenerationParams
from arta.progress import ProgressDisplay

__all__ = ["as_completed", "map_outcomes"]


def _as_params(item: str | Mapping[str, Any] | GenerationParams,
               defaults: Mapping[str, Any]) -> GenerationParams:
    if isinstance(item, GenerationParams):
        return item
    if isinstance(item, str):
        return GenerationParams.create(item, **defaults)
    if isinstance(item, Mapping) and "prompt" in item:
        fields = {**defaults, **item}
        return GenerationParams.create(fields.pop("prompt"), **fields)
    raise InvalidInputError(
        f"an item must be a prompt, a dict with a 'prompt', or GenerationParams, not {item!r}")


def map_outcomes(client: Session, window: AdaptiveWindow,
                 items: Iterable[str | Mapping[str, Any] | GenerationParams],
                 *, concurrency: int, ordered: bool, timeout: float | None,
                 poll_policy: PollPlanner | None, defaults: Mapping[str, Any],
                 progress: ProgressDisplay | None = None) -> Iterator[Outcome]:
    """The body of :meth:`arta.Client.map`: each item a job, tagged with its index."""

    def jobs() -> Iterator[Job]:
        for index, item in enumerate(items):
            try:
                yield Job(_as_params(item, defaults), tag=index)
            except (InvalidInputError, TypeError) as error:  # no request for this one
                failed = error if isinstance(error, ArtaError) else InvalidInputError(str(error))
                yield Job(tag=index, error=failed)

    run = JobRun(client, window, jobs(), concurrency=concurrency, timeout=timeout,
                 poll_policy=poll_policy, on_submitting=None, on_submitted=None)
    try:
        with progress if progress is not None else contextlib.nullcontext():
            yield from _in_order(run, progress) if ordered else _shown(run, progress)
    finally:
        run.close()


def _shown(run: JobRun, progress: ProgressDisplay | None) -> Iterator[Outcome]:
    for outcome in run:
        if progress is not None:
            progress.update(**run.counts)
        yield outcome


def _in_order(run: JobRun, progress: ProgressDisplay | None) -> Iterator[Outcome]:
    buffered: dict[int, Outcome] = {}
    expected = 0
    try:
        for outcome in _shown(run, progress):
            buffered[outcome.job.tag] = outcome
            while expected in buffered:
                yield buffered.pop(expected)
                expected += 1
    except RunInterrupted as interrupted:  # the outcomes held back for order are handed out too
        raise RunInterrupted([*buffered.values(), *interrupted.outcomes]) from None


def as_completed(generations: Iterable[Generation],
                 timeout: float | None = None) -> Iterator[Generation]:
    """Yield each generation as its wait ends, as :func:`concurrent.futures.as_completed` does.

    Every wait runs in its client's poll loop (:meth:`Generation.future`).
    Call ``result()`` on what is yielded: the images, or the error that
    ended the job or its wait (carrying the record id). Past ``timeout``
    seconds, :class:`~arta.errors.GenerationTimeout` names the jobs still
    running; they go on at the service, and their waits end.
    """
    by_future = {generation.future(): generation for generation in generations}
    try:
        for future in concurrent.futures.as_completed(by_future, timeout=timeout):
            yield by_future[future]
    except concurrent.futures.TimeoutError:
        pending = [g.record_id for f, g in by_future.items() if not f.done()]
        for future in by_future:
            future.cancel()  # nobody waits for them any more: their polls stop
        raise GenerationTimeout(
            f"{len(pending)} of {len(by_future)} jobs still running after {timeout:g}s: "
            + ", ".join(pending)) from None
