"""Fast conv2d / fully-connected / matmul with the requantization fused into the epilogue.

Each op comes as a pair: ``*_prepare`` packs the weights once (when a model is built),
``*_requantized`` runs a batch and returns output codes without writing an int32 tensor (white
paper §2.1 MAC array, §2.2 requantization); ``*_launcher`` binds a prepared layer for repeated calls.

The derivation in full: ``docs/speed.md``, *The fused GEMM path in detail*.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from intsim.kernels import isa as isa_module
from intsim.kernels.isa import GROUP
from intsim.kernels.depthwise import PackedDepthwise, depthwise_calls, depthwise_run, pack_depthwise
from intsim.kernels.mac import (
    conv2d_out,
    conv2d_nhwc_acc,
    epilogue_params,
    fully_connected_acc,
    matmul_acc,
    requantize,
    requantized_in_registers,
)
from intsim.kernels.fully_connected import (
    GEMV_MAX_ROWS,
    InPlaceWeights,
    GemvLaunch,
    InPlaceLaunch,
    in_place_weights,
)
from intsim.kernels.gemm_chunk import (
    GEMM_SETTINGS,
    chunk_rows,
    chunk_settings,
    conv2d_gemm_serial,
    conv2d_gemm_threaded,
    pad_encode,
    window_rows,
)
from intsim.kernels.pack import PackedWeights, encoding_for, matmul_static_fast, pack_weights, static_fast
from intsim.kernels.threads import set_threads  # noqa: F401  (public here too)
from intsim.kernels.threads import run_calls, splits_among, threads_to_use


# --------------------------------------------------------------------------
# Public pairs: prepare once, run many times
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedConv:
    """A conv2d layer ready to run: packed weights (or ``None``) plus the unfused kernel's arguments."""

    acc_args: tuple
    x_dtype: np.dtype
    packed: PackedWeights | None = None
    depthwise: PackedDepthwise | None = None


def conv2d_nhwc_prepare(x_dtype, x_zero_point, w, w_zero_point, bias, strides, dilations, pads, groups, acc_bits,
                        overflow, pairwise_int16) -> PreparedConv:
    """Pack a conv2d layer for :func:`conv2d_nhwc_requantized`.

    Parameters are those of :func:`intsim.kernels.mac.conv2d_nhwc_acc`, with
    the activation dtype ``x_dtype`` in place of the activations.
    """
    x_dtype = np.dtype(x_dtype)
    acc_args = (x_zero_point, w, w_zero_point, bias, tuple(strides), tuple(dilations), tuple(pads), groups,
                acc_bits, overflow, pairwise_int16)
    w_rows = w.reshape(w.shape[0], -1)
    if not static_fast(x_dtype, x_zero_point, w_rows, w_zero_point, bias, acc_bits, pairwise_int16):
        return PreparedConv(acc_args, x_dtype)
    w_centred = w_rows.astype(np.int64) - w_zero_point.astype(np.int64).reshape(-1, 1)
    cout, _, _, cin_g = w.shape
    if groups == 1:
        return PreparedConv(acc_args, x_dtype, packed=pack_weights(w_centred, x_dtype, x_zero_point, bias,
                                                            taps=w.shape[1] * w.shape[2]))
    if cin_g == 1 and cout == groups:
        w_min, w_max = (int(w_centred.min()), int(w_centred.max())) if w_centred.size else (0, 0)
        isa = isa_module.current_isa()
        encoding = encoding_for(isa, x_dtype, int(x_zero_point), w_min, w_max)
        if encoding is not None:
            _, a_sub, code_dtype = encoding
            return PreparedConv(acc_args, x_dtype, depthwise=pack_depthwise(w_centred, isa.pairs, a_sub, code_dtype,
                                                                            x_zero_point, bias))
    return PreparedConv(acc_args, x_dtype)


