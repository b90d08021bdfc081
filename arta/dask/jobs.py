"""``arta.dask.generate`` and ``arta.dask.map``: jobs inside Dask tasks, never paid twice.

Dask runs a task again when its worker dies
(``distributed.scheduler.allowed-failures``) and recomputes a result lost
with a worker (dask/distributed#7870). A task that submits a paid job must
therefore remember, outside itself, what it already did. Each job has a
key (the task's key, or one given); its record in the scheduler moves:

    (none) -> {"state": "submitting", params with the seed fixed}
           -> {"state": "submitted", "record_id": ...}

under a scheduler lock. A run that finds "submitted" resumes the job by
record id (a few polls, no submit). A run that finds "submitting" cannot
know whether the service took the job (its predecessor died while the
request was on the wire), so it raises
:class:`~arta.errors.SubmitOutcomeUnknown` with the parameters and seed,
instead of guessing. A submit that surely did not arrive (refused,
rate-limited, never connected) clears the record, so a later run tries again.

Records stay in the scheduler for its lifetime (a few hundred bytes per
job): a result recomputed an hour later still resumes its job.

The lock is a Dask lease (one of :data:`LOCK_STRIPES`, picked by the key's
digest). Leases can overlap when a holder stops refreshing for
``distributed.scheduler.locks.lease-timeout`` (30 s): a run writes its
"submitting" record with an attempt id and reads it back before sending,
so a second holder in the overlap finds the first one's record and raises
:class:`~arta.errors.SubmitOutcomeUnknown` rather than submit too. (Two
runs that both read "no record" in the same overlap, a window of one
scheduler round trip, could still both submit.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Callable, Union

from arta.client import Client
from arta.dask.cluster import dask_client, held, metadata_get, metadata_set, semaphore
from arta.dask.token_store import DaskTokenStore
from arta.errors import ArtaError, InvalidInputError, ServiceError, SubmitOutcomeUnknown
from arta.generation import Generation, OnChange, wait_bound
from arta.params import GenerationParams
from arta.result import Result
from arta.retry import RetryPolicy, congested

if TYPE_CHECKING:
    import distributed

__all__ = ["generate", "in_flight", "map", "task_client"]

#: How many scheduler locks the job records are spread over.
LOCK_STRIPES = 64

ParamsLike = Union[str, Mapping[str, Any]]

_lock = threading.Lock()
_clients: dict[str, Client] = {}


def task_client(client_options: Mapping[str, Any] | None = None, *,
                token: str = "cluster") -> Client:
    """The :class:`~arta.client.Client` of this process for ``client_options`` (made once).

    ``token="cluster"`` shares the scheduler's token (:class:`DaskTokenStore`,
    one sign-up for the cluster); ``"host"`` keeps each host's file store
    (``auth_ARTA.json`` in its ``ARTA_HOME``).
    """
    if token not in ("cluster", "host"):
        raise InvalidInputError(f"token must be 'cluster' or 'host', not {token!r}")
    options = dict(client_options or {})
    key = repr(sorted(options.items(), key=lambda item: item[0])) + token
    with _lock:
        client = _clients.get(key)
        if client is None:
            if token == "cluster" and "token_store" not in options:
                options["token_store"] = DaskTokenStore(client=dask_client())
            client = _clients[key] = Client(**options)
        return client


def _current_task_key() -> str:
    import distributed

    try:
        key = distributed.get_worker().get_current_task()
    except ValueError:
        key = None
    if key is None:
        raise InvalidInputError(
            "arta.dask.generate needs a job key: call it inside a Dask task, or pass key=")
    return str(key)


class JobGuard:
    """The scheduler's record of one job: what a re-run of its task must not repeat."""

    def __init__(self, dask: distributed.Client, key: str, lock_timeout: float = 120.0) -> None:
        self.dask = dask
        self.key = key
        self.digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        self.lock_timeout = lock_timeout

    def read(self) -> dict[str, Any] | None:
        """The job's record, or None if no run has submitted it."""
        value = metadata_get(self.dask, "jobs", self.digest)
        return value if isinstance(value, dict) else None

    def _write(self, record: dict[str, Any] | None) -> None:
        metadata_set(self.dask, record, "jobs", self.digest)

    def start(self, client: Client, params: GenerationParams) -> Generation:
        """Submit the job once for all runs of its task, or resume what an earlier run submitted."""
        stripe = int(self.digest, 16) % LOCK_STRIPES
        with held(self.dask, f"arta-jobs-{stripe}", self.lock_timeout):
            record = self.read()
            if record is not None:
                return self._again(client, record, params)
            attempt = uuid.uuid4().hex
            self._write({"state": "submitting", "params": params.as_dict(), "attempt": attempt,
                         "key": self.key})
            mine = self.read()
            if mine is None or mine.get("attempt") != attempt:  # a lock lease overlapped
                raise self._unknown(params)
            try:
                generation = client.submit_params(params)
            except SubmitOutcomeUnknown:
                raise  # the record stays "submitting": every later run says so too
            except ArtaError:
                self._write(None)  # surely not taken: a later run may submit
                raise
            self._write({"state": "submitted", "record_id": generation.record_id,
                         "params": params.as_dict(), "key": self.key})
            return generation

    def _again(self, client: Client, record: dict[str, Any],
               params: GenerationParams) -> Generation:
        recorded = GenerationParams(**record["params"])
        if {**recorded.as_dict(), "seed": params.seed} != params.as_dict():
            raise InvalidInputError(
                f"the job key {self.key!r} was used before for other parameters; "
                "give each job its own key")
        if record.get("state") == "submitted":
            generation = client.resume(str(record["record_id"]))
            generation.params = recorded  # what the first run sent: the result carries it
            generation.seed = recorded.seed if generation.seed is None else generation.seed
            return generation
        raise self._unknown(recorded)

    def _unknown(self, params: GenerationParams) -> SubmitOutcomeUnknown:
        return SubmitOutcomeUnknown(
            f"an earlier run of job {self.key!r} sent its submit and stopped before the "
            "answer was recorded: the job may or may not exist, so it is not sent again. "
            f"It had seed {params.seed}", params=params)


