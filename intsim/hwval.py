"""Hardware validation: golden vectors, a layer-by-layer diff against a device, accumulator sweeps.

Three tools for teams bringing up an integer accelerator (white paper §2.1:
the MAC array, int32 accumulators from an int32 bias, requantization):

* :func:`export_golden` / :func:`load_golden`: every node's input and output
  codes, weights, bias, raw accumulators and requantization parameters as
  ``.npy``, ``$readmemh`` hex and raw little-endian files with a
  ``manifest.json`` that describes them;
* :func:`diff`: a device's (or an RTL simulation's) per-layer dump, in the
  same manifest layout, against intsim; finds the first diverging node,
  classifies the mismatches and names the setting that reproduces the
  device's output when that node is re-run alone on the device's own inputs;
* :func:`sweep`: per layer, the accumulator width the data needs, overflow
  counts under saturate and wrap at each width, and end-to-end agreement and
  accuracy per width; :func:`bitwidth_sweep` converts a float model at several
  weight and activation widths.

The golden directory (``manifest.json``, ``"format": "intsim-golden"``)::

    tensors/<i>_<name>.<ext>          every tensor (graph inputs included), by graph order
    nodes/<j>_<node>/<param>.<ext>    the node's parameters (weight, bias, multiplier, shift, ...)
    nodes/<j>_<node>/accumulator.<ext>  MAC nodes: int32 after bias, before requantization

Each array entry in the manifest holds ``dtype``, ``shape``, ``layout`` and
``files`` (one path per format).  ``npy`` is numpy's format; ``bin`` is the raw
little-endian bytes in C (row-major) order; ``hex`` is one element per line in
C order, two's complement, ``2 * itemsize`` lowercase hex digits (float
parameters as their IEEE-754 bit pattern), which Verilog ``$readmemh`` reads
into a memory of ``8 * itemsize``-bit words.  Shifts are stored as intsim
holds them: **positive means left shift**, ``real multiplier = multiplier *
2**(shift - multiplier_bits)``.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from intsim.errors import IntsimError, ModelFormatError, ValidationError
from intsim.fixedpoint import INTEGER_ROUNDING_MODES, ROUNDING_MODES, saturate, wrap
from intsim.graph import Graph, Node
from intsim.ops import MAC_OPS, clamp_bounds, node_rounding
from intsim.profiles import get_profile
from intsim.runtime import Model, Trace

GOLDEN_FORMAT = "intsim-golden"
GOLDEN_VERSION = 1
MANIFEST = "manifest.json"
ARRAY_DTYPES = ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float16", "float32",
                "float64")
# Ops whose output goes through requantization and the clamp (the ops that call clamp_bounds).
REQUANTIZING_OPS = MAC_OPS + ("rescale", "add", "mul", "concat", "mean", "softmax", "add_float32_fma")
SHIFT_CONVENTION = "positive = left shift: real multiplier = multiplier * 2**(shift - multiplier_bits)"
WEIGHT_LAYOUTS = {"conv2d": "OHWI", "fully_connected": "OI"}


# --------------------------------------------------------------------------
# File formats: a registry of (suffix, writer, reader).
# --------------------------------------------------------------------------


def _bits_dtype(dtype: np.dtype) -> np.dtype:
    """The unsigned integer type of the same width: two's complement / IEEE bit patterns."""
    return np.dtype(f"<u{dtype.itemsize}")


def _write_npy(path: Path, array: np.ndarray) -> None:
    np.save(path, array, allow_pickle=False)


def _read_npy(path: Path, dtype: np.dtype, shape: tuple, where: str) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ModelFormatError(f"{where}: {path.name} is not a readable .npy array ({exc})") from None
    if array.dtype != dtype or array.shape != shape:
        raise ModelFormatError(f"{where}: manifest says {dtype}{list(shape)}, {path.name} holds "
                               f"{array.dtype}{list(array.shape)}")
    return array


def _write_bin(path: Path, array: np.ndarray) -> None:
    path.write_bytes(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes())


def _read_bin(path: Path, dtype: np.dtype, shape: tuple, where: str) -> np.ndarray:
    raw = path.read_bytes()
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        state = "truncated" if len(raw) < expected else "too long"
        raise ModelFormatError(f"{where}: {path.name} is {state}: {dtype}{list(shape)} needs {expected} bytes, "
                               f"found {len(raw)}")
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)


def _write_hex(path: Path, array: np.ndarray) -> None:
    digits = 2 * array.dtype.itemsize
    words = np.ascontiguousarray(array).reshape(-1).view(_bits_dtype(array.dtype).newbyteorder("="))
    path.write_text("".join(f"{int(w):0{digits}x}\n" for w in words), encoding="ascii")


def _read_hex(path: Path, dtype: np.dtype, shape: tuple, where: str) -> np.ndarray:
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except UnicodeDecodeError:
        raise ModelFormatError(f"{where}: {path.name} is not ASCII hex text") from None
    size = int(np.prod(shape, dtype=np.int64))
    if len(lines) != size:
        state = "truncated" if len(lines) < size else "too long"
        raise ModelFormatError(f"{where}: {path.name} is {state}: {dtype}{list(shape)} needs {size} lines, "
                               f"found {len(lines)}")
    digits = 2 * dtype.itemsize
    words = np.empty(size, np.uint64)
    for i, line in enumerate(lines):
        if len(line) != digits or not re.fullmatch(r"[0-9a-fA-F]+", line):
            raise ModelFormatError(f"{where}: {path.name} line {i + 1}: expected {digits} hex digits, "
                                   f"found {line[:40]!r}")
        words[i] = int(line, 16)
    return words.astype(_bits_dtype(dtype).newbyteorder("=")).view(dtype).reshape(shape)


GOLDEN_FORMATS = {
    "npy": (".npy", _write_npy, _read_npy),
    "hex": (".hex", _write_hex, _read_hex),
    "bin": (".bin", _write_bin, _read_bin),
}


def _check_formats(formats) -> tuple[str, ...]:
    formats = (formats,) if isinstance(formats, str) else tuple(formats)
    unknown = [f for f in formats if f not in GOLDEN_FORMATS]
    if not formats or unknown:
        raise ValidationError(f"golden formats must be a non-empty selection of {', '.join(GOLDEN_FORMATS)}, "
                              f"found {list(formats)}")
    return formats


# --------------------------------------------------------------------------
# Writing.
# --------------------------------------------------------------------------


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_.")[:60] or "x"


