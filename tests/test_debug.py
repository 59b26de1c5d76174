"""The PTQ debugging workflow (white paper §3.7): ``intsim.debug`` and ``intsim debug``.

The culprit model is ``models/mobilenet_digits_unbalanced.onnx`` (``tools/models/unbalance_depthwise.py``):
the shipped MobileNetV2 with most BN-folded depthwise channels shrunk 50-100x and the projection that
reads them grown to match, so float predictions are unchanged and per-tensor W8A8 breaks.  Which nodes are
depthwise is read here from the ONNX file (``group`` = output channels), not from intsim.

The unmarked cases keep to int8 storage (the kernels every other test compiles) and small data; the end
to end runs at the default W12A16 "unquantized" widths are marked slow
(``python -m pytest -m "slow or not slow" tests/test_debug.py`` runs everything).
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest

import intsim
from intsim.cli import main
from intsim.config import FASHION_MNIST_ROOT
from intsim.converter.lowering import plan_quantization
from intsim.datasets import load_dataset
from intsim.debugging.metric import Metric, run_simulated
from intsim.debugging.sensitivity import one_tensor_config, quantized_tensors, rank
from intsim.errors import ValidationError
from intsim.models import model_path

UNBALANCED = model_path("mobilenet_digits_unbalanced.onnx")
BALANCED = model_path("mobilenet_digits.onnx")
ENTRY_KEYS = {"node", "op", "kind", "tensor", "drop", "sqnr_db", "drop_simulated", "sqnr_db_simulated"}


def depthwise_nodes(path) -> set[str]:
    model = onnx.load(path)
    weights = {t.name: t.dims for t in model.graph.initializer}
    return {n.name for n in model.graph.node if n.op_type == "Conv"
            and any(a.name == "group" and a.i > 1 and a.i == weights[n.input[1]][0] for a in n.attribute)}


def op_types(path) -> dict[str, str]:
    return {n.name: n.op_type for n in onnx.load(path).graph.node}


@pytest.fixture(scope="module")
def digits():
    x_train, _ = load_dataset("digits", "train")
    x_test, y_test = load_dataset("digits", "test")
    return x_train[:64], x_test[:150], y_test[:150]


def test_unbalanced_model_keeps_the_float_predictions(digits):
    """The construction changes no float prediction (and leaves the depthwise ranges far apart)."""
    _, x, _ = digits
    fg_a = intsim.converter.lowering.prepare_float_graph(BALANCED)
    fg_b = intsim.converter.lowering.prepare_float_graph(UNBALANCED)
    a, b = run_simulated(fg_a, x, 150), run_simulated(fg_b, x, 150)
    np.testing.assert_array_equal(a.argmax(axis=1), b.argmax(axis=1), strict=True)
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-4 * np.abs(a).max())


def test_ranking_puts_depthwise_weights_in_the_top_three(digits):
    """Step 3 in the simulation on the unbalanced model at per-tensor W8A8: a depthwise layer's weights are
    among the three worst tensors, worst first (the integer datapath's ranking: the slow case below)."""
    calibration, x, y = digits
    plan = plan_quantization(UNBALANCED, calibration, "paper", per_channel=False, progress=False)
    metric = Metric.choose(run_simulated(plan.graph, x, 150), y)
    ranking = rank(plan, x, metric, 150, progress=False)
    assert all(set(e) == ENTRY_KEYS for e in ranking)
    assert {e["kind"] for e in ranking} == {"weights", "activations"}
    drops = [e["drop"] for e in ranking]
    assert drops == sorted(drops, reverse=True)
    depthwise = depthwise_nodes(UNBALANCED)
    assert len(depthwise) == 5
    top = [(e["node"], e["kind"]) for e in ranking[:3]]
    assert any(node in depthwise and kind == "weights" for node, kind in top), top
    assert ranking[0]["drop"] > 0.05
    assert all(e["drop"] == e["drop_simulated"] for e in ranking)


def test_one_tensor_config_quantizes_only_that_tensor(digits):
    """The integer datapath's "only this tensor": the node's weights (or its activations) at the target
    bits, every other node at the high bits; read back from the converted graph's codes and formats."""
    calibration, _, _ = digits
    plan = plan_quantization(BALANCED, calibration, "paper", weight_bits=4, activation_bits=4, progress=False)
    tensors = {(t.node, t.kind): t for t in quantized_tensors(plan)}
    layer = "/features/features.4/body/body.3/Conv"
    weights = intsim.convert(BALANCED, calibration, "paper", progress=False,
                             layer_config=one_tensor_config(plan, tensors[(layer, "weights")], (8, 8)))
    peaks = {n.name: int(np.abs(n.params["weight"].astype(np.int64)).max()) for n in weights.graph.nodes
             if "weight" in n.params}
    assert peaks.pop(layer) == 7  # 4-bit narrow range
    assert min(peaks.values()) == 127
    assert all(t.bits in (None, 8) for t in weights.graph.tensors.values())
    activations = intsim.convert(BALANCED, calibration, "paper", progress=False,
                                 layer_config=one_tensor_config(plan, tensors[(layer, "activations")], (8, 8)))
    node = next(n for n in activations.graph.nodes if n.name == layer)
    assert activations.graph.tensors[node.outputs[0]].bits == 4
    assert max(int(np.abs(n.params["weight"].astype(np.int64)).max()) for n in activations.graph.nodes
               if "weight" in n.params) == 127
    four_bit = [t for t in activations.graph.tensors.values() if t.bits == 4]
    assert 1 <= len(four_bit) <= 2  # the node's output, and its input requantized to the node's format


def test_a_model_that_holds_up_reports_so_in_one_line(digits):
    calibration, x, y = digits
    report = intsim.debug(BALANCED, calibration, x, y, "paper", progress=False)
    assert report.holds_up
    assert report.table() == report.summary()
    assert "\n" not in report.table() and "holds up" in report.table()
    assert report.steps == {} and report.ranking == [] and report.fixes == []


def test_report_structure_json_and_html(digits, tmp_path):
    """The whole workflow on a small case (per-tensor W4A4 with 8 bits as "unquantized", int8 storage
    throughout): every step measured, the ranking, the inspected ranges, the fixes; JSON and HTML written."""
    pytest.importorskip("matplotlib")
    calibration, x, y = digits
    report = intsim.debug(BALANCED, calibration, x, y, "paper", weight_bits=4, activation_bits=4,
                          per_channel=False, high_bits=(8, 8), inspect=2, datapath="simulated", progress=False)
    assert not report.holds_up and report.metric == "accuracy"
    assert report.float_value == report.reference == np.mean(run_simulated(
        intsim.converter.lowering.prepare_float_graph(BALANCED), x, 150).argmax(axis=1) == y)
    assert set(report.steps) == {"high_bits", "weights_only", "activations_only"}
    assert report.steps["high_bits"].settings == {"weight_bits": 8, "activation_bits": 8}
    for m in [report.target, *report.steps.values()]:
        assert m.drop_integer == pytest.approx(report.reference - m.integer)
    ops = op_types(BALANCED)
    assert all(e["op"] == ops.get(e["node"], "Input") for e in report.ranking)
    assert "GlobalAveragePool" in {e["op"] for e in report.ranking}
    ranked = {(e["node"], e["kind"]) for e in report.ranking}
    assert len(ranked) == len(report.ranking) > 20
    assert [s["node"] for s in report.inspected] == [e["node"] for e in report.ranking[:2]]
    for s in report.inspected:
        assert len(s["channel_min"]) == len(s["channel_max"]) == s["channels"]
    names = [f["fix"] for f in report.fixes]
    assert "per-channel weights" in names and "cross-layer equalization" in names
    higher = next(f for f in report.fixes if f["fix"] == "higher precision for the worst layers")
    assert higher["changes"] == {"layer_config": {e["node"]: {"weight_bits": 8} if e["kind"] == "weights" else
                                                  {"activation_bits": 8} for e in report.ranking[:2]}}
    per_channel = next(f for f in report.fixes if f["fix"] == "per-channel weights")
    assert per_channel["changes"] == {"per_channel": True}
    assert report.best_fix is not None and report.best_fix["after"].integer > report.target.integer
    helped = [f for f in report.fixes if f["after"].integer > report.target.integer and "combined" not in f["fix"]]
    combined = report.fixes[-1]
    assert len(helped) > 1 and combined["fix"] == "combined (" + " + ".join(f["fix"] for f in helped) + ")"
    for f in helped:  # every helping fix's settings are in the combination
        for key, value in f["changes"].items():
            if key == "layer_config":
                assert all(combined["changes"][key][n].items() >= v.items() for n, v in value.items())
            else:
                assert combined["changes"][key] == value
    assert combined["after"].settings == combined["changes"]

    report.to_json(tmp_path / "r.json")
    document = json.loads((tmp_path / "r.json").read_text())
    assert document["ranking"][0].keys() >= {"node", "op", "kind", "drop"}
    assert document["summary"] == report.summary()
    assert document["fixes"][0]["after"]["integer"] == report.fixes[0]["after"].integer
    report.to_html(tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert page.count("<img") == 2 and "Step 4" in page and report.ranking[0]["node"] in page


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"calibration": None}, "needs calibration data"),
    ({"data": np.zeros((0, 1, 8, 8), np.float32)}, "non-empty float data"),
    ({"data": np.zeros((4, 1, 8, 8), np.int64)}, "non-empty float data"),
    ({"labels": np.zeros(3, np.int64)}, "labels must be integers of shape (4,)"),
    ({"labels": np.zeros(4, np.float32)}, "labels must be integers"),
    ({"tolerance": -1}, "tolerance must be a number >= 0"),
    ({"inspect": 1.5}, "inspect must be an integer"),
    ({"high_bits": (8,)}, "high_bits must be (weight bits, activation bits)"),
    ({"high_bits": 16}, "high_bits must be (weight bits, activation bits)"),
    ({"weight_bitz": 8}, "unknown conversion setting(s) weight_bitz"),
    ({"datapath": "float"}, "datapath must be one of integer, simulated"),
])
def test_bad_input_is_a_validation_error(kwargs, message):
    args = {"model": BALANCED, "calibration": np.zeros((4, 1, 8, 8), np.float32),
            "data": np.zeros((4, 1, 8, 8), np.float32), "labels": None, **kwargs}
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        intsim.debug(**args, progress=False)


