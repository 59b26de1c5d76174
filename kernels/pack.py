"""Weight packing, once per layer: centred weights in the micro-kernel's block layout, the encoding
of activations for the chosen ISA, the folded bias ``c0``, and the static bounds that prove the
fused path exact."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from intsim.kernels import isa as isa_module
from intsim.kernels.isa import GROUP
from intsim.kernels.mac import c0_per_output, fits_accumulator, weighted_bound
from intsim.kernels.microkernel import LANES


# --------------------------------------------------------------------------
# Packing (once per layer)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class PackedWeights:
    """Weights ``w - z_w`` [O, K] packed for one micro-kernel variant.

    ``words`` is int32 ``[O/16, groups, 16]`` (O rounded up to 16, padded
    channels zero), each word one group of ``GROUP[variant]`` reduction values
    of one output channel; ``c0`` int32 [O rounded up] is the accumulator start
    (wrapped to int32; see the module docstring for why wrapping is exact).
    Activations are encoded as ``x - a_sub`` into ``code_dtype``.  The
    reduction is ``taps`` runs of equal length (the KH x KW taps of a conv
    packed for the implicit GEMM, else one run), each padded with zero
    weights to a whole number of groups.
    """

    variant: int
    words: np.ndarray
    c0: np.ndarray
    groups: int
    a_sub: int
    pad_code: int
    code_dtype: np.dtype
    taps: int = 1

    @property
    def row_len(self) -> int:
        return self.groups * GROUP[self.variant]

    @property
    def tap_groups(self) -> int:
        """Groups (int32 words) per tap."""
        return self.groups // self.taps

    @property
    def code_sample(self) -> np.ndarray:
        """A one-element array of ``code_dtype``: how the numba kernels learn the dtype."""
        return np.zeros(1, self.code_dtype)


def encoding_for(isa, x_dtype, x_zero_point, w_min, w_max):
    """``(variant, a_sub, code_dtype)`` for activations of ``x_dtype``, or ``None`` if no encoding is exact."""
    info = np.iinfo(x_dtype)
    if info.bits != 8:
        return None
    if isa.quads is not None and -128 <= w_min and w_max <= 127:
        a_sub = 0 if info.min == 0 else -128
        if 0 <= x_zero_point - a_sub <= 255:
            return isa.quads, a_sub, np.dtype(np.uint8)
    lo, hi = min(info.min, x_zero_point) - x_zero_point, max(info.max, x_zero_point) - x_zero_point
    if -(2**15) <= min(lo, w_min) and max(hi, w_max) < 2**15:
        return isa.pairs, x_zero_point, np.dtype(np.int16)
    return None


def pack_weights(w_centred, x_dtype, x_zero_point, bias, taps=1):
    """:class:`PackedWeights` of ``w_centred`` [O, K] (int64, ``w - z_w``) for the current ISA, or ``None``.

    ``taps`` splits K into that many equal runs, each padded to whole groups.
    """
    n_out, depth = w_centred.shape
    w_min, w_max = (int(w_centred.min()), int(w_centred.max())) if w_centred.size else (0, 0)
    encoding = encoding_for(isa_module.current_isa(), x_dtype, int(x_zero_point), w_min, w_max)
    if encoding is None:
        return None
    variant, a_sub, code_dtype = encoding
    group = GROUP[variant]
    tap_depth = depth // taps
    groups = taps * -(-tap_depth // group)
    padded_out = -(-n_out // LANES) * LANES
    grid = np.zeros((padded_out, taps, groups // taps * group), np.int16 if group == 2 else np.int8)
    grid[:n_out, :, :tap_depth] = w_centred.reshape(n_out, taps, tap_depth)
    words = grid.reshape(padded_out // LANES, LANES, groups, group).transpose(0, 2, 1, 3)
    words = np.ascontiguousarray(words).view(np.int32).reshape(-1)
    c0 = np.zeros(padded_out, np.int64)
    c0[:n_out] = bias.astype(np.int64) + (a_sub - int(x_zero_point)) * w_centred.sum(axis=1)
    c0 = c0.astype(np.int32)  # wraps: exact modulo 2**32
    return PackedWeights(variant, words, c0, groups, a_sub, int(x_zero_point) - a_sub, code_dtype, taps)


def static_fast(x_dtype, x_zero_point, w_rows, w_zero_point, bias, acc_bits, pairwise_int16):
    """Whether no step of the hardware order can overflow for any input of ``x_dtype``."""
    if pairwise_int16 or acc_bits > 32:
        return False
    info = np.iinfo(x_dtype)
    max_x = max(abs(int(info.min)), abs(int(info.max)), abs(int(x_zero_point)))
    c0 = c0_per_output(x_zero_point, w_rows, w_zero_point, bias)
    return fits_accumulator(weighted_bound(c0, w_rows.shape[1], max_x, w_rows, w_zero_point), acc_bits)


def matmul_static_fast(dtype, a_zero_point, b_zero_point, depth, acc_bits, pairwise_int16):
    """:func:`static_fast` for :func:`~intsim.kernels.mac.matmul_acc`'s order, both operands of ``dtype``."""
    if pairwise_int16 or acc_bits > 32:
        return False
    info = np.iinfo(dtype)
    max_a = max(abs(int(info.min)), abs(int(info.max)), abs(a_zero_point))
    max_b = max(abs(int(info.min)), abs(int(info.max)), abs(b_zero_point))
    c0 = depth * a_zero_point * b_zero_point
    bound = abs(c0) + depth * (max_a * max_b + abs(b_zero_point) * max_a + abs(a_zero_point) * max_b)
    return fits_accumulator(bound, acc_bits)