def _tensor_layout(graph: Graph, name: str) -> str:
    spatial = ("conv2d", "max_pool", "avg_pool", "resize_nearest")
    touching = [n.op for n in graph.nodes if name in n.inputs or name in n.outputs]
    if len(graph.tensors[name].shape) == 4 and any(op in spatial for op in touching):
        return "NHWC"
    return "C order"


class _Writer:
    def __init__(self, root: Path, formats: tuple[str, ...]):
        self.root, self.formats = root, formats

    def entry(self, stem: str, array: np.ndarray, layout: str) -> dict:
        array = np.asarray(array)  # graph validation admits only integer and float parameters
        files = {}
        for fmt in self.formats:
            suffix, write, _ = GOLDEN_FORMATS[fmt]
            path = self.root / f"{stem}{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            write(path, array)
            files[fmt] = path.relative_to(self.root).as_posix()
        return {"dtype": array.dtype.name, "shape": list(array.shape), "layout": layout, "files": files}


def write_golden(graph: Graph, trace: Trace, out_dir, formats=("npy", "hex", "bin")) -> Path:
    """Write the tensors and accumulators of ``trace`` with ``graph``'s parameters as a golden directory.

    The layout is described in the module docstring.  Tensors or accumulators
    that ``trace`` lacks are left out, so the same writer also produces partial
    dumps (as a device might).

    Parameters
    ----------
    graph : Graph
        The integer graph whose nodes, parameters and tensor names are written.
    trace : Trace
        A :meth:`Model.trace` of ``graph`` (or of a graph with the same tensor and node names).
    out_dir : path
        Created if needed; existing files of the same names are overwritten.
    formats : sequence of {"npy", "hex", "bin"}

    Returns
    -------
    Path of the written ``manifest.json``.
    """
    formats = _check_formats(formats)
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    writer = _Writer(root, formats)
    profile = graph.profile
    tensors = {}
    for index, (name, info) in enumerate(graph.tensors.items()):
        if name in trace.tensors:
            entry = writer.entry(f"tensors/{index:03d}_{_safe(name)}", trace.tensors[name], _tensor_layout(graph, name))
            tensors[name] = {**entry, "scale": info.scale, "zero_point": info.zero_point}
    nodes = []
    for index, node in enumerate(graph.nodes):
        stem = f"nodes/{index:03d}_{_safe(node.name)}"
        record = {
            "name": node.name, "op": node.op, "inputs": list(node.inputs), "outputs": list(node.outputs),
            "attrs": json.loads(json.dumps(node.attrs, default=int)),
            "input_zero_points": [graph.tensors[t].zero_point for t in node.inputs],
            "output_zero_points": [graph.tensors[t].zero_point for t in node.outputs],
            "params": {key: writer.entry(f"{stem}/{_safe(key)}", value, _param_layout(node, key))
                       for key, value in node.params.items()},
        }
        if node.op in REQUANTIZING_OPS:
            record["rounding"] = node_rounding(node, graph)
            record["multiplier_bits"] = profile.multiplier_bits
            record["clamp"] = list(clamp_bounds(node, graph.tensors[node.outputs[0]]))
        if node.name in trace.accumulators:
            record["accumulator"] = writer.entry(f"{stem}/accumulator", trace.accumulators[node.name],
                                                 _tensor_layout(graph, node.outputs[0]))
        nodes.append(record)
    batch = next((int(trace.tensors[t].shape[0]) for t in graph.inputs if t in trace.tensors
                  and trace.tensors[t].ndim), None)
    manifest = {
        "format": GOLDEN_FORMAT, "version": GOLDEN_VERSION, "model": graph.name, "profile": profile.to_dict(),
        "formats": list(formats), "byte_order": "little", "array_order": "C (row-major)",
        "hex": "one element per line, two's complement (floats: IEEE-754 bits), 2*itemsize hex digits, $readmemh",
        "shift_convention": SHIFT_CONVENTION,
        "accumulator": "int32 after bias, before requantization, in intsim's hardware order (intsim.kernels.mac)",
        "batch": batch, "inputs": list(graph.inputs), "outputs": list(graph.outputs),
        "tensors": tensors, "nodes": nodes,
    }
    path = root / MANIFEST
    path.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return path


def _param_layout(node: Node, key: str) -> str:
    if key == "weight":
        return WEIGHT_LAYOUTS.get(node.op, "C order")
    return "per output channel" if node.params[key].ndim == 1 and node.op in MAC_OPS else "C order"


def export_golden(model: Model, inputs, out_dir, formats=("npy", "hex", "bin"), *, float_input: bool = False) -> Path:
    """Trace ``model`` on ``inputs`` and write the golden vectors (see :func:`write_golden`).

    ``inputs`` is one array per graph input: integer codes, or floats with
    ``float_input=True`` (quantized as :meth:`Model.run` does).
    """
    inputs = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    return write_golden(model.graph, model.trace(*inputs, float_input=float_input), out_dir, formats)


# --------------------------------------------------------------------------
# Loading.
# --------------------------------------------------------------------------


@dataclass
class Golden:
    """A loaded golden (or device dump) directory.

    Attributes
    ----------
    manifest : dict
    format : str
        The file format the arrays were read from.
    tensors : dict
        Tensor name -> array.
    accumulators : dict
        Node name -> raw accumulators.
    params : dict
        Node name -> {parameter name -> array}.
    """

    directory: Path
    manifest: dict
    format: str
    tensors: dict = field(default_factory=dict)
    accumulators: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)


def _require(mapping, key, kind, where):
    if not isinstance(mapping, dict) or key not in mapping:
        raise ModelFormatError(f"{where}: missing key {key!r}")
    value = mapping[key]
    if not isinstance(value, kind):
        raise ModelFormatError(f"{where}: {key!r} must be a {kind.__name__}, found {type(value).__name__}")
    return value


def _read_entry(root: Path, entry, fmt: str, where: str) -> np.ndarray:
    dtype_name = _require(entry, "dtype", str, where)
    if dtype_name not in ARRAY_DTYPES:
        raise ModelFormatError(f"{where}: dtype must be one of {', '.join(ARRAY_DTYPES)}, found {dtype_name!r}")
    shape = _require(entry, "shape", list, where)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ModelFormatError(f"{where}: shape must be a list of sizes >= 0, found {shape}")
    files = _require(entry, "files", dict, where)
    if fmt not in files:
        raise ModelFormatError(f"{where}: no {fmt} file listed (listed: {', '.join(files) or 'none'})")
    path = root / str(files[fmt])
    if not path.resolve().is_relative_to(root.resolve()):
        raise ModelFormatError(f"{where}: file {files[fmt]!r} lies outside the directory {root}")
    if not path.is_file():
        raise ModelFormatError(f"{where}: file {files[fmt]} does not exist in {root}")
    return GOLDEN_FORMATS[fmt][2](path, np.dtype(dtype_name), tuple(shape), where)