class _GemmLaunch:
    """The fused GEMM over NHWC codes of one shape, everything but the codes worked out once.

    ``run(x4, out)`` writes ``out`` [M, Cout] and returns the clamp count (``None`` when
    ``count_clamps`` is false: then FLOAT32_RINT tiles are requantized in registers).
    The implicit GEMM reads the activations where they lie when the input
    already is the packed form (no padding, nothing to subtract, whole groups
    per pixel; int8 codes under the quads count, as the micro-kernel flips them
    to x + 128), and one encoded, padded copy (``padded_shape``) otherwise.
    """

    def __init__(self, x_shape, x_dtype, packed, out_h, out_w, kernel, strides, dilations, pads, requant,
                 count_clamps=True):
        multiplier, shift, scale, rounding, multiplier_bits, out_zero_point, clamp_min, clamp_max = requant
        (kernel_h, kernel_w), (sh, sw), (dh, dw) = kernel, strides, dilations
        n_taps, tap_groups = kernel_h * kernel_w, packed.tap_groups
        tap_row = tap_groups * GROUP[packed.variant]
        # int8 codes under the uint8 quads are read raw, as uint32 words, and flipped to x + 128 in the
        # micro-kernel (microkernel.flips): where that is all the encoding there is to do (no padding,
        # whole groups per pixel) they are read in place, else the copy keeps them raw, its border the
        # raw zero point.
        self.flip = packed.code_dtype == np.uint8 and np.dtype(x_dtype) == np.int8
        raw = self.flip or (packed.a_sub == 0 and x_dtype == packed.code_dtype)
        in_place = tuple(pads) == (0, 0, 0, 0) and raw and x_shape[3] == tap_row
        if packed.taps != n_taps:
            raise ValueError(f"weights packed in {packed.taps} taps for a {kernel_h}x{kernel_w} window")
        padded_shape = None
        source_h, source_w = x_shape[1:3]
        if not in_place:
            # The rows and columns some window reaches (none when the output is empty).
            source_h = (out_h - 1) * sh + (kernel_h - 1) * dh + 1 if out_h else 0
            source_w = (out_w - 1) * sw + (kernel_w - 1) * dw + 1 if out_w else 0
            padded_shape = (x_shape[0], source_h, source_w, tap_row)
        if dw == 1:  # a window row is one run of kernel_w pixels: one tap per row
            taps, groups = np.arange(kernel_h, dtype=np.int64) * dh * source_w * tap_groups, kernel_w * tap_groups
        else:
            taps = np.array([(kh * dh * source_w + kw * dw) * tap_groups for kh in range(kernel_h)
                             for kw in range(kernel_w)], np.int64)
            groups = tap_groups
        self.padded_shape, self.taps, self.packed, self.pads = padded_shape, taps, packed, pads
        n_rows = x_shape[0] * out_h * out_w
        in_registers = requantized_in_registers(rounding, out_zero_point, clamp_min, clamp_max, count_clamps)
        rows_per_chunk = chunk_rows(n_rows, in_registers)
        self.settings = np.array(
            [out_h, out_w, sh, sw, groups, rows_per_chunk, source_h, source_w, tap_groups, rounding, multiplier_bits,
             out_zero_point, clamp_min, clamp_max, in_registers,
             *chunk_settings(packed.variant, packed.c0.shape[0], n_rows, rows_per_chunk)], np.int64)
        self.chunks = int(self.settings[GEMM_SETTINGS.index("n_chunks")])
        self.count_clamps = count_clamps
        self.epilogue = epilogue_params(multiplier, shift, scale, rounding, multiplier_bits, in_registers,
                                        len(multiplier), packed.c0.shape[0])
        self.n_rows = n_rows
        self.rows = None  # the window row offsets (window_rows), at the first calls()
        self.macs = n_rows * n_taps * x_shape[3] * packed.c0.shape[0]

    def calls(self, x4, out, threads=1):
        """The numba calls that write ``out`` from ``x4``, as ``[(function, arguments)]`` run in order
        (the last returns the clamp count), for a caller holding fixed arrays that repeats them
        (:class:`intsim.runtime.bound.BoundRun`).  The caller runs them with numba's thread count
        ``threads``: the threaded core where the layer splits among all of them
        (:func:`~intsim.kernels.threads.splits_among`), else the serial one."""
        packed = self.packed
        core = conv2d_gemm_threaded if splits_among(threads, self.chunks, self.macs) else conv2d_gemm_serial
        calls = []
        words = np.uint32 if self.flip else np.int32
        if self.padded_shape is not None:  # one encoded copy of the input with its padding, read in place by every tap
            padded = np.empty(self.padded_shape, np.int8 if self.flip else packed.code_dtype)
            a_sub, pad_code = (0, packed.pad_code + packed.a_sub) if self.flip else (packed.a_sub, packed.pad_code)
            calls.append((pad_encode, (x4, self.pads[0], self.pads[1], a_sub, pad_code, padded)))
            source = padded.reshape(-1).view(words)
        else:
            source = x4.reshape(-1).view(words)
        if self.rows is None:  # read only by the cores: one array serves every call list of the launch
            self.rows = window_rows(self.n_rows, self.settings)
        calls.append((core, (packed.variant, source, self.taps, packed.words, packed.c0, *self.epilogue, self.rows,
                             self.settings, out)))
        return calls

    def run(self, x4, out):
        count = run_calls(self.calls(x4, out, threads_to_use(self.chunks, self.macs)))
        return int(count) if self.count_clamps else None


