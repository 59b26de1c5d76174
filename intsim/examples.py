"""Small integer graphs built by hand, for ``intsim demo``, the tests and the README.

Weights are seeded random codes; quantization parameters are chosen the way a
converter would choose them for the given profile, so the graphs are realistic
for every profile.  No test takes an expected value from this module: the
graphs are inputs.
"""

from __future__ import annotations

import math

import numpy as np

from intsim import Graph, Node, TensorInfo, build_exp_table, build_lut, get_profile
from intsim.fixedpoint import INTEGER_ROUNDING_MODES, Rescale
from intsim.codes import dtype_range
from intsim.converter.params import add_params


def _scale(profile, s):
    return 2.0 ** round(math.log2(s)) if profile.power_of_two_scales else s


def _zp(profile, signed_zp, unsigned_zp):
    if profile.activation_symmetric:
        return 0 if profile.activation_signed else 2 ** (profile.activation_bits - 1)
    return signed_zp if profile.activation_signed else unsigned_zp


def _act(profile, name, shape, scale, zp=None):
    zp = _zp(profile, -3, 125) if zp is None else zp
    return TensorInfo(name, profile.activation_dtype.name, shape, _scale(profile, scale), zp)


def _rescale(profile, real, channels=None):
    real = np.atleast_1d(np.asarray(real, np.float64)) if channels is None else np.asarray(real, np.float64)
    return Rescale.from_real(real, profile.rounding, profile.multiplier_bits).params()


def _mac_params(profile, rng, weight_shape, s_x, s_y, weight_scale=0.02):
    cout = weight_shape[0]
    lo, hi = profile.weight_range()
    weight = rng.integers(lo, hi + 1, size=weight_shape).astype(profile.weight_dtype)
    if profile.per_channel:
        s_w = np.array([_scale(profile, weight_scale * (1 + 0.1 * c)) for c in range(cout)])
    else:
        s_w = np.full(cout, _scale(profile, weight_scale))
    params = {
        "weight": weight,
        "weight_zero_point": np.zeros(cout, np.int64),
        "bias": rng.integers(-3000, 3000, size=cout).astype(np.int32),
    }
    params.update(_rescale(profile, s_x * s_w / s_y, channels=cout))
    return params


def _relu(t: TensorInfo):
    return [t.zero_point, dtype_range(t.dtype)[1]]


def tiny_cnn(profile="tflite", seed=0, softmax=None) -> Graph:
    """conv 3x3 (ReLU) -> depthwise x2 stride 2 -> max pool -> mean -> fc [-> softmax]."""
    profile = get_profile(profile)
    softmax = profile.rounding in INTEGER_ROUNDING_MODES if softmax is None else softmax
    rng = np.random.default_rng(seed)
    x = _act(profile, "x", (None, 8, 8, 3), 0.05)
    t1 = _act(profile, "t1", (None, 8, 8, 4), 0.4)
    t2 = _act(profile, "t2", (None, 4, 4, 8), 0.5)
    t3 = TensorInfo("t3", t2.dtype, (None, 2, 2, 8), t2.scale, t2.zero_point)
    t4 = _act(profile, "t4", (None, 8), 0.3)
    t5 = _act(profile, "t5", (None, 5), 0.25)
    tensors = [x, t1, t2, t3, t4, t5]
    nodes = [
        Node("conv2d", "conv", ["x"], ["t1"], {"strides": [1, 1], "pads": [1, 1, 1, 1], "clamp": _relu(t1)},
             _mac_params(profile, rng, (4, 3, 3, 3), x.scale, t1.scale)),
        Node("conv2d", "dw", ["t1"], ["t2"], {"strides": [2, 2], "pads": [0, 0, 1, 1], "groups": 4},
             _mac_params(profile, rng, (8, 3, 3, 1), t1.scale, t2.scale)),
        Node("max_pool", "pool", ["t2"], ["t3"], {"kernel": [2, 2], "strides": [2, 2]}),
        Node("mean", "gap", ["t3"], ["t4"], {"axes": [1, 2]}, _rescale(profile, t3.scale / (4 * t4.scale))),
        Node("fully_connected", "fc", ["t4"], ["t5"], {}, _mac_params(profile, rng, (5, 8), t4.scale, t5.scale)),
    ]
    outputs = ["t5"]
    if softmax:
        lo = dtype_range(profile.activation_dtype)[0]
        y = TensorInfo("y", profile.activation_dtype.name, (None, 5), _scale(profile, 1 / 256),
                       0 if profile.activation_symmetric else lo)
        tensors.append(y)
        params = {"exp_table": build_exp_table(t5)}
        params.update(_rescale(profile, 2.0**-23 / y.scale))
        nodes.append(Node("softmax", "softmax", ["t5"], ["y"], {}, params))
        outputs = ["y"]
    return Graph("tiny_cnn", profile, tensors, nodes, ["x"], outputs)