def load_golden(directory, format: str | None = None) -> Golden:
    """Read and validate a golden directory written by :func:`write_golden`, or a device dump in its layout.

    A device dump needs only ``formats`` and ``tensors`` in its manifest
    (``nodes`` with ``accumulator`` entries are optional), and may hold any
    subset of the tensors.

    Parameters
    ----------
    directory : path
    format : {"npy", "hex", "bin"}, optional
        Which files to read; default the first of the manifest's ``formats``.

    Raises
    ------
    ModelFormatError
        The manifest is missing, not JSON or lacks a key; a listed file is
        missing, truncated, corrupt, or holds another dtype or shape than the
        manifest says.
    """
    root = Path(directory)
    path = root / MANIFEST
    where = f"golden {root}"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFormatError(f"{where}: {MANIFEST} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{where}: {MANIFEST} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise ModelFormatError(f"{where}: {MANIFEST} must hold a JSON object, found {type(manifest).__name__}")
    formats = _require(manifest, "formats", list, f"{where}/{MANIFEST}")
    fmt = format if format is not None else (formats[0] if formats else None)
    if fmt not in GOLDEN_FORMATS or fmt not in formats:
        raise ModelFormatError(f"{where}: format must be one of the listed {formats} and known "
                               f"({', '.join(GOLDEN_FORMATS)}), found {fmt!r}")
    golden = Golden(root, manifest, fmt)
    for name, entry in _require(manifest, "tensors", dict, f"{where}/{MANIFEST}").items():
        golden.tensors[name] = _read_entry(root, entry, fmt, f"{where}: tensor {name!r}")
    nodes = manifest.get("nodes", [])
    if not isinstance(nodes, list):
        raise ModelFormatError(f"{where}: 'nodes' must be a list, found {type(nodes).__name__}")
    for index, node in enumerate(nodes):
        name = _require(node, "name", str, f"{where}: nodes[{index}]")
        if "accumulator" in node:
            golden.accumulators[name] = _read_entry(root, node["accumulator"], fmt,
                                                    f"{where}: node {name!r} accumulator")
        golden.params[name] = {key: _read_entry(root, entry, fmt, f"{where}: node {name!r} parameter {key!r}")
                               for key, entry in node.get("params", {}).items()}
    return golden


# --------------------------------------------------------------------------
# One node alone, under a modified setting: the diff's causes and the sweep's widths.
# --------------------------------------------------------------------------


@dataclass
class NodeSetup:
    """One node with the profile and tensor descriptions it runs under (copies: safe to modify)."""

    profile: object
    node: Node
    tensors: dict

    @classmethod
    def of(cls, graph: Graph, node: Node) -> "NodeSetup":
        copy = Node(node.op, node.name, list(node.inputs), list(node.outputs), dict(node.attrs), dict(node.params))
        return cls(graph.profile, copy, {t: graph.tensors[t] for t in node.inputs + node.outputs})

    def replace(self, profile=None, attrs=None, params=None, tensors=None) -> "NodeSetup":
        node = Node(self.node.op, self.node.name, self.node.inputs, self.node.outputs,
                    {**self.node.attrs, **(attrs or {})}, {**self.node.params, **(params or {})})
        return NodeSetup(profile or self.profile, node, {**self.tensors, **(tensors or {})})

    @property
    def rounding(self) -> str:
        """The node's requantization rounding mode (its own attribute, else the profile's)."""
        return self.node.attrs.get("rounding", self.profile.rounding)

    def run(self, inputs: dict) -> Trace:
        """Run the node alone on ``inputs`` (tensor name -> codes); raises ValidationError for an invalid setting."""
        names = list(dict.fromkeys(self.node.inputs))
        graph = Graph(f"{self.node.name} alone", self.profile, dict(self.tensors), [self.node], names,
                      list(self.node.outputs))
        return Model(graph).trace(*[inputs[t] for t in names])


def _rescale_prefixes(node: Node) -> list[str]:
    return [key[: -len("multiplier")] for key in node.params if key.endswith("multiplier")
            and f"{key[: -len('multiplier')]}shift" in node.params]


def _rounding_variants(setup: NodeSetup):
    """Each other requantization rounding mode (white paper §2.2): the device rounds differently.

    A float mode needs each rescale's real ``scale``: the node's own where it has one, else
    ``multiplier * 2**(shift - multiplier_bits)``; an integer mode must not carry it.
    """
    node = setup.node
    if node.op not in REQUANTIZING_OPS:
        return
    prefixes = _rescale_prefixes(node)
    bits = setup.profile.multiplier_bits
    integer_params = {k: v for k, v in node.params.items() if k not in {f"{p}scale" for p in prefixes}}
    float_params = dict(integer_params)
    for p in prefixes:
        derived = node.params[f"{p}multiplier"].astype(np.float64) * 2.0 ** (node.params[f"{p}shift"] - bits)
        float_params[f"{p}scale"] = node.params.get(f"{p}scale", derived)
    for mode in ROUNDING_MODES:
        if mode != setup.rounding:
            params = integer_params if mode in INTEGER_ROUNDING_MODES else float_params
            variant = dataclasses.replace(node, attrs={**node.attrs, "rounding": mode}, params=params)
            yield (f"rounding={mode}", f"requantization rounds {mode!r} instead of {setup.rounding!r}",
                   NodeSetup(setup.profile, variant, setup.tensors))


def _accumulator_variants(setup: NodeSetup):
    """Accumulator widths 16..32 bits under wrap and saturate: the device's MAC array is narrower."""
    if setup.node.op not in MAC_OPS:
        return
    current = (setup.profile.accumulator_bits, setup.profile.overflow)
    for policy in ("wrap", "saturate"):
        for bits in range(16, 33):
            if (bits, policy) != current:
                yield (f"accumulator={bits}-bit {policy}", f"{bits}-bit accumulators that {policy} on overflow",
                       setup.replace(profile=setup.profile.replace(accumulator_bits=bits, overflow=policy)))


def _bias_variants(setup: NodeSetup):
    """The bias dropped, or stored in fewer bits than int32 (saturated or wrapped on the way in)."""
    bias = setup.node.params.get("bias")
    if bias is None:
        return
    if np.any(bias):
        yield "bias omitted", "the bias is not added", setup.replace(params={"bias": np.zeros_like(bias)})
    wide = bias.astype(np.int64)
    for bits in range(8, setup.profile.bias_bits):
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        if wide.min() >= lo and wide.max() <= hi:
            continue
        for policy, limit in (("saturate", saturate), ("wrap", wrap)):
            narrowed = np.array([limit(int(b), bits) for b in wide], dtype=bias.dtype)
            yield (f"bias={bits}-bit {policy}", f"the bias is stored in {bits} bits and {policy}s",
                   setup.replace(params={"bias": narrowed}))


def _zero_point_variants(setup: NodeSetup):
    """A zero point the device leaves out (white paper §2.4: the z_x and z_w terms of the MAC)."""
    node = setup.node
    for t in dict.fromkeys(node.inputs):
        info = setup.tensors[t]
        if info.zero_point:
            yield (f"input zero point omitted ({t})", f"input {t!r} is used without subtracting its zero point "
                   f"{info.zero_point}", setup.replace(tensors={t: dataclasses.replace(info, zero_point=0)}))
    out = setup.tensors[node.outputs[0]]
    if out.zero_point and node.op in REQUANTIZING_OPS:
        yield ("output zero point omitted", f"the output zero point {out.zero_point} is not added",
               setup.replace(tensors={out.name: dataclasses.replace(out, zero_point=0)}))
    wzp = node.params.get("weight_zero_point")
    if wzp is not None and np.any(wzp):
        yield ("weight zero point omitted", "the weight zero point is not subtracted",
               setup.replace(params={"weight_zero_point": np.zeros_like(wzp)}))


def _pairwise_variants(setup: NodeSetup):
    """Products summed in saturating int16 pairs (x86 ``vpmaddubsw``) or not."""
    profile = setup.profile
    if setup.node.op in MAC_OPS and profile.weight_bits <= 8 and profile.activation_bits <= 8:
        state = not profile.pairwise_int16
        yield (f"pairwise_int16={str(state).lower()}", "int16 pair saturation " + ("on" if state else "off"),
               setup.replace(profile=profile.replace(pairwise_int16=state)))


# The causes the diff tries, in the order it prefers them when several reproduce the device exactly.
CAUSES = {
    "rounding mode": _rounding_variants,
    "accumulator overflow": _accumulator_variants,
    "bias overflow": _bias_variants,
    "zero-point handling": _zero_point_variants,
    "int16 pair saturation": _pairwise_variants,
}


# --------------------------------------------------------------------------
# Diff.
# --------------------------------------------------------------------------


@dataclass
class Comparison:
    """One compared array (a tensor, or a node's accumulators): ``device - intsim`` on mismatches."""

    node: str
    op: str
    what: str  # "output 't1'", "accumulator", "graph input 'x'"
    elements: int
    mismatches: int = 0
    off_by_one: int = 0
    at_clamp: int = 0
    large: int = 0
    max_abs_diff: int = 0
    first_index: tuple | None = None

    @property
    def pattern(self) -> str:
        """The most frequent kind of mismatch."""
        if not self.mismatches:
            return "exact"
        counts = {"off-by-one (rounding)": self.off_by_one, "saturation at the clamp bounds": self.at_clamp,
                  "large (wrap-around or garbage)": self.large}
        return max(counts, key=counts.get)

    def describe(self) -> str:
        if not self.mismatches:
            return f"{self.op} {self.node!r} {self.what}: all {self.elements} equal"
        return (f"{self.op} {self.node!r} {self.what}: {self.mismatches} of {self.elements} differ "
                f"({self.off_by_one} off by one, {self.at_clamp} at the clamp bounds, {self.large} large; "
                f"max |diff| {self.max_abs_diff}, first at index {list(self.first_index)})")


def _compare(node, op, what, device, ours, bounds=None) -> Comparison:
    if device.shape != ours.shape:
        raise ValidationError(f"device dump: {op} {node!r} {what} has shape {device.shape}, intsim's has {ours.shape}")
    d, s = device.astype(np.int64), ours.astype(np.int64)
    bad = d != s
    result = Comparison(node, op, what, int(d.size), int(bad.sum()))
    if result.mismatches:
        diff = np.abs(d - s)[bad]
        one = diff == 1
        clamp = np.zeros_like(one)
        if bounds is not None:
            device_bad = d[bad]  # the device clamped where intsim did not, or did not clamp
            clamp = ~one & (np.isin(device_bad, bounds) | (device_bad < bounds[0]) | (device_bad > bounds[1]))
        result.off_by_one, result.at_clamp = int(one.sum()), int(clamp.sum())
        result.large = result.mismatches - result.off_by_one - result.at_clamp
        result.max_abs_diff = int(diff.max())
        result.first_index = tuple(int(i) for i in np.argwhere(bad)[0])
    return result


@dataclass
class Candidate:
    """One setting tried on the first diverging node: how many compared values still differ."""

    cause: str
    setting: str
    description: str
    mismatches: int
    elements: int

    @property
    def exact(self) -> bool:
        return self.mismatches == 0


@dataclass
class DiffReport:
    """The result of :func:`diff`: comparisons in graph order, the first divergence and its likely cause."""

    model: str
    profile: str
    dump: str
    comparisons: list
    first: Comparison | None
    inputs_from: dict = field(default_factory=dict)
    candidates: list = field(default_factory=list)

    @property
    def cause(self) -> Candidate | None:
        """The best candidate (fewest mismatches, then the order of :data:`CAUSES`)."""
        return self.candidates[0] if self.candidates else None

    def summary(self) -> str:
        if self.first is None:
            return f"no divergence: every dumped array equals intsim's ({len(self.comparisons)} compared)"
        lines = [f"first divergence: {self.first.describe()}; pattern: {self.first.pattern}"]
        if self.candidates:
            sources = ", ".join(f"{t} from {src}" for t, src in self.inputs_from.items())
            best = self.cause
            as_is = next((c for c in self.candidates if c.cause == "none"), None)
            verb = "reproduces the device exactly" if best.exact else \
                f"comes closest ({best.mismatches} of {best.elements} still differ)"
            if as_is is not None:
                lines.append(f"re-running {self.first.node!r} alone on its inputs ({sources}): as simulated, "
                             f"{as_is.mismatches} of {as_is.elements} differ")
            if best.cause == "none" and best.exact:
                lines.append("most likely cause: the node's inputs (the node itself computes like intsim on them)")
            elif best.cause == "none":
                lines.append(f"no setting tried reproduces the device or comes closer than the simulation "
                             f"({len(self.candidates) - 1} tried)")
            else:
                lines.append(f"most likely cause: {best.cause}: {best.setting} ({best.description}) {verb}")
            others = [c.setting for c in self.candidates[1:] if c.exact]
            if others:
                lines.append("also exact: " + ", ".join(others))
        return "\n".join(lines)

    def table(self) -> str:
        header = ["node", "op", "compared", "elements", "mismatches", "pattern"]
        rows = [[c.node, c.op, c.what, str(c.elements), str(c.mismatches), c.pattern] for c in self.comparisons]
        widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
        lines = [f"model {self.model!r} (profile {self.profile!r}) vs device dump {self.dump}"]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header] + rows]
        return "\n".join(lines + [self.summary()])

    def to_dict(self) -> dict:
        return {"model": self.model, "profile": self.profile, "dump": self.dump,
                "comparisons": [dataclasses.asdict(c) | {"pattern": c.pattern} for c in self.comparisons],
                "first": None if self.first is None else self.first.describe(),
                "inputs_from": self.inputs_from,
                "candidates": [dataclasses.asdict(c) for c in self.candidates]}


