"""The onnxruntime forms of the float-graph ops of sequence and vision models (issue 15): each canonical op
runs in a :class:`~intsim.floatgraph.ort_session.FloatSession` through onnxruntime (no fallback to the numpy
executor) and agrees with the numpy reference executor to float32 tolerance; integer inputs (token ids,
masks) feed the session as int64."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import intsim.floatgraph.vision_ops  # noqa: F401  (registers the vision ops with the numpy executor)
from intsim.floatgraph import FloatGraph, FloatNode
from intsim.floatgraph.ort_session import FloatSession

pytest.importorskip("onnxruntime")
RNG = np.random.default_rng(4)
B, S, D = 3, 5, 8


def _graph(op, attrs, shape=(None, S, D), constants=None, extra_inputs=(), out_shape=None):
    constants = dict(constants or {})
    inputs = ["x", *[name for name, _ in extra_inputs]]
    node = FloatNode(op, op, ["x", *[name for name, _ in extra_inputs], *constants], ["y"], attrs)
    shapes = {"x": shape, "y": out_shape, **{name: s for name, s in extra_inputs}}
    return FloatGraph(op, [node], inputs, ["y"], constants, shapes)


CASES = {
    "Gelu": (_graph("Gelu", {"approximate": "none"}), 3),
    "Gelu tanh": (_graph("Gelu", {"approximate": "tanh"}), 3),
    "LayerNormalization": (_graph("LayerNormalization", {"epsilon": 1e-5}, constants={
        "scale": RNG.uniform(0.5, 2, D).astype(np.float32), "bias": RNG.normal(size=D).astype(np.float32)}), 3),
    "Reciprocal": (_graph("Reciprocal", {}), 3),
    "Exp": (_graph("Exp", {}), 2),
    "Erf": (_graph("Erf", {}), 2),
    "Sqrt": (_graph("Sqrt", {}), 2),  # negative inputs give 0 in both
    "Tile": (_graph("Tile", {"repeats": [1, 2, 3]}), 1),
    "ReduceSum": (_graph("ReduceSum", {"axes": [1], "keepdims": 0}), 1),
    "ReduceMax": (_graph("ReduceMax", {"axes": [2], "keepdims": 1}), 1),
    "Slice": (_graph("Slice", {"axes": [1, 2], "starts": [4, 1], "ends": [-1, 7], "steps": [-2, 3]}), 1),
    "ConvTranspose": (_graph("ConvTranspose", {"strides": [2, 1], "dilations": [1, 2], "pads": [1, 0, 0, 1], "group": 1,
                                               "output_padding": [1, 0]}, shape=(None, 2, S, D), constants={
        "w": RNG.normal(size=(2, 3, 3, 2)).astype(np.float32), "b": RNG.normal(size=3).astype(np.float32)}), 1),
    # Pad's mode travels (its form once wrote every Pad as constant: silero's reflect pad calibrated wrong).
    "Pad constant": (_graph("Pad", {"pads": [0, 1, 2, 0, 0, 3], "mode": "constant", "value": 0.5}), 1),
    "Pad reflect": (_graph("Pad", {"pads": [0, 2, 0, 0, 3, 4], "mode": "reflect", "value": 0.0}), 1),
    "Pad edge": (_graph("Pad", {"pads": [0, 0, 5, 0, 1, 2], "mode": "edge", "value": 0.0}), 1),
    "GatherElements": (_graph("GatherElements", {"axis": 2},
                              constants={"idx": RNG.integers(-D, D, size=(1, S, 4)).astype(np.int64)}), 1),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_float_op_runs_through_onnxruntime_like_the_numpy_executor(name):
    graph, spread = CASES[name]
    x = (spread * RNG.normal(size=(B, *graph.shapes["x"][1:]))).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback to numpy would warn
        session = FloatSession(graph, executor="onnxruntime")
    assert session.executor == "onnxruntime"
    got = session.run([x])["y"]
    expected = FloatSession(graph, executor="numpy").run([x])["y"]
    assert got.dtype == expected.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=2e-6, atol=2e-6 * float(np.abs(expected).max()))


def test_masked_softmax_and_an_embedding_take_integer_inputs_through_onnxruntime():
    """Token ids gather rows of a table; an int attention mask [B, S] keeps positions of the scores
    [B, H, S, S] (mask axes 1 and 2 inserted); a row whose mask keeps nothing is all 0."""
    table = RNG.normal(size=(20, S)).astype(np.float32)
    nodes = [FloatNode("Gather", "embed", ["table", "ids"], ["e"], {"axis": 0}),
             FloatNode("Unsqueeze", "heads", ["e"], ["scores"], {"axes": [1]}),
             FloatNode("MaskedSoftmax", "softmax", ["scores", "mask"], ["y"], {"mask_axes": [1, 2]})]
    graph = FloatGraph("bert", nodes, ["ids", "mask"], ["y"], {"table": table},
                       {"ids": (None, S), "mask": (None, S), "e": (None, S, S), "scores": (None, 1, S, S),
                        "y": (None, 1, S, S)}, integer_inputs=["ids", "mask"])
    feeds = {"ids": RNG.integers(0, 20, size=(B, S)), "mask": (RNG.random((B, S)) < 0.7).astype(np.int64)}
    feeds["mask"][0] = 0
    session = FloatSession(graph, executor="onnxruntime")
    assert session.executor == "onnxruntime"
    got = session.run(feeds)["y"]
    expected = FloatSession(graph, executor="numpy").run(feeds)["y"]
    np.testing.assert_allclose(got, expected, rtol=2e-6, atol=1e-7)
    assert np.all(got[0] == 0) and np.all(got[feeds["mask"][:, None, None, :].repeat(S, 2) == 0] == 0)
