"""The runtime: hand-checked goldens, fast == naive on whole graphs, statistics, input errors."""

import warnings

import numpy as np
import pytest

import intsim
from intsim import AccumulatorOverflowError, Graph, Model, Node, OverflowWarning, TensorInfo, ValidationError, get_profile
from intsim.fixedpoint import FLOAT32_RINT
from intsim.profiles import builtin_names
from intsim.examples import branchy, random_codes, tiny_cnn


def _fc_graph(profile, x_zp=1, weight=((2, -3),), bias=(3,), multiplier=2**30, shift=-1, scale=0.25, out_zp=2,
              x_scale=0.1, metadata=None):
    """y = out_zp + requant(bias + sum (x - x_zp) * w) with real multiplier 0.25 (2**30 * 2**(-1-31))."""
    profile = get_profile(profile)
    k = len(weight[0])
    params = {
        "weight": np.array(weight, np.int8),
        "weight_zero_point": np.zeros(len(weight), np.int64),
        "bias": np.array(bias, np.int32),
        "multiplier": np.full(len(weight), multiplier, np.int32),
        "shift": np.full(len(weight), shift, np.int32),
    }
    if profile.rounding not in ("double", "single"):
        params["scale"] = np.full(len(weight), scale)
    tensors = [TensorInfo("x", "int8", (None, k), x_scale, x_zp), TensorInfo("y", "int8", (None, len(weight)), 0.1, out_zp)]
    return Graph("fc", profile, tensors, [Node("fully_connected", "fc", ["x"], ["y"], {}, params)], ["x"], ["y"],
                 metadata=metadata or {})


# Row 0: acc = 3 + (3-1)*2 + (-1-1)*(-3) = 13, times 0.25 = 3.25.
# Row 1: acc = 3 + (-4-1)*2 + (2-1)*(-3) = -10, times 0.25 = -2.5.
# double: SRDHM(13, 2**30) = 6.5 -> 7 (half up), then 7/2 = 3.5 -> 4 (half away): 4 + 2 = 6.
#         SRDHM(-10, 2**30) = -5, then -5/2 = -2.5 -> -3 (half away): -3 + 2 = -1.
# single: 3.25 -> 3 -> 5; -2.5 -> -2 (half up) -> 0.
# float32_rint: 3.25 -> 3 -> 5; -2.5 -> -2 (ties to even) -> 0.
# float64_half_away: 3.25 -> 3 -> 5; -2.5 -> -3 -> -1.
FC_GOLDEN = {"double": [6, -1], "single": [5, 0], "float32_rint": [5, 0], "float64_half_away": [5, -1]}


@pytest.mark.parametrize("rounding", sorted(FC_GOLDEN))
@pytest.mark.parametrize("backend", ["fast", "naive"])
def test_fully_connected_golden_per_rounding_mode(rounding, backend):
    profile = get_profile("tflite").replace(rounding=rounding)
    model = Model(_fc_graph(profile), backend)
    x = np.array([[3, -1], [-4, 2]], np.int8)
    np.testing.assert_array_equal(model.run_int(x), np.array([[FC_GOLDEN[rounding][0]], [FC_GOLDEN[rounding][1]]], np.int8), strict=True)
    trace = model.trace(x)
    np.testing.assert_array_equal(trace.accumulators["fc"], np.array([[13], [-10]], np.int32), strict=True)
    assert trace.stats["fc"]["max_abs_accumulator"] == 13
    assert trace.stats["fc"]["accumulator_headroom_bits"] == 31 - 4


def _overflow_graph(overflow, acc_bits=16):
    # 300 products of 127 * 127 = 16129: the exact sum 4,838,700 needs 24 bits.
    profile = get_profile("tflite").replace(accumulator_bits=acc_bits, overflow=overflow)
    return _fc_graph(profile, x_zp=0, weight=(tuple([127] * 300),), bias=(0,), multiplier=2**30, shift=-20, out_zp=0)