def diff(model: Model, inputs, device_dump, *, float_input: bool = False, format: str | None = None) -> DiffReport:
    """Compare a device's per-layer dump with intsim and diagnose the first diverging node.

    Every dumped graph input, node output and accumulator is compared in graph
    order.  The first node with a mismatch is re-run alone, on the device's
    own inputs where the dump has them (else intsim's), as simulated and under
    every setting of :data:`CAUSES`; the candidates are ranked by how many of
    the dumped values (outputs and accumulators) still differ.

    Parameters
    ----------
    model : Model
    inputs : array or list of arrays
        The input the device ran: integer codes, or floats with ``float_input=True``.
    device_dump : path or Golden
        A directory in the :func:`write_golden` layout (any subset of tensors).
    format : str, optional
        Which files of the dump to read (see :func:`load_golden`).
    """
    dump = device_dump if isinstance(device_dump, Golden) else load_golden(device_dump, format)
    inputs = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    graph = model.graph
    trace = model.trace(*inputs, float_input=float_input)
    unknown = sorted(set(dump.tensors) - set(graph.tensors))
    unknown += sorted(f"accumulator of {n!r}" for n in set(dump.accumulators) - set(trace.accumulators))
    if unknown:
        raise ValidationError(f"device dump {dump.directory}: expected names of model {graph.name!r} "
                              f"(see intsim golden's manifest), found {len(unknown)} unknown: {', '.join(unknown[:5])}")
    comparisons, first_node = [], None
    for t in graph.inputs:
        if t in dump.tensors:
            comparisons.append(_compare("(graph input)", "input", f"tensor {t!r}", dump.tensors[t], trace.tensors[t]))
    for node in graph.nodes:
        bounds = None
        if node.op in REQUANTIZING_OPS:
            bounds = list(clamp_bounds(node, graph.tensors[node.outputs[0]]))
        if node.name in dump.accumulators and node.name in trace.accumulators:
            comparisons.append(_compare(node.name, node.op, "accumulator", dump.accumulators[node.name],
                                        trace.accumulators[node.name]))
        for t in node.outputs:
            if t in dump.tensors:
                comparisons.append(_compare(node.name, node.op, f"output {t!r}", dump.tensors[t], trace.tensors[t],
                                            bounds))
        if first_node is None and any(c.mismatches for c in comparisons):
            first_node = node
    first = next((c for c in comparisons if c.mismatches), None)
    report = DiffReport(graph.name, graph.profile.name, str(dump.directory), comparisons, first)
    if first_node is not None and first.node == first_node.name:
        report.inputs_from = {t: "device" if t in dump.tensors else "intsim" for t in dict.fromkeys(first_node.inputs)}
        # a dumped input was compared above, so its shape is intsim's
        node_inputs = {t: dump.tensors[t] if t in dump.tensors else trace.tensors[t] for t in report.inputs_from}
        report.candidates = _diagnose(graph, first_node, node_inputs, dump)
    return report


