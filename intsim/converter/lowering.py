"""Float ONNX model to integer graph (white paper §2.3 and §3.1).

``convert`` imports the model, runs the float passes (batch-norm folding,
constant folding, dead-node removal), the PTQ algorithms asked for
(:mod:`intsim.ptq`: CLE, bias correction, AdaRound), plans activation fusion, calibrates the
activation ranges on the calibration data, quantizes weights and biases for the
profile, and emits an integer :class:`~intsim.graph.Graph` in NHWC layout.

Quantization points are the float tensors that become integer tensors with
their own calibrated scale: graph inputs and the outputs of every computing op
(after a fused ReLU / Clip).  Data-movement ops (max pool, average pool, pad,
reshape, flatten, transpose, squeeze, unsqueeze, resize) keep their input's
quantization, as TFLite does; softmax outputs have the fixed scale ``2**-bits``.

The converter records in ``graph.metadata`` what the reports need: the float
tensor (and axis permutation) behind each integer tensor, the real multipliers
of every requantizing node, the weight scales and the bias overflow counts.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field

import numpy as np

from intsim.converter.calibration import (CODOMAINS, HISTOGRAM_METHODS, RANGE_METHODS, calibrate, choose_range,
                                          reused_statistics)
from intsim.converter.data_free import batch_norm_statistics, data_free_ranges
from intsim.converter.layer_config import ActivationFormat, LayerFormats
from intsim.converter.steps import (TIED_OPS, Step, layer_formats, plan_steps, point_formats,  # noqa: F401
                                    quantization_points, weighted)
from intsim.converter.quantizer import quantization_params, quantize
from intsim.codes import dtype_range
from intsim.errors import UnsupportedOpError, ValidationError
from intsim.fixedpoint import INTEGER_ROUNDING_MODES, Rescale
from intsim.floatgraph.execute import resize_source_indices
from intsim.floatgraph.ort_session import FloatSession
from intsim.floatgraph import FloatGraph, FloatNode
from intsim.codes import storage_dtype
from intsim.graph import Graph, Node, TensorInfo
from intsim.importers.onnx import import_onnx
from intsim.converter.params import add_params, build_exp_table, build_lut, constant_operand_codes
from intsim.converter.tables import build_interpolated_lut
from intsim.converter.feeds import batch_of, named_feeds, ptq_data, sample_count
from intsim.converter.lower_recurrent import RECURRENT_LOWERINGS
from intsim.converter.lower_sequence import SEQUENCE_LOWERINGS, SEQUENCE_UNARY, tensor_dtypes, widen
from intsim.floatgraph.patterns import simplify
from intsim.converter.lower_vision import LOWERINGS, lower_matmul_rows
from intsim.profiles import Profile, get_profile
from intsim.ptq.bias_correction import WeightFormat
from intsim.ptq.pipeline import apply_ptq, resolve_settings
from intsim.runtime import Model
from intsim.floatgraph.vision_ops import ELEMENTWISE

NHWC = (0, 2, 3, 1)  # stored = float.transpose(NHWC) for a 4-D NCHW float tensor


def _identity(rank):
    return tuple(range(rank))


def _unary_functions():
    def sigmoid(x):
        return 1.0 / (1.0 + np.exp(-x))

    return {
        "Sigmoid": lambda a: sigmoid,
        "Tanh": lambda a: np.tanh,
        "Relu": lambda a: lambda x: np.maximum(x, 0.0),
        "Clip": lambda a: lambda x: np.clip(x, a.get("min", -np.inf), a.get("max", np.inf)),
        "LeakyRelu": lambda a: lambda x: np.where(x >= 0, x, a.get("alpha", 0.01) * x),
        "HardSigmoid": lambda a: lambda x: np.clip(a.get("alpha", 0.2) * x + a.get("beta", 0.5), 0.0, 1.0),
        "HardSwish": lambda a: lambda x: x * np.clip(x / 6.0 + 0.5, 0.0, 1.0),
        "SiLU": lambda a: lambda x: x * sigmoid(x),
        "PRelu": lambda a: lambda x: np.where(x >= 0, x, a["slope"] * x),
        **ELEMENTWISE,
    }


UNARY = {**_unary_functions(), **SEQUENCE_UNARY}
# Lowerings kept beside this module, by float op type: vision models', sequence models' and recurrent layers'.
EXTRA_LOWERINGS = {**LOWERINGS, **SEQUENCE_LOWERINGS, **RECURRENT_LOWERINGS}


def prepare_float_graph(model, input_shapes=None) -> FloatGraph:
    """Import an ONNX model (path or ModelProto, its inputs fixed by ``input_shapes`` as in
    :func:`~intsim.importers.onnx.import_onnx`, or a FloatGraph as is) and run the default passes."""
    return simplify(model if isinstance(model, FloatGraph) else import_onnx(model, input_shapes=input_shapes))


class _Lowering:
    def __init__(self, fg: FloatGraph, profile: Profile, qparams: dict, weight_method: str, weight_codes: dict,
                 formats: LayerFormats, dtypes: dict | None = None):
        self.fg = fg
        self.base_profile = profile
        self.formats = formats
        self.profile = profile  # the profile of the step being lowered (its layer_config overrides applied)
        self.act: ActivationFormat | None = None  # the format the step reads and writes; None: its input's
        self.format_of: dict[str, ActivationFormat] = {}  # integer tensor -> its activation format
        # {float tensor: dtype} the converter fixed (int32 token ids, int16 residuals into a layer norm):
        # their integer tensors keep that dtype, and their readers take them as they are.
        self.dtypes = dtypes or {}
        self.fixed: set[str] = set()
        self.qparams = qparams
        self.weight_method = weight_method
        self.weight_codes = weight_codes  # {node name: (codes, scale, zero_point)} chosen by the PTQ algorithms
        self.tensors: dict[str, TensorInfo] = {}
        self.nodes: list[Node] = []
        self.env: dict[str, tuple[str, tuple]] = {}  # float tensor -> (integer tensor, perm)
        self.variants: dict[tuple[str, tuple], str] = {}
        self.meta = {"source": {}, "quantized": {}, "real_multiplier": {}, "weight_scale": {},
                     "weight_source": {}, "bias_overflow": {},
                     "weight_scale_raised": {}, "layer_formats": {}}

    # --- tensors ----------------------------------------------------------
    def shape(self, float_name, perm):
        shape = self.fg.shapes[float_name]
        return tuple(shape[p] for p in perm)

    def new_tensor(self, name, float_name, perm, scale, zero_point, shape=None, fmt=None, dtype=None):
        """A tensor in activation format ``fmt`` (default: the step's): stored in the narrowest dtype
        that holds it, with ``bits`` where its codes are narrower than that dtype.  ``dtype`` (or the
        converter's fixed dtype of ``float_name``) stores it in that dtype outright."""
        base, i = name, 1
        while name in self.tensors:
            i += 1
            name = f"{base}.{i}"
        shape = self.shape(float_name, perm) if shape is None else shape
        fmt = fmt or self.act or ActivationFormat.of(self.profile)
        dtype = dtype or self.dtypes.get(float_name)
        if dtype is not None:
            dtype = np.dtype(dtype)
            fmt = ActivationFormat(8 * dtype.itemsize, dtype.kind == "i", fmt.symmetric)
            self.fixed.add(name)
        else:
            dtype = storage_dtype(fmt.bits, fmt.signed)
        # A full-width tensor records its bits too where the runtime would otherwise read the profile's
        # narrower activation range off the dtype (an 8-bit input of a layer_config layer in a 3-bit profile).
        profile_narrow = dtype == self.profile.activation_dtype and self.profile.activation_bits < 8 * dtype.itemsize
        bits = fmt.bits if fmt.bits < 8 * dtype.itemsize or profile_narrow else None
        self.tensors[name] = TensorInfo(name, dtype.name, shape, scale, zero_point, bits)
        self.format_of[name] = fmt
        self.meta["source"][name] = [float_name, list(perm)]
        return name

    def bind(self, float_name, perm, scale, zero_point, name=None, fmt=None, dtype=None):
        name = self.new_tensor(name or float_name, float_name, perm, scale, zero_point, fmt=fmt, dtype=dtype)
        self.env[float_name] = (name, perm)
        self.meta["quantized"][float_name] = name
        self.variants[(float_name, perm)] = name
        return name

    def info(self, float_name):
        return self.tensors[self.env[float_name][0]]

    def need(self, float_name, perm):
        """The integer tensor holding ``float_name`` stored as ``float.transpose(perm)``, in the step's
        activation format (:meth:`requantized`)."""
        return self.requantized(self.transposed(float_name, perm), float_name, perm)

    def requantized(self, name, float_name, perm):
        """``name`` in the step's activation format: itself, or the output of a ``rescale`` node (shared
        by every consumer) that requantizes the same real range to the step's bits."""
        fmt = self.act
        if fmt is None or self.format_of[name] == fmt or name in self.fixed:
            return name
        key = (float_name, tuple(perm), fmt)
        if key not in self.variants:
            info = self.tensors[name]
            lo, hi = (info.scale * (c - info.zero_point) for c in info.code_range)
            scale, zp = quantization_params(lo, hi, fmt.bits, fmt.signed, fmt.symmetric,
                                            power_of_two=self.profile.power_of_two_scales)
            new = self.new_tensor(f"{name}.a{fmt.bits}", float_name, perm, scale, zp)
            self.nodes.append(Node("rescale", f"{new}/rescale", [name], [new],
                                   {"clamp": list(self.tensors[new].code_range)}, self.rescale(info.scale / scale)))
            self.meta["real_multiplier"][f"{new}/rescale"] = [info.scale / scale]
            self.variants[key] = new
        return self.variants[key]

    def transposed(self, float_name, perm):
        """The integer tensor holding ``float_name`` stored as ``float.transpose(perm)``, in the format
        its producer wrote."""
        key = (float_name, tuple(perm))
        if key in self.variants:
            return self.variants[key]
        if float_name in self.fg.constants:
            raise UnsupportedOpError(f"constant {float_name!r} used where an activation is expected")
        src, src_perm = self.env[float_name]
        # stored_new = stored_src.transpose(q) with src_perm[q[i]] = perm[i]
        q = [src_perm.index(p) for p in perm]
        info = self.tensors[src]
        suffix = "nhwc" if tuple(perm) == NHWC else "nchw" if tuple(perm) == _identity(len(perm)) else "t"
        name = self.new_tensor(f"{float_name}.{suffix}", float_name, perm, info.scale, info.zero_point,
                               fmt=self.format_of[src], dtype=info.dtype if src in self.fixed else None)
        self.nodes.append(Node("transpose", f"{name}/transpose", [src], [name], {"perm": q}))
        self.variants[key] = name
        return name

    def layout_of(self, float_name):
        return self.env[float_name][1]

    def out_params(self, float_name):
        return self.qparams[float_name]

    def clamp_codes(self, scale, zero_point, clamp, float_name=None):
        return clamp_codes(scale, zero_point, clamp, self.profile, self.dtypes.get(float_name))

    def rescale(self, real, prefix=""):
        real = np.atleast_1d(np.asarray(real, np.float64))
        return Rescale.from_real(real, self.profile.rounding, self.profile.multiplier_bits).params(prefix)

    def constant_codes(self, value, rank, perm):
        """Quantize a constant operand per tensor, broadcastable against a stored activation."""
        value = np.asarray(value, np.float64)
        return constant_operand_codes(value.reshape((1,) * (rank - value.ndim) + value.shape).transpose(perm),
                                      self.profile)

    # --- steps ------------------------------------------------------------
    def lower(self, steps):
        for name in self.fg.inputs:
            scale, zp = self.out_params(name)
            self.bind(name, _identity(len(self.fg.shapes[name])), scale, zp,
                      fmt=ActivationFormat.of(self.formats.input_profile(name, steps)))
        for step in steps:
            self.profile = self.formats.step_profile(step)
            self.act = self.formats.step_activation(step)
            if self.act is not None:
                self.meta["layer_formats"][step.nodes[0].name] = self.formats.format_name(step, weighted(self.fg, step))
            handler = getattr(self, f"lower_{step.kind}", None)
            if handler is None and step.kind in EXTRA_LOWERINGS:
                handler = functools.partial(EXTRA_LOWERINGS[step.kind], self)
            if handler is None:
                if step.kind in UNARY:
                    handler = self.lower_unary
                else:
                    node = step.nodes[0]
                    raise UnsupportedOpError(
                        f"node {node.name!r} (opset {self.fg.opset}): op {step.kind!r} has no integer lowering"
                    )
            handler(step)
        self.profile, self.act = self.base_profile, None
        outputs = [self.need(t, _identity(len(self.fg.shapes[t]))) for t in self.fg.outputs]
        inputs = [self.variants[(t, _identity(len(self.fg.shapes[t])))] for t in self.fg.inputs]
        return inputs, outputs

    def _mac(self, step, op, x_name, x_perm, weight, bias, attrs, out_perm, source=True, transposed=False):
        """Emit a multiply-accumulate node.  ``source``: record the float weight and bias constants
        (inputs 1 and 2 of the float node) for the simulation; ``transposed``: the float constant
        is the transpose of ``weight`` (MatMul by a constant)."""
        p = self.profile
        node = step.nodes[0]
        x = self.tensors[self.need(x_name, x_perm)]
        chosen = self.weight_codes.get(node.name) if source and not transposed else None
        method = self.formats.method(step, "weight_range_method", self.weight_method)
        codes, w_scale, w_zp = chosen or WeightFormat.of(p).quantize(weight, method)
        cout = weight.shape[0]
        w_scale = np.broadcast_to(np.asarray(w_scale, np.float64).reshape(-1), (cout,))
        w_zp = np.broadcast_to(np.asarray(w_zp, np.int64).reshape(-1), (cout,))
        bias = np.zeros(cout) if bias is None else np.asarray(bias, np.float64)
        codes, w_scale, raised = self._fit_bias(weight, codes, w_scale, w_zp, bias, x.scale)
        bias_scale = x.scale * w_scale
        wide = np.rint(bias / bias_scale).astype(np.int64)
        bmax = 2 ** (p.bias_bits - 1) - 1
        bias_int = np.clip(wide, -bmax - 1, bmax)
        scale, zp = self.out_params(step.output)
        real = x.scale * w_scale / scale
        if op == "conv2d":
            codes = codes.transpose(0, 2, 3, 1)
        params = {"weight": np.ascontiguousarray(codes.astype(p.weight_dtype)), "weight_zero_point": w_zp.copy(),
                  "bias": bias_int.astype(np.int32), **self.rescale(real)}
        y = self.bind(step.output, out_perm, scale, zp)
        attrs = dict(attrs, clamp=self.clamp_codes(scale, zp, step.clamp, step.output))
        self.nodes.append(Node(op, node.name, [x.name], [y], attrs, params))
        self.meta["real_multiplier"][node.name] = real.tolist()
        self.meta["weight_scale"][node.name] = w_scale.tolist()
        if source:
            bias_name = node.inputs[2] if len(node.inputs) > 2 else None
            self.meta["weight_source"][node.name] = [node.inputs[1], bias_name, transposed]
        self.meta["bias_overflow"][node.name] = int(np.sum(wide != bias_int))
        self.meta["weight_scale_raised"][node.name] = raised

    def _fit_bias(self, weight, codes, w_scale, w_zp, bias, x_scale):
        """Raise the weight scale of every output channel whose bias, in units of ``s_x * s_w``, would
        not fit in half the ``bias_bits`` range, and requantize those channels to nearest.

        A channel with near-zero weights (a dead channel after batch-norm folding) gets a tiny weight
        scale, so its bias can come to 2^40 codes or more; clipping it to int32 would change the
        channel's output and leave no room in the accumulator for the products.  Half the range
        leaves one bit for them.  Per-tensor weights share one scale, so it rises for all channels.
        Returns ``(codes, scale, number of channels raised)``.
        """
        p = self.profile
        need = np.abs(bias) / (x_scale * 2.0 ** (p.bias_bits - 2))
        if not p.per_channel:
            need = np.full_like(need, need.max())
        grow = need > w_scale
        if not grow.any():
            return codes, w_scale, 0
        if p.power_of_two_scales:
            need = 2.0 ** np.ceil(np.log2(need))
        scale = np.where(grow, need, w_scale)
        qmin, qmax = WeightFormat.of(p).codes
        again = quantize(weight, scale, w_zp, qmin, qmax, np.int64, axis=0)
        codes = np.where(grow.reshape((-1,) + (1,) * (weight.ndim - 1)), again, codes)
        return codes, scale, int(grow.sum())

    def lower_Conv(self, step):
        node = step.nodes[0]
        w = self.fg.constants[node.inputs[1]]
        b = self.fg.constants[node.inputs[2]] if len(node.inputs) > 2 else None
        a = node.attrs
        attrs = {"strides": list(a["strides"]), "dilations": list(a["dilations"]), "pads": list(a["pads"]),
                 "groups": int(a["group"])}
        self._mac(step, "conv2d", node.inputs[0], NHWC, w, b, attrs, NHWC)

    def lower_BatchNormalization(self, step):
        node = step.nodes[0]
        gamma, beta, mean, var = (self.fg.constants[t].astype(np.float64) for t in node.inputs[1:5])
        a = gamma / np.sqrt(var + node.attrs.get("epsilon", 1e-5))
        c = a.size
        attrs = {"strides": [1, 1], "dilations": [1, 1], "pads": [0, 0, 0, 0], "groups": c}
        if len(self.fg.shapes[node.inputs[0]]) != 4:
            raise UnsupportedOpError(f"node {node.name!r}: a BatchNormalization not after a Conv needs 4-D input")
        self._mac(step, "conv2d", node.inputs[0], NHWC, a.reshape(c, 1, 1, 1), beta - mean * a, attrs, NHWC,
                  source=False)

    def lower_Gemm(self, step):
        node = step.nodes[0]
        w = self.fg.constants[node.inputs[1]]
        b = self.fg.constants[node.inputs[2]] if len(node.inputs) > 2 else None
        self._mac(step, "fully_connected", node.inputs[0], (0, 1), w, b, {}, (0, 1))

    def lower_MatMul(self, step):
        node = step.nodes[0]
        a_name, b_name = node.inputs
        rank = len(self.fg.shapes[a_name])
        if b_name in self.fg.constants:
            b = self.fg.constants[b_name]
            if b.ndim != 2:
                raise UnsupportedOpError(f"node {node.name!r}: MatMul by a constant is lowered for a 2-D constant only")
            if rank != 2:
                return lower_matmul_rows(self, step)
            self._mac(step, "fully_connected", a_name, (0, 1), b.T, None, {}, (0, 1), transposed=True)
            return
        ident = _identity(rank)
        a, b = self.need(a_name, ident), self.need(b_name, _identity(len(self.fg.shapes[b_name])))
        sa, sb = self.tensors[a].scale, self.tensors[b].scale
        scale, zp = self.out_params(step.output)
        y = self.bind(step.output, ident, scale, zp)
        real = sa * sb / scale
        self.nodes.append(Node("matmul", node.name, [a, b], [y], {"clamp": self.clamp_codes(scale, zp, step.clamp)},
                               self.rescale(real)))
        self.meta["real_multiplier"][node.name] = [real]

    def binary_operands(self, node):
        """Integer tensors for the two operands of an elementwise op, in one common layout."""
        names = node.inputs
        acts = [t for t in names if t not in self.fg.constants]
        if not acts:
            raise UnsupportedOpError(f"node {node.name!r}: both operands are constant (should have been folded)")
        rank = max(len(self.fg.shapes[t]) for t in acts)
        nhwc = rank == 4 and any(self.layout_of(t) == NHWC for t in acts if len(self.fg.shapes[t]) == 4)
        perm = NHWC if nhwc else _identity(rank)
        result = []
        for t in names:
            if t in self.fg.constants:
                codes, scale, zp = self.constant_codes(self.fg.constants[t], rank, perm)
                name = self.new_tensor(f"{node.name}/{t}", t, perm, scale, zp, shape=codes.shape)
                self.nodes.append(Node("constant", f"{name}/constant", [], [name], {}, {"value": codes}))
                result.append(name)
            else:
                if len(self.fg.shapes[t]) != rank:
                    raise UnsupportedOpError(f"node {node.name!r}: operands of different ranks are not lowered yet")
                result.append(self.need(t, perm))
        return result, perm

    def lower_Add(self, step, subtract=False):
        node = step.nodes[0]
        (a, b), perm = self.binary_operands(node)
        sa, sb = self.tensors[a].scale, self.tensors[b].scale
        scale, zp = self.out_params(step.output)
        bits = max([self.act.bits] + [8 * self.tensors[t].np_dtype.itemsize for t in (a, b) if t in self.fixed])
        params, left_shift = add_params(sa, sb, scale, self.profile, bits)
        y = self.bind(step.output, perm, scale, zp)
        attrs = {"left_shift": left_shift, "subtract": subtract,
                 "clamp": self.clamp_codes(scale, zp, step.clamp, step.output)}
        self.nodes.append(Node("add", node.name, [a, b], [y], attrs, params))
        self.meta["real_multiplier"][node.name] = [sa / scale, sb / scale]

    def lower_Sub(self, step):
        self.lower_Add(step, subtract=True)

    def lower_Mul(self, step, operands=None):
        node = step.nodes[0]
        (a, b), perm = self.binary_operands(node) if operands is None else operands
        sa, sb = self.tensors[a].scale, self.tensors[b].scale
        scale, zp = self.out_params(step.output)
        y = self.bind(step.output, perm, scale, zp)
        real = sa * sb / scale
        self.nodes.append(Node("mul", node.name, [a, b], [y], {"clamp": self.clamp_codes(scale, zp, step.clamp)},
                               self.rescale(real)))
        self.meta["real_multiplier"][node.name] = [real]

    def lower_Div(self, step):
        node = step.nodes[0]
        divisor = self.fg.constants.get(node.inputs[1])
        if divisor is None or node.inputs[0] in self.fg.constants:
            raise UnsupportedOpError(f"node {node.name!r}: Div is lowered only for a constant divisor")
        reciprocal = f"{node.inputs[1]}/reciprocal"
        self.fg.constants[reciprocal] = 1.0 / divisor
        self.fg.shapes[reciprocal] = divisor.shape
        mul = FloatNode("Mul", node.name, [node.inputs[0], reciprocal], node.outputs)
        self.lower_Mul(Step("Mul", [mul], step.output, step.clamp))

    def lower_Concat(self, step):
        node = step.nodes[0]
        rank = len(self.fg.shapes[step.output])
        perm = NHWC if rank == 4 and any(self.layout_of(t) == NHWC for t in node.inputs) else _identity(rank)
        ins = [self.need(t, perm) for t in node.inputs]
        scale, zp = self.out_params(step.output)
        y = self.bind(step.output, perm, scale, zp)
        reals = np.array([self.tensors[t].scale / scale for t in ins])
        axis = list(perm).index(node.attrs["axis"])
        self.nodes.append(Node("concat", node.name, ins, [y], {"axis": axis,
                                                                "clamp": self.clamp_codes(scale, zp, step.clamp)},
                               self.rescale(reals)))
        self.meta["real_multiplier"][node.name] = reals.tolist()

    def _tied(self, step, op, x_name, perm, attrs, out_perm=None, params=None):
        node = step.nodes[0]
        x = self.tensors[self.need(x_name, perm)]
        y = self.bind(step.output, perm if out_perm is None else out_perm, x.scale, x.zero_point,
                      fmt=self.format_of[x.name], dtype=x.dtype if x.name in self.fixed else None)
        self.nodes.append(Node(op, node.name, [x.name], [y], attrs, params or {}))

    def lower_MaxPool(self, step):
        a = step.nodes[0].attrs
        self._tied(step, "max_pool", step.nodes[0].inputs[0], NHWC,
                   {"kernel": list(a["kernel_shape"]), "strides": list(a["strides"]), "pads": list(a["pads"]),
                    "dilations": list(a.get("dilations", [1, 1]))})

    def lower_AveragePool(self, step):
        a = step.nodes[0].attrs
        self._tied(step, "avg_pool", step.nodes[0].inputs[0], NHWC,
                   {"kernel": list(a["kernel_shape"]), "strides": list(a["strides"]), "pads": list(a["pads"]),
                    "count_include_pad": bool(a.get("count_include_pad", 0))})

    def lower_Resize(self, step):
        node = step.nodes[0]
        shape_in = self.fg.shapes[node.inputs[0]]
        sizes = node.attrs["sizes"]
        if len(shape_in) != 4 or sizes[1] not in (0, shape_in[1]) or (sizes[0] not in (0, shape_in[0])
                                                                     and shape_in[0] is not None):
            raise UnsupportedOpError(f"node {node.name!r}: Resize is lowered for the spatial axes of NCHW only")
        mode = (node.attrs["coordinate_transformation_mode"], node.attrs["nearest_mode"])
        index_h, index_w = (resize_source_indices(shape_in[axis], sizes[axis] or shape_in[axis], *mode)
                            for axis in (2, 3))
        self._tied(step, "resize_nearest", node.inputs[0], NHWC, {},
                   params={"index_h": index_h.astype(np.int64), "index_w": index_w.astype(np.int64)})

    def lower_Pad(self, step):
        node = step.nodes[0]
        if node.attrs.get("mode", "constant") != "constant":
            return LOWERINGS["PadMode"](self, step)
        x_name = node.inputs[0]
        perm = self.layout_of(x_name)
        rank = len(perm)
        pads = node.attrs["pads"]
        before = [pads[p] for p in perm]
        after = [pads[rank + p] for p in perm]
        x = self.tensors[self.need(x_name, perm)]
        value = node.attrs.get("value", 0.0)
        code = int(np.clip(np.rint(value / x.scale) + x.zero_point, *x.code_range))
        self._tied(step, "pad", x_name, perm, {"pads_before": before, "pads_after": after, "value": code})

    def lower_ReduceMean(self, step, average=True):
        node = step.nodes[0]
        x_name = node.inputs[0]
        perm = self.layout_of(x_name)
        x = self.tensors[self.need(x_name, perm)]
        axes = sorted(list(perm).index(a) for a in node.attrs["axes"])
        keepdims = bool(node.attrs.get("keepdims", 1))
        if keepdims:
            out_perm = perm
        else:
            kept = [p for p in perm if p not in node.attrs["axes"]]
            out_perm = tuple(sorted(kept).index(p) for p in kept)
        count = math.prod(self.fg.shapes[x_name][a] for a in node.attrs["axes"]) if average else 1
        scale, zp = self.out_params(step.output)
        real = x.scale / (scale * count)
        y = self.bind(step.output, out_perm, scale, zp)
        self.nodes.append(Node("mean", node.name, [x.name], [y],
                               {"axes": axes, "keepdims": keepdims, "clamp": self.clamp_codes(scale, zp, step.clamp)},
                               self.rescale(real)))
        self.meta["real_multiplier"][node.name] = [real]

    def lower_Softmax(self, step):
        node = step.nodes[0]
        rank = len(self.fg.shapes[node.inputs[0]])
        perm = tuple(a for a in range(rank) if a != node.attrs["axis"]) + (node.attrs["axis"],)  # the axis last
        if self.profile.rounding not in INTEGER_ROUNDING_MODES:
            raise UnsupportedOpError(
                f"node {node.name!r}: integer softmax needs an integer rounding mode; profile "
                f"{self.profile.name!r} rounds {self.profile.rounding!r} (export the model without its softmax)")
        x = self.tensors[self.need(node.inputs[0], perm)]
        p = self.profile
        if p.activation_symmetric and p.activation_signed:
            scale, zp = 2.0 ** -(p.activation_bits - 1), 0
        else:
            scale, zp = 2.0 ** -p.activation_bits, p.activation_range()[0]
        y = self.bind(step.output, perm, scale, zp)
        params = {"exp_table": build_exp_table(x), **self.rescale(2.0**-23 / scale)}
        self.nodes.append(Node("softmax", node.name, [x.name], [y], {}, params))

    def lower_unary(self, step):
        node = step.nodes[0]
        fn = UNARY[step.kind](dict(node.attrs, **step.attrs))
        x_name = node.inputs[0]
        perm = self.layout_of(x_name)
        x = self.tensors[self.need(x_name, perm)]
        scale, zp = self.out_params(step.output)
        y = self.bind(step.output, perm, scale, zp)
        if x.dtype.endswith("16") and self.profile.int16_tables == "interpolated":
            table = build_interpolated_lut(fn, x, self.tensors[y])
            self.nodes.append(Node("lut_interpolated", node.name, [x.name], [y], {}, {"table": table}))
            return
        table = np.clip(build_lut(fn, x, self.tensors[y]), *self.tensors[y].code_range)  # codes under 8 bits
        self.nodes.append(Node("lut", node.name, [x.name], [y], {}, {"table": table}))

    def _layout(self, step, op, attrs):
        node = step.nodes[0]
        rank = len(self.fg.shapes[node.inputs[0]])
        self._tied(step, op, node.inputs[0], _identity(rank), attrs, out_perm=_identity(len(self.fg.shapes[step.output])))

    def lower_Reshape(self, step):
        self._layout(step, "reshape", {"shape": list(step.nodes[0].attrs["shape"])})

    def lower_Flatten(self, step):
        self._layout(step, "flatten", {"axis": int(step.nodes[0].attrs.get("axis", 1))})

    def lower_Transpose(self, step):
        self._layout(step, "transpose", {"perm": list(step.nodes[0].attrs["perm"])})

    def lower_Squeeze(self, step):
        self._layout(step, "squeeze", {"axes": list(step.nodes[0].attrs["axes"])})

    def lower_Unsqueeze(self, step):
        self._layout(step, "unsqueeze", {"axes": list(step.nodes[0].attrs["axes"])})


def clamp_codes(scale: float, zero_point: int, clamp: tuple[float, float] | None, profile: Profile,
                dtype: str | None = None) -> list[int]:
    """``[lo, hi]``: the activation code range of the profile (or of ``dtype``), narrowed to a fused
    activation's real ``clamp`` (each end rounded to the nearest code, ties to even)."""
    lo, hi = profile.activation_range() if dtype is None else dtype_range(dtype)
    if clamp is not None:
        if clamp[0] > -math.inf:
            lo = max(lo, min(hi, int(round(clamp[0] / scale)) + zero_point))
        if clamp[1] < math.inf:
            hi = min(hi, max(lo, int(round(clamp[1] / scale)) + zero_point))
    return [lo, hi]


def activation_qparams(lo: float, hi: float, profile: Profile) -> tuple[float, int]:
    p = profile
    scale, zp = quantization_params(lo, hi, p.activation_bits, p.activation_signed, p.activation_symmetric,
                                    power_of_two=p.power_of_two_scales)
    return float(scale), int(zp)


@dataclass
class QuantizationPlan:
    """A float graph with every quantization choice made: what :func:`lower` emits.

    Attributes
    ----------
    graph : FloatGraph
        The float graph after the passes and the PTQ rewrites.
    profile : Profile
        The chip, with the bit-width overrides applied.
    steps : list of Step
        The integer ops to emit (:func:`plan_steps`).
    qparams : dict
        ``{float tensor: (scale, zero_point)}`` for every quantization point.
    weights : dict
        ``{node name: (codes, scale, zero_point)}`` chosen for the multiply-accumulate layers; a layer
        missing here is quantized with ``weight_range_method``.
    weight_range_method : str
    meta : dict
        What was done, merged into ``graph.metadata``.
    started : float
        ``time.perf_counter()`` when planning began.
    formats : LayerFormats, optional
        Each step's format (``layer_config``); None: the profile's everywhere.
    statistics : dict
        The calibration statistics the ranges were chosen from (``plan_quantization(statistics=...)``).
    """

    graph: FloatGraph
    profile: Profile
    steps: list
    qparams: dict
    weights: dict
    weight_range_method: str
    meta: dict
    started: float
    formats: LayerFormats | None = None
    dtypes: dict = field(default_factory=dict)  # {float tensor: dtype} where not the activation dtype
    statistics: dict = field(default_factory=dict)  # {quantization point: TensorStats}; data free: empty


def plan_quantization(model, calibration=None, profile="paper", *, weight_bits=None, activation_bits=None,
                      per_channel=None, range_method=None, logits_range_method=None, weight_range_method=None,
                      batch_size=32, input_range=None, progress=True, cle=None, bias_correction=None, adaround=None,
                      pipeline=None, input_shapes=None, layer_config=None, statistics=None) -> QuantizationPlan:
    """Everything :func:`lower` needs to emit the integer model of a float ONNX model for a profile:
    float passes, PTQ (CLE, bias correction, AdaRound), activation fusion and calibrated ranges.

    Parameters
    ----------
    model : str, path, onnx.ModelProto or FloatGraph
    calibration : array, optional
        Calibration inputs (first axis = samples) in the model's layout; streamed in
        batches of ``batch_size`` (a ``np.memmap`` keeps memory bounded).  Without
        it, ranges are data free: ``beta +- 6 gamma`` after every batch norm and
        interval arithmetic elsewhere, from ``input_range`` (white paper §3.1).
    profile : str, path or Profile
        The chip; ``weight_bits``, ``activation_bits`` and ``per_channel`` override it.
    range_method : {"minmax", "percentile", "mse", "cross_entropy"}
        Activation range setting (white paper §3.1; default ``"minmax"``).
        ``"cross_entropy"`` applies to the model's outputs (the logits) and MSE
        to every other tensor.
    logits_range_method : str, optional
        Range method of the graph outputs (default: ``range_method``).
    weight_range_method : {"minmax", "mse"}
        Default ``"minmax"``.
    input_range : (float, float), optional
        The real range of the inputs, for data-free conversion.
    cle : bool
        Cross-layer equalization with bias absorption (white paper §3.2,
        :func:`intsim.ptq.cross_layer_equalization`).
    bias_correction : {"empirical", "analytic", "none"}, optional
        Bias correction of the quantized weights (§3.3).
    adaround : bool or intsim.ptq.AdaRoundOptions
        Learned weight rounding (§3.4); needs calibration data.
    pipeline : {"standard"}, optional
        A preset for all of the above (§3.5, :data:`intsim.ptq.PIPELINES`);
        every argument given explicitly overrides it.
    input_shapes : mapping of str to shape, optional
        Fix symbolic input dimensions by input name, e.g. ``{"x": (1, 3, 48, 192)}``
        (:func:`~intsim.importers.onnx.import_onnx`); kept in the graph's metadata,
        so :func:`intsim.compare` imports the float model the same way.
    layer_config : dict, optional
        Per-layer precision ``{pattern: overrides}``: node names, globs or op types mapped to
        ``weight_bits``, ``activation_bits``, ``per_channel``, ``range_method``, ...
        (:mod:`intsim.converter.layer_config`).  Where a layer reads another format than its
        producer wrote, a ``rescale`` node converts it.
    statistics : dict, optional
        ``plan.statistics`` of an earlier plan of the same model, calibration data and range methods:
        reused instead of running the calibration data again (the mixed precision search plans one
        model in many formats; the ranges are then chosen for each tensor's own format).
    """
    start = time.perf_counter()
    profile = get_profile(profile)
    overrides = {k: v for k, v in (("weight_bits", weight_bits), ("activation_bits", activation_bits),
                                   ("per_channel", per_channel)) if v is not None}
    if overrides:
        profile = profile.replace(name=f"{profile.name}+" + ",".join(f"{k}={v}" for k, v in overrides.items()),
                                  **overrides)
    settings = resolve_settings(pipeline, calibration is not None, cle=cle, bias_correction=bias_correction,
                                adaround=adaround, range_method=range_method,
                                logits_range_method=logits_range_method, weight_range_method=weight_range_method)
    range_method, weight_range_method = settings["range_method"], settings["weight_range_method"]
    if range_method not in RANGE_METHODS:
        raise ValidationError(f"range_method must be one of {', '.join(RANGE_METHODS)}, found {range_method!r}")
    logits_method = settings["logits_range_method"] or range_method
    raw = model if isinstance(model, FloatGraph) else import_onnx(model, input_shapes=input_shapes)
    batch_norms = batch_norm_statistics(raw)
    folded = simplify(raw)
    folded_steps = plan_steps(folded)
    formats = layer_formats(folded, profile, layer_config, folded_steps)
    feeds = None if calibration is None else named_feeds(raw.inputs, raw.integer_inputs, calibration, "calibration")
    data = ptq_data(raw, feeds, settings)
    layer_weights = {s.nodes[0].name: (WeightFormat.of(formats.step_profile(s)),
                                       formats.method(s, "weight_range_method", weight_range_method))
                     for s in folded_steps if formats.of_step(s)}
    ptq = apply_ptq(folded, batch_norms, profile, data, cle=settings["cle"],
                    bias_correction=settings["bias_correction"], adaround_options=settings["adaround"],
                    weight_range_method=weight_range_method, batch_size=batch_size, progress=progress,
                    layer_weights=layer_weights)
    fg = ptq.graph
    steps = plan_steps(fg)
    points = point_formats(fg, steps, formats)
    if calibration is None:
        if input_range is None:
            raise ValidationError(
                "convert needs calibration data (an array of model inputs, first axis = samples), or input_range "
                "for data-free conversion (batch-norm ranges, white paper §3.1)")
        ranges = data_free_ranges(fg, ptq.batch_norms, input_range)
        qparams = {t: activation_qparams(*ranges[t], p) for t, (p, _) in points.items()}
        samples, range_method, stats = 0, "batch_norm", {}
    else:
        methods = {t: method or (logits_method if t in fg.outputs else range_method)
                   for t, (_, method) in points.items()}
        keep_rows = {t: 4096 for t in fg.outputs if methods.get(t) == "cross_entropy"}
        # cross_entropy falls back to mse for a tensor that is not [batch, classes]: keep histograms for it.
        histogram = bool(set(methods.values()) & {*HISTOGRAM_METHODS, "cross_entropy"})
        if statistics is not None:
            # Bias correction and AdaRound change the weights, hence the activations, with the weight format.
            if settings["bias_correction"] is not None or settings["adaround"] is not None:
                raise ValidationError("convert: statistics of an earlier calibration cannot be reused with "
                                      "bias_correction or adaround (they change the activations per weight format)")
            stats = reused_statistics(statistics, list(points), histogram, keep_rows)
        else:
            session = FloatSession(fg, [t for t in points if t not in fg.inputs])

            def run_batch(rows):
                batch = batch_of(feeds, int(rows[0]), int(rows[-1]) + 1)
                return {**batch, **session.run(batch)}

            stats = calibrate(run_batch, np.arange(sample_count(feeds)), list(points), batch_size=batch_size,
                              keep_rows=keep_rows or None, progress=progress, histogram=histogram)
        qparams = {}
        producer_ops = {t: n.op for n in fg.nodes for t in n.outputs}
        for t, (p, _) in points.items():
            method = methods[t]
            if method == "cross_entropy" and (len(fg.shapes[t]) != 2 or t not in keep_rows):
                method = "mse"
            lo, hi = choose_range(stats[t], method, p.activation_bits, p.activation_signed, p.activation_symmetric,
                                  power_of_two=p.power_of_two_scales)
            if producer_ops.get(t) in CODOMAINS:
                low, high = CODOMAINS[producer_ops[t]]
                lo, hi = max(lo, low), min(hi, high)
            qparams[t] = activation_qparams(lo, hi, p)
        samples = sample_count(feeds)
    dtypes = tensor_dtypes(fg, profile)
    qparams = widen({**qparams, **{t: (1.0, 0) for t in fg.integer_inputs}}, dtypes, profile)
    meta = {"calibration": {"samples": samples, "range_method": range_method,
                            "logits_range_method": logits_method, "weight_range_method": weight_range_method},
            "ptq": {"pipeline": pipeline, "cle": settings["cle"], "bias_correction": settings["bias_correction"],
                    "adaround": settings["adaround"] is not None, **ptq.meta},
            "input_shapes": {k: [None if d is None else int(d) for d in v] for k, v in (input_shapes or {}).items()}}
    return QuantizationPlan(fg, profile, steps, qparams, ptq.weights, weight_range_method, meta, start, formats,
                            dtypes, stats)


def lower(plan: QuantizationPlan, name: str | None = None) -> Model:
    """Emit the integer :class:`~intsim.runtime.Model` a :class:`QuantizationPlan` describes.

    Every tensor of ``plan.qparams`` gets its scale and zero point, every layer of ``plan.weights`` its
    codes; the requantization multipliers, integer biases and clamp codes follow from them for the
    profile.  :func:`convert` is :func:`plan_quantization` then this; quantization-aware training
    (:mod:`intsim.qat`, white paper §4) hands its learned plan here the same way.
    """
    fg = plan.graph
    formats = plan.formats or LayerFormats(plan.profile, tied_ops=TIED_OPS)
    lowering = _Lowering(fg, plan.profile, plan.qparams, plan.weight_range_method, plan.weights, formats,
                         plan.dtypes)
    inputs, outputs = lowering.lower(plan.steps)
    lowering.meta.update(plan.meta)
    lowering.meta["float_outputs"] = list(fg.outputs)
    lowering.meta["float_inputs"] = list(fg.inputs)
    lowering.meta["integer_inputs"] = list(fg.integer_inputs)
    lowering.meta["conversion_seconds"] = time.perf_counter() - plan.started
    graph = Graph(name or fg.name or "model", plan.profile, lowering.tensors, lowering.nodes, inputs, outputs,
                  lowering.meta)
    return Model(graph)


def convert(model, calibration=None, profile="paper", *, weight_bits=None, activation_bits=None, per_channel=None,
            range_method=None, logits_range_method=None, weight_range_method=None, batch_size=32, input_range=None,
            progress=True, cle=None, bias_correction=None, adaround=None, pipeline=None, input_shapes=None,
            layer_config=None, name=None) -> Model:
    """Convert a float ONNX model into an integer :class:`~intsim.runtime.Model` for a profile.

    ``lower(plan_quantization(model, calibration, profile, ...), name)``: every option is
    :func:`plan_quantization`'s and documented there; ``name`` names the integer graph.
    """
    plan = plan_quantization(model, calibration, profile, weight_bits=weight_bits, activation_bits=activation_bits,
                             per_channel=per_channel, range_method=range_method,
                             logits_range_method=logits_range_method, weight_range_method=weight_range_method,
                             batch_size=batch_size, input_range=input_range, progress=progress, cle=cle,
                             bias_correction=bias_correction, adaround=adaround, pipeline=pipeline,
                             input_shapes=input_shapes, layer_config=layer_config)
    return lower(plan, name)
