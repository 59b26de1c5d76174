"""The runtime: executes an integer graph with the fast kernels or their naive twins.

``Model.run_int`` is the bit-exact datapath (integer codes in, integer codes
out); ``Model.run`` quantizes float inputs with the input tensors' parameters
and dequantizes the outputs; ``Model.trace`` keeps every intermediate tensor,
the raw accumulators of multiply-accumulate nodes and per-node statistics.
Inputs are in the layout of the model the graph came from; the graph itself
carries any transposes to NHWC.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from intsim import kernels as fast_kernels
from intsim.kernels import naive as naive_kernels
from intsim.kernels.contract import Backend
from intsim.errors import InputWarning, OverflowWarning, ValidationError
from intsim.fixedpoint import FLOAT32_RINT, FLOAT64_HALF_AWAY
from intsim.graph import Graph, TensorInfo
from intsim.graph.ir import shape_text
from intsim.codes import dtype_range
from intsim.graph.ops import get_op
from intsim.runtime.plan import RunPlan, raise_overflow
from intsim.runtime.shapeguard import check_node_inputs

# The kernel backends a model runs on; both satisfy the typed contract of :mod:`intsim.kernels.contract`.
BACKENDS: dict[str, Backend] = {"fast": fast_kernels, "naive": naive_kernels}

# How Model.run turns float inputs into codes: ``clamp(round(x / scale) + zero_point)`` with the
# division in the float type and the rounding named here (a code of :mod:`intsim.fixedpoint`;
# ``FLOAT64_HALF_AWAY`` rounds half away from zero in any float type).  A graph picks one with
# ``graph.metadata["input_quantization"]``; otherwise its profile decides ("float32_rint" for
# profiles that requantize like onnxruntime, "float64_rint" for the rest).
INPUT_QUANTIZATION = {
    "float64_rint": (np.float64, FLOAT32_RINT),  # intsim's default: ties to even
    "float32_rint": (np.float32, FLOAT32_RINT),  # onnxruntime QuantizeLinear
    "float32_half_away": (np.float32, FLOAT64_HALF_AWAY),  # LiteRT QUANTIZE (reference AffineQuantize)
}


@dataclass
class Trace:
    """Everything one forward pass computed.

    Attributes
    ----------
    tensors : dict
        Every tensor (graph inputs included) by name, as integer codes.
    accumulators : dict
        Raw int32 accumulators (after bias, before requantization) of each
        multiply-accumulate node, by node name.
    stats : dict
        Per node name: ``saturation_count`` (outputs a clamp or an int32
        saturation on the way changed, each counted once; a trace of float
        inputs adds ``"quantize:<input>"`` with the input quantization's
        clamps), and for multiply-accumulate nodes ``overflow_count``
        (outputs whose accumulation left ``accumulator_bits``),
        ``pair_saturation_count`` (int16 pair sums clipped under
        ``pairwise_int16``), ``max_abs_accumulator`` (largest final
        accumulator magnitude) and ``accumulator_headroom_bits``
        (``accumulator_bits - 1 - bit_length(max_abs_accumulator)``; negative
        when the accumulator overflowed).
    """

    tensors: dict = field(default_factory=dict)
    accumulators: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)

    def table(self) -> str:
        """The per-node statistics as a plain-text table."""
        keys = ("saturation_count", "overflow_count", "pair_saturation_count", "max_abs_accumulator",
                "accumulator_headroom_bits")
        header = ["node", "saturated", "overflows", "pair sat.", "max |acc|", "headroom"]
        rows = [[name] + [str(s.get(k, "")) for k in keys] for name, s in self.stats.items()]
        widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [header] + rows]
        return "\n".join(lines)


class Model:
    """An integer graph ready to run.

    Parameters
    ----------
    graph : Graph
        A validated integer graph.
    backend : {"fast", "naive"}
        ``"fast"`` runs the numba kernels, ``"naive"`` their plain twins
        (the living definition the fast kernels are tested against).
    """

    def __init__(self, graph: Graph, backend: str = "fast"):
        if not isinstance(graph, Graph):
            raise ValidationError(f"Model needs a Graph, found {type(graph).__name__}")
        if backend not in BACKENDS:
            raise ValidationError(f"backend must be one of {', '.join(BACKENDS)}, found {backend!r}")
        self.graph = graph
        self.backend = backend
        self._kernels = BACKENDS[backend]
        self._steps = [(get_op(n.op, n.name), n, get_op(n.op, n.name).prepare(n, graph)) for n in graph.nodes]
        self._plan = None
        self._checked_signatures = {}
        self._code_ranges = {}
        self._float_launches = {}  # Model.run's input types, shapes, dtypes -> (signature, launchers) or None
        self._output_infos = self.outputs
        self._dequantize_launches = {}  # (output index, code dtype) -> dequantize launcher

    @property
    def profile(self):
        return self.graph.profile

    @property
    def inputs(self) -> list[TensorInfo]:
        return [self.graph.tensors[t] for t in self.graph.inputs]

    @property
    def outputs(self) -> list[TensorInfo]:
        return [self.graph.tensors[t] for t in self.graph.outputs]

    def save(self, path) -> None:
        """Write the graph as a ``.intsim`` file (see :mod:`intsim.graph.fileformat`)."""
        from intsim.graph.fileformat import save_graph

        save_graph(self.graph, path)

    def to_onnx_qdq(self, path, *, uint8_activations: bool | None = None):
        """Write the graph as a QDQ ONNX model that onnxruntime runs; returns a
        :class:`intsim.export.qdq.QdqExport` (its ``inexact`` names the nodes onnxruntime computes
        differently, and why).  See :func:`intsim.export.qdq.export_qdq`."""
        from intsim.export.qdq import export_qdq

        return export_qdq(self.graph, path, uint8_activations=uint8_activations)

    def with_backend(self, backend: str) -> "Model":
        return Model(self.graph, backend)

    # --- execution -------------------------------------------------------
    def run_int(self, *inputs):
        """Integer codes in, integer codes out: the bit-exact datapath.

        One array per graph input (or one dict input name -> array), any batch
        size, values inside the input dtype's range.  Returns one array, or a
        tuple when the graph has several outputs.
        """
        return self._pack(self._warn_overflow(self._run_plan().run(self._int_inputs(self._ordered(inputs)))))

    @property
    def integer_inputs(self) -> list[str]:
        """The graph inputs that take integers as they are (token ids, masks), not quantized reals."""
        float_names = self.graph.metadata.get("float_inputs", self.graph.inputs)
        integer = set(self.graph.metadata.get("integer_inputs", ()))
        return [t for t, f in zip(self.graph.inputs, float_names) if f in integer]

    def _ordered(self, inputs) -> tuple:
        """The arrays in graph input order, from positional arrays or one dict keyed by input name (the
        float model's names or the integer graph's)."""
        if len(inputs) != 1 or not isinstance(inputs[0], Mapping):
            return inputs
        feeds = inputs[0]
        float_names = self.graph.metadata.get("float_inputs", self.graph.inputs)
        names = float_names if all(n in feeds for n in float_names) else self.graph.inputs
        missing = [n for n in names if n not in feeds]
        if missing or len(feeds) != len(names):
            raise ValidationError(f"model {self.graph.name!r} takes inputs {list(names)}; found {sorted(feeds)}")
        return tuple(feeds[n] for n in names)

    def run(self, *inputs):
        """Float in, float out: quantize each input with its tensor's scale and zero
        point (:meth:`quantize_inputs`), run :meth:`run_int`, dequantize the
        outputs to float32 as ``scale * (code - zero_point)``."""
        inputs = self._ordered(inputs)
        feed = self._float_feed(inputs)
        if feed is not None:
            try:
                return self._pack(self._warn_overflow(self._run_plan().run_written(*feed, self._dequantized)))
            except _UnusualInput:
                pass  # quantize_inputs below warns or raises as it should
        # The codes quantize_inputs returns have the checked shapes and the input dtypes: no second check.
        return self._pack(self._warn_overflow(self._run_plan().run(self.quantize_inputs(inputs), self._dequantized)))

    def _dequantized(self, outputs):
        # dequantize() of each output, through a launch per output and code dtype made at its first run.
        launches, result = self._dequantize_launches, []
        for i, (codes, info) in enumerate(zip(outputs, self._output_infos)):
            launch = launches.get((i, codes.dtype))
            if launch is None:
                launch = launches[i, codes.dtype] = self._kernels.dequantize_launcher(codes.dtype, info.scale,
                                                                                      info.zero_point)
            result.append(launch(codes))
        return result

    def _float_feed(self, inputs):
        """``(signature, write)`` for :meth:`RunPlan.run_written` that quantizes ``inputs`` as
        :meth:`quantize_inputs` would, straight into the run's input arrays, in one pass that also
        finds values :func:`warn_unusual_float_input` would warn about (``write`` then raises
        ``_UnusualInput`` before anything runs); ``None`` where that does not apply (integer inputs,
        arrays of other types, wrong shapes: :meth:`quantize_inputs` handles them).  What depends on
        the inputs' shapes and dtypes is worked out once per signature."""
        try:
            key = tuple([(type(x), x.shape, x.dtype) for x in inputs])
        except AttributeError:  # not arrays
            return None
        feed = self._float_launches.get(key, False)
        if feed is False:
            launches = self._quantize_launches(inputs)
            feed = self._float_launches[key] = None if launches is None else (
                tuple([(x.shape, info.np_dtype) for x, info in zip(inputs, self.inputs)]), launches)
        if feed is None:
            return None
        signature, launches = feed

        def write(targets):
            for x, target, launch in zip(inputs, targets, launches):
                non_finite, far = launch(x, target)
                if non_finite or far:
                    raise _UnusualInput

        return signature, write

    def _quantize_launches(self, inputs):
        """One :func:`~intsim.kernels.boundary.quantize_launcher` per input for the shapes and dtypes of
        ``inputs``, or ``None`` where :meth:`_float_feed` does not apply."""
        mode = self.input_quantization
        if len(inputs) != len(self.graph.inputs) or self.integer_inputs or mode not in INPUT_QUANTIZATION:
            return None
        dtype, rounding = INPUT_QUANTIZATION[mode]
        launches = []
        for x, info in zip(inputs, self.inputs):
            # Only where quantize reads x as it is (no cast), so that the far values are those of x itself.
            as_it_is = x.dtype == dtype or (x.dtype == np.float32 and dtype == np.float64)
            if type(x) is not np.ndarray or info.scale is None or not as_it_is or not _shape_fits(x.shape, info):
                return None
            lo, hi = self._code_range(info)
            launches.append(self._kernels.quantize_launcher(x.dtype, dtype(info.scale), rounding, info.zero_point, lo,
                                                            hi, *far_range(info)))
        return launches

    def trace(self, *inputs, float_input: bool = False) -> Trace:
        """Run and keep every intermediate tensor, accumulator and per-node statistic; with
        ``float_input`` also the clamps of the input quantization (``stats["quantize:<input>"]``)."""
        inputs = self._ordered(inputs)
        codes = self.quantize_inputs(inputs) if float_input else inputs
        trace = self._trace(self._int_inputs(codes))
        if float_input:
            integer = set(self.integer_inputs)
            for x, c, info in zip(inputs, codes, self.inputs):
                if info.name not in integer:
                    trace.stats[f"quantize:{info.name}"] = {"saturation_count": self._input_clamps(x, c, info)}
        return trace

    def _input_clamps(self, x, codes, info: TensorInfo) -> int:
        """How many of ``codes`` (quantized from ``x``) the clamp changed: the values at a bound, quantized
        again by the naive twin without the clamp."""
        lo, hi = self._code_range(info)
        at_bound = (codes == lo) | (codes == hi)
        if not at_bound.any():
            return 0
        dtype, rounding = INPUT_QUANTIZATION[self.input_quantization]
        values = np.asarray(x)[at_bound]
        values = values if values.dtype == np.float32 and dtype == np.float64 else values.astype(dtype)
        wide, _ = naive_kernels.quantize_float(values, dtype(info.scale), rounding, info.zero_point, -(2**62), 2**62,
                                               np.int64)
        return int(np.count_nonzero((wide < lo) | (wide > hi)))


    @property
    def input_quantization(self) -> str:
        """The :data:`INPUT_QUANTIZATION` mode :meth:`quantize_inputs` uses: the graph's
        ``metadata["input_quantization"]`` (the TFLite importer sets ``"float32_half_away"`` for a
        model with float inputs), else ``"float32_rint"`` when the profile models onnxruntime's
        float32 datapath, else ``"float64_rint"``."""
        default = "float32_rint" if self.profile.rounding == "float32_rint" else "float64_rint"
        return self.graph.metadata.get("input_quantization", default)

    def check_input_shapes(self, *shapes, where: str = "input") -> None:
        """Check one shape per graph input before batching (so an error quotes the whole array's shape)."""
        self._check_count(shapes)
        for shape, info in zip(shapes, self.inputs):
            _check_shape(tuple(shape), info, f"{where} {info.name!r}")

    def quantize_inputs(self, inputs) -> list[np.ndarray]:
        """Float inputs to codes, rounded as :attr:`input_quantization` says; integer inputs
        (:attr:`integer_inputs`) pass as they are, checked."""
        self._check_count(inputs)
        mode = self.input_quantization
        arrays = [np.asarray(x) for x in inputs]
        integer = set(self.integer_inputs)
        for x, info in zip(arrays, self.inputs):
            if info.name not in integer:
                warn_unusual_float_input(x, info)
        return [self._int_inputs_one(x, info) if info.name in integer else
                quantize(x, info, f"input {info.name!r}", mode=mode, code_range=self._code_range(info))
                for x, info in zip(arrays, self.inputs)]

    def _int_inputs_one(self, x: np.ndarray, info: TensorInfo) -> np.ndarray:
        where = f"input {info.name!r}"
        if x.dtype.kind not in "iu":
            raise ValidationError(f"{where}: takes integers (token ids, masks), found dtype {x.dtype}")
        _check_shape(x.shape, info, where)
        lo, hi = dtype_range(info.dtype)
        if x.size and (x.min() < lo or x.max() > hi):
            raise ValidationError(f"{where}: values must lie in [{lo}, {hi}], found [{x.min()}, {x.max()}]")
        return np.ascontiguousarray(x, dtype=info.np_dtype)

    def _code_range(self, info: TensorInfo) -> tuple[int, int]:
        """The codes an input may hold: its own ``bits`` wide where the tensor records them (3-bit codes
        live in int8 but stop at 3); else the profile's activation range where the tensor is stored in the
        profile's activation dtype, else the dtype's range."""
        if info.name not in self._code_ranges:  # once per input: the profile is fixed with the graph
            p = self.profile
            if info.bits is not None:
                self._code_ranges[info.name] = info.code_range
            else:
                self._code_ranges[info.name] = (p.activation_range() if info.dtype == p.activation_dtype.name
                                                else dtype_range(info.dtype))
        return self._code_ranges[info.name]

    def _check_count(self, inputs):
        if len(inputs) != len(self.graph.inputs):
            raise ValidationError(f"model {self.graph.name!r} takes {len(self.graph.inputs)} input(s), found {len(inputs)}")

    def _int_inputs(self, inputs) -> list[np.ndarray]:
        self._check_count(inputs)
        arrays = [np.asarray(x) for x in inputs]
        # Dtypes and shapes are checked once per signature; the values only when
        # the dtype can hold codes outside the tensor's range.
        signature = tuple((x.dtype, x.shape) for x in arrays)
        if signature not in self._checked_signatures:
            range_checks = [self._check_signature(x, info) for x, info in zip(arrays, self.inputs)]
            self._checked_signatures[signature] = range_checks
        for x, info, range_check in zip(arrays, self.inputs, self._checked_signatures[signature]):
            lo, hi = range_check or (None, None)
            if range_check and x.size and (x.min() < lo or x.max() > hi):
                raise ValidationError(f"input {info.name!r}: codes must lie in [{lo}, {hi}] for {info.dtype}, "
                                      f"found [{x.min()}, {x.max()}]")
        return [np.ascontiguousarray(x, dtype=info.np_dtype) for x, info in zip(arrays, self.inputs)]

    @staticmethod
    def _check_signature(x, info):
        """Check the dtype and shape of ``x``; the ``(lo, hi)`` its values must be checked against, or ``None``."""
        where = f"input {info.name!r}"
        if x.dtype.kind not in "iu":
            raise ValidationError(f"{where}: run_int takes integer codes ({info.dtype}), found dtype {x.dtype}")
        _check_shape(x.shape, info, where)
        return None if np.can_cast(x.dtype, info.np_dtype, "safe") else dtype_range(info.dtype)

    def _warn_overflow(self, outputs):
        """Issue an :class:`~intsim.errors.OverflowWarning` for the overflows the last run recorded."""
        overflows = self._plan.overflows
        if overflows:
            profile = self.profile
            nodes = ", ".join(f"{node.op} {node.name!r} {count}" for node, count in overflows)
            warnings.warn(OverflowWarning(
                f"model {self.graph.name!r}: accumulators left the {profile.accumulator_bits}-bit range "
                f"(overflow = {profile.overflow!r}, profile {profile.name!r}); outputs overflowed per node: "
                f"{nodes}"), stacklevel=3)
        return outputs

    def _run_plan(self) -> RunPlan:
        if self._plan is None:
            self._plan = RunPlan(self.graph, [(op.bind(plan, self._kernels), node) for op, node, plan in self._steps])
        return self._plan

    def _trace(self, arrays) -> Trace:
        trace = Trace()
        values = dict(zip(self.graph.inputs, arrays))
        overflow_policy = self.graph.profile.overflow
        for op, node, plan in self._steps:
            node_inputs = [values[t] for t in node.inputs]
            check_node_inputs(node, self.graph, node_inputs)
            outputs, stats = op.run(plan, node_inputs, self._kernels)
            if overflow_policy == "error" and stats.get("overflow_count", 0):
                raise_overflow(node, stats, self.graph.profile)
            values.update(zip(node.outputs, outputs))
            acc = stats.pop("accumulator", None)
            if acc is not None:
                trace.accumulators[node.name] = acc
            trace.stats[node.name] = stats
        trace.tensors = values
        return trace

    @staticmethod
    def _pack(arrays):
        return arrays[0] if len(arrays) == 1 else tuple(arrays)


