"""TFLite operators of sequence models: the fully-integer UNIDIRECTIONAL_SEQUENCE_LSTM as an intsim
``lstm`` node, and STRIDED_SLICE (a copy of codes: Keras takes an LSTM's last step with it).

The parameters are computed as LiteRT's ``unidirectional_sequence_lstm.cc`` ``Prepare`` computes them
for the 8x8_16 kernel (five intermediate tensors, no layer normalization):

- each gate's pre-activation is Q3.12 (scale ``2**-12``); the effective scales are float32
  ``s_w * s_x / 2**-12`` and ``s_w * s_h / 2**-12``, turned into multiplier and shift by
  ``QuantizeMultiplier`` of their double value;
- the hidden product ``o * tanh(c)`` (two Q0.15 values) is requantized by ``float(2**-30 / s_hidden)``,
  ``s_hidden`` and its zero point from the fifth intermediate tensor;
- the zero points fold into effective int32 biases: ``bias - z_x * rowsum(W)`` and ``-z_h * rowsum(R)``;
- the cell state's scale must be a power of two ``2**k``, ``k <= -9`` (``CheckedLog2``), and
  ``cell_clip`` becomes ``int16(cell_clip / s_c)`` (truncated);
- peephole weights are int16, their scales ``double(2**k) * s_p / 2**-12``.

Layer-normalized and projected LSTMs, and the float or hybrid kernels, raise
:class:`~intsim.errors.UnsupportedOpError`.  The input ``[B, T, I]`` (``time_major = false``) is
transposed to the op's time-major layout and back.
"""

from __future__ import annotations

import math

import numpy as np

from intsim.errors import ModelFormatError, UnsupportedOpError
from intsim.fixedpoint import quantize_multiplier
from intsim.graph import TensorInfo
from intsim.kernels.lstm import GATE_INTEGER_BITS, MAX_CELL_SHIFT

_INPUT_WEIGHTS = (1, 2, 3, 4)
_RECURRENT_WEIGHTS = (5, 6, 7, 8)
_PEEPHOLES = (9, 10, 11)
_BIASES = (12, 13, 14, 15)
_PROJECTION = (16, 17)
_OUTPUT_STATE, _CELL_STATE = 18, 19
_LAYER_NORM = (20, 21, 22, 23)
_TANH = 4


def _multipliers(reals) -> dict:
    multipliers, shifts = zip(*(quantize_multiplier(float(r)) for r in reals))
    return np.array([int(np.ravel(m)[0]) for m in multipliers], np.int32), np.array([int(np.ravel(s)[0])
                                                                                    for s in shifts], np.int32)


def _present(ins, index):
    return index < len(ins) and ins[index] >= 0


def _weight(b, index, dtype, name):
    t = b.tensor(index)
    if t.data is None or t.dtype != dtype or t.scales.size != 1:
        raise ModelFormatError(f"{name}: LSTM input {index} ({t.name!r}) must be a constant {dtype} tensor with one "
                               f"scale, found {t.dtype} with {t.scales.size} scales")
    return t


def _cell_shift(scale: float, name: str) -> int:
    """LiteRT ``CheckedLog2``: the scale must be 2**k within 1e-3 in log2."""
    log2 = math.log(scale) / math.log(2.0)
    k = round(log2)
    if abs(log2 - k) >= 1e-3 or k > MAX_CELL_SHIFT:
        raise ModelFormatError(f"{name}: the cell state's scale {scale!r} must be a power of two 2**k with "
                               f"k <= {MAX_CELL_SHIFT}")
    return int(k)