@contextlib.contextmanager
def in_flight(dask: distributed.Client, concurrency: int | None) -> Iterator[None]:
    """Hold one of the cluster's ``concurrency`` slots for jobs in flight (None: no cap)."""
    if concurrency is None:
        yield
        return
    if concurrency < 1:
        raise InvalidInputError(f"concurrency must be at least 1, not {concurrency}")
    slots = semaphore(dask, f"arta-in-flight-{concurrency}", concurrency)
    slots.acquire()
    try:
        yield
    finally:
        slots.release()


def _submit_patiently(dask: distributed.Client, submit: Callable[[], Generation],
                      policy: RetryPolicy, deadline: float | None) -> Generation:
    """Submit; refused as congestion (429, 503), the whole cluster pauses, then this task tries again.

    The pause is the retry policy's (its backoff for that many refusals in a
    row, a ``Retry-After`` capped), as the engine's window takes it. A
    refused submit is never a failed job (only ``timeout`` ends the wait).
    """
    refusals = 0
    while True:
        pause = metadata_get(dask, "pause-until")
        if isinstance(pause, (int, float)) and pause > time.time():
            time.sleep(pause - time.time())
        try:
            return submit()
        except ServiceError as error:
            if not congested(error):
                raise
            refusals += 1
            delay = policy.delay(error, refusals)
            if deadline is not None and time.monotonic() + delay > deadline:
                raise
            metadata_set(dask, time.time() + delay, "pause-until")
            time.sleep(delay)