@pytest.mark.parametrize("backend", ["fast", "naive"])
def test_accumulator_policies_on_a_16_bit_accumulator(backend):
    x = np.full((1, 300), 127, np.int8)
    saturated = Model(_overflow_graph("saturate"), backend).trace(x)
    # Every partial sum only grows, so it sticks at 2**15 - 1.
    np.testing.assert_array_equal(saturated.accumulators["fc"], np.array([[32767]], np.int32), strict=True)
    assert saturated.stats["fc"]["overflow_count"] == 1
    wrapped = Model(_overflow_graph("wrap"), backend).trace(x)
    # 4,838,700 = 73 * 65536 + 54572, and 54572 - 65536 = -10964.
    np.testing.assert_array_equal(wrapped.accumulators["fc"], np.array([[-10964]], np.int32), strict=True)
    with pytest.raises(AccumulatorOverflowError, match="fc.*16-bit"):
        Model(_overflow_graph("error"), backend).run_int(x)
    # The same graph at 32 bits does not overflow: exact sum, times 2**30 * 2**(-20-31) = 2**-21, is 2.307... -> 2.
    exact = Model(_overflow_graph("error", 32), backend).trace(x)
    np.testing.assert_array_equal(exact.accumulators["fc"], np.array([[4838700]], np.int32), strict=True)
    np.testing.assert_array_equal(exact.tensors["y"], np.array([[2]], np.int8), strict=True)
    assert exact.stats["fc"]["overflow_count"] == 0


