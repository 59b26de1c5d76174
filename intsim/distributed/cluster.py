"""Clients of a Dask cluster: a local one of single-threaded worker processes, or an existing scheduler.

The workers' environment matters as much as their number.  Dask's nanny starts every worker with
``MALLOC_TRIM_THRESHOLD_=65536`` (its ``distributed.nanny.pre-spawn-environ`` setting), which makes
glibc hand freed memory back to the kernel after every batch; intsim allocates and frees large
activation arrays per layer, and the sweep ran about 40% slower per task with it
(``benchmarks/bench_distributed.py --nanny-default`` measures it).  :data:`WORKER_ENVIRONMENT` is the
environment intsim's local workers start with instead: the threading variables pinned to one thread
(one task per process, no oversubscription) and no malloc trim threshold.
"""

from __future__ import annotations

from contextlib import contextmanager

from intsim.errors import ValidationError

# One thread per worker process: the parallelism is the processes.
WORKER_ENVIRONMENT = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                      "MKL_NUM_THREADS": "1", "INTSIM_THREADS": "1", "INTSIM_PROGRESS": "0"}


def require_distributed():
    """The ``distributed`` module, or a :class:`ValidationError` naming the extra to install."""
    try:
        import distributed
    except ImportError:
        raise ValidationError("a Dask cluster needs dask.distributed, not installed: "
                              "pip install 'intsim[distributed]'") from None
    return distributed


def worker_config(environment: dict | None = None) -> dict:
    """The Dask settings intsim's local workers start under: the nanny's pre-spawn environment replaced
    by ``environment`` (default :data:`WORKER_ENVIRONMENT` with ``MALLOC_TRIM_THRESHOLD_`` unset: a
    ``None`` value makes the nanny leave a variable out)."""
    if environment is None:
        environment = {**WORKER_ENVIRONMENT, "MALLOC_TRIM_THRESHOLD_": None}
    return {"distributed.nanny.pre-spawn-environ": dict(environment)}


@contextmanager
def cluster_client(workers: int | None = None, address: str | None = None, *, environment: dict | None = None):
    """A ``dask.distributed.Client`` for the duration of the ``with`` block, or ``None`` for neither option.

    Parameters
    ----------
    workers : int, optional
        Start a ``LocalCluster`` of this many single-threaded worker processes on 127.0.0.1.
    address : str, optional
        Join the scheduler at this address instead (``tcp://HOST:PORT``).
    environment : dict, optional
        The local workers' pre-spawn environment (default :data:`WORKER_ENVIRONMENT`); ``None`` for
        ``address``, whose workers were started by whoever started them.
    """
    if workers is not None and address is not None:
        raise ValidationError(f"give --workers or --dask, not both (found {workers} and {address!r})")
    if workers is None and address is None:
        yield None
        return
    distributed = require_distributed()
    if address is not None:
        with distributed.Client(address) as client:
            yield client
        return
    if workers < 1:
        raise ValidationError(f"--workers must be at least 1, found {workers}")
    import dask

    with dask.config.set(worker_config(environment)):
        with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                      dashboard_address=None) as cluster, distributed.Client(cluster) as client:
            yield client
