"""Automatic mixed precision (``intsim.search_mixed_precision``): a tiny seeded search checked by hand
(weight and MAC counts, mean weight bits, bit operations, the front, the chosen model), errors, the
CLI round trip, and (slow) the done-when run on the shipped ResNet-style model.

``python -m pytest -m "slow or not slow" tests/test_mixed_precision.py`` runs the slow case too.
"""

import numpy as np
import onnx
import pytest

import intsim
from intsim import ValidationError
from intsim.cli import main
from intsim.converter.layer_config import load_layer_config
from intsim.floatgraph.execute import run_float
from intsim.importers.onnx import import_onnx
from tests.test_layer_config import _net

CANDIDATES = ["w8a8", "w4a8", "w2a8"]


@pytest.fixture(scope="module")
def tiny():
    x = np.random.default_rng(1).normal(size=(96, 2, 4, 4)).astype(np.float32)
    result = intsim.search_mixed_precision(_net(), x[:32], x[32:], profile="paper", candidates=CANDIDATES,
                                           max_accuracy_drop=0.05, progress=False)
    return _net(), x, result


def test_layer_counts_and_costs_by_hand(tiny):
    _, _, result = tiny
    # conv1 4x2x3x3 = 72 weights on a 4x4 output: 1152 MACs; conv2 4x4x1x1 = 16 on 4x4: 256; fc 3x16 = 48.
    assert [(la.name, la.op, la.params, la.macs) for la in result.layers] == \
        [("conv1", "Conv", 72, 1152), ("conv2", "Conv", 16, 256), ("fc", "Gemm", 48, 48)]
    bits = {name: (c["weight_bits"], c["activation_bits"]) for name, c in result.layer_config.items()}
    assert result.mean_weight_bits == pytest.approx((72 * bits["conv1"][0] + 16 * bits["conv2"][0]
                                                     + 48 * bits["fc"][0]) / 136)
    assert result.bitops == sum(m * bits[n][0] * bits[n][1] for n, m in (("conv1", 1152), ("conv2", 256), ("fc", 48)))
    # The baseline is every layer at w8a8 (the dearest candidate), and each layer is tried at w4a8 and w2a8.
    assert result.explored[0].stage == "baseline" and result.explored[0].mean_weight_bits == 8.0
    assert sorted((s["node"], s["format"]) for s in result.sensitivities) == \
        sorted((n, f) for n in ("conv1", "conv2", "fc") for f in ("w4a8", "w2a8"))


def test_chosen_model_meets_the_target_on_the_integer_datapath(tiny):
    onnx_model, x, result = tiny
    fg = import_onnx(onnx_model)
    reference = run_float(fg, [x[32:]])[fg.outputs[0]].argmax(1)
    agreement = float(np.mean(result.model.run(x[32:]).argmax(1) == reference))
    assert result.metric_name == "agreement" and result.float_metric == 1.0
    assert agreement == result.metric and result.met and agreement >= 1.0 - 0.05
    assert result.mean_weight_bits < 8
    again = intsim.convert(onnx_model, x[:32], "paper", layer_config=result.layer_config, progress=False)
    codes = again.quantize_inputs([x])[0]
    np.testing.assert_array_equal(again.run_int(codes), result.model.run_int(codes), strict=True)
    formats = again.graph.metadata["layer_formats"]
    assert {n: formats[n] for n in result.layer_config} == \
        {n: f"w{c['weight_bits']}a{c['activation_bits']}" for n, c in result.layer_config.items()}


def test_pareto_front_is_the_non_dominated_set(tiny):
    _, _, result = tiny
    front = result.pareto
    assert result.chosen in front
    for p in result.explored:
        # Every explored point is matched or beaten (no dearer, no worse) by a point of the front.
        assert any(q.mean_weight_bits <= p.mean_weight_bits and q.metric >= p.metric for q in front)
    for p in front:
        assert not any(q is not p and q.mean_weight_bits <= p.mean_weight_bits and q.bitops <= p.bitops
                       and q.metric > p.metric for q in result.explored)
    assert [p.mean_weight_bits for p in front] == sorted(p.mean_weight_bits for p in front)


@pytest.mark.parametrize("kwargs, message", [
    ({"candidates": ["w8a8", "w4"]}, r"formats read \"w<bits>a<bits>\".*found 'w4'"),
    ({"candidates": "w8a8"}, "candidates must be a non-empty list"),
    ({"objective": "latency"}, "objective must be one of size, bitops"),
    ({"max_accuracy_drop": 5}, r"max_accuracy_drop must be a fraction in \[0, 1\)"),
    ({"labels": np.zeros(3, np.int64)}, "labels must be 64 integer class labels"),
    ({"layer_config": {"conv1": {"weight_bits": 4}}}, "chooses the layer_config itself"),
    ({"profile": intsim.get_profile("paper").replace(name="npu", supported_formats=("w8a8",))},
     r"format w4a8 is not supported by profile 'npu' \(supported_formats: w8a8\)"),
])
def test_bad_requests_are_typed_errors(kwargs, message):
    x = np.zeros((64, 2, 4, 4), np.float32)
    kwargs = {"candidates": ["w8a8", "w4a8"], **kwargs}
    with pytest.raises(ValidationError, match=message):
        intsim.search_mixed_precision(_net(), x, x, progress=False, **kwargs)


def test_cli_writes_the_layer_config_toml(tiny, tmp_path, capsys):
    onnx_model, x, result = tiny
    onnx.save(onnx_model, tmp_path / "net.onnx")
    np.save(tmp_path / "cal.npy", x[:32])
    np.save(tmp_path / "data.npy", x[32:])
    toml = tmp_path / "layers.toml"
    assert main(["mixed-precision", str(tmp_path / "net.onnx"), "--calibration", str(tmp_path / "cal.npy"),
                 "--data", str(tmp_path / "data.npy"), "--candidates", ",".join(CANDIDATES),
                 "--max-accuracy-drop", "0.05", "-o", str(toml), "--json", str(tmp_path / "amp.json")]) == 0
    assert "mean w bits" in capsys.readouterr().out
    assert load_layer_config(toml) == result.layer_config
    assert main(["convert", str(tmp_path / "net.onnx"), "--calibration", str(tmp_path / "cal.npy"),
                 "-o", str(tmp_path / "net.intsim"), "--layer-config", str(toml)]) == 0
    codes = result.model.quantize_inputs([x])[0]
    np.testing.assert_array_equal(intsim.load(tmp_path / "net.intsim").run_int(codes),
                                  result.model.run_int(codes), strict=True)


@pytest.mark.slow
def test_resnet_search_reaches_float_minus_half_a_point_with_few_weight_bits():
    from intsim.datasets import load_dataset
    from intsim.models import model_path

    try:
        x_train, y_train = load_dataset("fashion", "train")
    except ValidationError as exc:
        pytest.skip(f"Fashion-MNIST is not installed: {exc}")
    result = intsim.search_mixed_precision(model_path("resnet_fashion.onnx"), x_train[:512], x_train[512:2512],
                                           y_train[512:2512], profile="paper", progress=False)
    assert result.met and result.metric >= result.float_metric - 0.005
    assert result.mean_weight_bits < 6