def unidirectional_sequence_lstm(b, kind, name, op, ins, outs, options):
    """Handler of the TFLite importer's registry (:mod:`intsim.importers.tflite`); ``options`` are the
    operator's ``UnidirectionalSequenceLSTMOptions`` (or None)."""
    missing = [i for i in (0, *_INPUT_WEIGHTS[1:], *_RECURRENT_WEIGHTS[1:], *_BIASES[1:], _OUTPUT_STATE, _CELL_STATE)
               if not _present(ins, i)]
    if missing:
        raise ModelFormatError(f"{name}: UNIDIRECTIONAL_SEQUENCE_LSTM lacks inputs {missing}")
    unsupported = [what for what, indices in (("projection", _PROJECTION), ("layer normalization", _LAYER_NORM))
                   if any(_present(ins, i) for i in indices)]
    if unsupported:
        raise UnsupportedOpError(f"{name}: integer UNIDIRECTIONAL_SEQUENCE_LSTM with {' and '.join(unsupported)} "
                                 "is not supported; only plain, CIFG and peephole LSTMs")
    x, y = b.tensor(ins[0]), b.tensor(outs[0])
    if x.dtype != "int8" or y.dtype != "int8":
        raise UnsupportedOpError(f"{name}: only the fully-integer LSTM (int8 input and output) is supported, found "
                                 f"{x.dtype} -> {y.dtype}")
    intermediates = [int(v) for v in op.IntermediatesAsNumpy()] if op.IntermediatesLength() else []
    if len(intermediates) != 5:
        raise UnsupportedOpError(f"{name}: only the 8x8_16 integer LSTM (5 intermediate tensors) is supported, found "
                                 f"{len(intermediates)} intermediates")
    if options is not None and (options.FusedActivationFunction() != _TANH or options.TimeMajor()):
        raise UnsupportedOpError(f"{name}: only batch-major LSTMs with tanh activations are supported (activation "
                                 f"{options.FusedActivationFunction()}, time_major {options.TimeMajor()})")
    hidden = b.tensor(intermediates[4])
    state, cell = b.tensor(ins[_OUTPUT_STATE]), b.tensor(ins[_CELL_STATE])
    if (state.scale, state.zero_point) != (y.scale, y.zero_point) or cell.dtype != "int16":
        raise ModelFormatError(f"{name}: the output state must be quantized like the output and the cell state must "
                               f"be int16, found ({state.scale}, {state.zero_point}) vs ({y.scale}, {y.zero_point}) "
                               f"and {cell.dtype}")
    cell_shift = _cell_shift(float(cell.scale), name)
    use_cifg = not _present(ins, _INPUT_WEIGHTS[0])
    gates = [None, *_INPUT_WEIGHTS[1:]] if use_cifg else list(_INPUT_WEIGHTS)
    w_in = [None if i is None else _weight(b, ins[i], "int8", name) for i in gates]
    w_rec = [None if i is None else _weight(b, ins[i + 4], "int8", name) for i in gates]
    cells, features = w_in[1].data.shape
    gate_scale = np.float32(2.0 ** (GATE_INTEGER_BITS - 15))  # Q3.12
    zero_in, zero_rec = (np.zeros((cells, features), np.int8), np.zeros((cells, cells), np.int8))
    weight_input = np.stack([zero_in if w is None else w.data for w in w_in])
    weight_recurrent = np.stack([zero_rec if w is None else w.data for w in w_rec])
    biases = [np.zeros(cells, np.int64) if not _present(ins, i) else b.tensor(ins[i]).data.astype(np.int64)
              for i in _BIASES]
    bias_input = np.stack([bias - x.zero_point * weight_input[g].astype(np.int64).sum(axis=1)
                           for g, bias in enumerate(biases)])
    bias_recurrent = -y.zero_point * weight_recurrent.astype(np.int64).sum(axis=2)

    def effective(w, activation_scale):
        return 1.0 if w is None else float(np.float32(w.scales[0] * np.float32(activation_scale)) / gate_scale)

    params = {"weight_input": weight_input, "weight_recurrent": weight_recurrent,
              "bias_input": ((bias_input + 2**31) % 2**32 - 2**31).astype(np.int32),
              "bias_recurrent": ((bias_recurrent + 2**31) % 2**32 - 2**31).astype(np.int32)}
    for prefix, weights, activation in (("input_", w_in, x.scale), ("recurrent_", w_rec, y.scale)):
        params[f"{prefix}multiplier"], params[f"{prefix}shift"] = _multipliers(
            [effective(w, activation) for w in weights])
    params["hidden_multiplier"], params["hidden_shift"] = _multipliers(
        [np.float32(2.0**-30 / float(hidden.scale))])
    if _present(ins, _PEEPHOLES[2]):
        peep = [None if not _present(ins, i) else _weight(b, ins[i], "int16", name) for i in _PEEPHOLES]
        params["peephole"] = np.stack([np.zeros(cells, np.int16) if p is None else p.data for p in peep])
        params["peephole_multiplier"], params["peephole_shift"] = _multipliers(
            [1.0 if p is None else np.float32(2.0**cell_shift * float(p.scales[0]) / float(gate_scale))
             for p in peep])
    cell_clip = 0
    if options is not None and options.CellClip() > 0:
        cell_clip = int(min(max(np.float32(options.CellClip()) / np.float32(cell.scale), -32768.0), 32767.0))
    x_name, y_name = b.info(ins[0]), b.info(outs[0])
    batch, steps = b.infos[x_name].shape[:2]
    x_time = b.fresh(x_name, (steps, batch, features), "time_major")
    b.add("transpose", f"{name}/to_time_major", [x_name], [x_time], {"perm": [1, 0, 2]})
    y_time = f"{y_name}/time_major"
    b.infos[y_time] = TensorInfo(y_time, "int8", (steps, batch, cells), y.scale, y.zero_point)
    attrs = {"cell_shift": cell_shift, "cell_clip": cell_clip, "hidden_zero_point": int(hidden.zero_point),
             "cifg": use_cifg, "reverse": False, "rounding": "double"}
    b.add("lstm", name, [x_time], [y_time], attrs, params)
    b.add("transpose", f"{name}/to_batch_major", [y_time], [y_name], {"perm": [1, 0, 2]})


