"""asyncio on threads: ``await`` the synchronous core without blocking the event loop.

::

    import arta.aio

    result = await arta.aio.generate("a red dragon over a castle", style="Fantasy Art")
    paths = await arta.aio.save(result, "images/")

    async with arta.aio.AsyncClient(max_workers=32) as client:
        generation = await client.submit("a lighthouse", seed=42)
        async for update in generation:        # one item per change of status
            print(update.status)
        result = generation.result()

There is no second implementation here: every call runs the sync core
(:class:`arta.Client`, :class:`arta.Generation`, the shared token store) on a
bounded :class:`concurrent.futures.ThreadPoolExecutor`, so the event loop
never waits on the network and the number of threads stays fixed however
many tasks await.

A job being waited for holds one thread of the pool while it polls (that is
what "the sync core on threads" costs), so the pool's size is the number of
jobs watched at once; more waits queue for a thread, they do not fail.

Cancelling a task that awaits a wait (or an ``async for``) stops the polling
promptly: a :class:`threading.Event` that the core checks between polls and
in the middle of its sleeps is set, and the task ends once the worker thread
has let go (no abandoned thread polls on). The job itself goes on at the
service and keeps its ``record_id``: hold the :class:`AsyncGeneration` from
:meth:`AsyncClient.submit`, or see :meth:`AsyncClient.generate` for where
the record id of a cancelled ``generate()`` is kept.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import os
import threading
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from arta.client import Client
from arta.defaults import default_client
from arta.errors import ConfigurationError
from arta.generation import Generation, PollPolicy, Status
from arta.params import DEFAULT_NEGATIVE_PROMPT, GenerationParams
from arta.result import Image, Result
from arta.styles import DEFAULT_STYLE

if TYPE_CHECKING:  # typing.Self is 3.11+; only the type checker needs it
    from typing_extensions import Self

__all__ = [
    "DEFAULT_MAX_WORKERS",
    "AsyncClient",
    "AsyncGeneration",
    "AsyncOnChange",
    "default_executor",
    "generate",
    "run_sync",
    "save",
    "set_default_max_workers",
]

T = TypeVar("T")

#: Threads of the shared pool: the jobs that :func:`generate` (and every
#: :class:`AsyncClient` without ``max_workers``) watches at once.
DEFAULT_MAX_WORKERS = 32

#: ``on_change`` of the async API: called on the event loop's thread with the
#: :class:`AsyncGeneration`; may be a plain function or a coroutine function.
AsyncOnChange = Callable[["AsyncGeneration"], object]

_THREAD_PREFIX = "arta-aio"
_shared: concurrent.futures.ThreadPoolExecutor | None = None
_shared_pid = 0
_shared_size = DEFAULT_MAX_WORKERS
_shared_lock = threading.Lock()


def _check_workers(max_workers: int) -> int:
    if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
        raise ConfigurationError(f"max_workers must be an int of at least 1, not {max_workers!r}")
    return max_workers


def default_executor() -> concurrent.futures.ThreadPoolExecutor:
    """The shared, bounded pool: made on first use, once per process.

    A forked child makes its own, since the parent's threads do not exist
    in it.
    """
    global _shared, _shared_pid
    with _shared_lock:
        if _shared is None or _shared_pid != os.getpid():
            _shared = concurrent.futures.ThreadPoolExecutor(
                _shared_size, thread_name_prefix=_THREAD_PREFIX)
            _shared_pid = os.getpid()
        return _shared


def set_default_max_workers(max_workers: int) -> None:
    """Size the shared pool (default :data:`DEFAULT_MAX_WORKERS`).

    Calls already running finish on the old pool, whose threads then end;
    new calls use a pool of ``max_workers`` threads.
    """
    global _shared, _shared_size
    size = _check_workers(max_workers)
    with _shared_lock:
        old, _shared, _shared_size = _shared, None, size
    if old is not None:
        old.shutdown(wait=False)


async def _settle(future: concurrent.futures.Future[Any]) -> None:
    """Wait until the worker thread has let go of ``future``'s call, however it ended."""
    if future.done():
        return
    wrapped = asyncio.wrap_future(future)
    # Retrieve the outcome even if this wait is itself cancelled, so that
    # asyncio does not log an exception "never retrieved": it is expected
    # (GenerationCancelled) or moot (the caller has gone).
    wrapped.add_done_callback(lambda done: done.cancelled() or done.exception())
    await asyncio.wait({wrapped})