def _run_gemm(x4, packed, out_h, out_w, kernel, strides, dilations, pads, requant, out):
    """The fused GEMM path over NHWC codes ``x4`` into ``out`` [M, Cout], once; returns the clamp count."""
    return _GemmLaunch(x4.shape, x4.dtype, packed, out_h, out_w, kernel, strides, dilations, pads,
                       requant).run(x4, out)


def _unfused(acc_kernel, x, acc_args, requant_args):
    acc, overflow_count, pair_count = acc_kernel(x, *acc_args)
    out, saturation_count = requantize(acc, 0, *requant_args)
    return out, overflow_count, pair_count, saturation_count


def conv2d_nhwc_requantized(x, prepared, multiplier, shift, scale, rounding, multiplier_bits, out_zero_point,
                            clamp_min, clamp_max, out_dtype, count_clamps=True):
    """Output codes of a conv2d layer: :func:`~intsim.kernels.mac.conv2d_nhwc_acc` then
    :func:`~intsim.kernels.mac.requantize` (white paper §2.1-§2.2), fused where exact.

    Parameters
    ----------
    x : array [N, H, W, Cin] of the ``x_dtype`` given to :func:`conv2d_nhwc_prepare`
    prepared : PreparedConv
    multiplier, shift, scale, rounding, multiplier_bits, out_zero_point, clamp_min, clamp_max, out_dtype
        As in :func:`~intsim.kernels.mac.requantize` (per output channel).
    count_clamps : bool
        Whether to count the outputs the clamp changed.  Without the count
        (a model's run, whose statistics come from a trace) ``FLOAT32_RINT``
        tiles are requantized in the micro-kernel's registers.

    Returns
    -------
    out : ``out_dtype`` array [N, OH, OW, Cout]
    overflow_count, pair_saturation_count : int
    saturation_count : int, or ``None`` without ``count_clamps``
    """
    return conv2d_nhwc_launcher(prepared, multiplier, shift, scale, rounding, multiplier_bits, out_zero_point,
                                clamp_min, clamp_max, out_dtype, count_clamps)(x)


def conv2d_nhwc_launcher(prepared, multiplier, shift, scale, rounding, multiplier_bits, out_zero_point, clamp_min,
                         clamp_max, out_dtype, count_clamps=True):
    """``launch(x)``, equal to :func:`conv2d_nhwc_requantized` of ``x`` with these arguments, for a caller
    that runs one layer many times (a model's bound step).

    What depends only on the layer, the requantization and the input shape
    (the output shape, the GEMM's settings and per-channel arrays) is worked
    out at the first call with each input shape; a repeat call is one lookup
    and one numba call.  :func:`set_threads` still applies to the next call.
    """
    return _ConvLauncher(prepared, (multiplier, shift, scale, rounding, multiplier_bits, out_zero_point, clamp_min,
                                    clamp_max, out_dtype), count_clamps)


