"""Float graph passes: each keeps what the graph computes (white paper §2.3) and leaves its argument alone."""

from __future__ import annotations

import copy
import io
from contextlib import redirect_stdout

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from intsim.floatgraph.execute import run_float
from intsim.floatgraph import FloatGraph, FloatNode
from intsim.importers.onnx import import_onnx
from intsim.floatgraph.speech_patterns import sink_squeezes
from intsim.floatgraph.vision_patterns import (
    fold_affine_into_layers,
    fuse_hardswish,
    remove_identities,
)
from intsim.floatgraph.passes import (
    PASSES,
    default_passes,
    fold_batch_norm,
    fold_constants,
    remove_dead_nodes,
)

RNG = np.random.default_rng(0)


def _w(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _bn_inits(prefix, channels):
    return {
        f"{prefix}_scale": _w(channels),
        f"{prefix}_shift": _w(channels),
        f"{prefix}_mean": _w(channels),
        f"{prefix}_var": np.abs(_w(channels)) + 0.1,
    }


def _bn(prefix, x, y):
    return helper.make_node(
        "BatchNormalization", [x, f"{prefix}_scale", f"{prefix}_shift", f"{prefix}_mean", f"{prefix}_var"], [y],
        epsilon=1e-3, name=prefix,
    )


def _import(nodes, inits, inputs, outputs=("y",)):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, s) for k, s in inputs.items()],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return import_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)]))


def _assert_same_function(before: FloatGraph, after: FloatGraph, batch=2):
    assert after.inputs == before.inputs and after.outputs == before.outputs
    feeds = [RNG.standard_normal([batch if d is None else d for d in before.shapes[t]]).astype(np.float32)
             for t in before.inputs]
    expected = run_float(before, feeds, outputs=before.outputs)
    got = run_float(after, feeds, outputs=after.outputs)
    for name in before.outputs:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-4, atol=1e-5)


def _ops(graph):
    return [n.op for n in graph.nodes]


X = {"x": ["N", 3, 6, 6]}


