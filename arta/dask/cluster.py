"""Reaching the Dask scheduler from anywhere: a driver, a task, a worker's other threads.

:func:`connect` gives a driver its cluster: a scheduler's address, or a
``local:N`` cluster started for the run, quiet (:data:`LOCAL_CONFIG`).

Everything ``arta.dask`` shares lives in the scheduler's memory: small
values in its metadata store (``Client.set_metadata``, under the top-level
key ``"arta.dask"``, never a task key, so the scheduler never cleans it up
with a task), and :class:`distributed.Lock`/:class:`distributed.Semaphore`
for mutual exclusion and the cap on jobs in flight.

Why metadata rather than a :class:`distributed.Variable`: a Variable has no
"absent" answer. ``Variable.get`` on a name never set waits, and with a
timeout it fails *and the scheduler logs an ERROR with a traceback*, once
for every first look at a job or an empty token store. The metadata store
answers a default instead; its values die with the scheduler, as a
Variable's would.

Nothing here imports Dask at module import: :mod:`arta.dask` costs nothing
until it is used.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from arta.errors import ArtaError, InvalidInputError, TokenStoreError

if TYPE_CHECKING:
    import distributed

__all__ = ["FORKSERVER_PRELOAD", "LOCAL_CONFIG", "LOCAL_MESSAGE_BATCH", "NAMESPACE", "WORKER_CONFIG",
           "connect", "dask_client", "held", "local_workers", "metadata_get", "metadata_set",
           "scheduler_address", "semaphore"]

log = logging.getLogger(__name__)

#: The scheduler metadata key under which arta keeps its state.
NAMESPACE = "arta.dask"

#: Dask settings for the workers arta starts itself. Before Python 3.11.9
#: the workers' statistical profiler (``sys._current_frames`` every 10 ms)
#: can deadlock the whole worker process against threads starting and
#: ending (CPython gh-116969, dask/distributed#8616): seen here as a worker
#: that stops answering for good in the middle of a batch. The profiler is
#: a diagnostic only, so it is turned off there.
WORKER_CONFIG: dict[str, object] = (
    {"distributed.worker.profile.enabled": False} if sys.version_info < (3, 11, 9) else {})

_lock = threading.Lock()
_clients: dict[str, distributed.Client] = {}
_semaphores: dict[tuple[str, str, int], distributed.Semaphore] = {}


def local_workers(scheduler: str) -> int | None:
    """N for ``local:N`` (a cluster of N worker processes on this host), None for an address."""
    if not scheduler.startswith("local:"):
        return None
    count = scheduler[len("local:"):]
    if not count.isdigit() or int(count) < 1:
        raise InvalidInputError(f"--scheduler local:N needs a number N >= 1, not {scheduler!r}")
    return int(count)


def dask_client(address: str | None = None) -> distributed.Client:
    """The Dask client of this context.

    Inside a task: the worker's own client. On a driver: the default client
    (the last ``distributed.Client`` made). Elsewhere, with ``address``: a
    client of this process connected to that scheduler, made once.
    """
    import distributed

    try:
        return distributed.get_client()
    except ValueError:
        if address is None:
            raise ArtaError(
                "no Dask client here: call this inside a Dask task, after making a "
                "distributed.Client, or give the scheduler's address") from None
    with _lock:
        client = _clients.get(address)
        if client is None or client.status not in ("running", "connecting", "newly-created"):
            client = distributed.Client(address, set_as_default=False)
            _clients[address] = client
        return client


def scheduler_address(client: distributed.Client) -> str:
    """The address of ``client``'s scheduler."""
    return str(getattr(client.scheduler, "address", ""))


def metadata_get(client: distributed.Client, *path: str) -> Any:
    """The value stored at ``path`` under :data:`NAMESPACE`, or None."""
    return client.get_metadata([NAMESPACE, *path], default=None)


def metadata_set(client: distributed.Client, value: Any, *path: str) -> None:
    """Store ``value`` (msgpack-able: dicts, lists, str, numbers, None) at ``path``."""
    client.set_metadata([NAMESPACE, *path], value)


@contextlib.contextmanager
def held(client: distributed.Client, name: str, timeout: float) -> Iterator[None]:
    """Hold the scheduler's lock ``name`` (waiting at most ``timeout`` seconds).

    A Dask lock is a lease: if its holder dies it is freed after
    ``distributed.scheduler.locks.lease-timeout`` (30 s by default), and a
    holder that stops answering for that long can see a second holder come
    in. Everything arta does under such a lock re-reads what it guards
    first (a double check), so an overlap costs at most a repeated renewal.
    """
    import distributed

    lock = distributed.Lock(name, scheduler_rpc=client.scheduler, loop=client.loop)
    try:
        if not lock.acquire(timeout=timeout):
            raise TokenStoreError(
                f"the Dask lock {name!r} stayed taken for more than {timeout:g}s: another "
                "task is stuck holding it")
        try:
            yield
        finally:
            try:
                lock.release()
            except Exception as error:  # noqa: BLE001 - the lease lapses by itself
                log.warning("could not release the Dask lock %r (%s); its lease will lapse",
                            name, error)
    finally:
        # Each Lock starts a lease-refresh timer on the client's loop; stop it,
        # or every lock ever made would keep one alive.
        callback = getattr(lock, "refresh_callback", None)
        if callback is not None and client.loop is not None:
            client.loop.add_callback(callback.stop)