class _Launcher:
    """One layer and requantization; ``launcher(x)`` returns ``(out, overflow_count,
    pair_saturation_count, saturation_count)``, the last ``None`` without ``count_clamps``.
    Subclasses say which layers are fused (``_fused``), what is worked out per input shape
    (``_record``), and how it runs (``_run``)."""

    acc_kernel = None  # the unfused accumulator kernel

    def __init__(self, prepared, requant_args, count_clamps):
        self.prepared, self.requant_args, self.out_dtype = prepared, requant_args, requant_args[-1]
        self.count_clamps = count_clamps
        self.fused = self._fused(prepared)
        self.records = {}  # input shape -> what _record worked out for it

    def __call__(self, x):
        prepared = self.prepared
        if not self.fused or x.dtype != prepared.x_dtype:
            result = _unfused(self.acc_kernel, x, prepared.acc_args, self.requant_args)
        else:
            result = self._run(x, *self._record_for(x))
        return result if self.count_clamps else result[:3] + (None,)

    def _record_for(self, x):
        record = self.records.get(x.shape)
        if record is None:
            record = self.records[x.shape] = self._record(x)
        return record

    def calls(self, x, out, threads=1):
        """``[(numba function, arguments)]`` that write ``out`` from C-contiguous ``x`` as one call of
        this launcher would (no clamp count, no overflow possible: the fused path only), or ``None``
        where the layer is not fused; for a caller that keeps ``x`` and ``out`` and repeats them with
        numba's thread count ``threads`` (a layer that does not split among that many runs serial)."""
        if not self.fused or x.dtype != self.prepared.x_dtype or self.count_clamps or not x.flags.c_contiguous:
            return None
        return self._calls(x, out, threads, *self._record_for(x))


class _ConvLauncher(_Launcher):
    acc_kernel = staticmethod(conv2d_nhwc_acc)

    @staticmethod
    def _fused(prepared):
        return prepared.packed is not None or prepared.depthwise is not None

    def _record(self, x):
        # (output shape, output rows shape, _GemmLaunch or None (depthwise))
        _, w, _, _, strides, dilations, pads, _, _, _, _ = self.prepared.acc_args
        shape = conv2d_out(x, w, strides, dilations, pads).shape
        if self.prepared.packed is None:
            return shape, None, None
        launch = _GemmLaunch(x.shape, x.dtype, self.prepared.packed, shape[1], shape[2], w.shape[1:3], strides,
                             dilations, pads, self.requant_args[:-1], self.count_clamps)
        return shape, (-1, shape[3]), launch

    def _run(self, x, shape, rows_shape, launch):
        out = np.empty(shape, self.out_dtype)
        x = np.ascontiguousarray(x)
        if launch is None:
            return out, 0, 0, _depthwise_requantized(x, self.prepared, self.requant_args[:-1], out, self.count_clamps)
        return out, 0, 0, launch.run(x, out.reshape(rows_shape))

    def _calls(self, x, out, threads, shape, rows_shape, launch):
        if launch is None:
            chunks = threads if splits_among(threads, *_depthwise_work(out, self._depthwise_args()[1])) else 1
            return depthwise_calls(x, *self._depthwise_args(), chunks, self.requant_args[:-1], out, False)
        return launch.calls(x, out.reshape(rows_shape), threads)

    def _depthwise_args(self):
        _, w, _, _, strides, dilations, pads, _, _, _, _ = self.prepared.acc_args
        return self.prepared.depthwise, w.shape[1:3], strides, dilations, pads


def _depthwise_requantized(x, prepared, requant, out, count_clamps):
    """The direct depthwise kernel over NHWC codes ``x`` into ``out``; returns the clamp count (or ``None``)."""
    _, w, _, _, strides, dilations, pads, _, _, _, _ = prepared.acc_args
    chunks = threads_to_use(*_depthwise_work(out, w.shape[1:3]))
    return depthwise_run(x, prepared.depthwise, w.shape[1:3], strides, dilations, pads, chunks, requant, out,
                         count_clamps)


