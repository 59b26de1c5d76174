"""Sequence models (issue 15, transformer side): integer inputs, shape / mask folding, the GELU, LayerNorm
and attention-mask patterns, the integer kernels (embedding, gather, layer norm, masked softmax) against
their naive twins, a tiny random BERT layer converted with token ids and a mask, and the error paths.

MiniLM end to end is ``tests/test_minilm.py`` (slow)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import intsim
from intsim import kernels
from intsim.errors import UnsupportedOpError, ValidationError
from intsim.fixedpoint import SINGLE, quantize_multiplier
from intsim.floatgraph.execute import run_float
from intsim.floatgraph.patterns import simplify
from intsim.importers.onnx import import_onnx
from intsim.kernels import naive
from intsim.kernels.sequence import _isqrt_newton
from intsim.profiles import get_profile

RNG = np.random.default_rng(15)


def _const(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


def _model(nodes, inputs, outputs, inits, opset=17):
    graph = helper.make_graph(nodes, "seq", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _ort(model, feeds):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _float_input(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


# --------------------------------------------------------------------------
# Kernels against their naive twins (exact).
# --------------------------------------------------------------------------


def test_isqrt_newton_is_the_floor_square_root():
    values = [0, 1, 2, 3, 4, 2**62 - 1, 2**62]
    values += [max(0, 2**i + d) for i in range(63) for d in (-2, -1, 0, 1, 2) if 2**i + d < 2**63]
    values += [int(v) for v in RNG.integers(0, 2**62, 500)]
    for v in values:
        assert _isqrt_newton(np.int64(v)) == math.isqrt(v), v


def _layer_norm_args(width, dtype, seed):
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    real = rng.uniform(1e-4, 0.02, width)
    multiplier, shift = quantize_multiplier(real, 31)
    return (int(rng.integers(info.min, info.max)), 0 if np.dtype(dtype).itemsize == 1 else 2,
            int(rng.integers(0, 1000)), rng.integers(-1, 2, width).astype(np.int8),
            rng.integers(-(2**20), 2**20, width).astype(np.int32), np.asarray(multiplier, np.int32),
            np.asarray(shift, np.int32), SINGLE, 31, -3, -128, 127, np.int8)


@pytest.mark.parametrize("dtype", [np.int8, np.int16])
def test_layer_norm_kernel_matches_naive_twin(dtype):
    info = np.iinfo(dtype)
    for seed in range(3):
        x = RNG.integers(info.min, info.max + 1, (5, 24)).astype(dtype)
        x[0] = info.min  # a constant row: zero variance
        x[1, ::2], x[1, 1::2] = info.min, info.max  # the widest spread
        args = _layer_norm_args(24, dtype, seed)
        fast, fast_sat = kernels.layer_norm_lastaxis(x, *args)
        slow, slow_sat = naive.layer_norm_lastaxis(x, *args)
        np.testing.assert_array_equal(fast, slow, strict=True)
        assert fast_sat == slow_sat


def test_embedding_and_gather_kernels_match_naive_twins():
    table = RNG.integers(-128, 128, (11, 6)).astype(np.int8)
    ids = RNG.integers(-11, 11, (3, 5)).astype(np.int32)
    np.testing.assert_array_equal(kernels.embedding_lookup(table, ids), naive.embedding_lookup(table, ids),
                                  strict=True)
    np.testing.assert_array_equal(kernels.embedding_lookup(table, ids), table[ids], strict=True)
    x = RNG.integers(-128, 128, (2, 7, 3)).astype(np.int8)
    for indices, axis in ((np.array([0, -1, 3]), 1), (np.array(2), 1), (np.array([[1, 0]]), 2)):
        fast = kernels.gather_axis(x, indices, axis)
        np.testing.assert_array_equal(fast, naive.gather_axis(x, indices, axis), strict=True)
        np.testing.assert_array_equal(fast, np.take(x, indices, axis), strict=True)


def test_masked_softmax_kernel_matches_naive_twin_and_zeroes_masked_positions():
    x = RNG.integers(-128, 128, (6, 9)).astype(np.int8)
    keep = RNG.random((6, 9)) < 0.6
    keep[0] = False  # a row with nothing kept
    table = np.rint(np.exp(-0.05 * np.arange(256)) * 2**30).astype(np.int64)
    multiplier, shift = quantize_multiplier(np.array([2.0**-23 / 2.0**-8]), 31)
    args = (table, int(multiplier[0]), int(shift[0]), SINGLE, 31, -128, -128, 127, np.int8)
    fast, fast_sat = kernels.softmax_masked_lastaxis(x, keep, *args)
    slow, slow_sat = naive.softmax_masked_lastaxis(x, keep, *args)
    np.testing.assert_array_equal(fast, slow, strict=True)
    assert fast_sat == slow_sat
    assert np.all(fast[~keep] == -128)
    all_kept, _ = kernels.softmax_masked_lastaxis(x, np.ones_like(keep), *args)
    plain, _ = kernels.softmax_lastaxis(x, *args)
    np.testing.assert_array_equal(all_kept, plain, strict=True)


# --------------------------------------------------------------------------
# Patterns and folding: float graph against onnxruntime.
# --------------------------------------------------------------------------


def _gelu_model(tanh: bool):
    x = "x"
    if tanh:
        nodes = [helper.make_node("Pow", [x, "three"], ["cube"]), helper.make_node("Mul", ["cube", "c"], ["cc"]),
                 helper.make_node("Add", [x, "cc"], ["inner"]), helper.make_node("Mul", ["inner", "k"], ["arg"]),
                 helper.make_node("Tanh", ["arg"], ["t"])]
        inits = [_const("three", np.float32(3)), _const("c", np.float32(0.044715)),
                 _const("k", np.float32(math.sqrt(2 / math.pi)))]
    else:
        nodes = [helper.make_node("Div", [x, "r2"], ["arg"]), helper.make_node("Erf", ["arg"], ["t"])]
        inits = [_const("r2", np.float32(math.sqrt(2)))]
    nodes += [helper.make_node("Add", ["t", "one"], ["s"]), helper.make_node("Mul", [x, "half"], ["hx"]),
              helper.make_node("Mul", ["hx", "s"], ["y"])]
    inits += [_const("one", np.float32(1)), _const("half", np.float32(0.5))]
    return _model(nodes, [_float_input("x", ["N", 10])], [_float_input("y", ["N", 10])], inits, opset=13)


def _decomposed_layer_norm_model():
    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], axes=[-1]), helper.make_node("Sub", ["x", "m"], ["d"]),
             helper.make_node("Pow", ["d", "two"], ["d2"]), helper.make_node("ReduceMean", ["d2"], ["v"], axes=[-1]),
             helper.make_node("Add", ["v", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["s"]),
             helper.make_node("Div", ["d", "s"], ["n"]), helper.make_node("Mul", ["n", "g"], ["ng"]),
             helper.make_node("Add", ["ng", "b"], ["y"])]
    inits = [_const("two", np.float32(2)), _const("eps", np.float32(1e-5)),
             _const("g", RNG.uniform(0.5, 2, 16).astype(np.float32)),
             _const("b", RNG.normal(0, 1, 16).astype(np.float32))]
    return _model(nodes, [_float_input("x", ["N", 4, 16])], [_float_input("y", ["N", 4, 16])], inits, opset=13)


@pytest.mark.parametrize("tanh", [False, True])
def test_gelu_patterns_become_one_node_and_match_onnxruntime(tanh):
    model = _gelu_model(tanh)
    graph = simplify(import_onnx(model))
    assert [n.op for n in graph.nodes] == ["Gelu"]
    assert graph.nodes[0].attrs["approximate"] == ("tanh" if tanh else "none")
    x = RNG.normal(0, 3, (4, 10)).astype(np.float32)
    np.testing.assert_allclose(run_float(graph, [x])["y"], _ort(model, {"x": x})[0], rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("bits", [8, 16])
def test_gelu_and_softmax_convert_at_8_and_16_bits(bits):
    """GELU as a table of every input code (256 or 65,536 entries) and the integer softmax (an exp table
    of as many entries) against onnxruntime, and the fast kernels against their twins."""
    gelu = _gelu_model(tanh=False)
    graph = gelu.graph
    graph.node.append(helper.make_node("Softmax", ["y"], ["p"], axis=-1))
    graph.output[0].CopyFrom(_float_input("p", ["N", 10]))
    x = RNG.normal(0, 2, (64, 10)).astype(np.float32)
    model = intsim.convert(gelu, x, "paper", activation_bits=bits, progress=False)
    assert [n.op for n in model.graph.nodes] == ["lut", "softmax"]
    assert model.graph.nodes[0].params["table"].size == 2**bits
    got = model.run(x[:16])
    np.testing.assert_allclose(got, _ort(gelu, {"x": x[:16]})[0], atol=2.0**-bits * 4 if bits == 16 else 0.02)
    codes = model.quantize_inputs([x[:16]])
    np.testing.assert_array_equal(model.run_int(*codes), model.with_backend("naive").run_int(*codes), strict=True)


def test_decomposed_layer_norm_becomes_one_node_and_matches_onnxruntime():
    model = _decomposed_layer_norm_model()
    graph = simplify(import_onnx(model))
    assert [n.op for n in graph.nodes] == ["LayerNormalization"]
    x = RNG.normal(1, 3, (3, 4, 16)).astype(np.float32)
    np.testing.assert_allclose(run_float(graph, [x])["y"], _ort(model, {"x": x})[0], rtol=1e-4, atol=1e-5)


def test_where_with_a_constant_causal_mask_becomes_a_masked_softmax():
    causal = np.tril(np.ones((5, 5), bool))
    nodes = [helper.make_node("Where", ["causal", "x", "fill"], ["masked"]),
             helper.make_node("Softmax", ["masked"], ["y"], axis=-1)]
    model = _model(nodes, [_float_input("x", ["N", 2, 5, 5])], [_float_input("y", ["N", 2, 5, 5])],
                   [_const("causal", causal), _const("fill", np.float32(-np.inf))])
    assert [n.op for n in simplify(import_onnx(model)).nodes] == ["MaskedSoftmax"]
    x = RNG.normal(0, 2, (32, 2, 5, 5)).astype(np.float32)
    int_model = intsim.convert(model, x, "paper", progress=False)
    assert [n.op for n in int_model.graph.nodes] == ["constant", "masked_softmax"]
    got = int_model.run(x[:4])
    np.testing.assert_allclose(got, _ort(model, {"x": x[:4]})[0], atol=0.03)  # x's codes: steps of 0.06
    assert np.all(got[..., ~causal] == 0)
    codes = int_model.quantize_inputs([x[:4]])
    np.testing.assert_array_equal(int_model.run_int(*codes), int_model.with_backend("naive").run_int(*codes),
                                  strict=True)


def test_shape_mask_and_if_subgraphs_fold_away():
    """Shape / Gather / Unsqueeze / Concat / Expand / ConstantOfShape / Range / Cast / Equal / Not / And / Where /
    Size / ReduceSum on static values, and an If with a constant condition, leave only the data ops."""
    then_branch = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["picked"])], "then", [],
                                    [_float_input("picked", ["N", 6])])
    else_branch = helper.make_graph([helper.make_node("Neg", ["x"], ["picked2"])], "else", [],
                                    [_float_input("picked2", ["N", 6])])
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "one_i"], ["width"], axis=0),
        helper.make_node("Unsqueeze", ["width", "zero_axis"], ["width1"]),
        helper.make_node("ConstantOfShape", ["width1"], ["ones"], value=numpy_helper.from_array(np.ones(1, np.int64))),
        helper.make_node("Range", ["zero_s", "width", "one_s"], ["positions"]),
        helper.make_node("Equal", ["positions", "three"], ["is3"]),
        helper.make_node("Not", ["is3"], ["not3"]),
        helper.make_node("Cast", ["ones"], ["ones_b"], to=TensorProto.BOOL),
        helper.make_node("And", ["not3", "ones_b"], ["keep"]),
        helper.make_node("Where", ["keep", "w_on", "w_off"], ["w"]),
        helper.make_node("Size", ["w"], ["size"]),
        helper.make_node("ReduceSum", ["ones"], ["count"], keepdims=0),
        helper.make_node("Equal", ["size", "count"], ["cond"]),
        helper.make_node("Expand", ["w", "width1"], ["w_full"]),
        helper.make_node("If", ["cond"], ["chosen"], then_branch=then_branch, else_branch=else_branch),
        helper.make_node("Mul", ["chosen", "w_full"], ["y"]),
    ]
    inits = [_const("one_i", np.int64(1)), _const("zero_axis", np.array([0], np.int64)),
             _const("zero_s", np.int64(0)), _const("one_s", np.int64(1)), _const("three", np.int64(3)),
             _const("w_on", np.float32(1.5)), _const("w_off", np.float32(-4.0)), _const("two", np.float32(2))]
    model = _model(nodes, [_float_input("x", ["N", 6])], [_float_input("y", ["N", 6])], inits)
    graph = simplify(import_onnx(model))
    assert sorted(n.op for n in graph.nodes) == ["Mul", "Mul"]
    x = RNG.normal(0, 1, (2, 6)).astype(np.float32)
    np.testing.assert_allclose(run_float(graph, [x])["y"], _ort(model, {"x": x})[0], rtol=1e-6)


# --------------------------------------------------------------------------
# A tiny random BERT layer with token ids and an attention mask.
# --------------------------------------------------------------------------

VOCAB, SEQ, WIDTH, HEADS = 40, 8, 16, 2


def _tiny_bert(decomposed: bool = False):
    """Embedding (Gather by int64 ids + position constant), LayerNorm, one encoder layer with the
    additive mask ``(1 - mask) * -10000``, erf GELU, as torch's exporter writes them."""
    rng = np.random.default_rng(1)

    def w(*shape, s=0.3):
        return rng.normal(0, s, shape).astype(np.float32)

    nodes, inits = [], []

    def const(name, value):
        inits.append(_const(name, value))
        return name

    def node(op, inputs, output, **attrs):
        nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    def layer_norm(x, tag):
        g, b = const(f"{tag}.g", rng.uniform(0.5, 1.5, WIDTH).astype(np.float32)), const(f"{tag}.b", w(WIDTH, s=0.1))
        if not decomposed:
            return node("LayerNormalization", [x, g, b], f"{tag}.y", axis=-1, epsilon=1e-12)
        m = node("ReduceMean", [x], f"{tag}.m", axes=[-1])
        d = node("Sub", [x, m], f"{tag}.d")
        d2 = node("Pow", [d, const(f"{tag}.two", np.float32(2))], f"{tag}.d2")
        v = node("ReduceMean", [d2], f"{tag}.v", axes=[-1])
        s = node("Sqrt", [node("Add", [v, const(f"{tag}.eps", np.float32(1e-12))], f"{tag}.ve")], f"{tag}.s")
        return node("Add", [node("Mul", [node("Div", [d, s], f"{tag}.n"), g], f"{tag}.ng"), b], f"{tag}.y")

    def linear(x, n_in, n_out, tag):
        return node("Add", [node("MatMul", [x, const(f"{tag}.w", w(n_in, n_out))], f"{tag}.mm"),
                            const(f"{tag}.b", w(n_out, s=0.1))], f"{tag}.y")

    width = WIDTH // HEADS
    ids = node("Gather", [const("word", w(VOCAB, WIDTH)), "input_ids"], "tok", axis=0)
    x = layer_norm(node("Add", [ids, const("pos", w(1, SEQ, WIDTH))], "emb"), "ln0")
    batch = node("Gather", [node("Shape", ["input_ids"], "ids_shape"), const("zero", np.int64(0))], "batch", axis=0)
    split = node("Concat", [node("Unsqueeze", [batch, const("ax0", np.array([0], np.int64))], "batch1"),
                            const("split_rest", np.array([SEQ, HEADS, width], np.int64))], "split_shape", axis=0)

    def heads(t, tag, perm):
        return node("Transpose", [node("Reshape", [t, split], f"{tag}.r")], f"{tag}.t", perm=perm)

    q = heads(linear(x, WIDTH, WIDTH, "q"), "qh", [0, 2, 1, 3])
    k = heads(linear(x, WIDTH, WIDTH, "k"), "kh", [0, 2, 3, 1])
    v = heads(linear(x, WIDTH, WIDTH, "v"), "vh", [0, 2, 1, 3])
    scores = node("Div", [node("MatMul", [q, k], "qk"), const("root", np.float32(math.sqrt(width)))], "scores")
    mask = node("Cast", [node("Unsqueeze", ["attention_mask", const("ax12", np.array([1, 2], np.int64))], "m4")],
                "mf", to=TensorProto.FLOAT)
    bias = node("Mul", [node("Sub", [const("onef", np.float32(1)), mask], "inv"), const("big", np.float32(-10000))],
                "mask_bias")
    probs = node("Softmax", [node("Add", [scores, bias], "masked")], "probs", axis=-1)
    context = node("Transpose", [node("MatMul", [probs, v], "ctx")], "ctx.t", perm=[0, 2, 1, 3])
    context = node("Reshape", [context, const("merge", np.array([-1, SEQ, WIDTH], np.int64))], "ctx.r")
    x = layer_norm(node("Add", [x, linear(context, WIDTH, WIDTH, "o")], "res1"), "ln1")
    h = linear(x, WIDTH, 4 * WIDTH, "ff1")
    erf = node("Erf", [node("Div", [h, const("r2", np.float32(math.sqrt(2)))], "h2")], "erf")
    gelu = node("Mul", [node("Mul", [h, node("Add", [erf, const("one", np.float32(1))], "erf1")], "hx"),
                        const("half", np.float32(0.5))], "gelu")
    x = layer_norm(node("Add", [x, linear(gelu, 4 * WIDTH, WIDTH, "ff2")], "res2"), "ln2")
    nodes.append(helper.make_node("Identity", [x], ["hidden"]))
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["N", SEQ]) for n in ("input_ids", "attention_mask")]
    return _model(nodes, inputs, [_float_input("hidden", ["N", SEQ, WIDTH])], inits, opset=13 if decomposed else 17)