def branchy(profile="tflite") -> Graph:
    """Every non-convolution op: lut, pad, avg_pool, add, sub, mul, concat, reshape,
    transpose, matmul, rescale, flatten, squeeze, unsqueeze."""
    profile = get_profile(profile)
    dt = profile.activation_dtype.name
    x = _act(profile, "x", (None, 4, 4, 6), 0.05)
    a = _act(profile, "a", (None, 4, 4, 6), 1 / 128, _zp(profile, 0, 128))
    p = TensorInfo("p", dt, (None, 6, 6, 6), x.scale, x.zero_point)
    ap = TensorInfo("ap", dt, (None, 4, 4, 6), x.scale, x.zero_point)
    s = _act(profile, "s", (None, 4, 4, 6), 0.06, _zp(profile, 5, 120))
    d = _act(profile, "d", (None, 4, 4, 6), 0.07, _zp(profile, -7, 131))
    m = _act(profile, "m", (None, 4, 4, 6), 0.02)
    c = _act(profile, "c", (None, 4, 4, 12), 0.07, d.zero_point)
    r = TensorInfo("r", dt, (None, 16, 12), c.scale, c.zero_point)
    t = TensorInfo("t", dt, (None, 12, 16), c.scale, c.zero_point)
    mm = _act(profile, "mm", (None, 12, 12), 0.9)
    rs = _act(profile, "rs", (None, 12, 12), 0.5, _zp(profile, 2, 100))
    u = TensorInfo("u", dt, (None, 1, 12, 12), rs.scale, rs.zero_point)
    q = TensorInfo("q", dt, (None, 12, 12), rs.scale, rs.zero_point)
    y = TensorInfo("y", dt, (None, 144), rs.scale, rs.zero_point)
    bits = profile.activation_bits
    add_p, left = add_params(x.scale, a.scale, s.scale, profile, bits)
    sub_p, left_sub = add_params(x.scale, a.scale, d.scale, profile, bits)
    concat_p = _rescale(profile, np.array([m.scale / c.scale, d.scale / c.scale]), channels=2)
    n = len(x.shape)
    nodes = [
        Node("lut", "tanh", ["x"], ["a"], {}, {"table": build_lut(np.tanh, x, a)}),
        Node("pad", "pad", ["x"], ["p"], {"pads_before": [0, 1, 1, 0], "pads_after": [0, 1, 1, 0]}),
        Node("avg_pool", "avg", ["p"], ["ap"], {"kernel": [3, 3], "count_include_pad": False}),
        Node("add", "add", ["ap", "a"], ["s"], {"left_shift": left}, add_p),
        Node("add", "sub", ["x", "a"], ["d"], {"left_shift": left_sub, "subtract": True}, sub_p),
        Node("mul", "mul", ["s", "x"], ["m"], {}, _rescale(profile, s.scale * x.scale / m.scale)),
        Node("concat", "cat", ["m", "d"], ["c"], {"axis": n - 1}, concat_p),
        Node("reshape", "reshape", ["c"], ["r"], {"shape": [0, 16, 12]}),
        Node("transpose", "transpose", ["r"], ["t"], {"perm": [0, 2, 1]}),
        Node("matmul", "matmul", ["t", "r"], ["mm"], {}, _rescale(profile, c.scale * c.scale / mm.scale)),
        Node("rescale", "rescale", ["mm"], ["rs"], {}, _rescale(profile, mm.scale / rs.scale)),
        Node("unsqueeze", "unsqueeze", ["rs"], ["u"], {"axes": [1]}),
        Node("squeeze", "squeeze", ["u"], ["q"], {"axes": [1]}),
        Node("flatten", "flatten", ["q"], ["y"], {"axis": 1}),
    ]
    return Graph("branchy", profile, [x, a, p, ap, s, d, m, c, r, t, mm, rs, u, q, y], nodes, ["x"], ["y"])


def random_codes(info: TensorInfo, batch: int, seed: int = 0) -> np.ndarray:
    lo, hi = dtype_range(info.dtype)
    shape = tuple(batch if dim is None else dim for dim in info.shape)
    return np.random.default_rng(seed).integers(lo, hi + 1, size=shape).astype(info.np_dtype)


def selftest_runs(seed: int = 0, batch: int = 2):
    """:func:`tiny_cnn` on every built-in profile, fast kernels against their naive twins: yields per
    profile ``(result, trace)``, ``result`` counting the integers compared node by node (``trace``) and
    through the fused path ``run_int`` takes, and the mismatches of each."""
    from intsim.profiles import builtin_names
    from intsim.runtime import Model

    for name in builtin_names():
        graph = tiny_cnn(name, seed=seed)
        x = random_codes(graph.tensors["x"], batch, seed)
        fast_model, naive_model = Model(graph, "fast"), Model(graph, "naive")
        fast, naive = fast_model.trace(x), naive_model.trace(x)
        traced = sum(int(np.sum(fast.tensors[t] != naive.tensors[t])) for t in fast.tensors)
        run_fast, run_naive = fast_model.run_int(x), naive_model.run_int(x)
        ran = int(np.sum(run_fast != run_naive)) + int(np.sum(run_fast != fast.tensors[graph.outputs[0]]))
        yield {"profile": name, "trace_elements": sum(int(fast.tensors[t].size) for t in fast.tensors),
               "trace_mismatches": traced, "run_elements": int(run_fast.size), "run_mismatches": ran}, fast
