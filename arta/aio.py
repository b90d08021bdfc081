"""asyncio on the poll loop: ``await`` the synchronous core without a thread per waiting job.

::

    import arta.aio

    result = await arta.aio.generate("a red dragon over a castle", style="Fantasy Art")
    paths = await arta.aio.save(result, "images/")

    async with arta.aio.AsyncClient() as client:
        generation = await client.submit("a lighthouse", seed=42)
        async for update in generation:        # one item per change of status
            print(update.status)
        result = generation.result()

There is no second implementation here. An awaited job waits on its
client's poll loop (:mod:`arta.loop`): the ``await`` is on the loop's
future (``asyncio.wrap_future``), so thousands of waiting jobs cost heap
entries, not threads. Threads are used only for the HTTP calls themselves
(submit, resume, downloads), on the client's bounded I/O pool.

Cancelling a task that awaits a wait (or an ``async for``) ends that job's
wait in the loop at once: nothing polls on. The job itself goes on at the
service and keeps its ``record_id``: on the :class:`AsyncGeneration` from
:meth:`AsyncClient.submit`, and on the ``CancelledError`` of a cancelled
:meth:`AsyncClient.generate` (see there).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import os
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from arta.api import GenerateOptions, default_client
from arta.client import Client, split_options
from arta.errors import ConfigurationError
from arta.generation import Generation, Status
from arta.params import GenerationParams, shows_generation_options
from arta.polling.policy import PollPlanner, check_wait_options
from arta.result import Result

if TYPE_CHECKING:  # typing.Self and Unpack are newer than 3.9; only the type checker needs them
    from typing_extensions import Self, Unpack

    from arta.params import GenerationOptions

__all__ = ["AsyncClient", "AsyncGeneration", "AsyncOnChange", "generate", "run_sync", "save"]

T = TypeVar("T")

#: ``on_change`` of the async API: called on the event loop's thread with the
#: :class:`AsyncGeneration`; may be a plain function or a coroutine function.
AsyncOnChange = Callable[["AsyncGeneration"], object]


async def _await_io(future: concurrent.futures.Future[T]) -> T:
    """Await an HTTP call on an I/O thread; if cancelled, still wait for it to let go.

    A call that has been sent cannot be recalled: waiting for its answer
    means a submit's job is known when the ``CancelledError`` arrives.
    """
    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        if not future.done():
            settled = asyncio.wrap_future(future)
            settled.add_done_callback(lambda done: done.cancelled() or done.exception())
            await asyncio.wait({settled})
        raise


async def run_sync(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run one blocking call on the default client's I/O threads and await its result.

    For what the async API does not wrap, e.g. ``await run_sync(client.auth.token)``.
    """
    return await _await_io(default_client().loop.call_io(lambda: function(*args, **kwargs)))


async def _notify(on_change: AsyncOnChange | None, generation: AsyncGeneration) -> None:
    if on_change is not None:
        outcome = on_change(generation)
        if inspect.isawaitable(outcome):
            await outcome


