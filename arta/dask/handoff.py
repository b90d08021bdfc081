"""Jobs handed to the cluster: one Dask task each, keyed ``arta-<record id>``, and how each ends.

The driver (:mod:`arta.dask.batch`) submits on the engine and hands each
submitted job to :class:`HandOffs`, which sends the jobs to Dask in groups,
hears each job's end (a worker's announcement on :data:`ENDED_TOPIC`, or
the task's value) and lets go of the task at once. :func:`fetch_job` is
the task: it waits for the job on its worker's engine and fetches the images.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import queue
import tempfile
import threading
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from arta.batch.plan import save_images
from arta.dask.jobs import task_client
from arta.errors import ArtaError
from arta.generation import Generation, Status
from arta.result import Result

if TYPE_CHECKING:
    import distributed
    from typing_extensions import Self

__all__ = ["ENDED_TOPIC", "LAUNCH_WAIT", "ClusterLost", "HandOffs", "fetch_job"]


#: The Dask event topic on which workers announce the jobs whose images they wrote
#: (:meth:`distributed.Client.subscribe_topic`): the scheduler keeps only its
#: last ``distributed.admin.low-level-log-length`` events (1,000, a few hundred
#: bytes each).
ENDED_TOPIC = "arta.dask.batch.ended"


#: Seconds the driver waits after a job's hand-off for more, so that jobs handed off
#: together reach Dask in one message (one graph update, one batch of messages to
#: each worker): Dask's own CPU per job falls by about a fifth with 64 jobs of
#: ~0.8 s in flight (docs/dask.rst), for a job's start later by at most this.
LAUNCH_WAIT = 0.02

#: The service's answers about a job so far, as ``Generation.seen`` with the status's value.
Seen = list[tuple[float, str]]

#: A task: ``(record_id, options, seen)`` to the job's value, or its error as a value.
TaskFunction = Callable[[str, dict[str, Any], Seen], Awaitable[Any]]


class ClusterLost(ArtaError):
    """The driver lost its Dask scheduler mid-run; the manifest knows every job: run again."""


async def fetch_job(record_id: str, options: dict[str, Any],
                    seen: Seen | None = None) -> dict[str, Any] | ArtaError:
    """The cluster's task: wait for job ``record_id`` on this worker's engine, fetch its images.

    A coroutine, so that Dask runs it on the worker's event loop: a waiting
    job is an entry in the engine's poll loop, not a worker thread, and the
    images are fetched on the engine's I/O threads. On a cluster not ours
    (``options["secede"]``) the task gives its worker slot back while it
    waits; a ``local:N`` worker has a slot per job in flight, and keeping
    it spares Dask a message and a transition per job. Returns the images'
    names and bytes (with ``output_on_workers``, the paths written), or the
    error that ended the job, as a value. ``seen`` is what the driver heard
    of the job (the submit's answer): a job known to be queued is not polled
    at once, and a learned poll policy times its polls from the submit, as
    in one process.
    A job whose images the worker wrote is also announced on
    :data:`ENDED_TOPIC`: the driver has its value without fetching it.
    """
    import distributed

    client = task_client(options["client_options"], token=options["token"])
    watch = None
    try:
        answers = [(at, Status(status)) for at, status in seen or ()]
        generation = Generation(record_id, session=client,
                                status=answers[-1][1] if answers else Status.SUBMITTED)
        generation.seen = answers
        watch = generation.watch(options["timeout"])
        if options["secede"]:
            _secede(f"arta-{record_id}")
        await asyncio.wrap_future(watch.future)
        fetched = await asyncio.wrap_future(client.loop.call_io(
            _fetch_images, generation.ended_result(), options["output_on_workers"]))
        if "files" in fetched:  # a few names: announced, so the driver need not fetch the value
            distributed.get_worker().log_event(ENDED_TOPIC, {"record_id": record_id, **fetched})
        return fetched
    except ArtaError as error:
        return error.with_record_id(record_id)
    finally:
        if watch is not None:
            watch.cancel()  # a no-op once ended; else (the task was cancelled) the polls stop


def _secede(key: str) -> None:
    """Free the worker's slot that task ``key`` holds, as :func:`distributed.secede` does for a thread.

    A worker starts at most as many tasks as it has threads, coroutines
    included; a task that only awaits the engine gives its slot back, so
    that a worker of 2 threads carries hundreds of waiting jobs.
    """
    import distributed

    try:
        from distributed.worker_state_machine import SecedeEvent
    except ImportError:  # another Dask: the task keeps its slot, and still works
        return
    worker = distributed.get_worker()
    worker.loop.add_callback(worker.handle_stimulus, SecedeEvent(
        key=key, compute_duration=0.0, stimulus_id=f"arta-secede-{time.time()}"))


def _fetch_images(result: Result, output_on_workers: str | None) -> dict[str, Any]:
    """On an I/O thread: the images written where the workers write, or read back as bytes."""
    found = {"seed": result.seed, "blurred": result.blurred}
    if output_on_workers is not None:
        return {**found, "files": save_images(result, output_on_workers)}
    with tempfile.TemporaryDirectory(prefix="arta-") as folder:
        paths = save_images(result, folder)
        return {**found, "images": [(Path(p).name, Path(p).read_bytes()) for p in paths]}


class HandOffs:
    """The jobs of one run on the cluster: each launched as a task, each task let go as it ends.

    Use it as a context manager around the run; :meth:`launch` from any
    thread. ``task`` is :func:`fetch_job` (another coroutine function of the
    same signature measures what Dask alone costs: benchmarks/dask_batch.py).
    """

    def __init__(self, dask: distributed.Client, options: dict[str, Any],
                 task: TaskFunction = fetch_job) -> None:
        self.dask, self.options, self.task = dask, options, task
        self.lost: str | None = None  # why the scheduler is gone, once it is
        self._endings: dict[str, concurrent.futures.Future[Any]] = {}  # by record id, on the cluster
        # Jobs to launch, for the launcher thread (None: the run is over).
        self._launches: queue.SimpleQueue[tuple[str, Seen, concurrent.futures.Future[Any]] | None] \
            = queue.SimpleQueue()
        self._launcher = threading.Thread(target=self._launch, name="arta-dask-launcher",
                                          daemon=True)

    def __enter__(self) -> Self:
        self.dask.subscribe_topic(ENDED_TOPIC, self._announced)
        self._launcher.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._launches.put(None)
        self._launcher.join()
        if self.dask.status == "running":
            self.dask.unsubscribe_topic(ENDED_TOPIC)

    def launch(self, record_id: str, seen: Seen) -> concurrent.futures.Future[Any]:
        """Queue job ``record_id`` (with the answers ``seen``); the future ends with its task's value."""
        ending: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._launches.put((record_id, seen, ending))
        return ending

    def _launch(self) -> None:
        """On a thread of its own: the jobs queued, as one task each, in one message to Dask."""
        end = False
        while not end:
            taken = [self._launches.get()]
            gathering = time.monotonic() + LAUNCH_WAIT
            with contextlib.suppress(queue.Empty):
                while taken[-1] is not None:
                    taken.append(self._launches.get(timeout=max(0.0, gathering - time.monotonic())))
            end = None in taken
            queued = [item for item in taken if item is not None]
            if not queued:
                continue
            record_ids = [record_id for record_id, _, _ in queued]
            self._endings.update((record_id, ending) for record_id, _, ending in queued)
            try:
                if self.lost is not None:
                    raise ClusterLost(self.lost)
                tasks = self.dask.map(self.task, record_ids, [self.options] * len(queued),
                                      [seen for _, seen, _ in queued], pure=False,
                                      key=[f"arta-{record_id}" for record_id in record_ids])
            except Exception as error:  # noqa: BLE001 - each job keeps its id
                for record_id, _, ending in queued:
                    _settle(ending, error if isinstance(error, ArtaError) else ArtaError(
                        f"{type(error).__name__}: {error}", record_id=record_id))
                continue
            for task, (record_id, _, ending) in zip(tasks, queued):
                task.add_done_callback(functools.partial(self._landed, record_id=record_id,
                                                         ending=ending))

    def _announced(self, event: tuple[float, dict[str, Any]]) -> None:
        """On Dask's event loop: a worker's announcement of a job it ended (see :func:`fetch_job`).

        Announcements come before the task's end on the same stream, so
        :meth:`_landed` finds the job settled and fetches nothing.
        """
        value = dict(event[1])
        ending = self._endings.get(value.pop("record_id"))
        if ending is not None:
            _settle(ending, value)

    def _landed(self, task: distributed.Future[Any], record_id: str,
                ending: concurrent.futures.Future[Any]) -> None:
        """On Dask's callback thread: the task's value (or its error) ends the job's outcome."""
        value = None
        try:
            if not ending.done():  # not announced: fetch the value from the worker
                value = task.result()
        except BaseException as error:  # noqa: BLE001 - KilledWorker, a lost scheduler: the job lives on
            value = ArtaError(f"{type(error).__name__}: {error}")
            if self.dask.status != "running":  # reconnecting: the scheduler forgot every task
                self.lost = (f"the Dask scheduler was lost ({type(error).__name__}); the "
                             "submitted jobs go on: run the batch again to resume them")
                value = ClusterLost(self.lost)
        finally:
            task.release()  # nothing of a finished job stays in the scheduler
            self._endings.pop(record_id, None)
        _settle(ending, value)


def _settle(ending: concurrent.futures.Future[Any], value: Any) -> None:
    """End a hand-off's future with ``value`` (an exception raises), unless the run closed it."""
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        if isinstance(value, BaseException):
            ending.set_exception(value)
        else:
            ending.set_result(value)