def _depthwise_work(out, kernel):
    """(chunks, multiply-accumulates) of a depthwise layer writing ``out`` [N, OH, OW, C]: its output rows."""
    return out.shape[0] * out.shape[1], out.size * kernel[0] * kernel[1]


@dataclass(frozen=True)
class PreparedFullyConnected:
    """A fully-connected layer ready to run: the unfused kernel's arguments (the graph's weights among
    them) plus what the fast path needs: :class:`InPlaceWeights` for int8 weights (read where they
    lie), else packed weights, else neither (the checked kernels)."""

    acc_args: tuple
    x_dtype: np.dtype
    packed: PackedWeights | None = None
    in_place: InPlaceWeights | None = None


def fully_connected_prepare(x_dtype, x_zero_point, w, w_zero_point, bias, acc_bits, overflow,
                            pairwise_int16) -> PreparedFullyConnected:
    """Prepare a fully-connected layer for :func:`fully_connected_requantized`: int8 weights in C
    order are read where they lie (per-channel start values only), other weights are packed.

    Parameters are those of :func:`intsim.kernels.mac.fully_connected_acc`, with
    the activation dtype ``x_dtype`` in place of the activations.
    """
    x_dtype = np.dtype(x_dtype)
    acc_args = (x_zero_point, w, w_zero_point, bias, acc_bits, overflow, pairwise_int16)
    if not static_fast(x_dtype, x_zero_point, w, w_zero_point, bias, acc_bits, pairwise_int16):
        return PreparedFullyConnected(acc_args, x_dtype)
    in_place = in_place_weights(x_dtype, x_zero_point, w, w_zero_point, bias)
    if in_place is not None:
        return PreparedFullyConnected(acc_args, x_dtype, in_place=in_place)
    w_centred = w.astype(np.int64) - w_zero_point.astype(np.int64).reshape(-1, 1)
    return PreparedFullyConnected(acc_args, x_dtype, pack_weights(w_centred, x_dtype, x_zero_point, bias))


def fully_connected_requantized(x, prepared, multiplier, shift, scale, rounding, multiplier_bits, out_zero_point,
                                clamp_min, clamp_max, out_dtype, count_clamps=True):
    """Output codes of a fully-connected layer: :func:`~intsim.kernels.mac.fully_connected_acc` then
    :func:`~intsim.kernels.mac.requantize`, fused where exact: the kernel over the int8 weights in
    place (:mod:`intsim.kernels.rowdot`), or for packed weights a GEMV launch for ``N`` up to
    :data:`GEMV_MAX_ROWS` (batch-1 inference), else a 1x1 conv over ``N`` pixels (white paper §2.1-§2.2).

    Returns ``(out [N, O], overflow_count, pair_saturation_count, saturation_count)``, the last
    ``None`` without ``count_clamps`` (see :func:`conv2d_nhwc_requantized`).
    """
    return fully_connected_launcher(prepared, multiplier, shift, scale, rounding, multiplier_bits, out_zero_point,
                                    clamp_min, clamp_max, out_dtype, count_clamps)(x)


def fully_connected_launcher(prepared, multiplier, shift, scale, rounding, multiplier_bits, out_zero_point,
                             clamp_min, clamp_max, out_dtype, count_clamps=True):
    """``launch(x)``, equal to :func:`fully_connected_requantized` of ``x`` with these arguments, its
    launch worked out once per input shape (see :func:`conv2d_nhwc_launcher`)."""
    return _FullyConnectedLauncher(prepared, (multiplier, shift, scale, rounding, multiplier_bits, out_zero_point,
                                              clamp_min, clamp_max, out_dtype), count_clamps)