def _diagnose(graph: Graph, node: Node, inputs: dict, dump: Golden) -> list[Candidate]:
    setup = NodeSetup.of(graph, node)
    if setup.profile.overflow == "error":  # count overflows instead of stopping at them
        setup = setup.replace(profile=setup.profile.replace(overflow="wrap"))
    targets = [(t, dump.tensors[t]) for t in node.outputs if t in dump.tensors]
    acc = dump.accumulators.get(node.name)

    def score(variant: NodeSetup) -> int | None:
        try:
            result = variant.run(inputs)
        except IntsimError:
            return None  # the setting is not valid for this node (e.g. integer softmax in a float mode)
        bad = sum(int(np.sum(result.tensors[t].astype(np.int64) != target)) for t, target in targets)
        if acc is not None and node.name in result.accumulators:
            bad += int(np.sum(result.accumulators[node.name].astype(np.int64) != acc))
        return bad

    elements = sum(target.size for _, target in targets) + (0 if acc is None else acc.size)
    ranked = [(score(setup), 0, 0, Candidate("none", "as simulated", "the profile's own settings", 0, elements))]
    for order, (cause, variants) in enumerate(CAUSES.items(), start=1):
        for index, (setting, description, variant) in enumerate(variants(setup)):
            mismatches = score(variant)
            if mismatches is not None:
                ranked.append((mismatches, order, index, Candidate(cause, setting, description, 0, elements)))
    ranked = [r for r in ranked if r[0] is not None]
    for mismatches, _, _, candidate in ranked:
        candidate.mismatches = mismatches
    ranked.sort(key=lambda r: r[:3])
    return [r[3] for r in ranked]


# --------------------------------------------------------------------------
# Accumulator sweep.
# --------------------------------------------------------------------------


@dataclass
class SweepLayer:
    """One multiply-accumulate node: what its accumulators need on the swept data.

    ``overflows[policy][bits]`` counts outputs whose accumulation left ``bits``
    when the node runs alone on the full-width run's inputs.
    """

    node: str
    op: str
    max_abs_accumulator: int
    final_bits: int
    needed_bits: int | None
    clamped_fraction: float
    headroom_bits: int
    overflows: dict