def tiny_conv_model(path):
    """One 3x3 conv, 1 -> 2 channels: its output is not a classifier's, so the metric is output SQNR."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).normal(size=(2, 1, 3, 3)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2, 4, 4])],
                              [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_sqnr_metric_for_a_model_that_is_not_a_classifier(tmp_path):
    path = tiny_conv_model(tmp_path / "tiny.onnx")
    x = np.random.default_rng(1).uniform(0, 1, (32, 1, 4, 4)).astype(np.float32)
    report = intsim.debug(path, x, x, progress=False)
    assert report.metric == "sqnr_db" and report.holds_up
    assert report.target.integer >= 30 and report.summary().endswith("at least 30 dB")
    low = intsim.debug(path, x, x, weight_bits=2, activation_bits=2, high_bits=(8, 8), progress=False)
    assert not low.holds_up and low.target.integer < 30
    assert low.reference == low.steps["high_bits"].integer  # SQNR drops count from step 1, float's is infinite
    assert low.target.drop_integer == pytest.approx(low.reference - low.target.integer)
    assert {(e["node"], e["op"], e["kind"]) for e in low.ranking} == {
        ("x", "Input", "activations"), ("conv", "Conv", "weights"), ("conv", "Conv", "activations")}
    assert all(np.isfinite(e["drop"]) and np.isfinite(e["sqnr_db"]) for e in low.ranking)
    with pytest.raises(ValidationError,
                       match=r"labels need a classifier's output \[samples, classes\]; .* \(32, 2, 4, 4\)"):
        intsim.debug(path, x, x, np.zeros(32, np.int64), progress=False)


@pytest.fixture
def digit_files(digits, tmp_path):
    calibration, x, y = digits
    for name, array in (("cal", calibration), ("x", x), ("y", y)):
        np.save(tmp_path / f"{name}.npy", array)
    return tmp_path


def test_cli_writes_json_and_html(digit_files, capsys):
    d = digit_files
    code = main(["debug", str(BALANCED), "--calibration", str(d / "cal.npy"), "--data", str(d / "x.npy"),
                 "--labels", str(d / "y.npy"), "--json", str(d / "r.json"), "--html", str(d / "r.html")])
    assert code == 0
    out = capsys.readouterr().out
    assert "holds up" in out and f"wrote {d / 'r.json'}" in out
    assert json.loads((d / "r.json").read_text())["holds_up"] is True
    assert (d / "r.html").read_text().startswith("<!doctype html>")


def test_cli_errors(digit_files, capsys):
    d = digit_files
    base = ["debug", str(BALANCED), "--calibration", str(d / "cal.npy"), "--data", str(d / "x.npy")]
    assert main(base + ["--json", str(d / "missing" / "r.json")]) == 2
    assert "folder" in capsys.readouterr().err
    assert main(["debug", str(BALANCED), "--calibration", str(d / "nope.npy"), "--data", str(d / "x.npy")]) == 1
    assert "calibration file" in capsys.readouterr().err
    np.save(d / "bad_labels.npy", np.zeros(3, np.int64))
    assert main(base + ["--labels", str(d / "bad_labels.npy")]) == 1
    assert "labels must be integers of shape (150,)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["debug", str(BALANCED), "--calibration", str(d / "cal.npy")])
    assert exit_info.value.code == 2


def _check_broken_model_report(report, path):
    depthwise = depthwise_nodes(path)
    top = [(e["node"], e["kind"]) for e in report.ranking[:3]]
    assert any(node in depthwise and kind == "weights" for node, kind in top), top
    assert report.target.drop_integer > 0.3
    assert report.steps["weights_only"].drop_integer > report.steps["activations_only"].drop_integer
    assert report.steps["high_bits"].drop_integer < 0.02
    inspected = report.inspected[[s["node"] for s in report.inspected].index(
        next(node for node, kind in top if node in depthwise and kind == "weights"))]
    assert inspected["channel_range_ratio"] > 100 and inspected["channels_under_16_codes"] > inspected["channels"] / 2
    after = {f["fix"]: f["after"] for f in report.fixes}
    assert after["cross-layer equalization"].drop_integer < 0.01
    assert after["per-channel weights"].integer > report.target.integer + 0.3
    assert "cross-layer equalization" in report.best_fix["fix"]  # alone, or in the combination of what helped


@pytest.mark.slow
def test_debug_names_the_depthwise_culprits_and_cle_recovers(tmp_path):
    """The walkthrough of docs/debug.md: per-tensor W8A8 on the unbalanced digits model, end to end."""
    x_train, _ = load_dataset("digits", "train")
    x_test, y_test = load_dataset("digits", "test")
    report = intsim.debug(UNBALANCED, x_train[:256], x_test, y_test, "paper", per_channel=False, progress=False)
    _check_broken_model_report(report, UNBALANCED)


@pytest.mark.slow
def test_held_out_fashion_model():
    """The same construction on the Fashion-MNIST MobileNetV2, which the workflow was not tuned on."""
    if not os.path.isdir(FASHION_MNIST_ROOT):
        pytest.skip(f"{FASHION_MNIST_ROOT} absent (apt install dataset-fashion-mnist)")
    path = model_path("mobilenet_fashion_unbalanced.onnx")
    x_train, _ = load_dataset("fashion", "train")
    x_test, y_test = load_dataset("fashion", "test")
    report = intsim.debug(path, x_train[:512], x_test[:1000], y_test[:1000], "paper", per_channel=False,
                          progress=False)
    _check_broken_model_report(report, path)
