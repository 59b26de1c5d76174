"""Automatic mixed precision (``intsim.search_mixed_precision``): a tiny seeded search checked by hand
(weight and MAC counts, mean weight bits, bit operations, the front, the chosen model), the validation
check and its back-off (on a stub, and end to end on the integer datapath), the paired drop bound,
the calibration statistics reused across candidates, errors, the CLI round trip, and (slow) the
done-when run on the shipped ResNet-style model, checked on held-out test images.

``python -m pytest -m "slow or not slow" tests/test_mixed_precision.py`` runs the slow case too.
"""

import json

import numpy as np
import onnx
import pytest

import intsim
from intsim import ValidationError
from intsim.cli import main
from intsim.converter.calibration import calibrate
from intsim.converter.layer_config import load_layer_config
from intsim.converter.lowering import lower, plan_quantization
from intsim.mixed_precision import Layer, Point, _walk, paired_drop_bound, split_validation
from intsim.floatgraph.execute import run_float
from intsim.importers.onnx import import_onnx
from tests.test_layer_config import _net

CANDIDATES = ["w8a8", "w4a8", "w2a8"]


@pytest.fixture(scope="module")
def tiny():
    x = np.random.default_rng(1).normal(size=(160, 2, 4, 4)).astype(np.float32)
    result = intsim.search_mixed_precision(_net(), x[:32], x[32:96], profile="paper", candidates=CANDIDATES,
                                           max_accuracy_drop=0.05, validation=x[96:], progress=False)
    return _net(), x, result


def _agreement(onnx_model, model, x):
    fg = import_onnx(onnx_model)
    return model.run(x).argmax(1) == run_float(fg, [x])[fg.outputs[0]].argmax(1)


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
    agreement = float(np.mean(_agreement(onnx_model, result.model, x[32:96])))
    assert result.metric_name == "agreement" and result.float_metric == 1.0
    assert agreement == result.metric and result.met and agreement >= 1.0 - 0.05
    assert result.mean_weight_bits < 8
    # On the validation images too: the drop below float (agreement 1) and its bound are within budget.
    disagreements = int(np.count_nonzero(~_agreement(onnx_model, result.model, x[96:])))
    assert result.validation_samples == 64 and result.validation_float_metric == 1.0
    assert result.validation_drop == disagreements / 64 == 1.0 - result.validation_metric
    assert result.validation_drop <= result.validation_bound <= 0.05
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


def test_paired_drop_bound_by_hand():
    # 1000 samples: 30 right only in float (b), 10 right only in integer (c), 900 right in both.
    float_correct = np.array([True] * 30 + [False] * 10 + [True] * 900 + [False] * 60)
    int_correct = np.array([False] * 30 + [True] * 10 + [True] * 900 + [False] * 60)
    drop, bound = paired_drop_bound(float_correct, int_correct, 0.9)
    # drop (30 - 10) / 1000; se sqrt(30 + 10 - 20**2 / 1000) / 1000 = sqrt(39.6) / 1000; z(0.9) = 1.2815515655...
    assert drop == 0.02
    assert bound == pytest.approx(0.02 + 1.2815515655446004 * 39.6 ** 0.5 / 1000, rel=1e-12)
    assert paired_drop_bound(float_correct, int_correct, 0.5) == (0.02, 0.02)
    assert paired_drop_bound(np.ones(5, bool), np.ones(5, bool), 0.99) == (0.0, 0.0)
    with pytest.raises(ValidationError, match="two equal non-empty 1-D arrays"):
        paired_drop_bound(np.ones(3, bool), np.ones(4, bool), 0.9)


def test_back_off_restores_the_layer_that_fails_on_validation():
    """A stub evaluator: each layer at w4 costs a known drop on the search data and on validation."""
    layers = [Layer(n, "Conv", 100, 100) for n in ("a", "b", "c")]
    search_drop = {"a": 0.001, "b": 0.002, "c": 0.003}
    validation_drop = {"a": 0.0, "b": 0.02, "c": 0.0}
    checked = []

    def cost(fmt):
        return sum(100 * w for w, _ in fmt.values()), sum(100 * w * a for w, a in fmt.values())

    def measure(fmt, stage):
        drop = sum(search_drop[n] for n, (w, _) in fmt.items() if w == 4)
        return Point(dict(fmt), 1.0 - drop, sum(w for w, _ in fmt.values()) / 3, cost(fmt)[1], stage)

    def holds(fmt, stage):
        checked.append(dict(fmt))
        return measure(fmt, stage).metric >= 0.99 and \
            sum(validation_drop[n] for n, (w, _) in fmt.items() if w == 4) <= 0.01

    walked, chosen = _walk(layers, [(4, 8), (8, 8)], "size", cost, 0.99, measure, lambda fmt, stage: True)
    assert walked.formats == chosen.formats == {"a": (4, 8), "b": (4, 8), "c": (4, 8)}
    walked, chosen = _walk(layers, [(4, 8), (8, 8)], "size", cost, 0.99, measure, holds)
    assert walked.formats == {"a": (4, 8), "b": (4, 8), "c": (4, 8)}
    assert chosen.formats == {"a": (4, 8), "b": (8, 8), "c": (4, 8)} and chosen.stage == "back-off"
    # Validation is first consulted for the walk's point (the sensitivities and the walk need none).
    assert checked[0] == walked.formats
    # Where even the baseline fails on validation, the baseline is returned.
    assert _walk(layers, [(4, 8), (8, 8)], "size", cost, 0.99, measure, lambda fmt, stage: False)[1].stage == \
        "baseline"