def test_overflows_are_reported_on_every_call():
    # Repeated calls run the bound run (intsim.runtime.bound), where an unfused (checked) step still
    # reports its overflows, warning or raising, every time.
    x = np.full((1, 300), 127, np.int8)
    wrapping = Model(_overflow_graph("wrap"))
    for _ in range(3):
        with pytest.warns(OverflowWarning, match="fc"):
            np.testing.assert_array_equal(wrapping.run_int(x), Model(_overflow_graph("wrap"), "naive").run_int(x),
                                          strict=True)
    failing = Model(_overflow_graph("error"))
    for _ in range(3):
        with pytest.raises(AccumulatorOverflowError, match="fc.*16-bit"):
            failing.run_int(x)
    quiet = Model(_overflow_graph("error", 32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            quiet.run_int(x)


@pytest.mark.parametrize("profile", builtin_names())
@pytest.mark.parametrize("build", [tiny_cnn, branchy])
def test_fast_equals_naive_on_whole_graphs(profile, build):
    graph = build(profile)
    fast, naive = Model(graph, "fast"), Model(graph, "naive")
    for batch, seed in ((1, 0), (3, 1)):
        x = random_codes(graph.tensors["x"], batch, seed)
        tf, tn = fast.trace(x), naive.trace(x)
        assert tf.tensors.keys() == tn.tensors.keys()
        for name in tf.tensors:
            np.testing.assert_array_equal(tf.tensors[name], tn.tensors[name], strict=True, err_msg=name)
        for name in tf.accumulators:
            np.testing.assert_array_equal(tf.accumulators[name], tn.accumulators[name], strict=True, err_msg=name)
        assert tf.stats == tn.stats


@pytest.mark.parametrize("backend", ["fast", "naive"])
@pytest.mark.parametrize("build", [tiny_cnn, branchy])
def test_run_plan_gives_the_traced_outputs(backend, build):
    # run_int goes through the run plan (bound steps, slots emptied after their last reader);
    # trace through the op registry's checked kernels one node at a time.
    graph = build("tflite")
    model = Model(graph, backend)
    for batch, seed in ((2, 3), (1, 4), (2, 5)):
        x = random_codes(graph.tensors["x"], batch, seed)
        traced = model.trace(x)
        outs = model.run_int(x)
        outs = outs if isinstance(outs, tuple) else (outs,)
        for name, out in zip(graph.outputs, outs):
            np.testing.assert_array_equal(out, traced.tensors[name], strict=True, err_msg=name)


@pytest.mark.parametrize("build", [tiny_cnn, branchy])
def test_run_over_repeated_calls_and_changing_batches(build):
    # Model.run hands the quantized codes straight to the run plan; every call must equal the naive
    # path (quantize, run_int, dequantize on the naive kernels), and no output may share memory with
    # another call's output or be changed by a later call.
    graph = build("onnxruntime")
    fast, naive = Model(graph), Model(graph, "naive")
    info = graph.tensors["x"]
    kept = []
    for batch, seed in ((1, 0), (3, 1), (1, 2), (2, 3)):
        rng = np.random.default_rng(seed)
        x = (info.scale * (rng.integers(-140, 140, (batch,) + info.shape[1:]) + 0.5)).astype(np.float32)
        out = fast.run(x)
        out_info = graph.tensors[graph.outputs[0]]
        codes, _ = naive._kernels.quantize_float(x, info.scale, FLOAT32_RINT, info.zero_point, 0, 255, np.uint8)
        expected = naive._kernels.dequantize_codes(naive.run_int(codes), out_info.scale, out_info.zero_point)
        np.testing.assert_array_equal(out, expected, strict=True)
        kept.append((out, out.copy()))
    for i, (out, copy) in enumerate(kept):
        np.testing.assert_array_equal(out, copy, strict=True)
        assert not any(np.shares_memory(out, other) for other, _ in kept[i + 1:])


def test_extreme_inputs_are_deterministic_and_batch_independent():
    graph = tiny_cnn("paper")
    model = Model(graph)
    info = graph.tensors["x"]
    lo, hi = np.iinfo(info.np_dtype).min, np.iinfo(info.np_dtype).max
    x = np.stack([np.full((8, 8, 3), lo), np.full((8, 8, 3), hi), random_codes(info, 1, 7)[0]]).astype(info.np_dtype)
    batched = model.run_int(x)
    np.testing.assert_array_equal(batched, model.run_int(x), strict=True)
    for i in range(3):
        np.testing.assert_array_equal(model.run_int(x[i : i + 1])[0], batched[i], strict=True)


def test_run_quantizes_and_dequantizes_with_tensor_parameters():
    profile = get_profile("tflite")
    model = Model(_fc_graph(profile))
    # x scale 0.1, zero point 1: 0.2 -> 2 + 1 = 3 and -0.5 -> -5 + 1 = -4 (ties to even), as the golden's codes.
    y = model.run(np.array([[0.2, -0.2], [-0.5, 0.1]], np.float32))
    # codes 6 and -1 with output scale 0.1, zero point 2.
    np.testing.assert_allclose(y, [[0.4], [-0.3]], rtol=1e-6)
    assert y.dtype == np.float32


def test_saturation_statistics_count_clamped_outputs():
    graph = tiny_cnn("tflite")
    x = random_codes(graph.tensors["x"], 2, 3)
    trace = Model(graph).trace(x)
    t1 = trace.tensors["t1"]
    # conv is clamped to [zero point, 127] (fused ReLU): codes at the lower bound are the clamped ones or exact zeros.
    assert trace.stats["conv"]["saturation_count"] <= int(np.sum((t1 == graph.tensors["t1"].zero_point) | (t1 == 127)))
    assert trace.stats["conv"]["saturation_count"] > 0
    assert "conv" in trace.table()


def test_save_and_load_round_trip(tmp_path):
    for profile in builtin_names():
        model = Model(branchy(profile))
        path = tmp_path / f"{profile}.intsim"
        model.save(path)
        loaded = intsim.load(path)
        assert loaded.profile == model.profile
        x = random_codes(model.graph.tensors["x"], 2, 5)
        np.testing.assert_array_equal(loaded.run_int(x), model.run_int(x), strict=True)
        for a, b in zip(model.graph.nodes, loaded.graph.nodes):
            assert a.params.keys() == b.params.keys()
            for key in a.params:
                np.testing.assert_array_equal(a.params[key], b.params[key], strict=True)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((1, 2), np.float32), "integer codes"),
        (np.zeros((1, 3), np.int8), r"expected shape \(N, 2\)"),
        (np.zeros((2,), np.int8), "expected shape"),
        (np.array([[0, 200]], np.int16), r"\[-128, 127\]"),
    ],
)
def test_run_int_rejects_bad_inputs(bad, message):
    model = Model(_fc_graph("tflite"))
    with pytest.raises(ValidationError, match=message):
        model.run_int(bad)


def test_run_int_checks_values_on_every_call():
    # The dtype and shape are checked once per signature; the values of a wider dtype every time.
    model = Model(_fc_graph("tflite"))
    model.run_int(np.array([[0, 100]], np.int16))
    with pytest.raises(ValidationError, match=r"\[-128, 127\] for int8, found \[0, 200\]"):
        model.run_int(np.array([[0, 200]], np.int16))