def semaphore(client: distributed.Client, name: str, size: int) -> distributed.Semaphore:
    """The scheduler's semaphore ``name`` of ``size`` leases, one object per process."""
    import distributed

    key = (scheduler_address(client), name, size)
    with _lock:
        found = _semaphores.get(key)
        if found is None:
            found = distributed.Semaphore(size, name, scheduler_rpc=client.scheduler,
                                          loop=client.loop)
            _semaphores[key] = found
        return found


#: A cluster of our own on this host (``local:N``): no HTTP routes (a worker its
#: nanny restarts serves nothing), and none of the background work that only
#: feeds a dashboard it does not have or balances workers it does not need to.
#: Each is a timer on every server's event loop: at Dask's defaults an idle
#: ``local:2`` spends 0.09 s of CPU a second, 0.02 s with these (docs/dask.rst).
LOCAL_CONFIG: dict[str, object] = {
    "distributed.scheduler.http.routes": [],
    "distributed.worker.http.routes": [],
    "distributed.worker.profile.enabled": False,  # a stack sample every 10 ms, for the dashboard
    "distributed.admin.tick.interval": "1s",  # the event loop's health check, 20 ms
    "distributed.admin.system-monitor.interval": "5s",  # CPU, memory, I/O for the dashboard
    "distributed.admin.system-monitor.disk": False,
    "distributed.worker.memory.monitor-interval": "1s",  # spill/pause: a task holds a few names
    "distributed.scheduler.work-stealing": False,  # a task waits on its worker's own engine
    "distributed.scheduler.active-memory-manager.start": False,  # no replicas to drop
    "distributed.client.scheduler-info-interval": "10s",  # for a widget
    # Workers forked from one process that imported Dask and arta once, not each
    # started afresh to import them again (0.6-0.8 s of CPU a worker). Windows has
    # no fork server: there they start afresh.
    "distributed.worker.multiprocessing-method":
        "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn",
}

#: What the fork server of a ``local:N`` cluster imports once for all its workers:
#: Dask, and the module of the batch's task (with the arta client under it).
FORKSERVER_PRELOAD = ["distributed", "arta.dask.handoff"]

#: Seconds each server of a ``local:N`` cluster gathers messages before it sends
#: them. Dask's own (2 to 10 ms, fixed in its code: dask/distributed#5036) send
#: almost every message of a batch's tasks alone, each costing a write, a read and
#: an event-loop wake-up in two processes. Batched, a job's hand-off and its end
#: each reach the other side up to two of these later (docs/dask.rst).
LOCAL_MESSAGE_BATCH = 0.05


@contextlib.contextmanager
def connect(scheduler: str, slots: int = 2) -> Iterator[distributed.Client]:
    """A Dask client of ``scheduler``: an address (``tcp://host:8786``), or ``local:N``.

    ``local:N`` starts a :class:`distributed.LocalCluster` of N worker
    processes on 127.0.0.1 for the duration, with no dashboard or other
    HTTP server, its messages sent in batches (:data:`LOCAL_MESSAGE_BATCH`).
    Each worker runs up to ``slots`` tasks at once: a batch gives one per
    job in flight, so that a waiting job's task keeps its slot (a
    coroutine: a slot costs no thread until a task runs on one).
    """
    import dask
    import distributed
    from distributed.utils import get_mp_context

    workers = local_workers(scheduler)
    if workers is None:
        with distributed.Client(scheduler, set_as_default=False) as client:
            yield client
        return
    with _quiet("distributed"), dask.config.set(LOCAL_CONFIG):
        # Dask names its own preloads on first use; ours replace them (a fork
        # server already running keeps what it has).
        context = get_mp_context()
        if context.get_start_method() == "forkserver":
            context.set_forkserver_preload(FORKSERVER_PRELOAD)
        # The environment the workers get is the fork server's, from when it
        # started: give them this process's as it is now.
        with distributed.LocalCluster(
                n_workers=workers, processes=True, threads_per_worker=slots, host="127.0.0.1",
                dashboard_address=None, silence_logs=logging.WARNING,
                env=dict(os.environ)) as cluster, \
                distributed.Client(cluster, set_as_default=False) as client:
            # Scheduler and workers listen for HTTP even with no dashboard: stop them.
            client.run_on_scheduler(_stop_scheduler_http)
            client.run(_stop_worker_http)
            _batch_messages(client, LOCAL_MESSAGE_BATCH)
            yield client


def _batch_messages(client: distributed.Client, interval: float) -> None:
    """Have the driver, the scheduler and the workers send their messages every ``interval`` s.

    Each keeps a ``BatchedSend`` per peer whose interval Dask offers no
    setting for; a worker its nanny restarts goes back to Dask's own.
    """
    if client.scheduler_comm is not None:
        client.scheduler_comm.interval = interval
    client.run_on_scheduler(_batch_scheduler_messages, interval)
    client.run(_batch_worker_messages, interval)


def _batch_scheduler_messages(interval: float, dask_scheduler: Any = None) -> None:
    for stream in [*dask_scheduler.stream_comms.values(), *dask_scheduler.client_comms.values()]:
        stream.interval = interval


def _batch_worker_messages(interval: float, dask_worker: Any = None) -> None:
    dask_worker.batched_stream.interval = interval


def _stop_scheduler_http(dask_scheduler: Any) -> None:
    dask_scheduler.http_server.stop()


def _stop_worker_http(dask_worker: Any) -> None:
    dask_worker.http_server.stop()


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Keep logger ``name`` to warnings meanwhile: a cluster of our own chats at INFO."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)
