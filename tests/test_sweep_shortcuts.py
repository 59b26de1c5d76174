"""The accumulator sweep's shortcuts (one run per width counts both policies; no run from a node's exact
width up; no end-to-end run where no node overflows) change no number: every count and agreement of the
report equals a direct run of that width and policy."""

from __future__ import annotations

import numpy as np
import pytest

import intsim
from intsim.graph import Graph
from intsim.graph.ops import MAC_OPS
from intsim.hwval import sweep
from intsim.hwval.variants import NodeSetup
from intsim.runtime import Model

POLICIES = ("saturate", "wrap")


@pytest.fixture(scope="module")
def resnet():
    from intsim.datasets import load_digits
    from intsim.models import model_path

    x_train, _ = load_digits("train")
    x_test, y_test = load_digits("test")
    model = intsim.convert(model_path("resnet_digits.onnx"), calibration=x_train[:64], profile="paper",
                           progress=False)
    return model, x_test[:12], y_test[:12]


def _profile(graph, bits, policy):
    return graph.profile.replace(accumulator_bits=bits, overflow=policy)


def test_sweep_equals_direct_runs(resnet):
    model, x, y = resnet
    graph = model.graph
    widths = [12, 14, 16, 18, 20, 22, 32]
    report = sweep(model, x, y, acc_bits=widths, batch_size=12, progress=False)
    full = Graph(graph.name, _profile(graph, 32, "wrap"), graph.tensors, graph.nodes, graph.inputs, graph.outputs)
    ref = Model(full).trace(x, float_input=True)
    top = ref.tensors[graph.outputs[0]].argmax(axis=1)
    macs = [n for n in graph.nodes if n.op in MAC_OPS]
    layers = {layer.node: layer for layer in report.layers}
    for node in macs:
        setup = NodeSetup.of(graph, node)
        inputs = {t: ref.tensors[t] for t in node.inputs}
        for policy in POLICIES:
            for bits in widths:
                run = setup.replace(profile=_profile(full, bits, policy)).run(inputs)
                assert layers[node.name].overflows[policy][bits] == run.stats[node.name]["overflow_count"]
    ends = {(w.bits, w.policy): w for w in report.widths}
    skipped_some = ran_some = False
    for bits in widths:
        for policy in POLICIES:
            trace = Model(Graph(graph.name, _profile(graph, bits, policy), graph.tensors, graph.nodes, graph.inputs,
                                graph.outputs)).trace(x, float_input=True)
            counts = [trace.stats[n.name]["overflow_count"] for n in macs]
            their = trace.tensors[graph.outputs[0]].argmax(axis=1)
            end = ends[bits, policy]
            assert (end.overflowing_layers, end.overflowing_outputs) == (sum(c > 0 for c in counts), sum(counts))
            assert end.agreement == np.mean(their == top) and end.accuracy == np.mean(their == y)
            skipped_some |= sum(counts) == 0
            ran_some |= sum(counts) > 0
    assert skipped_some and ran_some  # both paths of the sweep were compared
