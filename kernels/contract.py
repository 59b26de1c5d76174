"""The typed contract between the runtime and the kernels.

The graph's ops prepare their arguments once, as the records below, and call a :class:`Backend`: the
fast kernels (:mod:`intsim.kernels`) or their naive twins (:mod:`intsim.kernels.naive`), which both
satisfy it.  A record unpacks (``*requant``) into the kernels' positional parameters in the order its
fields are listed, so the kernels keep plain signatures that numba compiles.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Protocol

import numpy as np


class Requant(NamedTuple):
    """How an int32 accumulator becomes an output code (white paper §2.2):
    ``clamp(out_zero_point + rescale(acc), clamp_min, clamp_max)`` narrowed to ``out_dtype``.

    ``multiplier`` / ``shift`` (int32, one per channel or one for all; positive shift = left) and
    ``scale`` (float64, read by the float rounding modes only) come from
    :class:`intsim.fixedpoint.Rescale`; ``rounding`` is a rounding-mode code of
    :mod:`intsim.fixedpoint`; ``multiplier_bits`` the multiplier's fractional bits.
    """

    multiplier: np.ndarray
    shift: np.ndarray
    scale: np.ndarray
    rounding: int
    multiplier_bits: int
    out_zero_point: int
    clamp_min: int
    clamp_max: int
    out_dtype: np.dtype


class Accumulator(NamedTuple):
    """The MAC array's accumulator: ``acc_bits`` wide, an overflow policy code of :mod:`intsim.codes`,
    and whether uint8 x int8 pairs saturate to int16 before accumulation (x86 ``vpmaddubsw``)."""

    acc_bits: int
    overflow: int
    pairwise_int16: bool


class Launch(Protocol):
    """A bound layer: ``launch(x) -> (codes, overflow_count, pair_saturation_count, clamp_count or None)``."""

    def __call__(self, x: np.ndarray) -> tuple: ...


class Backend(Protocol):
    """What the graph's ops call; :mod:`intsim.kernels` and :mod:`intsim.kernels.naive` both provide it.

    Every name is a module-level function of the same name and parameters in both packages
    (``tests/test_kernel_twins.py`` checks it).  The MAC pairs: ``*_prepare(x_dtype, ...weights...,
    *Accumulator)`` packs a layer once, ``*_launcher(prepared, *Requant, count_clamps)`` binds it to a
    :class:`Launch`; ``*_acc`` return raw accumulators for traces.
    """

    __name__: str
    conv2d_nhwc_acc: Callable
    conv2d_nhwc_prepare: Callable
    conv2d_nhwc_launcher: Callable[..., Launch]
    fully_connected_acc: Callable
    fully_connected_prepare: Callable
    fully_connected_launcher: Callable[..., Launch]
    matmul_acc: Callable
    matmul_requantized: Callable
    requantize: Callable
    add: Callable
    add_launcher: Callable
    mul: Callable
    max_pool_nhwc: Callable
    avg_pool_nhwc: Callable
    mean_reduce: Callable
    mean_launcher: Callable
    lookup_table: Callable
    lookup_table_interpolated: Callable
    softmax_lastaxis: Callable
    pad_constant: Callable
    transpose: Callable
    transpose_launcher: Callable
    quantize_float: Callable
    quantize_launcher: Callable
    dequantize_codes: Callable
    dequantize_launcher: Callable
    softmax_gemmlowp_lastaxis: Callable
    add_float32_fma: Callable
    mul_float32: Callable
    softmax_qlinear: Callable
    avg_pool_float32_nhwc: Callable
    add_float32: Callable
    conv2d_float32_nhwc: Callable
    gemm_float32: Callable
    avg_pool_float32_island_nhwc: Callable
    global_avg_pool_float32_nhwc: Callable
    embedding_lookup: Callable
    gather_axis: Callable
    gather_elements: Callable
    layer_norm_lastaxis: Callable
    softmax_masked_lastaxis: Callable
    slice_strided: Callable
    insert_zeros_nhwc: Callable
    reduce_max: Callable
    pad_reflect_edge: Callable
    tile: Callable
    arg_max: Callable
    lstm_int8: Callable
    gru_int8: Callable