def test_fold_batch_norm_into_conv_and_gemm():
    inits = {"w": _w(4, 3, 3, 3), "fc": _w(5, 4), "fc_b": _w(5), **_bn_inits("bn1", 4), **_bn_inits("bn2", 5)}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        _bn("bn1", "c", "b"),
        helper.make_node("Relu", ["b"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fc_b"], ["g"], transB=1),
        _bn("bn2", "g", "y"),
    ]
    graph = _import(nodes, inits, X)
    before = copy.deepcopy(graph)
    folded = fold_batch_norm(graph)
    assert _ops(folded) == ["Conv", "Relu", "ReduceMean", "Flatten", "Gemm"]
    assert folded.nodes[-1].outputs == ["y"] and folded.shapes["y"] == (None, 5)
    assert len(folded.nodes[0].inputs) == 3  # the bias-free conv gained a bias
    assert set(folded.constants) == {t for n in folded.nodes for t in n.inputs} - {"x", "b", "r", "p", "f"}
    assert not any(t.startswith(("bn1_", "bn2_")) for t in folded.constants)
    assert set(folded.shapes) == set(folded.constants) | {"x", "r", "p", "f", "b", "y"}
    _assert_same_function(graph, folded)
    assert _ops(graph) == _ops(before) and graph.constants.keys() == before.constants.keys()


def test_fold_batch_norm_with_shared_weights_keeps_the_original():
    inits = {"w": _w(4, 3, 1, 1), "bias": _w(4), **_bn_inits("bn1", 4)}
    nodes = [
        helper.make_node("Conv", ["x", "w", "bias"], ["c1"]),
        _bn("bn1", "c1", "b1"),
        helper.make_node("Conv", ["x", "w", "bias"], ["c2"]),
        helper.make_node("Add", ["b1", "c2"], ["y"]),
    ]
    graph = _import(nodes, inits, X)
    folded = fold_batch_norm(graph)
    assert _ops(folded) == ["Conv", "Conv", "Add"]
    assert folded.nodes[1].inputs == ["x", "w", "bias"]
    assert folded.constants["w"] is graph.constants["w"]
    _assert_same_function(graph, folded)


@pytest.mark.parametrize(
    "nodes, outputs",
    [
        # The conv output has a second consumer.
        ([helper.make_node("Conv", ["x", "w"], ["c"]), _bn("bn1", "c", "b"), helper.make_node("Add", ["b", "c"], ["y"])],
         ("y",)),
        # The producer is not a Conv or Gemm.
        ([helper.make_node("Relu", ["x"], ["r"]), _bn("bn3", "r", "y")], ("y",)),
        # The conv output is a graph output.
        ([helper.make_node("Conv", ["x", "w"], ["c"]), _bn("bn1", "c", "y")], ("y", "c")),
        # The input is a graph input.
        ([_bn("bn3", "x", "y")], ("y",)),
    ],
    ids=["second_consumer", "after_relu", "conv_output_is_graph_output", "on_graph_input"],
)
def test_batch_norm_that_cannot_fold_stays(nodes, outputs):
    inits = {"w": _w(4, 3, 1, 1), **_bn_inits("bn1", 4), **_bn_inits("bn3", 3)}
    used = {t for n in nodes for t in n.input}
    graph = _import(nodes, {k: v for k, v in inits.items() if k in used}, X, outputs)
    folded = fold_batch_norm(graph)
    assert _ops(folded) == _ops(graph)
    assert folded.constants.keys() == graph.constants.keys()
    _assert_same_function(graph, folded)


def _hand_graph():
    w = _w(4, 6)
    nodes = [
        FloatNode("Transpose", "t", ["w"], ["wt"], {"perm": [1, 0]}),
        FloatNode("Relu", "r", ["wt"], ["wr"]),
        FloatNode("MatMul", "mm", ["x", "wr"], ["m"]),
        FloatNode("Sigmoid", "dead1", ["m"], ["d1"]),
        FloatNode("Add", "dead2", ["d1", "unused"], ["d2"]),
        FloatNode("Tanh", "out", ["m"], ["y"]),
        FloatNode("Relu", "const_out", ["k"], ["z"]),
    ]
    shapes = {"x": (None, 6), "w": (4, 6), "wt": (6, 4), "wr": (6, 4), "m": (None, 4), "d1": (None, 4),
              "unused": (4,), "d2": (None, 4), "y": (None, 4), "k": (3,), "z": (3,)}
    constants = {"w": w, "unused": _w(4), "k": _w(3)}
    return FloatGraph("hand", nodes, ["x"], ["y", "z"], constants, shapes)


def test_fold_constants():
    graph = _hand_graph()
    folded = fold_constants(graph)
    assert [n.name for n in folded.nodes] == ["mm", "dead1", "dead2", "out", "const_out"]
    assert set(folded.constants) == {"wr", "unused", "k"}
    np.testing.assert_array_equal(folded.constants["wr"], np.maximum(graph.constants["w"].T, 0), strict=True)
    assert "wt" not in folded.shapes and folded.shapes["wr"] == (6, 4)
    _assert_same_function(graph, folded)
    assert len(graph.nodes) == 7


def test_remove_dead_nodes():
    graph = _hand_graph()
    pruned = remove_dead_nodes(graph)
    assert [n.name for n in pruned.nodes] == ["t", "r", "mm", "out", "const_out"]
    assert set(pruned.constants) == {"w", "k"}
    assert set(pruned.shapes) == {"x", "w", "wt", "wr", "m", "y", "k", "z"}
    _assert_same_function(graph, pruned)
    assert len(graph.nodes) == 7


# torch warns that the TorchScript exporter is legacy, and about its own internals.
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
def test_default_passes_on_a_torch_export(tmp_path):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8, bias=False),
        nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 4 * 4, 4), nn.BatchNorm1d(4),
    )
    for bn in (module[1], module[4], module[7]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    module.eval()
    path = tmp_path / "bn.onnx"
    with redirect_stdout(io.StringIO()):
        torch.onnx.export(module, torch.randn(1, 3, 6, 6), path, dynamo=False, opset_version=17,
                          do_constant_folding=False, input_names=["x"])
    graph = import_onnx(path)
    assert _ops(graph).count("BatchNormalization") == 3
    optimized = default_passes(graph)
    assert _ops(optimized) == ["Conv", "Relu", "Conv", "Flatten", "Gemm"]
    _assert_same_function(graph, optimized, batch=3)
    x = torch.randn(3, 3, 6, 6)
    with torch.no_grad():
        expected = module(x).numpy()
    got = run_float(optimized, [x.numpy()])[optimized.outputs[0]]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_pipeline_order():
    assert PASSES == (fold_batch_norm, fold_constants, remove_identities, fold_affine_into_layers, fuse_hardswish,
                      sink_squeezes, remove_dead_nodes)
    optimized = default_passes(_hand_graph())
    assert [n.name for n in optimized.nodes] == ["mm", "out", "const_out"]
