"""Statistics of the calibration data that the PTQ algorithms need: a bounded-memory walk over the
float graph, per-channel maxima, and the pre-activation mean and standard deviation that stand in
for batch-norm statistics (``beta``, ``gamma``) in models whose exporter folded the batch norms."""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
from collections.abc import Mapping

import numpy as np

from intsim.floatgraph import FloatGraph
from intsim.floatgraph.ort_session import FloatSession

# Bytes of live tensors one model's walk over the calibration data (:class:`Stepper`) keeps in RAM;
# tensors beyond it are kept in unlinked temporary files mapped from disk.
WALK_MEMORY_BYTES = 512 << 20
from intsim.ptq.layers import mac_nodes


# --------------------------------------------------------------------------
# Statistics of the calibration data.
# --------------------------------------------------------------------------


def batches(data: np.ndarray, batch_size: int):
    for start in range(0, len(data), batch_size):
        yield np.asarray(data[start : start + batch_size])


def streamed(fg: FloatGraph, data: np.ndarray, batch_size: int, wanted):
    """Per calibration batch, the tensors ``wanted`` (graph inputs or node outputs) of the float graph: one
    :class:`~intsim.floatgraph.ort_session.FloatSession` for the whole pass."""
    session = FloatSession(fg, list(wanted))
    for batch in batches(data, batch_size):
        yield session.run([batch])


class Stepper:
    """Runs a float graph over the calibration batches node by node, on demand.

    Per batch it keeps only the tensors that nodes not yet run still read (and
    the graph outputs), so walking the graph once costs one forward pass
    however many layers stop along the way.  Memory: the live tensors of the
    whole calibration set at the current node, of which at most
    ``memory_budget`` bytes stay in RAM; the rest are written to temporary
    files and mapped back (``np.memmap``), so RAM stays bounded however large
    the calibration set.  A node runs with the constants the graph holds when
    the walk reaches it.
    """

    def __init__(self, fg: FloatGraph, data: np.ndarray, batch_size: int, memory_budget: int | None = None):
        self.fg, self.done = fg, 0
        self.last_read = {t: i for i, n in enumerate(fg.nodes) for t in n.inputs}
        self.budget = WALK_MEMORY_BYTES if memory_budget is None else memory_budget
        self.in_ram = 0
        self._dir: tempfile.TemporaryDirectory | None = None
        self._names = itertools.count()
        self.values = [{fg.inputs[0]: self._keep(np.asarray(b, np.float32))} for b in batches(data, batch_size)]

    def _keep(self, value: np.ndarray) -> np.ndarray:
        if isinstance(value, np.memmap):
            return value
        if self.in_ram + value.nbytes <= self.budget:
            self.in_ram += value.nbytes
            return value
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="intsim-walk-")
        path = os.path.join(self._dir.name, f"{next(self._names)}.npy")
        kept = np.lib.format.open_memmap(path, mode="w+", dtype=value.dtype, shape=value.shape)
        kept[...] = value
        with contextlib.suppress(OSError):  # the mapping outlives the name; where unlinking fails, the directory goes
            os.unlink(path)
        return kept

    def _drop(self, value: np.ndarray) -> None:
        if not isinstance(value, np.memmap):
            self.in_ram -= value.nbytes

    def run_to(self, stop: int) -> list[dict[str, np.ndarray]]:
        """Run nodes ``done .. stop - 1`` (one float session for them); returns the per-batch live tensors."""
        if stop <= self.done:
            return self.values
        nodes = self.fg.nodes[self.done : stop]
        live = set(self.values[0])
        fed = list(dict.fromkeys(t for n in nodes for t in n.inputs if t in live))
        # What the segment computes that a later node or the caller reads.
        kept = [t for n in nodes for t in n.outputs if self.last_read.get(t, -1) >= stop or t in self.fg.outputs]
        session = FloatSession(self.fg, kept, nodes=nodes, inputs=fed) if kept else None
        for values in self.values:
            if session is not None:
                values.update((t, self._keep(v)) for t, v in session.run({t: values[t] for t in fed}).items())
            for t in [t for t in values if self.last_read.get(t, -1) < stop and t not in self.fg.outputs]:
                self._drop(values.pop(t))
        self.done = stop
        return self.values


def channel_axes(value: np.ndarray) -> tuple[int, ...]:
    return tuple(a for a in range(value.ndim) if a != 1)


def channel_maxima(fg: FloatGraph, tensors, data: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    """Per-channel (axis 1) maximum of each tensor over the calibration data, streamed."""
    maxima: dict[str, np.ndarray] = {}
    for values in streamed(fg, data, batch_size, tensors):
        for t in tensors:
            found = values[t].max(axis=channel_axes(values[t])).astype(np.float64)
            maxima[t] = np.maximum(maxima[t], found) if t in maxima else found
    return maxima


def preactivation_statistics(fg: FloatGraph, batch_norms: Mapping[str, tuple], scales: Mapping[str, np.ndarray],
                             data: np.ndarray | None, batch_size: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-channel mean and standard deviation of every layer's output (its pre-activation).

    From the batch norm that produced it where the model had one (``beta``,
    ``|gamma|``, divided by the CLE scales ``scales``), else measured on
    ``data`` (streamed), else absent.
    """
    stats = {}
    for node in mac_nodes(fg):
        t = node.outputs[0]
        if t in batch_norms:
            gamma, beta = (np.asarray(v, np.float64) for v in batch_norms[t])
            s = scales.get(t, 1.0)
            stats[t] = (beta / s, np.abs(gamma) / s)
    measure = [n.outputs[0] for n in mac_nodes(fg) if n.outputs[0] not in stats]
    if data is None or not measure:
        return stats
    sums = {t: 0.0 for t in measure}
    squares = {t: 0.0 for t in measure}
    counts = {t: 0 for t in measure}
    for values in streamed(fg, data, batch_size, measure):
        for t in measure:
            v = values[t].astype(np.float64)
            axes = channel_axes(v)
            sums[t] = sums[t] + v.sum(axis=axes)
            squares[t] = squares[t] + (v * v).sum(axis=axes)
            counts[t] += v.size // v.shape[1]
    for t in measure:
        mean = sums[t] / counts[t]
        stats[t] = (mean, np.sqrt(np.maximum(squares[t] / counts[t] - mean * mean, 0.0)))
    return stats