class _FullyConnectedLauncher(_Launcher):
    acc_kernel = staticmethod(fully_connected_acc)

    @staticmethod
    def _fused(prepared):
        return prepared.packed is not None or prepared.in_place is not None

    def _record(self, x):
        # (output shape, InPlaceLaunch, GemvLaunch or _GemmLaunch)
        n_batch, depth = x.shape
        w = self.prepared.acc_args[1]
        shape, requant = (n_batch, w.shape[0]), self.requant_args[:-1]
        packed = self.prepared.packed
        if self.prepared.in_place is not None:
            if n_batch <= GEMV_MAX_ROWS or self.batch_packed is None:
                return shape, InPlaceLaunch(w, self.prepared.in_place, requant, depth)
            packed = self.batch_packed
        elif n_batch <= GEMV_MAX_ROWS:
            return shape, GemvLaunch(packed, requant)
        return shape, _GemmLaunch((n_batch, 1, 1, depth), x.dtype, packed, 1, 1, (1, 1), (1, 1), (1, 1),
                                  (0, 0, 0, 0), requant, self.count_clamps)

    @cached_property
    def batch_packed(self):
        # Batches of more than GEMV_MAX_ROWS rows run faster as the packed GEMM (the in-place
        # kernel's reduction tree weighs more per row there: FC 512->1000 at batch 8 took 1.31x
        # onnxruntime in place, 1.20x packed), so the first such batch packs the weights, once per
        # launcher; batch-1 inference never holds that copy.  None where they cannot be packed.
        x_zero_point, w, w_zero_point, bias = self.prepared.acc_args[:4]
        w_centred = w.astype(np.int64) - w_zero_point.astype(np.int64).reshape(-1, 1)
        return pack_weights(w_centred, self.prepared.x_dtype, x_zero_point, bias)

    def _run(self, x, shape, launch):
        out = np.empty(shape, self.out_dtype)
        return out, 0, 0, launch.run(self._launch_input(x, launch), out)

    def _calls(self, x, out, threads, shape, launch):
        return launch.calls(self._launch_input(x, launch), out, threads)

    @staticmethod
    def _launch_input(x, launch):
        if isinstance(launch, _GemmLaunch):  # N rows as N pixels of a 1x1 conv
            return np.ascontiguousarray(x).reshape(x.shape[0], 1, 1, x.shape[1])
        return x


def matmul_requantized(a, a_zero_point, b, b_zero_point, acc_bits, overflow, pairwise_int16, multiplier, shift,
                       scale, rounding, multiplier_bits, out_zero_point, clamp_min, clamp_max, out_dtype):
    """Output codes of ``a [B, M, K] @ b [B, K, N]``: :func:`~intsim.kernels.mac.matmul_acc` then a
    per-tensor :func:`~intsim.kernels.mac.requantize` (``multiplier`` etc. of length 1), fused where exact.

    ``b`` is packed on every call (it is an activation).  Returns
    ``(out [B, M, N], overflow_count, pair_saturation_count, saturation_count)``.
    """
    n_batch, rows, depth = a.shape
    cols = b.shape[2]
    requant = (multiplier, shift, scale, rounding, multiplier_bits, out_zero_point, clamp_min, clamp_max)
    fast = a.dtype == b.dtype and np.iinfo(a.dtype).bits == 8 and matmul_static_fast(
        a.dtype, int(a_zero_point), int(b_zero_point), depth, acc_bits, pairwise_int16)
    packs = [pack_weights(b[i].T.astype(np.int64) - int(b_zero_point), a.dtype, a_zero_point, np.zeros(cols, np.int64))
             for i in range(n_batch)] if fast else []
    if not fast or any(p is None for p in packs):
        acc, overflow_count, pair_count = matmul_acc(a, a_zero_point, b, b_zero_point, acc_bits, overflow,
                                                     pairwise_int16)
        out, saturation_count = requantize(acc.reshape(-1, 1), 0, *requant, out_dtype)
        return out.reshape(acc.shape), overflow_count, pair_count, saturation_count
    per_channel = tuple(np.full(cols, np.asarray(v).reshape(-1)[0]) for v in requant[:3]) + requant[3:]
    out = np.empty((n_batch, rows, cols), out_dtype)
    saturations = 0
    for i, packed in enumerate(packs):
        x4 = np.ascontiguousarray(a[i]).reshape(rows, 1, 1, depth)
        saturations += _run_gemm(x4, packed, 1, 1, (1, 1), (1, 1), (1, 1), (0, 0, 0, 0), per_channel, out[i])
    return out, 0, 0, saturations