async def _call(executor: concurrent.futures.Executor, function: Callable[[], T],
                stop: threading.Event | None = None) -> T:
    """Run ``function`` on ``executor``; on cancellation, set ``stop`` and wait for the thread.

    Waiting for the thread is what makes a cancellation clean: when the
    ``CancelledError`` reaches the caller, no thread works on its behalf any
    more (a wait ends within one check of ``stop``; a single request within
    its timeout), and a job that a submit in flight created is known.
    """
    future = executor.submit(function)
    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        if stop is not None:
            stop.set()
        await _settle(future)
        raise


async def run_sync(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run one blocking call on the shared pool and await its result.

    For what the async API does not wrap, e.g. ``await run_sync(client.auth.token)``.
    """
    return await _call(default_executor(), functools.partial(function, *args, **kwargs))


async def _notify(on_change: AsyncOnChange | None, generation: AsyncGeneration) -> None:
    if on_change is not None:
        outcome = on_change(generation)
        if inspect.isawaitable(outcome):
            await outcome


class AsyncGeneration:
    """One job on the service, awaitable: the async face of a :class:`arta.Generation`.

    ``await generation.wait()`` polls until DONE or FAILED; ``async for
    update in generation`` yields the generation at each change of status;
    :meth:`result` gives the images. The state (``status``, ``record_id``,
    ``images``, ...) is the sync :attr:`generation`'s, read through.
    """

    def __init__(self, generation: Generation, client: AsyncClient) -> None:
        #: The sync generation that does the work; plain data, picklable.
        self.generation = generation
        self._client = client

    # -- state, read from the sync generation --------------------------------

    @property
    def record_id(self) -> str:
        """The job's id at the service: resume it anywhere with ``resume(record_id)``."""
        return self.generation.record_id

    @property
    def status(self) -> Status:
        """Where the job stood when last asked."""
        return self.generation.status

    @property
    def raw_status(self) -> str:
        """The status string the service last answered (kept for unknown statuses)."""
        return self.generation.raw_status

    @property
    def done(self) -> bool:
        """True once the job is DONE or FAILED."""
        return self.generation.done

    @property
    def seed(self) -> int | None:
        """The seed the job was (or is being) drawn with."""
        return self.generation.seed

    @property
    def params(self) -> GenerationParams | None:
        """What was submitted (None for a resumed job)."""
        return self.generation.params

    @property
    def images(self) -> tuple[Image, ...]:
        """The images of a DONE job, as the service listed them."""
        return self.generation.images

    @property
    def error_code(self) -> str | None:
        """Why a FAILED job failed, in the service's words (a code)."""
        return self.generation.error_code

    @property
    def error_details(self) -> str | None:
        """Why a FAILED job failed, in the service's words (a sentence)."""
        return self.generation.error_details

    # -- talking to the service ----------------------------------------------

    async def refresh(self) -> Status:
        """Poll the service once; return the (possibly new) status."""
        return await self._client.run(self.generation.refresh)

    async def events(self, timeout: float | None = None, poll_policy: PollPolicy | None = None,
                     ) -> AsyncGenerator[AsyncGeneration, None]:
        """Poll until the job ends, yielding this generation at each change of status.

        ``timeout`` and ``poll_policy`` are as in the sync API (the client's
        by default); past the timeout :class:`~arta.errors.GenerationTimeout`
        carries the record id. Cancelling the consuming task, or leaving the
        loop early, stops the polling promptly.
        """
        # The sync Generation.events runs whole in one worker thread (tenacity
        # keeps its state in thread-locals, so a generator must not hop threads)
        # and hands each transition over through call_soon_threadsafe. After
        # each one it holds still until the consumer asks for the next, so the
        # state the consumer reads is the state of that transition.
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[BaseException | None | bool] = asyncio.Queue()
        stop, proceed = threading.Event(), threading.Event()
        bound = self._bound(timeout)

        def deliver(item: BaseException | None | bool) -> None:
            # True: a transition; None: the end; an exception: raise it.
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody listens any more
                stop.set()

        def pump() -> None:
            try:
                for _ in self.generation.events(bound, poll_policy, stop):
                    deliver(True)
                    proceed.wait()
                    proceed.clear()
            except Exception as error:  # noqa: BLE001 - handed to the consumer, raised there
                deliver(error)
            else:
                deliver(None)

        future = self._client.executor.submit(pump)
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield self
                proceed.set()
        finally:
            # Cancelled, left early, or ended: the worker stops at its next
            # check of `stop` (mid-sleep included), and the caller goes on only
            # once it has, so nothing polls on behind the caller's back.
            stop.set()
            proceed.set()
            await _settle(future)

    def __aiter__(self) -> AsyncIterator[AsyncGeneration]:
        """``async for update in generation``: :meth:`events` with the client's defaults."""
        return self.events()

    async def wait(self, timeout: float | None = None, on_change: AsyncOnChange | None = None,
                   poll_policy: PollPolicy | None = None) -> AsyncGeneration:
        """Poll until DONE or FAILED; return this generation.

        ``on_change(generation)`` is called on the event loop's thread at
        each transition (a coroutine function is awaited). Raises
        :class:`~arta.errors.GenerationTimeout` past ``timeout`` (default:
        the client's, else the policy's). Cancelling the awaiting task stops
        the polling promptly; the job goes on and ``record_id`` resumes it.
        """
        if on_change is None:  # nothing to hand over: one call of the sync wait
            stop = threading.Event()
            await self._client.run(self.generation.wait, self._bound(timeout), None,
                                   poll_policy, stop, stop=stop)
            return self
        async for update in self.events(timeout, poll_policy):
            await _notify(on_change, update)
        return self

    def _bound(self, timeout: float | None) -> float | None:
        return timeout if timeout is not None else self._client.client.timeout

    def result(self) -> Result:
        """The images of a DONE job; raise ``GenerationFailed`` for a FAILED one.

        Does no I/O (``await arta.aio.save(result, folder)`` downloads).
        """
        return self.generation.result()

    def __repr__(self) -> str:
        return f"<AsyncGeneration {self.record_id} {self.status}>"


class AsyncClient:
    """An asyncio client: the sync :class:`arta.Client` run on a bounded thread pool.

    ``client`` is the sync client to use (else one is made from
    ``client_options``: ``endpoint=``, ``home=``, ``transport=``,
    ``poll_policy=``, ``timeout=``, ... as :class:`arta.Client` takes them,
    and closed with this one). ``max_workers`` gives this client a pool of
    its own of that many threads; without it the process's shared pool
    (:func:`default_executor`) is used. The pool's size bounds the jobs
    polled at once.

    An ``AsyncClient`` holds no event-loop state, so one instance may serve
    several loops (one after the other, or in several threads).
    """

    def __init__(self, client: Client | None = None, *, max_workers: int | None = None,
                 **client_options: Any) -> None:
        if client is not None and client_options:
            raise ConfigurationError(
                "pass either a ready client or options to make one, not both: "
                + ", ".join(sorted(client_options)))
        self._owns_client = client is None
        #: The sync client that does the work.
        #: The size of this client's own pool; None: the shared pool.
        self.max_workers = None if max_workers is None else _check_workers(max_workers)
        if client is None and self.max_workers is not None:
            # One kept-open connection per thread that may send at once.
            client_options.setdefault("pool_size", self.max_workers)
        self.client = client if client is not None else Client(**client_options)
        self._executor: concurrent.futures.ThreadPoolExecutor | None = (
            None if self.max_workers is None else concurrent.futures.ThreadPoolExecutor(
                self.max_workers, thread_name_prefix=_THREAD_PREFIX))
        #: The generation of the latest :meth:`submit` (or :meth:`generate`) of
        #: this client: where a cancelled ``generate()``'s record id is found
        #: when only one job runs at a time.
        self.last_generation: AsyncGeneration | None = None

    @property
    def executor(self) -> concurrent.futures.ThreadPoolExecutor:
        """The pool this client's calls run on."""
        return self._executor or default_executor()

    async def run(self, function: Callable[..., T], *args: Any,
                  stop: threading.Event | None = None) -> T:
        """Run ``function(*args)`` on this client's pool; await its result.

        If the awaiting task is cancelled, ``stop`` (when given) is set and
        the cancellation waits for the thread to let go before it goes on.
        """
        return await _call(self.executor, functools.partial(function, *args), stop)

    async def submit(
        self,
        prompt: str,
        *,
        style: str = DEFAULT_STYLE,
        n: int = 1,
        negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
        guidance_scale: float = 7,
        steps: int = 30,
        aspect_ratio: str = "1:1",
        seed: int | None = None,
    ) -> AsyncGeneration:
        """Validate the parameters, start a job and return its :class:`AsyncGeneration`.

        As :meth:`arta.Client.submit`. A submit that has been sent cannot be
        recalled: cancelling the task waits for its answer, so that the job
        it created is known (:attr:`last_generation`, and ``record_id`` on
        the ``CancelledError``).
        """
        call = functools.partial(
            self.client.submit, prompt, style=style, n=n, negative_prompt=negative_prompt,
            guidance_scale=guidance_scale, steps=steps, aspect_ratio=aspect_ratio, seed=seed)
        future = self.executor.submit(call)
        try:
            generation = await asyncio.wrap_future(future)
        except asyncio.CancelledError as cancelled:
            await _settle(future)
            if future.done() and not future.cancelled() and future.exception() is None:
                _keep_record_id(cancelled, self._adopt(future.result()))
            raise
        return self._adopt(generation)

    async def resume(self, record_id: str) -> AsyncGeneration:
        """Pick up a job submitted earlier, perhaps by another process (polls once)."""
        return self._adopt(await self.run(self.client.resume, record_id))

    async def generate(
        self,
        prompt: str,
        *,
        style: str = DEFAULT_STYLE,
        n: int = 1,
        negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
        guidance_scale: float = 7,
        steps: int = 30,
        aspect_ratio: str = "1:1",
        seed: int | None = None,
        timeout: float | None = None,
        on_change: AsyncOnChange | None = None,
        poll_policy: PollPolicy | None = None,
    ) -> Result:
        """Submit, wait until the job ends, and return its :class:`~arta.result.Result`.

        As :meth:`arta.Client.generate`: ``on_change`` is called first with
        the job just submitted (keep its ``record_id`` there if several jobs
        share this client), then at each transition. If the task is
        cancelled, polling stops promptly and the ``CancelledError`` raised
        has ``record_id`` and ``generation`` attributes (seen by a
        ``try``/``except`` around this call); :attr:`last_generation` holds
        the generation too.
        """
        generation = await self.submit(
            prompt, style=style, n=n, negative_prompt=negative_prompt,
            guidance_scale=guidance_scale, steps=steps, aspect_ratio=aspect_ratio, seed=seed)
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
        """Close the sync client (if this one made it) and let its own pool's threads end."""
        if self._owns_client:
            self.client.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        workers = "shared pool" if self.max_workers is None else f"max_workers={self.max_workers}"
        return f"<arta.aio.AsyncClient {self.client!r} {workers}>"


def _keep_record_id(cancelled: asyncio.CancelledError, generation: AsyncGeneration) -> None:
    """Put the job's record id on the ``CancelledError`` that ends its wait."""
    # The exception is the one the task raises: code that catches it around
    # the call (or in the task) learns which job to resume.
    cancelled.record_id = generation.record_id  # type: ignore[attr-defined]
    cancelled.generation = generation  # type: ignore[attr-defined]


_default: AsyncClient | None = None
_default_lock = threading.Lock()


def _default_client() -> AsyncClient:
    """The client behind :func:`generate`: ``arta.default_client()`` on the shared pool."""
    global _default
    sync = default_client()
    with _default_lock:
        if _default is None or _default.client is not sync:  # a forked child has its own
            _default = AsyncClient(sync)
        return _default


async def generate(
    prompt: str,
    *,
    style: str = DEFAULT_STYLE,
    n: int = 1,
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
    guidance_scale: float = 7,
    steps: int = 30,
    aspect_ratio: str = "1:1",
    seed: int | None = None,
    timeout: float | None = None,
    on_change: AsyncOnChange | None = None,
    poll_policy: PollPolicy | None = None,
    **client_options: Any,
) -> Result:
    """Generate images for ``prompt``; return the :class:`~arta.result.Result` once DONE.

    :func:`arta.generate`, awaitable: the same parameters and errors, run
    on the shared pool with the process's default client (any other
    keyword is an :class:`arta.Client` option, for a client made for this
    call alone). See :meth:`AsyncClient.generate` for cancellation.
    """
    client = AsyncClient(**client_options) if client_options else _default_client()
    try:
        return await client.generate(
            prompt, style=style, n=n, negative_prompt=negative_prompt,
            guidance_scale=guidance_scale, steps=steps, aspect_ratio=aspect_ratio, seed=seed,
            timeout=timeout, on_change=on_change, poll_policy=poll_policy)
    finally:
        if client_options:
            await client.aclose()


async def save(result: Result, folder: str | os.PathLike[str] = ".",
               **options: Any) -> list[Path]:
    """:meth:`arta.Result.save` on the shared pool: download the images; return the paths.

    ``options`` are :meth:`~arta.result.Result.save`'s (``name``,
    ``overwrite``, ``max_bytes``).
    """
    return await run_sync(result.save, folder, **options)