def warn_unusual_float_input(x: np.ndarray, info: TensorInfo) -> None:
    """Warn (:class:`~intsim.errors.InputWarning`) when float input ``x`` for tensor ``info`` has an
    integer dtype, or reaches more than one range width beyond the real range its codes represent
    (``scale * (code - zero_point)``): both usually mean unscaled pixels or integer codes given as floats."""
    where = f"input {info.name!r}"
    if x.dtype.kind in "iu" or x.dtype == np.bool_:
        warnings.warn(InputWarning(f"{where}: float input has integer dtype {x.dtype}; it is read as real values, "
                                   "not as codes (scale it as at calibration, or pass codes to run_int / --int)"),
                      stacklevel=3)
        return
    if not x.size or x.dtype.kind != "f" or info.scale is None:
        return
    found_lo, found_hi = float(x.min()), float(x.max())  # the methods: no numpy dispatch wrapper per call
    far_low, far_high = far_range(info)
    if found_lo < far_low or found_hi > far_high:
        lo, hi = (info.scale * (c - info.zero_point) for c in info.code_range)
        warnings.warn(InputWarning(f"{where}: values in [{found_lo:.6g}, {found_hi:.6g}] lie far outside the "
                                   f"range [{lo:.6g}, {hi:.6g}] the model was calibrated for; most will be clamped"),
                      stacklevel=3)