def test_run_rejects_bad_float_inputs_and_wrong_counts():
    model = Model(_fc_graph("tflite"))
    with pytest.raises(ValidationError, match="finite"):
        model.run(np.array([[np.nan, 0.0]]))
    with pytest.raises(ValidationError, match="takes 1 input"):
        model.run_int(np.zeros((1, 2), np.int8), np.zeros((1, 2), np.int8))
    with pytest.raises(ValidationError, match="backend"):
        Model(model.graph, "gpu")


def test_a_node_may_round_unlike_its_profile():
    # The tflite profile rounds "double", but this node requantizes in double precision (LiteRT's FULLY_CONNECTED).
    graph = _fc_graph("tflite")
    node = graph.nodes[0]
    node.attrs["rounding"] = "float64_half_away"
    node.params["scale"] = np.array([0.25])
    graph = Graph(graph.name, graph.profile, graph.tensors, graph.nodes, graph.inputs, graph.outputs)
    x = np.array([[3, -1], [-4, 2]], np.int8)
    expected = np.array([[FC_GOLDEN["float64_half_away"][0]], [FC_GOLDEN["float64_half_away"][1]]], np.int8)
    for backend in ("fast", "naive"):
        np.testing.assert_array_equal(Model(graph, backend).run_int(x), expected, strict=True)


def test_onnxruntime_profiles_quantize_inputs_in_float32():
    # 0.35 / 0.1: float64 gives 3.4999999999999996 -> 3; float32(0.35) / float32(0.1) gives 3.5 -> 4 (ties to even).
    x = np.array([[0.35, 0.0]])
    tflite_model = Model(_fc_graph("tflite", x_zp=0))
    ort_graph = _fc_graph(get_profile("onnxruntime").replace(activation_signed=True), x_zp=0)
    np.testing.assert_array_equal(tflite_model.quantize_inputs([x])[0], np.array([[3, 0]], np.int8), strict=True)
    np.testing.assert_array_equal(Model(ort_graph).quantize_inputs([x])[0], np.array([[4, 0]], np.int8), strict=True)


# Scale 0.5 makes x / scale exact: 1.25 -> 2.5, -1.25 -> -2.5, 0.75 -> 1.5, 63.75 -> 127.5, and
# float32(0.49999997) * 0.5 -> 0.49999997 (the largest float32 below 1/2: floor(v + 0.5) would give 1).
# Codes with zero point -1: half to even 2, -2, 2, 128, 0; half away 3, -3, 2, 128, 0; then -1 and clamp.
TIES = np.array([[1.25, -1.25, 0.75, 63.75, np.float32(0.49999997) * 0.5]], np.float32)
TIE_CODES = {"float64_rint": [1, -3, 1, 127, -1], "float32_rint": [1, -3, 1, 127, -1],
             "float32_half_away": [2, -4, 1, 127, -1]}


@pytest.mark.parametrize("mode", sorted(TIE_CODES))
def test_input_quantization_modes_on_ties(mode):
    from intsim.runtime import quantize

    info = TensorInfo("x", "int8", (None, 5), 0.5, -1)
    np.testing.assert_array_equal(quantize(TIES, info, mode=mode), np.array([TIE_CODES[mode]], np.int8), strict=True)
    np.testing.assert_array_equal(quantize(-TIES, info, mode=mode)[0, :3],
                                  np.array([-c - 2 for c in TIE_CODES[mode][:3]], np.int8), strict=True)


def test_run_honours_the_graph_input_quantization():
    # x scale 0.5: 1.25 and -1.25 are the ties 2.5 and -2.5.  Half away: codes 3, -3, acc = 3 + 3*2 + (-3)(-3) = 18,
    # times 0.25 = 4.5 -> SRDHM 9, 9 / 2 -> 5 (half away), + 2 = 7 -> 0.1 * 5 = 0.5.  Half to even: codes 2, -2,
    # acc = 3 + 4 + 6 = 13 -> 6 (as FC_GOLDEN) -> 0.1 * 4 = 0.4.
    x = np.array([[1.25, -1.25]], np.float32)
    default = Model(_fc_graph("tflite", x_zp=0, x_scale=0.5))
    tflite_edges = Model(_fc_graph("tflite", x_zp=0, x_scale=0.5, metadata={"input_quantization": "float32_half_away"}))
    assert (default.input_quantization, tflite_edges.input_quantization) == ("float64_rint", "float32_half_away")
    np.testing.assert_array_equal(default.run(x), np.array([[0.4]], np.float32), strict=True)
    np.testing.assert_array_equal(tflite_edges.run(x), np.array([[0.5]], np.float32), strict=True)
    np.testing.assert_array_equal(tflite_edges.trace(x, float_input=True).tensors["x"], np.array([[3, -3]], np.int8),
                                  strict=True)


