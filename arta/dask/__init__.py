"""arta on a Dask cluster: one sign-up per host, no job paid for twice, no thread per waiting job.

``pip install 'arta-client[dask]'``. Importing this module imports nothing from
Dask; each function does so when called.

- :class:`DaskTokenStore`: a remote cluster's token kept in the scheduler,
  renewed under a scheduler lock, seeded from and written back to the
  driver's own store;
- :func:`generate`: inside a Dask task, a submit guarded against Dask's
  re-runs (a re-run resumes the job by record id);
- :func:`map`: one guarded generate per item, as Dask futures of outcomes;
- :func:`run_batch_on_dask`: ``arta batch --engine dask``, where the driver
  submits on the engine and the cluster waits and fetches (docs/dask.rst).
"""

from arta.dask.batch import ClusterLost, run_batch_on_dask
from arta.dask.cluster import connect
from arta.dask.jobs import generate, in_flight, job_key, map, task_client
from arta.dask.token_store import DaskTokenStore

__all__ = [
    "ClusterLost",
    "DaskTokenStore",
    "connect",
    "generate",
    "in_flight",
    "job_key",
    "map",
    "run_batch_on_dask",
    "task_client",
]