def far_range(info: TensorInfo) -> tuple[float, float]:
    """The real values beyond which :func:`warn_unusual_float_input` warns: one range width below and
    above the range ``[lo, hi]`` that the codes of ``info`` represent."""
    lo, hi = (info.scale * (c - info.zero_point) for c in info.code_range)
    return float(lo - (hi - lo)), float(hi + (hi - lo))


class _UnusualInput(Exception):
    """A float input of ``Model.run``'s quick path was not finite or lay far out of range: the checked
    path runs instead, and warns or raises."""


def _shape_fits(shape, info: TensorInfo) -> bool:
    return len(shape) == len(info.shape) and all(d is None or d == s for d, s in zip(info.shape, shape))


def _check_shape(shape, info: TensorInfo, where: str):
    if not _shape_fits(shape, info):
        raise ValidationError(f"{where}: expected shape {shape_text(info.shape)}, found {tuple(shape)}")


def quantize(x: np.ndarray, info: TensorInfo, where: str = "quantize", *, mode: str = "float64_rint",
             code_range: tuple[int, int] | None = None) -> np.ndarray:
    """Float to codes: ``clamp(round(x / scale) + zero_point)``, ``x`` and ``scale`` cast to the
    float type of ``mode`` (an :data:`INPUT_QUANTIZATION` key) and rounded as it names; clamped to
    ``code_range`` (default: the range of the tensor's dtype)."""
    if mode not in INPUT_QUANTIZATION:
        raise ValidationError(f"{where}: input quantization must be one of {', '.join(INPUT_QUANTIZATION)}, "
                              f"found {mode!r}")
    if x.dtype.kind not in "fiu":
        raise ValidationError(f"{where}: expected real numbers, found dtype {x.dtype}")
    _check_shape(x.shape, info, where)
    dtype, rounding = INPUT_QUANTIZATION[mode]
    lo, hi = dtype_range(info.dtype) if code_range is None else code_range
    # A float32 x is divided in float64 as it is read (widening is exact): no float64 copy.
    widened = x.dtype == np.float32 and dtype == np.float64
    codes, non_finite = fast_kernels.quantize_float(x if widened else x.astype(dtype, copy=False), dtype(info.scale),
                                                    rounding, info.zero_point, lo, hi, info.np_dtype)
    if non_finite:
        raise ValidationError(f"{where}: inputs must be finite, found NaN or infinity")
    return codes


def dequantize(codes: np.ndarray, info: TensorInfo) -> np.ndarray:
    """Codes to float32: ``scale * (code - zero_point)``.

    One rounding to float32 of the exact product (a float32 scale times a code difference of at
    most 17 bits is exact in float64), so this equals both LiteRT's DEQUANTIZE (double product,
    cast) and a float32 multiply."""
    return fast_kernels.dequantize_codes(codes, info.scale, info.zero_point)