def _token_batch(n, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, (n, SEQ)).astype(np.int64)
    lengths = rng.integers(3, SEQ + 1, n)
    mask = (np.arange(SEQ) < lengths[:, None]).astype(np.int64)
    return {"input_ids": ids * mask, "attention_mask": mask}


@pytest.mark.parametrize("decomposed", [False, True])
def test_tiny_bert_float_graph_fuses_and_matches_onnxruntime(decomposed):
    model = _tiny_bert(decomposed)
    graph = simplify(import_onnx(model))
    ops = [n.op for n in graph.nodes]
    assert graph.integer_inputs == ["input_ids", "attention_mask"]
    assert ops.count("LayerNormalization") == 3 and ops.count("Gelu") == 1 and ops.count("MaskedSoftmax") == 1
    assert not {"Cast", "Erf", "Sub", "Div", "Shape", "Softmax"} & set(ops)
    feeds = _token_batch(5, 2)
    np.testing.assert_allclose(run_float(graph, feeds)["hidden"], _ort(model, feeds)[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layernorm", ["integer", "int16"])
def test_tiny_bert_converts_with_integer_inputs(layernorm):
    model = _tiny_bert()
    profile = get_profile("paper").replace(name=f"paper-{layernorm}", layernorm=layernorm)
    calibration = [_token_batch(16, seed) for seed in (3, 4)]  # a list of dicts: batches
    int_model = intsim.convert(model, calibration, profile, progress=False)
    ops = {n.op for n in int_model.graph.nodes}
    assert {"embedding", "layernorm", "masked_softmax", "lut", "matmul", "fully_connected"} <= ops
    assert [t.dtype for t in int_model.inputs] == ["int32", "int32"]
    wide = [int_model.graph.tensors[n.inputs[0]].dtype for n in int_model.graph.nodes if n.op == "layernorm"]
    assert wide == (["int16"] * 3 if layernorm == "int16" else ["int8"] * 3)
    test = _token_batch(12, 5)
    got = int_model.run(test)
    ref = _ort(model, test)[0]
    keep = test["attention_mask"].astype(bool)
    cosine = (got * ref).sum(-1)[keep] / (np.linalg.norm(got, axis=-1) * np.linalg.norm(ref, axis=-1))[keep]
    assert cosine.mean() > 0.97, cosine.mean()
    codes = int_model.run_int(test["input_ids"].astype(np.int32), test["attention_mask"].astype(np.int32))
    slow = int_model.with_backend("naive").run_int(test["input_ids"].astype(np.int32),
                                                   test["attention_mask"].astype(np.int32))
    np.testing.assert_array_equal(codes, slow, strict=True)


def test_compare_takes_named_integer_feeds():
    model = _tiny_bert()
    int_model = intsim.convert(model, _token_batch(16, 10), "paper", progress=False)
    report = intsim.compare(model, int_model, [_token_batch(5, 11), _token_batch(4, 12)], progress=False)
    assert report.samples == 9
    ops = {row.op for row in report.layers}
    assert {"layernorm", "masked_softmax", "embedding", "lut"} <= ops and "input" not in ops
    assert "input_ids" in int_model.graph.metadata["integer_inputs"]
    assert all(row.elements > 0 for row in report.layers)


def test_cli_converts_and_runs_with_named_inputs(tmp_path):
    import onnx

    from intsim.cli import main

    onnx.save(_tiny_bert(), tmp_path / "bert.onnx")
    np.savez(tmp_path / "calibration.npz", **_token_batch(16, 13))
    test = _token_batch(3, 14)
    np.savez(tmp_path / "test.npz", **test)
    assert main(["convert", str(tmp_path / "bert.onnx"), "--calibration", str(tmp_path / "calibration.npz"),
                 "-o", str(tmp_path / "bert.intsim")]) == 0
    assert main(["run", str(tmp_path / "bert.intsim"), "--input", str(tmp_path / "test.npz"), "--output",
                 str(tmp_path / "out.npy")]) == 0
    expected = intsim.load(tmp_path / "bert.intsim").run(test)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected, strict=True)


def test_masked_positions_do_not_change_kept_outputs():
    """The mask really removes padded keys: changing the token ids behind the mask leaves every kept
    position's integer output unchanged."""
    int_model = intsim.convert(_tiny_bert(), _token_batch(16, 6), "paper", progress=False)
    feeds = _token_batch(4, 7)
    feeds["attention_mask"][:, -3:] = 0
    other = dict(feeds, input_ids=feeds["input_ids"].copy())
    other["input_ids"][:, -3:] = 7
    a = int_model.run_int(*(feeds[k].astype(np.int32) for k in ("input_ids", "attention_mask")))
    b = int_model.run_int(*(other[k].astype(np.int32) for k in ("input_ids", "attention_mask")))
    np.testing.assert_array_equal(a[:, :-3], b[:, :-3], strict=True)


# --------------------------------------------------------------------------
# Errors.
# --------------------------------------------------------------------------


def test_profile_without_layer_norm_is_a_typed_error():
    profile = get_profile("paper").replace(name="no-ln", layernorm="none")
    with pytest.raises(UnsupportedOpError, match="layernorm"):
        intsim.convert(_tiny_bert(), _token_batch(4, 8), profile, progress=False)
    with pytest.raises(ValidationError, match="layernorm must be one of"):
        get_profile("paper").replace(layernorm="float")


def test_bad_feeds_are_typed_errors():
    model = _tiny_bert()
    feeds = _token_batch(4, 9)
    with pytest.raises(ValidationError, match="missing \\['attention_mask'\\]"):
        intsim.convert(model, {"input_ids": feeds["input_ids"]}, "paper", progress=False)
    with pytest.raises(ValidationError, match="input 'input_ids' must be integer"):
        intsim.convert(model, dict(feeds, input_ids=feeds["input_ids"].astype(np.float32)), "paper", progress=False)
    with pytest.raises(ValidationError, match="single-input model"):
        intsim.convert(model, feeds["input_ids"], "paper", progress=False)
    with pytest.raises(ValidationError, match="adaround walk one float input array"):
        intsim.convert(model, feeds, "paper", adaround=True, progress=False)
    int_model = intsim.convert(model, feeds, "paper", progress=False)
    with pytest.raises(ValidationError, match="indices must lie in"):
        int_model.run(dict(feeds, input_ids=feeds["input_ids"] + VOCAB))
    with pytest.raises(ValidationError, match="takes integers"):
        int_model.run(dict(feeds, attention_mask=feeds["attention_mask"].astype(np.float32)))
    with pytest.raises(ValidationError, match="takes inputs"):
        int_model.run({"input_ids": feeds["input_ids"]})


# --------------------------------------------------------------------------
# TOSA export.
# --------------------------------------------------------------------------


def test_embedding_and_gather_export_to_tosa_gather(tmp_path):
    from tests.test_tosa import _reference_model

    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["tok"], axis=0),
             helper.make_node("Gather", ["tok", "picks"], ["picked"], axis=1),
             helper.make_node("Sigmoid", ["picked"], ["y"])]
    inits = [_const("table", RNG.normal(0, 1, (VOCAB, 6)).astype(np.float32)), _const("picks", np.array([0, -1, 2]))]
    model = _model(nodes, [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", SEQ])],
                   [_float_input("y", ["N", 3, 6])], inits)
    calibration = {"input_ids": RNG.integers(0, VOCAB, (8, SEQ))}
    int_model = intsim.convert(model, calibration, "tosa", progress=False)
    assert [n.op for n in int_model.graph.nodes] == ["embedding", "gather", "lut"]
    feeds = [{"input_ids": RNG.integers(0, VOCAB, (2, SEQ)).astype(np.int32)} for _ in range(2)]
    got = _reference_model(intsim.export_tosa(int_model, tmp_path / "m.tosa", batch=2), int_model.graph, feeds,
                           tmp_path)
    for feed, out in zip(feeds, got):
        np.testing.assert_array_equal(out, int_model.run_int(feed["input_ids"]), strict=True)


def test_layer_norm_has_no_tosa_export(tmp_path):
    x = RNG.normal(0, 1, (8, 4, 16)).astype(np.float32)
    int_model = intsim.convert(_decomposed_layer_norm_model(), x, "tosa", progress=False)
    with pytest.raises(UnsupportedOpError, match="layernorm .*no TOSA lowering"):
        intsim.export_tosa(int_model, tmp_path / "ln.tosa")
