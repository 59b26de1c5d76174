"""The run plan: a model's nodes bound to their kernels once, over numbered tensor slots."""

from __future__ import annotations

import numpy as np

from intsim.errors import AccumulatorOverflowError
from intsim.graph import Graph
from intsim.kernels.threads import thread_count
from intsim.runtime.bound import BoundRun
from intsim.runtime.shapeguard import check_node_inputs


class RunPlan:
    """What :meth:`Model.run_int` runs: the nodes' bound steps (:meth:`intsim.graph.ops.Op.bind`) over
    numbered tensor slots, worked out once per model.

    A slot is emptied after the last node that reads it, so at most the
    tensors still to be read are alive at any time.
    """

    def __init__(self, graph: Graph, bound: list):
        slot = {name: i for i, name in enumerate(graph.tensors)}
        self.n_slots = len(slot)
        self.input_slots = [slot[t] for t in graph.inputs]
        self.output_slots = [slot[t] for t in graph.outputs]
        last_read = {}
        for index, (_, node) in enumerate(bound):
            for t in node.inputs:
                last_read[slot[t]] = index
        kept = set(self.output_slots)
        self.steps = [
            (step, node, [slot[t] for t in node.inputs], [slot[t] for t in node.outputs],
             [s for s in dict.fromkeys(slot[t] for t in node.inputs) if last_read[s] == index and s not in kept])
            for index, (step, node) in enumerate(bound)
        ]
        self.graph = graph
        self.profile = graph.profile
        self.check_overflow = graph.profile.overflow == "error"
        # input signature -> (output layouts per step, input layouts), from the first run with it, whose
        # check_node_inputs passed; the signatures where some step has calls; (signature, thread count)
        # -> the spare BoundRuns for them
        self.layouts = {}
        self.bindable = set()
        self.bound = {}
        self.overflows = []  # (node, overflow count) of the last run, for Model's OverflowWarning

    def run(self, arrays, finish=None) -> list:
        """``finish(outputs)`` (default: the outputs themselves) from the graph's input ``arrays``.

        The first call with a set of input shapes checks every node's inputs and records the tensors'
        layouts; later calls run a :class:`~intsim.runtime.bound.BoundRun` for those shapes and the
        thread count set (:func:`~intsim.kernels.threads.set_threads`) (its outputs are reused by the
        next run: ``finish`` reads them, the default copies them).
        """
        return self._run(tuple((a.shape, a.dtype) for a in arrays), arrays, None, finish)

    def run_written(self, signature, write, finish=None) -> list:
        """:meth:`run` of the inputs that ``write(targets)`` writes into ``targets``, C-contiguous arrays of
        the ``[(shape, dtype)]`` of ``signature``: a bound run's own input arrays, so that the inputs are
        written where the run reads them (``Model.run`` quantizes into them), no copy."""
        return self._run(signature, None, write, finish)

    def _run(self, signature, arrays, write, finish):
        threads = thread_count()
        pool = self.bound.get((signature, threads))
        if pool is None and signature in self.bindable:
            pool = self.bound.setdefault((signature, threads), [])
        if pool is None:
            if write is not None:
                arrays = [np.empty(shape, dtype) for shape, dtype in signature]
                write(arrays)
            outputs = self._run_steps(arrays, signature)
            return finish(outputs) if finish else outputs
        try:
            bound = pool.pop()
        except IndexError:  # none spare (another thread may have taken the last one since the lookup)
            bound = BoundRun(self, *self.layouts[signature], threads)
        try:
            result = bound.run(arrays, finish or _copies, write)
            self.overflows = list(bound.overflows)
            return result
        finally:
            pool.append(bound)

    def note_overflow(self, node, stats, overflows):
        """Raise under ``overflow = 'error'``, else add ``(node, overflow count)`` to ``overflows``."""
        if self.check_overflow:
            raise_overflow(node, stats, self.profile)
        overflows.append((node, stats["overflow_count"]))

    def _run_steps(self, arrays, signature):
        values = [None] * self.n_slots
        for s, a in zip(self.input_slots, arrays):
            values[s] = a
        # Every shape downstream follows from the input shapes: the nodes' inputs are checked against the
        # graph (shapeguard) at the first call with each, so no kernel reads outside its arrays.
        first = signature not in self.layouts
        layouts = []
        overflows = []
        for step, node, reads, writes, done in self.steps:
            node_inputs = [values[s] for s in reads]
            if first:
                check_node_inputs(node, self.graph, node_inputs)
            outputs, stats = step(node_inputs)
            if stats.get("overflow_count", 0):  # nonzero only where no static bound rules overflow out
                self.note_overflow(node, stats, overflows)
            if first:
                layouts.append(_layouts(outputs, node_inputs, reads))
            for s, value in zip(writes, outputs):
                values[s] = value
            for s in done:
                values[s] = None
        if first:
            self.layouts[signature] = (layouts, list(signature))
            if any(hasattr(step, "calls") for step, *_ in self.steps):
                self.bindable.add(signature)
        self.overflows = overflows
        return [values[s] for s in self.output_slots]


def _layouts(outputs, inputs, reads):
    """``[(shape, dtype, aliased read slot or None)]`` of a step's outputs: the slot of the input each
    output is a view of, where every output is one."""
    aliases = [next((s for s, x in zip(reads, inputs) if np.may_share_memory(out, x)), None) for out in outputs]
    if None in aliases:
        aliases = [None] * len(outputs)
    return [(out.shape, out.dtype, alias) for out, alias in zip(outputs, aliases)]


def _copies(outputs):
    return [out.copy() for out in outputs]


def raise_overflow(node, stats, profile):
    raise AccumulatorOverflowError(
        f"{node.op} {node.name!r}: {stats['overflow_count']} accumulator(s) left the "
        f"{profile.accumulator_bits}-bit range (profile {profile.name!r}, "
        f"overflow = 'error'); largest final |acc| {stats['max_abs_accumulator']}"
    )
