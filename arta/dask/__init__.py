"""arta on a Dask cluster: one token for every worker, and no job paid for twice.

``pip install 'arta-client[dask]'``. Importing this module imports nothing from
Dask; each function does so when called.

- :class:`DaskTokenStore`: the token kept in the scheduler, renewed under a
  scheduler lock (one sign-up for the whole cluster);
- :func:`generate`: inside a Dask task, a submit guarded against Dask's
  re-runs (a re-run resumes the job by record id);
- :func:`map`: one guarded generate per item, as Dask futures of outcomes;
- :func:`run_batch_on_dask`: ``arta batch --engine dask``, where only the
  driver submits and the cluster waits and fetches.
"""

from arta.dask.batch import connect, run_batch_on_dask
from arta.dask.jobs import generate, in_flight, job_key, map, task_client
from arta.dask.token_store import DaskTokenStore

__all__ = [
    "DaskTokenStore",
    "connect",
    "generate",
    "in_flight",
    "job_key",
    "map",
    "run_batch_on_dask",
    "task_client",
]