def generate(prompt: str, *, key: str | None = None, timeout: float | None = None,
             concurrency: int | None = None, client_options: Mapping[str, Any] | None = None,
             token: str = "cluster", on_change: OnChange | None = None,
             **params: Any) -> Result:
    """Generate inside a Dask task, submitting the job at most once whatever Dask re-runs.

    ``params`` are :func:`arta.generate`'s (``style``, ``n``, ``seed``, ...).
    ``key`` names the job (default: the running task's key); a re-run with
    the same key resumes the job. ``concurrency`` caps the jobs in flight
    across the cluster (every task using the same value shares one
    semaphore). ``client_options`` are :class:`~arta.client.Client`
    keywords (``endpoint``, ``poll_policy``, ...); ``token`` is ``"cluster"``
    (one token in the scheduler) or ``"host"`` (each host's file).

    Returns the picklable :class:`~arta.result.Result` (image URLs, seed,
    record id): call ``result.save(folder)`` where the images should land.
    Raises :class:`~arta.errors.SubmitOutcomeUnknown` (with ``params``) if
    an earlier run of this job died with its submit unanswered. A re-run
    that resumes uses the parameters and seed recorded by the first run.
    """
    dask = dask_client()
    job_key = key if key is not None else _current_task_key()
    settings = GenerationParams.create(prompt, **params)  # the seed is fixed here, once
    client = task_client(client_options, token=token)
    bound = wait_bound(timeout, client)
    deadline = None if bound is None else time.monotonic() + bound
    guard = JobGuard(dask, job_key)
    with in_flight(dask, concurrency):
        generation = _submit_patiently(dask, lambda: guard.start(client, settings),
                                       client.retry_policy, deadline)
        if on_change is not None:
            on_change(generation)
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        generation.wait(remaining, on_change)
        return generation.result()


def _params_of(item: ParamsLike) -> dict[str, Any]:
    params = {"prompt": item} if isinstance(item, str) else dict(item)
    try:
        GenerationParams.create(**{"seed": 0, **params})
    except TypeError as error:
        raise InvalidInputError(f"bad job parameters {params!r}: {error}") from None
    return params


def job_key(params: Mapping[str, Any], index: int, run: str = "") -> str:
    """The stable task key of job ``index``: ``arta-<digest of its parameters, index, run>``."""
    text = json.dumps([dict(params), index, run], sort_keys=True, default=str)
    return "arta-" + hashlib.sha256(text.encode()).hexdigest()[:24]


def _outcome(params: dict[str, Any], key: str, options: dict[str, Any]) -> Result | ArtaError:
    """One job of ``map``: its result, or its error as a value (with the record id if any)."""
    try:
        return generate(key=key, **options, **params)
    except ArtaError as error:
        return error


def map(params_list: Iterable[ParamsLike], *,
        client: distributed.Client | None = None, concurrency: int | None = None,
        timeout: float | None = None, client_options: Mapping[str, Any] | None = None,
        token: str = "cluster", run: str = "") -> list[distributed.Future[Any]]:
    """Run one guarded :func:`generate` per item on the cluster; return their Dask futures.

    Each item is a prompt or a dict of generate's parameters; all are
    validated before any task starts. Each future's value is the job's
    :class:`~arta.result.Result`, or the :class:`~arta.errors.ArtaError`
    that ended it (carrying its ``record_id`` when the job exists): one
    failure does not end the run. Task keys are
    ``arta-<digest of the parameters, the index and run>``: mapping the same
    list again on the same scheduler resumes the same jobs instead of paying
    for new ones; give another ``run`` name for new images of the same list.
    """
    dask = client if client is not None else dask_client()
    jobs = [_params_of(item) for item in params_list]
    options = {"timeout": timeout, "concurrency": concurrency,
               "client_options": dict(client_options or {}), "token": token}
    futures: list[distributed.Future[Any]] = [
        dask.submit(_outcome, params, job_key(params, index, run), options,
                    key=job_key(params, index, run), pure=False)
        for index, params in enumerate(jobs)]
    return futures
