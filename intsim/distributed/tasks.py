"""Units of work and how their inputs travel: batches of a data set, and calls (one per configuration).

Both run the same functions the single-process path runs, so a distributed result is the serial one:

* :func:`map_batches` cuts the data into the serial path's own batches (multiples of ``batch_size``
  from sample 0), runs ``step(context, batch, labels)`` on each and yields the per-batch records in
  order; the caller folds them exactly as it folds its serial records (integer counts and sums,
  maxima, and float sums added in the serial order).
* :func:`map_calls` runs ``function(*shared, *call)`` once per call and yields the results in order.

Inputs travel as bytes or by reference, never as pickles of files: a :class:`~intsim.runtime.Model`
as its ``.intsim`` bytes, a float ONNX model (path or ``ModelProto``) as its ONNX bytes, converted on
the worker; :class:`~intsim.distributed.data.NpyData` as its path; other arrays are scattered once.
A worker unpacks each input and builds each context once and keeps the last few (numba caches warm
once per worker).  Tasks that die with their worker are recomputed elsewhere by the scheduler.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from intsim.converter.feeds import FeedRows
from intsim.distributed.data import NpyData
from intsim.runtime import Model

# Per worker process: unpacked inputs and built contexts, newest last.
_CACHE: OrderedDict = OrderedDict()
_CACHE_ENTRIES = 4
# Tasks per worker: more than one so a slow or lost worker's share is spread over the others.
TASKS_PER_WORKER = 4
# A task that raises is retried once; a worker's death does not count against it (the scheduler
# reschedules its tasks, up to distributed.scheduler.allowed-failures times).
RETRIES = 1


class IntsimBytes:
    """A :class:`Model` in transit: its graph as ``.intsim`` bytes and its backend's name."""

    def __init__(self, model: Model):
        from intsim.graph.fileformat import save_graph

        buffer = io.BytesIO()
        save_graph(model.graph, buffer)
        self.data, self.backend = buffer.getvalue(), model.backend

    def unpack(self) -> Model:
        from intsim.graph.fileformat import load_graph

        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "model.intsim"
            path.write_bytes(self.data)
            return Model(load_graph(path), self.backend)


class OnnxBytes:
    """A float ONNX model in transit, prepared (:func:`prepare_float_graph`) on the worker."""

    def __init__(self, model):
        self.data = Path(model).read_bytes() if isinstance(model, (str, os.PathLike)) else model.SerializeToString()

    def unpack(self):
        from intsim.converter.lowering import prepare_float_graph
        from intsim.onnxproto import ModelProto

        return prepare_float_graph(ModelProto.FromString(self.data))


def is_onnx(value) -> bool:
    """Whether ``value`` names a float ONNX model: a ``.onnx`` path or an ``onnx.ModelProto``."""
    if isinstance(value, (str, os.PathLike)):
        return str(value).lower().endswith(".onnx")
    return type(value).__name__ == "ModelProto"


def _pack(client, value):
    if isinstance(value, Model):
        return IntsimBytes(value)
    if is_onnx(value):
        return OnnxBytes(value)
    if isinstance(value, np.ndarray):
        return client.scatter(value, broadcast=True, hash=False)
    return value


def _digest(packed) -> str:
    h = hashlib.sha256()
    for value in packed:
        h.update(value.data if isinstance(value, (IntsimBytes, OnnxBytes)) else repr(value).encode())
    return h.hexdigest()


def _cached(key, build):
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    value = build()
    _CACHE[key] = value
    while len(_CACHE) > _CACHE_ENTRIES:
        _CACHE.popitem(last=False)
    return value


def _unpacked(shared, digest):
    return _cached(("inputs", digest), lambda: tuple(v.unpack() if isinstance(v, (IntsimBytes, OnnxBytes)) else v
                                                     for v in shared))


def _batch_task(prepare, step, shared, digest, data, labels, start, stop, batch_size):
    inputs = _unpacked(shared, digest)
    context = _cached((prepare.__module__, prepare.__qualname__, digest), lambda: prepare(*inputs))
    records = []
    for first in range(start, stop, batch_size):
        last = min(first + batch_size, stop)
        records.append(step(context, data[first:last], None if labels is None else labels[first - start:last - start]))
    return records


def _call_task(function, shared, digest, call):
    return function(*_unpacked(shared, digest), *call)


def _workers(client) -> int:
    return max(1, len(client.scheduler_info().get("workers", {})))


def map_batches(prepare, step, shared: tuple, data, labels, batch_size: int, client=None):
    """Yield ``step(prepare(*shared), data[i:i + batch_size], labels[i:i + batch_size])`` for every batch, in order.

    With ``client=None`` everything runs here.  With a ``dask.distributed.Client`` the batches are grouped
    into about :data:`TASKS_PER_WORKER` tasks per worker; each worker builds the context once per
    ``shared`` and returns its batches' records, which are yielded in the data's order.

    Parameters
    ----------
    prepare : module-level function
        Builds the per-model context (models, node setups) from ``shared``.
    step : module-level function
        ``step(context, batch, labels_or_None) -> record``; records must be picklable.
    shared : tuple
        The inputs of ``prepare``: models, ONNX models, and plain settings.
    data : array, NpyData or FeedRows (a model with several or integer inputs)
    labels : array or None
    """
    n = data.shape[0]
    if client is None:
        context = prepare(*shared)
        for start in range(0, n, batch_size):
            yield step(context, data[start:start + batch_size],
                       None if labels is None else labels[start:start + batch_size])
        return
    packed = tuple(_pack(client, v) for v in shared)
    digest = _digest(packed)
    if isinstance(data, NpyData):  # workers open the file themselves
        source = data
    elif isinstance(data, FeedRows):  # several inputs travel as one object, sliced like an array
        source = client.scatter(data, broadcast=True, hash=False)
    else:
        source = client.scatter(np.asarray(data), broadcast=True, hash=False)
    batches = math.ceil(n / batch_size)
    per_task = max(1, math.ceil(batches / (TASKS_PER_WORKER * _workers(client))))
    futures = []
    for first in range(0, batches, per_task):
        start, stop = first * batch_size, min(n, (first + per_task) * batch_size)
        part = None if labels is None else np.asarray(labels[start:stop])
        futures.append(client.submit(_batch_task, prepare, step, packed, digest, source, part, start, stop, batch_size,
                                     pure=False, retries=RETRIES))
    for future in futures:
        yield from future.result()


def map_calls(function, shared: tuple, calls: list, client=None):
    """Yield ``function(*shared, *call)`` for every call, in order, each call a task on the cluster when
    ``client`` is given (all submitted at once).

    ``shared`` travels once (models as bytes, arrays scattered); ``function`` must be module level.
    """
    if client is None:
        for call in calls:
            yield function(*shared, *call)
        return
    packed = tuple(_pack(client, v) for v in shared)
    digest = _digest(packed)
    futures = [client.submit(_call_task, function, packed, digest, tuple(call), pure=False, retries=RETRIES)
               for call in calls]
    for future in futures:
        yield future.result()