def strided_slice(b, kind, name, op, ins, outs, options):
    """STRIDED_SLICE with constant begin, end and positive strides, ``begin_mask`` / ``end_mask`` /
    ``shrink_axis_mask`` (``reference_ops::StridedSlice``: a masked bound is the axis' start or end, a
    negative one counts from the end, a shrunk axis keeps ``[begin, begin + 1)`` and is dropped)."""
    x, y = b.tensor(ins[0]), b.tensor(outs[0])
    bounds = [b.tensor(i).data for i in ins[1:4]]
    if any(v is None for v in bounds):
        raise UnsupportedOpError(f"{name}: STRIDED_SLICE with computed begin, end or strides is not supported")
    begin, end, strides = (v.reshape(-1).astype(np.int64) for v in bounds)
    masks = {key: getattr(options, key)() if options is not None else 0
             for key in ("BeginMask", "EndMask", "EllipsisMask", "NewAxisMask", "ShrinkAxisMask")}
    if masks["EllipsisMask"] or masks["NewAxisMask"] or (options is not None and options.Offset()):
        raise UnsupportedOpError(f"{name}: STRIDED_SLICE with ellipsis, new-axis masks or offset is not supported")
    if (x.scale, x.zero_point) != (y.scale, y.zero_point):
        raise ModelFormatError(f"{name}: STRIDED_SLICE input and output must be quantized alike")
    rank = len(x.shape)
    if not len(begin) == len(end) == len(strides) == rank or (strides <= 0).any():
        raise UnsupportedOpError(f"{name}: STRIDED_SLICE needs one begin, end and positive stride per axis of the "
                                 f"rank-{rank} input, found {begin.tolist()}, {end.tolist()}, {strides.tolist()}")
    x_name = b.info(ins[0])
    starts, ends = [], []
    for axis, size in enumerate(x.shape):
        start = 0 if masks["BeginMask"] >> axis & 1 else int(begin[axis]) + (size if begin[axis] < 0 else 0)
        stop = size if masks["EndMask"] >> axis & 1 else int(end[axis]) + (size if end[axis] < 0 else 0)
        if masks["ShrinkAxisMask"] >> axis & 1:
            stop = start + 1
        starts.append(min(max(start, 0), size))
        ends.append(min(max(stop, 0), size))
    steps = [int(s) for s in strides]
    if b.infos[x_name].shape[0] is None:  # the free batch axis is kept whole
        if (starts[0], ends[0], steps[0]) != (0, 1, 1):
            raise UnsupportedOpError(f"{name}: STRIDED_SLICE along the batch axis is not supported")
        starts[0], ends[0] = 0, -1
    kept = tuple(None if n is None else len(range(s, e, k))
                 for n, s, e, k in zip(b.infos[x_name].shape, starts, ends, steps))
    sliced = b.fresh(x_name, kept, "strided_slice")
    b.add("slice", name, [x_name], [sliced], {"starts": starts, "ends": ends, "steps": steps})
    target = [0 if kept[0] is None else int(kept[0])] + list(y.shape[1:])
    b.add("reshape", f"{name}/shrink", [sliced], [b.info(outs[0], batch_free=target[0] == 0)], {"shape": target})
