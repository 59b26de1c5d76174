"""The integer recurrent ops: ``lstm``, LiteRT's fully-integer LSTM over a whole sequence
(:mod:`intsim.kernels.lstm` describes the arithmetic), and ``gru`` in the same style (below).

Inputs: ``x`` int8 ``[T, B, I]`` (time major), then optionally the initial states ``h0`` int8 ``[B, C]``
(quantized like the output) and ``c0`` int16 ``[B, C]`` (scale ``2**cell_shift``, zero point 0).  Without
them the sequence starts from ``h = 0`` (the output's zero point) and ``c = 0``.  Outputs: ``y`` int8
``[T, B, C]`` (the hidden state after every step), then optionally the cell states ``[T, B, C]`` int16.

Parameters: ``weight_input`` int8 ``[4, C, I]`` and ``weight_recurrent`` int8 ``[4, C, C]`` (gates input,
forget, cell, output), int32 ``bias_input`` / ``bias_recurrent`` ``[4, C]`` (effective biases, zero
points folded in), ``input_`` / ``recurrent_`` multipliers and shifts ``[4]``, ``hidden_`` ``[1]``, and
with peepholes ``peephole`` int16 ``[3, C]`` with ``peephole_`` multipliers and shifts ``[3]``.
Attributes: ``cell_shift`` (-15..-9), ``cell_clip`` (0 = none), ``hidden_zero_point``, ``cifg`` and
``reverse`` (booleans), and optionally ``rounding``.
"""

from __future__ import annotations

import numpy as np

from intsim.errors import ValidationError
from intsim.fixedpoint import INTEGER_ROUNDING_MODES
from intsim.graph.ops.base import Op, check_range, fail, int_attr, node_rounding, param, register, rescale_params
from intsim.kernels.lstm import MAX_CELL_SHIFT, MIN_CELL_SHIFT

GATES, PEEPHOLES = 4, 3


def _bool_attr(node, key):
    value = node.attrs.get(key, False)
    if not isinstance(value, (bool, np.bool_)):
        fail(node, f"attribute {key} must be a boolean, found {value!r}")
    return bool(value)


def _dtype(node, graph, tensor, dtype, role):
    found = graph.tensors[tensor].dtype
    if found != dtype:
        fail(node, f"{role} {tensor!r} must be {dtype}, found {found}")


def _check_weights(node, graph, gates: int) -> int:
    """The checks the recurrent ops share: the time-major input, an integer rounding mode, the int8 weights
    of ``gates`` gates, the int32 biases and the input / recurrent / hidden requantization; returns the
    number of cells."""
    x = graph.tensors[node.inputs[0]]
    if len(x.shape) != 3:
        fail(node, f"input must be [time, batch, features], found shape {x.shape}")
    if node_rounding(node, graph) not in INTEGER_ROUNDING_MODES:
        fail(node, f"the integer {node.op} needs an integer rounding mode, the node rounds "
                   f"{node_rounding(node, graph)!r}")
    weight_input = param(node, "weight_input", kinds="i", ndim=3)
    found, cells, features = weight_input.shape
    if found != gates or weight_input.dtype != np.int8:
        fail(node, f"parameter weight_input must be int8 [{gates}, cells, features], found {weight_input.dtype} "
                   f"{weight_input.shape}")
    if x.shape[2] is not None and x.shape[2] != features:
        fail(node, f"input features {x.shape[2]} != weight_input features {features}")
    if param(node, "weight_recurrent", kinds="i", shape=(gates, cells, cells)).dtype != np.int8:
        fail(node, "parameter weight_recurrent must be int8")
    for key in ("bias_input", "bias_recurrent"):
        check_range(node, key, param(node, key, kinds="i", shape=(gates, cells)).astype(np.int64), -(2**31),
                    2**31 - 1)
    for prefix, channels in (("input_", gates), ("recurrent_", gates), ("hidden_", 1)):
        rescale_params(node, graph, prefix, channels)
    return cells


