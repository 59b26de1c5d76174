"""The run plan: a model's nodes bound to their kernels once, over numbered tensor slots."""

from __future__ import annotations

import numpy as np

from intsim.errors import AccumulatorOverflowError
from intsim.graph import Graph
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
        self.checked_shapes = set()  # input shapes whose every node input passed check_node_inputs
        self.overflows = []  # (node, overflow count) of the last run, for Model's OverflowWarning

    def run(self, arrays) -> list[np.ndarray]:
        values = [None] * self.n_slots
        for s, a in zip(self.input_slots, arrays):
            values[s] = a
        check_overflow = self.check_overflow
        # Every shape downstream follows from the input shapes: the nodes' inputs are checked against the
        # graph (shapeguard) at the first call with each, so no kernel reads outside its arrays.
        shapes = tuple(a.shape for a in arrays)
        unchecked = shapes not in self.checked_shapes
        overflows = []
        for step, node, reads, writes, done in self.steps:
            node_inputs = [values[s] for s in reads]
            if unchecked:
                check_node_inputs(node, self.graph, node_inputs)
            outputs, stats = step(node_inputs)
            if stats.get("overflow_count", 0):  # nonzero only where no static bound rules overflow out
                if check_overflow:
                    raise_overflow(node, stats, self.profile)
                overflows.append((node, stats["overflow_count"]))
            for s, value in zip(writes, outputs):
                values[s] = value
            for s in done:
                values[s] = None
        self.checked_shapes.add(shapes)
        self.overflows = overflows
        return [values[s] for s in self.output_slots]


def raise_overflow(node, stats, profile):
    raise AccumulatorOverflowError(
        f"{node.op} {node.name!r}: {stats['overflow_count']} accumulator(s) left the "
        f"{profile.accumulator_bits}-bit range (profile {profile.name!r}, "
        f"overflow = 'error'); largest final |acc| {stats['max_abs_accumulator']}"
    )