@dataclass
class SweepWidth:
    """The whole model run end to end with ``bits``-bit accumulators under ``policy``."""

    bits: int
    policy: str
    overflowing_layers: int
    overflowing_outputs: int
    agreement: float
    accuracy: float | None


@dataclass
class SweepReport:
    """The result of :func:`sweep`: ``table()``, ``answer()``, ``to_dict()``, ``plot(path)``, ``to_html(path)``.

    ``clamped`` maps every node that clamps (MAC, add, mean, ...) to ``(op, fraction of its outputs the
    requantization clamp changed)`` in the 32-bit run.
    """

    model: str
    profile: str
    samples: int
    acc_bits: list
    question_bits: int
    layers: list
    widths: list
    accuracy_full: float | None = None
    clamped: dict = field(default_factory=dict)

    def safe_bits(self) -> int | None:
        """The narrowest swept width at which no layer overflows on this data under either policy."""
        needed = [layer.needed_bits for layer in self.layers]
        if any(n is None for n in needed):
            return None
        return max(needed, default=min(self.acc_bits))

    def answer(self) -> str:
        """Can the MAC array use ``question_bits``-bit accumulators for this model?"""
        q = self.question_bits
        ends = {w.policy: w for w in self.widths if w.bits == q}
        widest = max(self.layers, key=lambda layer: layer.needed_bits or 99, default=None)
        over = [layer.node for layer in self.layers if any(layer.overflows[p].get(q, 0) for p in layer.overflows)]
        agree = ", ".join(f"{p} {100 * w.agreement:.2f}%" for p, w in ends.items())
        head = f"Can the MAC array use {q}-bit accumulators for {self.model!r}? "
        if widest is None:
            return head + "Yes: the model has no multiply-accumulate layers."
        need = "more than the widest swept" if widest.needed_bits is None else f"{widest.needed_bits} bits"
        safe = self.safe_bits()
        tail = f" (on these {self.samples} samples; the narrowest width without overflow is " + \
            (f"{safe} bits)" if safe is not None else "above the swept range)")
        final = max(layer.final_bits for layer in self.layers)
        if safe is None or final < safe:
            tail += (f". With wrap-around accumulators only the final sums must fit (two's complement: transient "
                     f"overflows cancel), and they need {final} bits")
        if not over:
            return (head + f"Yes: no layer's accumulator leaves {q} bits; the widest need is {need} "
                    f"({widest.node!r}); top-1 agreement with the 32-bit run: {agree}" + tail + ".")
        return (head + f"No: {len(over)} layer(s) overflow {q} bits ({', '.join(repr(n) for n in over[:4])}"
                + (", ..." if len(over) > 4 else "") + f"); top-1 agreement with the 32-bit run: {agree}" + tail + ".")

    def table(self) -> str:
        header = ["node", "op", "max |acc|", "final-sum bits", "bits needed", "clamped", "headroom"]
        rows = [[x.node, x.op, str(x.max_abs_accumulator), str(x.final_bits),
                 ">" + str(max(self.acc_bits)) if x.needed_bits is None else str(x.needed_bits),
                 f"{100 * x.clamped_fraction:.2f}%", str(x.headroom_bits)] for x in self.layers]
        lines = [f"accumulator sweep of {self.model!r} (profile {self.profile!r}) on {self.samples} samples",
                 *_columns(header, rows), ""]
        header = ["acc bits", "policy", "layers overflowing", "outputs overflowing", "top-1 agreement", "accuracy"]
        rows = [[str(w.bits), w.policy, str(w.overflowing_layers), str(w.overflowing_outputs),
                 f"{100 * w.agreement:.2f}%", "" if w.accuracy is None else f"{100 * w.accuracy:.2f}%"]
                for w in self.widths]
        lines += _columns(header, rows)
        if self.accuracy_full is not None:
            lines.append(f"accuracy of the 32-bit run: {100 * self.accuracy_full:.2f}%")
        return "\n".join(lines + [self.answer()])

    def to_dict(self) -> dict:
        return {"model": self.model, "profile": self.profile, "samples": self.samples, "acc_bits": self.acc_bits,
                "question_bits": self.question_bits, "answer": self.answer(), "safe_bits": self.safe_bits(),
                "accuracy_full": self.accuracy_full,
                "clamped": {name: {"op": op, "fraction": frac} for name, (op, frac) in self.clamped.items()},
                "layers": [dataclasses.asdict(x) for x in self.layers],
                "widths": [dataclasses.asdict(w) for w in self.widths]}

    def plot(self, path) -> None:
        """Bits needed per layer and top-1 agreement per width, as a PNG (needs matplotlib)."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise ValidationError("plotting needs matplotlib: pip install 'intsim[plot]'") from None
        fig, (left, right) = plt.subplots(1, 2, figsize=(max(8, 0.5 * len(self.layers) + 5), 4))
        x = np.arange(len(self.layers))
        cap = max(self.acc_bits) + 1
        left.bar(x, [cap if v.needed_bits is None else v.needed_bits for v in self.layers], color="tab:blue",
                 label="no partial sum overflows")
        left.plot(x, [v.final_bits for v in self.layers], "k_", markersize=14, label="final sum fits")
        left.axhline(self.question_bits, color="tab:red", linestyle="--", label=f"{self.question_bits} bits")
        left.set_xticks(x, [v.node for v in self.layers], rotation=90, fontsize=6)
        left.set_ylabel("accumulator bits needed")
        left.legend(fontsize=7, loc="lower right")
        for policy, style in (("saturate", "o-"), ("wrap", "s--")):
            ws = [w for w in self.widths if w.policy == policy]
            right.plot([w.bits for w in ws], [100 * w.agreement for w in ws], style, label=policy)
        right.set_xlabel("accumulator bits")
        right.set_ylabel("top-1 agreement with 32 bits (%)")
        right.legend()
        left.set_title(f"{self.model}, profile {self.profile}: per layer", fontsize=9)
        right.set_title(f"end to end, {self.samples} samples", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)

    def to_html(self, path) -> None:
        """One self-contained page: the answer, per-layer saturation and headroom, overflow counts per width,
        end-to-end agreement, and the plot (inlined) when matplotlib is installed."""
        q = html.escape
        widths = self.acc_bits
        head = "".join(f"<th>{h}</th>" for h in ["node", "op", "max |acc|", "final-sum bits", "bits needed",
                                                 "clamped", "headroom"]
                       + [f"ovf {b} sat/wrap" for b in widths])
        rows = "".join(
            "<tr>" + "".join(f"<td>{q(str(c))}</td>" for c in [
                x.node, x.op, x.max_abs_accumulator, x.final_bits,
                ">" + str(max(widths)) if x.needed_bits is None else x.needed_bits,
                f"{100 * x.clamped_fraction:.2f}%", x.headroom_bits]
                + [f"{x.overflows['saturate'].get(b, '')}/{x.overflows['wrap'].get(b, '')}" for b in widths])
            + "</tr>" for x in self.layers)
        ends = "".join(f"<tr><td>{w.bits}</td><td>{w.policy}</td><td>{w.overflowing_layers}</td>"
                       f"<td>{w.overflowing_outputs}</td><td>{100 * w.agreement:.2f}%</td>"
                       f"<td>{'' if w.accuracy is None else f'{100 * w.accuracy:.2f}%'}</td></tr>" for w in self.widths)
        clamped = "".join(f"<tr><td>{q(name)}</td><td>{q(op)}</td><td>{100 * frac:.2f}%</td></tr>"
                          for name, (op, frac) in self.clamped.items())
        try:
            buffer = io.BytesIO()
            self.plot(buffer)
            image = f"<img alt='sweep plot' src='data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}'>"
        except ValidationError:
            image = "<p>(install matplotlib for the plot)</p>"
        page = (
            "<!doctype html><html><head><meta charset='utf-8'><title>intsim hardware report</title>"
            "<style>body{font-family:sans-serif}table{border-collapse:collapse;margin:1em 0}"
            "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}td:first-child{text-align:left}</style>"
            f"</head><body><h1>{q(self.model)}: accumulators and saturation</h1>"
            f"<p><b>{q(self.answer())}</b></p>"
            f"<p>profile {q(self.profile)}, {self.samples} samples. <i>clamped</i>: fraction of the layer's outputs "
            "the requantization clamp changed (32-bit run); <i>headroom</i>: profile accumulator bits - 1 - "
            "bit length of max |acc|; <i>bits needed</i>: narrowest width at which the layer, run alone on the "
            "32-bit run's inputs, never leaves the accumulator range; <i>ovf</i>: outputs that overflowed.</p>"
            f"<h2>Multiply-accumulate layers</h2><table><tr>{head}</tr>{rows}</table>"
            f"<h2>Saturation: fraction of outputs clamped</h2><table><tr><th>node</th><th>op</th><th>clamped</th>"
            f"</tr>{clamped}</table>"
            "<h2>End to end</h2><table><tr><th>acc bits</th><th>policy</th><th>layers overflowing</th>"
            f"<th>outputs overflowing</th><th>top-1 agreement</th><th>accuracy</th></tr>{ends}</table>"
            f"{image}</body></html>"
        )
        Path(path).write_text(page, encoding="utf-8")


def _columns(header, rows) -> list[str]:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header] + rows]


def _top1(outputs: np.ndarray) -> np.ndarray:
    return outputs.reshape(outputs.shape[0], -1).argmax(axis=1)


def sweep(model: Model, data, labels=None, acc_bits=range(16, 33), *, float_input: bool = True,
          question_bits: int = 24, batch_size: int = 256) -> SweepReport:
    """Accumulator width sweep: what each layer needs, and what narrower accumulators do end to end.

    The reference is the model run with 32-bit accumulators.  Per
    multiply-accumulate layer, the node is re-run alone on the reference's
    inputs at every width under ``saturate`` and ``wrap`` and the outputs whose
    accumulation left the range are counted (``bits needed`` is the narrowest
    width with none; partial sums count, not only the final one).  End to end,
    the whole model runs at every width and policy; the report gives the
    layers that overflowed, top-1 agreement with the reference and, with
    ``labels``, accuracy.  White paper §2.1 (accumulator width).

    Parameters
    ----------
    model : Model
    data : array
        Samples first: floats (quantized as :meth:`Model.run` does) or, with ``float_input=False``, codes.
    labels : int array, optional
    acc_bits : iterable of int
        Widths to sweep, each in 8..32.
    question_bits : int
        The width :meth:`SweepReport.answer` is about.
    """
    bits_list = sorted({int(b) for b in acc_bits})
    if not bits_list or bits_list[0] < 8 or bits_list[-1] > 32:
        raise ValidationError(f"sweep: accumulator widths must lie in [8, 32], found {bits_list}")
    data = np.asarray(data)
    if data.ndim == 0 or data.shape[0] == 0:
        raise ValidationError(f"sweep: data must hold at least one sample, found shape {data.shape}")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (data.shape[0],):
            raise ValidationError(f"sweep: labels must have shape ({data.shape[0]},), found {labels.shape}")
    graph = model.graph
    full = _with_profile(graph, graph.profile.replace(accumulator_bits=32, overflow="wrap"))
    mac_nodes = [n for n in graph.nodes if n.op in MAC_OPS]
    stats = {n.name: {"peak": 0, "clamped": 0, "outputs": 0} for n in graph.nodes}
    overflows = {n.name: {p: dict.fromkeys(bits_list, 0) for p in ("saturate", "wrap")} for n in mac_nodes}
    ends = {(b, p): {"layers": set(), "outputs": 0, "agree": 0, "correct": 0} for b in bits_list
            for p in ("saturate", "wrap")}
    models = {key: Model(_with_profile(graph, graph.profile.replace(accumulator_bits=key[0], overflow=key[1])))
              for key in ends}
    setups = {n.name: NodeSetup.of(graph, n) for n in mac_nodes}
    reference = Model(full)
    correct_full = 0
    for start in range(0, data.shape[0], batch_size):
        batch = data[start: start + batch_size]
        ref = reference.trace(batch, float_input=float_input)
        out = ref.tensors[graph.outputs[0]]
        top = _top1(out)
        if labels is not None:
            correct_full += int(np.sum(top == labels[start: start + batch_size]))
        for node in graph.nodes:
            s = stats[node.name]
            s["peak"] = max(s["peak"], ref.stats[node.name].get("max_abs_accumulator", 0))
            s["clamped"] += ref.stats[node.name].get("saturation_count", 0)
            s["outputs"] += ref.tensors[node.outputs[0]].size
        for node in mac_nodes:
            node_inputs = {t: ref.tensors[t] for t in node.inputs}
            for policy in ("saturate", "wrap"):
                for bits in bits_list:
                    variant = setups[node.name].replace(
                        profile=full.profile.replace(accumulator_bits=bits, overflow=policy))
                    overflows[node.name][policy][bits] += variant.run(node_inputs).stats[node.name]["overflow_count"]
        for (bits, policy), end in ends.items():
            trace = models[(bits, policy)].trace(batch, float_input=float_input)
            for node in mac_nodes:
                count = trace.stats[node.name]["overflow_count"]
                end["outputs"] += count
                if count:
                    end["layers"].add(node.name)
            their = _top1(trace.tensors[graph.outputs[0]])
            end["agree"] += int(np.sum(their == top))
            if labels is not None:
                end["correct"] += int(np.sum(their == labels[start: start + batch_size]))
    n = data.shape[0]
    layers = []
    for node in mac_nodes:
        s, ovf = stats[node.name], overflows[node.name]
        clean = [b for b in bits_list if not any(ovf[p][b] for p in ovf)]
        # the narrowest width from which every wider swept width is clean too
        needed = None
        for b in reversed(bits_list):
            if b not in clean:
                break
            needed = b
        layers.append(SweepLayer(node.name, node.op, s["peak"], s["peak"].bit_length() + 1, needed,
                                 s["clamped"] / s["outputs"],
                                 graph.profile.accumulator_bits - 1 - s["peak"].bit_length(), ovf))
    widths = [SweepWidth(b, p, len(e["layers"]), e["outputs"], e["agree"] / n,
                         e["correct"] / n if labels is not None else None) for (b, p), e in ends.items()]
    widths.sort(key=lambda w: (w.policy, w.bits))
    clamped = {node.name: (node.op, stats[node.name]["clamped"] / stats[node.name]["outputs"])
               for node in graph.nodes if node.op in REQUANTIZING_OPS}
    return SweepReport(graph.name, graph.profile.name, n, bits_list, question_bits, layers, widths,
                       correct_full / n if labels is not None else None, clamped)


def _with_profile(graph: Graph, profile) -> Graph:
    return Graph(graph.name, profile, graph.tensors, graph.nodes, graph.inputs, graph.outputs, graph.metadata)


# --------------------------------------------------------------------------
# Weight / activation bit-width sweep of a float model.
# --------------------------------------------------------------------------


@dataclass
class BitWidthRow:
    """One conversion: top-1 agreement with float, accuracy, and the widest final accumulator sum."""

    weight_bits: int
    activation_bits: int
    agreement: float
    accuracy: float | None
    final_bits: int
    widest_layer: str


@dataclass
class BitWidthReport:
    """The result of :func:`bitwidth_sweep`; ``table()`` and ``to_dict()``."""

    model: str
    profile: str
    samples: int
    rows: list
    accuracy_float: float | None = None

    def table(self) -> str:
        header = ["W bits", "A bits", "top-1 agreement with float", "accuracy", "final-sum acc bits", "widest layer"]
        rows = [[str(r.weight_bits), str(r.activation_bits), f"{100 * r.agreement:.2f}%",
                 "" if r.accuracy is None else f"{100 * r.accuracy:.2f}%", str(r.final_bits), r.widest_layer]
                for r in self.rows]
        lines = [f"bit-width sweep of {self.model!r} (profile {self.profile!r}) on {self.samples} samples",
                 *_columns(header, rows)]
        if self.accuracy_float is not None:
            lines.append(f"float accuracy: {100 * self.accuracy_float:.2f}%")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"model": self.model, "profile": self.profile, "samples": self.samples,
                "accuracy_float": self.accuracy_float, "rows": [dataclasses.asdict(r) for r in self.rows]}


def bitwidth_sweep(onnx_model, calibration, data, labels=None, *, weight_bits=(8,), activation_bits=(8,),
                   profile="paper", batch_size: int = 256, **convert_options) -> BitWidthReport:
    """Convert a float ONNX model at every weight x activation width and measure each conversion.

    Per ``(weight_bits, activation_bits)`` pair, :func:`intsim.convert` (with
    ``convert_options``) builds the integer model, which runs on ``data``: top-1
    agreement with the float model, accuracy with ``labels``, and the bits its
    widest final accumulator sum needs (narrower weights and activations need
    narrower accumulators; white paper §2.1 and §4).

    Parameters
    ----------
    onnx_model : path, onnx.ModelProto or FloatGraph
    calibration : float array
        Calibration inputs, samples first.
    data : float array
        Evaluation inputs, samples first.
    weight_bits, activation_bits : iterables of int
        Each in 2..16.
    """
    from intsim.converter import convert, prepare_float_graph
    from intsim.float_exec import run_float

    data = np.asarray(data)
    if data.dtype.kind != "f" or data.ndim == 0 or data.shape[0] == 0:
        raise ValidationError(f"bitwidth_sweep: data must be a non-empty float array, found dtype {data.dtype} "
                              f"shape {data.shape}")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (data.shape[0],):
            raise ValidationError(f"bitwidth_sweep: labels must have shape ({data.shape[0]},), found {labels.shape}")
    fg = prepare_float_graph(onnx_model)
    batches = [data[i: i + batch_size] for i in range(0, data.shape[0], batch_size)]
    float_top = np.concatenate([_top1(run_float(fg, [b])[fg.outputs[0]]) for b in batches])
    rows, name = [], fg.name
    for w in sorted({int(b) for b in weight_bits}):
        for a in sorted({int(b) for b in activation_bits}):
            model = convert(fg, calibration=calibration, profile=profile, weight_bits=w, activation_bits=a,
                            progress=False, **convert_options)
            peaks, tops = {}, []
            for b in batches:
                trace = model.trace(b, float_input=True)
                tops.append(_top1(trace.tensors[model.graph.outputs[0]]))
                for node, s in trace.stats.items():
                    if "max_abs_accumulator" in s:
                        peaks[node] = max(peaks.get(node, 0), s["max_abs_accumulator"])
            top = np.concatenate(tops)
            widest = max(peaks, key=peaks.get)
            rows.append(BitWidthRow(w, a, float(np.mean(top == float_top)),
                                    None if labels is None else float(np.mean(top == labels)),
                                    peaks[widest].bit_length() + 1, widest))
            name = model.graph.name
    accuracy = None if labels is None else float(np.mean(float_top == labels))
    return BitWidthReport(name, get_profile(profile).name, data.shape[0], rows, accuracy)