def test_unknown_input_quantization_is_refused():
    model = Model(_fc_graph("tflite", metadata={"input_quantization": "float16_stochastic"}))
    with pytest.raises(ValidationError, match="input 'x': input quantization must be one of .*'float16_stochastic'"):
        model.run(np.zeros((1, 2), np.float32))


@pytest.mark.parametrize("profile", ["tflite", "onnxruntime"])
def test_a_fresh_model_holds_no_copy_of_requantization_and_narrow_depthwise_weights(profile):
    # tracemalloc of the array data a fresh Model keeps after its first run (numpy's own trace domain):
    # nothing allocated for requantization (the kernels read the graph's multiplier, shift and scale),
    # and the depthwise weights at most one byte per tap and padded channel (int8, as the graph stores
    # them, when every w - z_w fits int8) plus the int32 start value per padded channel.
    import gc
    import tracemalloc

    from intsim.datasets import load_dataset
    from intsim.kernels import depthwise
    from intsim.models import model_path

    x_train, _ = load_dataset("digits", "train")
    model = intsim.convert(model_path("mobilenet_digits.onnx"), calibration=x_train[:32], profile=profile,
                           progress=False)
    codes = model.quantize_inputs([x_train[:1]])
    model.run_int(*codes)  # kernels compiled before the count
    gc.collect()
    tracemalloc.start(40)
    fresh = Model(model.graph)
    fresh.run_int(*codes)
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.DomainFilter(True, np.lib.tracemalloc_domain)])
    tracemalloc.stop()
    assert fresh is not None

    def held_by(filename, lines=None):
        return sum(t.size for t in snapshot.traces if any(
            f.filename.endswith(filename) and (lines is None or f.lineno in lines) for f in t.traceback))

    code = depthwise.pack_depthwise.__code__  # the lines of the code that ran, as its tracebacks name them
    pack_lines = range(code.co_firstlineno, max(line for *_, line in code.co_lines() if line is not None) + 1)
    dw_nodes = [n for n in model.graph.nodes if n.op == "conv2d" and n.params["weight"].shape[3] == 1
                and n.attrs.get("groups", 1) == n.params["weight"].shape[0] > 1]
    assert dw_nodes
    bound = 0
    for node in dw_nodes:
        w = node.params["weight"]
        centred = w.astype(np.int64).reshape(w.shape[0], -1) - node.params["weight_zero_point"].reshape(-1, 1)
        value_bytes = 1 if -128 <= centred.min() and centred.max() <= 127 else 2
        padded = -(-w.shape[0] // 16) * 16
        bound += padded * (w.shape[1] * w.shape[2] * value_bytes + 4)
    weight_bytes = sum(n.params["weight"].nbytes for n in dw_nodes)
    packed = held_by("kernels/depthwise.py", pack_lines)
    assert weight_bytes <= packed <= bound
    assert held_by("intsim/fixedpoint.py") == 0


def test_run_clamps_inputs_to_the_profile_activation_bits():
    """A 3-bit input is stored in int8 but its codes stop at [-4, 3]: Model.run clamps there, not at int8's range."""
    profile = get_profile("tflite").replace(activation_bits=3)
    model = Model(tiny_cnn(profile))
    x = model.inputs[0]
    reals = np.array([-1000.0, -4.5, -3.5, 2.5, 3.0, 1000.0]) * x.scale
    codes = model.quantize_inputs([np.resize(reals, (1, 8, 8, 3))])[0].reshape(-1)[:6]
    expected = np.clip(np.rint(reals / x.scale) + x.zero_point, -4, 3).astype(np.int8)
    np.testing.assert_array_equal(codes, expected, strict=True)
    assert codes.min() == -4 and codes.max() == 3