def test_back_off_end_to_end_on_the_integer_datapath():
    """Searched on samples far from the float decision boundary, the walk goes down to 2-bit weights; the
    validation samples, the nearest to it, reject that point, and the back-off finds one that holds."""
    onnx_model = _net()
    x = np.random.default_rng(1).normal(size=(600, 2, 4, 4)).astype(np.float32)
    fg = import_onnx(onnx_model)
    logits = np.sort(run_float(fg, [x])[fg.outputs[0]], axis=1)
    order = np.argsort(logits[:, -1] - logits[:, -2])
    easy, hard = x[order[-150:]], x[order[:300]]
    args = dict(profile="paper", candidates=CANDIDATES, max_accuracy_drop=0.05, confidence=0.9, progress=False)
    walked = intsim.search_mixed_precision(onnx_model, x[:32], easy, validation_split=0, **args)
    checked = intsim.search_mixed_precision(onnx_model, x[:32], easy, validation=hard, **args)
    assert walked.met and walked.validation_samples == 0 and walked.validation_bound is None
    walked_misses = np.count_nonzero(~_agreement(onnx_model, walked.model, hard))
    assert walked_misses / 300 > 0.05
    misses = np.count_nonzero(~_agreement(onnx_model, checked.model, hard))
    assert checked.met and checked.validation_drop == misses / 300
    assert checked.validation_bound == pytest.approx(
        misses / 300 + 1.2815515655446004 * (misses - misses ** 2 / 300) ** 0.5 / 300, rel=1e-12)
    assert checked.validation_bound <= 0.05 and checked.metric >= checked.target
    assert walked.mean_weight_bits < checked.mean_weight_bits < 8
    assert any(p.stage == "back-off" for p in checked.explored)
    assert checked.walked.layer_config == walked.layer_config and checked.walked.validation_bound > 0.05


def test_validation_split_is_a_seeded_partition():
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    y = np.arange(10)
    search_x, search_y, check_x, check_y = split_validation(x, y, None, 0.3)
    assert len(check_x) == 3 and len(search_x) == 7
    assert sorted(np.concatenate([search_y, check_y]).tolist()) == list(range(10))
    np.testing.assert_array_equal(search_x, x[search_y], strict=True)
    np.testing.assert_array_equal(check_x, x[check_y], strict=True)
    again = split_validation(x, y, None, 0.3)
    np.testing.assert_array_equal(again[3], check_y, strict=True)
    assert split_validation(x, None, None, 0)[2:] == (None, None)


def test_search_runs_the_calibration_data_once(monkeypatch):
    import intsim.converter.lowering as lowering

    calls = []
    monkeypatch.setattr(lowering, "calibrate", lambda *a, **k: calls.append(1) or calibrate(*a, **k))
    x = np.random.default_rng(2).normal(size=(64, 2, 4, 4)).astype(np.float32)
    result = intsim.search_mixed_precision(_net(), x[:32], x[32:], profile="paper", candidates=CANDIDATES,
                                           max_accuracy_drop=0.05, progress=False)
    assert len(result.explored) > 5 and len(calls) == 1


def test_reused_calibration_statistics_give_the_same_model(tiny):
    onnx_model, x, _ = tiny
    config = {"conv1": {"weight_bits": 4}, "fc": {"weight_bits": 2, "activation_bits": 6}}
    first = plan_quantization(onnx_model, x[:32], "paper", progress=False)
    fresh = intsim.convert(onnx_model, x[:32], "paper", layer_config=config, progress=False)
    reused = lower(plan_quantization(onnx_model, x[:32], "paper", layer_config=config, progress=False,
                                     statistics=first.statistics))
    codes = fresh.quantize_inputs([x])[0]
    np.testing.assert_array_equal(reused.run_int(codes), fresh.run_int(codes), strict=True)
    assert {t.name: (t.scale, t.zero_point, t.dtype) for t in reused.graph.tensors.values()} == \
        {t.name: (t.scale, t.zero_point, t.dtype) for t in fresh.graph.tensors.values()}
    with pytest.raises(ValidationError, match="cannot be reused with bias_correction"):
        plan_quantization(onnx_model, x[:32], "paper", progress=False, bias_correction="empirical",
                          statistics=first.statistics)
    with pytest.raises(ValidationError, match="no TensorStats for the quantization point"):
        plan_quantization(onnx_model, x[:32], "paper", progress=False, statistics={})
    with pytest.raises(ValidationError, match="read histograms; these statistics kept none"):
        plan_quantization(onnx_model, x[:32], "paper", progress=False, range_method="mse",
                          statistics=first.statistics)