@register("lstm")
class Lstm(Op):
    """The integer LSTM (module docstring)."""

    def check(self, node, graph):
        if len(node.inputs) not in (1, 3) or len(node.outputs) not in (1, 2):
            fail(node, f"expects 1 or 3 inputs (x, or x, h0, c0) and 1 or 2 outputs (y, cells), found "
                       f"{len(node.inputs)} and {len(node.outputs)}")
        _dtype(node, graph, node.inputs[0], "int8", "input")
        for tensor, dtype, role in zip(node.outputs, ("int8", "int16"), ("output y", "output cells")):
            _dtype(node, graph, tensor, dtype, role)
        if len(node.inputs) == 3:
            _dtype(node, graph, node.inputs[1], "int8", "initial state h0")
            _dtype(node, graph, node.inputs[2], "int16", "initial state c0")
        cells = _check_weights(node, graph, GATES)
        if "peephole" in node.params:
            peephole = param(node, "peephole", kinds="i", shape=(PEEPHOLES, cells))
            check_range(node, "peephole", peephole.astype(np.int64), -(2**15), 2**15 - 1)
            rescale_params(node, graph, "peephole_", PEEPHOLES)
        int_attr(node, "cell_shift", lo=MIN_CELL_SHIFT, hi=MAX_CELL_SHIFT)
        int_attr(node, "cell_clip", 0, lo=0, hi=2**15 - 1)
        int_attr(node, "hidden_zero_point", lo=-255, hi=255)
        _bool_attr(node, "cifg")
        _bool_attr(node, "reverse")

    def infer(self, node, inputs, graph):
        steps, batch, _ = inputs[0].shape
        cells = node.params["weight_input"].shape[1]
        if len(inputs) == 3:
            for state, role in zip(inputs[1:], ("h0", "c0")):
                known = None not in (batch, state.shape[0] if len(state.shape) == 2 else None)
                if len(state.shape) != 2 or state.shape[1] != cells or (known and state.shape[0] != batch):
                    raise ValidationError(f"lstm {node.name!r}: initial state {role} must be [{batch}, {cells}], "
                                          f"found {state.shape}")
        return [(steps, batch, cells)] * len(node.outputs)

    def prepare(self, node, graph):
        cells = node.params["weight_input"].shape[1]
        requant = {prefix: rescale_params(node, graph, prefix, channels).kernel_args(channels)[:2]
                   for prefix, channels in (("input_", GATES), ("recurrent_", GATES), ("hidden_", 1))}
        peephole = "peephole" in node.params
        if peephole:
            peep_multiplier, peep_shift = rescale_params(node, graph, "peephole_", PEEPHOLES).kernel_args(PEEPHOLES)[:2]
            peep = node.params["peephole"].astype(np.int16)
        else:
            peep_multiplier = peep_shift = np.zeros(PEEPHOLES, np.int32)
            peep = np.zeros((PEEPHOLES, cells), np.int16)
        rounding = rescale_params(node, graph, "hidden_", 1).code
        args = (np.ascontiguousarray(node.params["weight_input"], np.int8),
                np.ascontiguousarray(node.params["weight_recurrent"], np.int8),
                node.params["bias_input"].astype(np.int32), node.params["bias_recurrent"].astype(np.int32), peep,
                *requant["input_"], *requant["recurrent_"], peep_multiplier, peep_shift,
                int(requant["hidden_"][0][0]), int(requant["hidden_"][1][0]), int(node.attrs["hidden_zero_point"]),
                rounding, graph.profile.multiplier_bits, int(node.attrs["cell_shift"]),
                int(node.attrs.get("cell_clip", 0)), _bool_attr(node, "cifg"), peephole, _bool_attr(node, "reverse"))
        return {"args": args, "cells": cells, "h_zero_point": graph.tensors[node.outputs[0]].zero_point,
                "outputs": len(node.outputs)}

    def run(self, plan, inputs, kernels):
        x = inputs[0]
        if len(inputs) == 3:
            h0, c0 = inputs[1], inputs[2]
            if h0.shape[0] != x.shape[1] or c0.shape[0] != x.shape[1]:
                raise ValidationError(f"lstm: initial states of batch {h0.shape[0]} and {c0.shape[0]} for an input "
                                      f"of batch {x.shape[1]}")
        else:
            h0 = np.full((x.shape[1], plan["cells"]), plan["h_zero_point"], np.int8)
            c0 = np.zeros((x.shape[1], plan["cells"]), np.int16)
        y, cells, saturated = kernels.lstm_int8(x, h0, c0, *plan["args"])
        return [y, cells][:plan["outputs"]], {"saturation_count": saturated}


