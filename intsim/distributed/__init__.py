"""Evaluations and sweeps beyond one process: Dask's ``distributed`` scheduler, with a local default.

:func:`evaluate`, :func:`intsim.compare`, :func:`intsim.hwval.sweep` and
:func:`intsim.hwval.bitwidth_sweep` take ``client=``: ``None`` runs in this process, a
``dask.distributed.Client`` spreads batches (:func:`~intsim.distributed.tasks.map_batches`) or
configurations (:func:`~intsim.distributed.tasks.map_calls`) over its workers, with the same result.
:func:`~intsim.distributed.cluster.cluster_client` makes a client (a local cluster or an existing
scheduler).  Dask is an optional extra (``pip install 'intsim[distributed]'``), imported only when a
cluster is asked for.  See docs/distributed.md.
"""

from intsim.distributed.cluster import WORKER_ENVIRONMENT, cluster_client
from intsim.distributed.data import NpyData
from intsim.distributed.evaluate import EvaluationReport, LayerCounts, evaluate

__all__ = ["WORKER_ENVIRONMENT", "EvaluationReport", "LayerCounts", "NpyData", "cluster_client", "evaluate"]