@pytest.mark.parametrize("kwargs, message", [
    ({"candidates": ["w8a8", "w4"]}, r"formats read \"w<bits>a<bits>\".*found 'w4'"),
    ({"candidates": "w8a8"}, "candidates must be a non-empty list"),
    ({"objective": "latency"}, "objective must be one of size, bitops"),
    ({"max_accuracy_drop": 5}, r"max_accuracy_drop must be a fraction in \[0, 1\)"),
    ({"labels": np.zeros(3, np.int64)}, "data labels must be 64 integer class labels"),
    ({"layer_config": {"conv1": {"weight_bits": 4}}}, "chooses the layer_config itself"),
    ({"confidence": 0.3}, r"confidence must be a probability in \[0.5, 1\)"),
    ({"validation_split": 1.0}, r"validation_split must be a fraction in \[0, 1\)"),
    ({"validation_split": 0.001}, "leaves no sample on one side"),
    ({"validation": (np.zeros((4, 2, 4, 4), np.float32), np.zeros(4, np.int64))},
     r"validation must be \(inputs, labels\) when the search has labels, else inputs alone"),
    ({"labels": np.zeros(64, np.int64), "validation": np.zeros((4, 2, 4, 4), np.float32)},
     r"validation must be \(inputs, labels\)"),
    ({"validation": np.zeros((4, 2, 4, 4), np.int8)}, "validation must be a non-empty float array"),
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
    np.save(tmp_path / "data.npy", x[32:96])
    np.save(tmp_path / "validation.npy", x[96:])
    toml = tmp_path / "layers.toml"
    command = ["mixed-precision", str(tmp_path / "net.onnx"), "--calibration", str(tmp_path / "cal.npy"),
               "--data", str(tmp_path / "data.npy"), "--candidates", ",".join(CANDIDATES),
               "--max-accuracy-drop", "0.05", "-o", str(toml)]
    assert main(command + ["--validation-data", str(tmp_path / "validation.npy"),
                           "--json", str(tmp_path / "amp.json")]) == 0
    assert "mean w bits" in capsys.readouterr().out
    assert json.loads((tmp_path / "amp.json").read_text())["validation_samples"] == 64
    assert load_layer_config(toml) == result.layer_config
    assert main(["convert", str(tmp_path / "net.onnx"), "--calibration", str(tmp_path / "cal.npy"),
                 "-o", str(tmp_path / "net.intsim"), "--layer-config", str(toml)]) == 0
    codes = result.model.quantize_inputs([x])[0]
    np.testing.assert_array_equal(intsim.load(tmp_path / "net.intsim").run_int(codes),
                                  result.model.run_int(codes), strict=True)
    assert main(command + ["--validation-labels", str(tmp_path / "cal.npy")]) == 2
    assert "--validation-labels needs --validation-data" in capsys.readouterr().err


@pytest.mark.slow
def test_resnet_search_holds_float_minus_half_a_point_on_held_out_images():
    """The done-when, as benchmarks/bench_mixed_precision.py runs it: walk on 5000 training images, validate on
    the first 5000 test images, measure the chosen model on the other 5000, which the search never saw."""
    from intsim.datasets import load_dataset
    from intsim.models import model_path

    try:
        x_train, y_train = load_dataset("fashion", "train")
        x_test, y_test = load_dataset("fashion", "test")
    except ValidationError as exc:
        pytest.skip(f"Fashion-MNIST is not installed: {exc}")
    path = model_path("resnet_fashion.onnx")
    result = intsim.search_mixed_precision(path, x_train[:512], x_train[512:5512], y_train[512:5512],
                                           profile="paper", candidates=["w8a8", "w6a8", "w4a8", "w3a8"],
                                           validation=(x_test[:5000], y_test[:5000]), progress=False)
    assert result.met and result.metric >= result.float_metric - 0.005 and result.validation_bound <= 0.005
    assert result.mean_weight_bits < 6
    fg = import_onnx(path)
    held_x, held_y = x_test[5000:], y_test[5000:]
    batches = [held_x[i:i + 500] for i in range(0, 5000, 500)]
    float_right = np.concatenate([run_float(fg, [b])[fg.outputs[0]] for b in batches]).argmax(1) == held_y
    int_right = np.concatenate([result.model.run(b) for b in batches]).argmax(1) == held_y
    assert np.mean(float_right) - np.mean(int_right) <= 0.005