class AsyncGeneration:
    """One job on the service, awaitable: the async face of a :class:`arta.Generation`.

    ``await generation.wait()`` waits until DONE or FAILED; ``async for
    update in generation`` yields the generation at each change of status;
    :meth:`result` gives the images. Every other attribute (``status``,
    ``record_id``, ``images``, ``seed``, ...) is the sync :attr:`generation`'s.
    """

    def __init__(self, generation: Generation, client: AsyncClient) -> None:
        #: The sync generation that holds the state; plain data, picklable.
        self.generation = generation
        self._client = client

    def __getattr__(self, name: str) -> Any:
        # Only called for what this class lacks: the state is the sync generation's.
        return getattr(self.__dict__["generation"], name)

    @property
    def record_id(self) -> str:
        """The job's id at the service: resume it anywhere with ``resume(record_id)``."""
        return self.generation.record_id

    @property
    def status(self) -> Status:
        """Where the job stood when last asked."""
        return self.generation.status

    async def refresh(self) -> Status:
        """Poll the service once; return the (possibly new) status."""
        return await _await_io(self._client.client.loop.call_io(self.generation.refresh))

    async def events(self, timeout: float | None = None,
                     poll_policy: PollPlanner | None = None,
                     ) -> AsyncGenerator[AsyncGeneration, None]:
        """Wait until the job ends, yielding this generation at each change of status.

        ``timeout`` and ``poll_policy`` are as in the sync API (the client's
        by default); past the timeout :class:`~arta.errors.GenerationTimeout`
        carries the record id. Cancelling the consuming task, or leaving the
        loop early, ends the wait at once.
        """
        loop = asyncio.get_running_loop()
        changes: asyncio.Queue[bool] = asyncio.Queue()

        def hand_over(moved: bool) -> None:
            try:
                loop.call_soon_threadsafe(changes.put_nowait, moved)
            except RuntimeError:  # the event loop is closed: nobody listens any more
                waiter.cancel()

        waiter = self.generation.watch(timeout, poll_policy)
        waiter.add_listener(lambda _: hand_over(True))
        waiter.future.add_done_callback(lambda _: hand_over(False))
        try:
            while await changes.get():
                yield self
            waiter.future.result()  # raises what ended the wait, if not the job's end
        finally:
            waiter.cancel()  # a no-op once ended

    def __aiter__(self) -> AsyncIterator[AsyncGeneration]:
        """``async for update in generation``: :meth:`events` with the client's defaults."""
        return self.events()

    async def wait(self, timeout: float | None = None, on_change: AsyncOnChange | None = None,
                   poll_policy: PollPlanner | None = None) -> AsyncGeneration:
        """Wait until DONE or FAILED; return this generation.

        ``on_change(generation)`` is called on the event loop's thread at
        each transition (a coroutine function is awaited). Raises
        :class:`~arta.errors.GenerationTimeout` past ``timeout`` (default:
        the client's, else the policy's). Cancelling the awaiting task ends
        the wait at once; the job goes on and ``record_id`` resumes it.
        """
        check_wait_options(timeout, on_change, poll_policy)
        if on_change is None:  # nothing to hand over: await the loop's future
            waiter = self.generation.watch(timeout, poll_policy)
            try:
                await asyncio.wrap_future(waiter.future)
            finally:
                waiter.cancel()
            return self
        async for update in self.events(timeout, poll_policy):
            await _notify(on_change, update)
        return self

    def result(self) -> Result:
        """The images of a DONE job; raise ``GenerationFailed`` for a FAILED one.

        Like :meth:`asyncio.Future.result`, it does not wait (``await wait()``
        does) and does no I/O (``await arta.aio.save(result, folder)`` downloads).
        """
        return self.generation.ended_result()

    def __repr__(self) -> str:
        return f"<AsyncGeneration {self.record_id} {self.status}>"