@register("gru")
class Gru(Op):
    """The integer GRU (:mod:`intsim.kernels.gru`): input ``x`` int8 ``[T, B, I]`` and optionally ``h0`` int8
    ``[B, H]`` (quantized like the output, else the output's zero point); output ``y`` int8 ``[T, B, H]``.
    Parameters as the ``lstm`` op's for the three gates update, reset, new; attributes
    ``hidden_zero_point``, ``linear_before_reset`` and ``reverse``."""

    def check(self, node, graph):
        if len(node.inputs) not in (1, 2) or len(node.outputs) != 1:
            fail(node, f"expects 1 or 2 inputs (x, h0) and 1 output, found {len(node.inputs)} and "
                       f"{len(node.outputs)}")
        for tensor in (*node.inputs, *node.outputs):
            _dtype(node, graph, tensor, "int8", "tensor")
        _check_weights(node, graph, 3)
        int_attr(node, "hidden_zero_point", lo=-128, hi=127)
        _bool_attr(node, "linear_before_reset")
        _bool_attr(node, "reverse")

    def infer(self, node, inputs, graph):
        steps, batch, _ = inputs[0].shape
        hidden = node.params["weight_input"].shape[1]
        if len(inputs) == 2 and (len(inputs[1].shape) != 2 or inputs[1].shape[1] != hidden):
            raise ValidationError(f"gru {node.name!r}: initial state h0 must be [batch, {hidden}], found "
                                  f"{inputs[1].shape}")
        return [(steps, batch, hidden)]

    def prepare(self, node, graph):
        requant = {prefix: rescale_params(node, graph, prefix, channels).kernel_args(channels)[:2]
                   for prefix, channels in (("input_", 3), ("recurrent_", 3), ("hidden_", 1))}
        args = (np.ascontiguousarray(node.params["weight_input"], np.int8),
                np.ascontiguousarray(node.params["weight_recurrent"], np.int8),
                node.params["bias_input"].astype(np.int32), node.params["bias_recurrent"].astype(np.int32),
                *requant["input_"], *requant["recurrent_"], int(requant["hidden_"][0][0]),
                int(requant["hidden_"][1][0]), int(node.attrs["hidden_zero_point"]),
                rescale_params(node, graph, "hidden_", 1).code, graph.profile.multiplier_bits,
                _bool_attr(node, "linear_before_reset"), _bool_attr(node, "reverse"))
        return {"args": args, "hidden": node.params["weight_input"].shape[1],
                "h_zero_point": graph.tensors[node.outputs[0]].zero_point}

    def run(self, plan, inputs, kernels):
        x = inputs[0]
        h0 = inputs[1] if len(inputs) == 2 else np.full((x.shape[1], plan["hidden"]), plan["h_zero_point"], np.int8)
        if h0.shape[0] != x.shape[1]:
            raise ValidationError(f"gru: initial state of batch {h0.shape[0]} for an input of batch {x.shape[1]}")
        y, saturated = kernels.gru_int8(x, h0, *plan["args"])
        return [y], {"saturation_count": saturated}