class AsyncClient:
    """An asyncio client over a sync :class:`arta.Client` and its poll loop.

    ``client`` is the sync client to use (else one is made from
    ``client_options``: ``endpoint=``, ``home=``, ``transport=``,
    ``poll_policy=``, ``timeout=``, ... as :class:`arta.Client` takes them,
    and closed with this one). ``max_workers`` sizes that client's I/O
    threads (its ``pool_size``): the HTTP calls made at once.

    An ``AsyncClient`` holds no event-loop state, so one instance may serve
    several loops (one after the other, or in several threads).
    """

    def __init__(self, client: Client | None = None, *, max_workers: int | None = None,
                 **client_options: Any) -> None:
        if client is not None and (client_options or max_workers is not None):
            raise ConfigurationError(
                "pass either a ready client or options to make one, not both: "
                + ", ".join(sorted({*client_options, "max_workers"} - {""})))
        if max_workers is not None:
            if isinstance(max_workers, bool) or not isinstance(max_workers, int) \
                    or max_workers < 1:
                raise ConfigurationError(
                    f"max_workers must be an int of at least 1, not {max_workers!r}")
            client_options["pool_size"] = max_workers
        self._owns_client = client is None
        #: The sync client that does the work.
        self.client = client if client is not None else Client(**client_options)
        #: The generation of the latest :meth:`submit` (or :meth:`generate`) of
        #: this client: where a cancelled ``generate()``'s record id is found
        #: when only one job runs at a time.
        self.last_generation: AsyncGeneration | None = None

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """Run the blocking call ``function(*args)`` on this client's I/O threads; await it."""
        return await _await_io(self.client.loop.call_io(function, *args))

    @shows_generation_options
    async def submit(self, prompt: str, **options: Unpack[GenerationOptions]) -> AsyncGeneration:
        """Validate the parameters, start a job and return its :class:`AsyncGeneration`.

        As :meth:`arta.Client.submit` (bad input fails here, before any
        request). A submit that has been sent cannot be recalled:
        cancelling the task waits for its answer, so that the job it created
        is known (:attr:`last_generation`, and ``record_id`` on the
        ``CancelledError``).
        """
        params = GenerationParams.create(prompt, **options)
        future = self.client.loop.call_io(self.client.submit_params, params)
        try:
            return self._adopt(await _await_io(future))
        except asyncio.CancelledError as cancelled:
            if future.done() and not future.cancelled() and future.exception() is None:
                _keep_record_id(cancelled, self._adopt(future.result()))
            raise

    async def resume(self, record_id: str) -> AsyncGeneration:
        """Pick up a job submitted earlier, perhaps by another process (polls once)."""
        return self._adopt(await self.run(self.client.resume, record_id))

    @shows_generation_options
    async def generate(self, prompt: str, *, timeout: float | None = None,
                       on_change: AsyncOnChange | None = None,
                       poll_policy: PollPlanner | None = None,
                       **options: Unpack[GenerationOptions]) -> Result:
        """Submit, wait until the job ends, and return its :class:`~arta.result.Result`.

        As :meth:`arta.Client.generate`: ``on_change`` is called first with
        the job just submitted, then at each transition. If the task is
        cancelled, the wait ends at once and the ``CancelledError`` raised
        has ``record_id`` and ``generation`` attributes (seen by a
        ``try``/``except`` around this call); :attr:`last_generation` holds
        the generation too.
        """
        check_wait_options(timeout, on_change, poll_policy)
        generation = await self.submit(prompt, **options)
        try:
            await _notify(on_change, generation)
            await generation.wait(timeout, on_change, poll_policy)
        except asyncio.CancelledError as cancelled:
            _keep_record_id(cancelled, generation)
            raise
        return generation.result()

    def _adopt(self, generation: Generation) -> AsyncGeneration:
        self.last_generation = AsyncGeneration(generation, self)
        return self.last_generation

    async def aclose(self) -> None:
        """Close the sync client, if this one made it."""
        if self._owns_client:
            self.client.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<arta.aio.AsyncClient {self.client!r}>"


def _keep_record_id(cancelled: asyncio.CancelledError, generation: AsyncGeneration) -> None:
    """Put the job's record id on the ``CancelledError`` that ends its wait."""
    # The exception is the one the task raises: code that catches it around
    # the call (or in the task) learns which job to resume.
    cancelled.record_id = generation.record_id  # type: ignore[attr-defined]
    cancelled.generation = generation  # type: ignore[attr-defined]


@shows_generation_options
async def generate(prompt: str, *, timeout: float | None = None,
                   on_change: AsyncOnChange | None = None,
                   poll_policy: PollPlanner | None = None,
                   **options: Unpack[GenerateOptions]) -> Result:
    """Generate images for ``prompt``; return the :class:`~arta.result.Result` once DONE.

    :func:`arta.generate`, awaitable: the same parameters and errors, on
    the process's default client (any keyword that is not a generation's
    is an :class:`arta.Client` option, for a client made for this call
    alone). See :meth:`AsyncClient.generate` for cancellation.
    """
    params, client_options = split_options(options)
    client = AsyncClient(**client_options) if client_options else AsyncClient(default_client())
    try:
        return await client.generate(prompt, timeout=timeout, on_change=on_change,
                                     poll_policy=poll_policy, **params)
    finally:
        await client.aclose()


async def save(result: Result, folder: str | os.PathLike[str] = ".",
               **options: Any) -> list[Path]:
    """:meth:`arta.Result.save` on the default client's I/O threads: download; return the paths.

    ``options`` are :meth:`~arta.result.Result.save`'s (``name``,
    ``overwrite``, ``max_bytes``).
    """
    return await run_sync(result.save, folder, **options)
