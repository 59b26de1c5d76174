"""Golden vectors for RTL test benches (white paper §2.1: the MAC array, int32 accumulators from an
int32 bias, requantization): every node's input and output codes, weights, bias, raw accumulators
and requantization parameters, written by :func:`export_golden` and read back by :func:`load_golden`.

The golden directory (``manifest.json``, ``"format": "intsim-golden"``)::

    tensors/<i>_<name>.<ext>          every tensor (graph inputs included), by graph order
    nodes/<j>_<node>/<param>.<ext>    the node's parameters (weight, bias, multiplier, shift, ...)
    nodes/<j>_<node>/accumulator.<ext>  MAC nodes: int32 after bias, before requantization

Each array entry in the manifest holds ``dtype``, ``shape``, ``layout`` and ``files`` (one path per
format).  ``npy`` is numpy's format; ``bin`` the raw little-endian bytes in C order; ``hex`` one
element per line in C order, two's complement, ``2 * itemsize`` lowercase hex digits (float parameters
as their IEEE-754 bit pattern), which Verilog ``$readmemh`` reads into ``8 * itemsize``-bit words.
Shifts are stored as intsim holds them: **positive means left shift**, ``real multiplier =
multiplier * 2**(shift - multiplier_bits)``.  Tensor entries add ``bits`` (the width of the codes, which
a mixed-precision graph sets per tensor: 4-bit codes in int8, 16-bit in int16) and node entries of a
converted graph their layer ``format`` (``"w4a8"``; see :mod:`intsim.converter.layer_config`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from intsim.errors import ModelFormatError, ValidationError
from intsim.graph import Graph, Node
from intsim.graph.ops import MAC_OPS, REQUANTIZING_OPS, clamp_bounds, node_rounding
from intsim.runtime import Model, Trace
from intsim.safeio import MAX_ARRAY_BYTES, read_json_file, read_npy_file

GOLDEN_FORMAT = "intsim-golden"
GOLDEN_VERSION = 1
MANIFEST = "manifest.json"
ARRAY_DTYPES = ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float16", "float32",
                "float64")
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
    array = read_npy_file(path, where)
    if array.dtype != dtype or array.shape != shape:
        raise ModelFormatError(f"{where}: manifest says {dtype}{list(shape)}, {path.name} holds "
                               f"{array.dtype}{list(array.shape)}")
    return array


def _write_bin(path: Path, array: np.ndarray) -> None:
    path.write_bytes(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes())


def _read_bin(path: Path, dtype: np.dtype, shape: tuple, where: str) -> np.ndarray:
    expected = math.prod(shape) * dtype.itemsize
    found = path.stat().st_size  # checked before reading: a dump cannot make us read more than it declares
    if found != expected:
        state = "truncated" if found < expected else "too long"
        raise ModelFormatError(f"{where}: {path.name} is {state}: {dtype}{list(shape)} needs {expected} bytes, "
                               f"found {found}")
    raw = path.read_bytes()
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)


def _write_hex(path: Path, array: np.ndarray) -> None:
    digits = 2 * array.dtype.itemsize
    words = np.ascontiguousarray(array).reshape(-1).view(_bits_dtype(array.dtype).newbyteorder("="))
    path.write_text("".join(f"{int(w):0{digits}x}\n" for w in words), encoding="ascii")


def _read_hex(path: Path, dtype: np.dtype, shape: tuple, where: str) -> np.ndarray:
    size = math.prod(shape)
    digits = 2 * dtype.itemsize
    if path.stat().st_size > size * (digits + 2):  # one line of digits and a (CR)LF per value, at most
        raise ModelFormatError(f"{where}: {path.name} is too long: {dtype}{list(shape)} needs {size} lines of "
                               f"{digits} hex digits, found {path.stat().st_size} bytes")
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except UnicodeDecodeError:
        raise ModelFormatError(f"{where}: {path.name} is not ASCII hex text") from None
    if len(lines) != size:
        state = "truncated" if len(lines) < size else "too long"
        raise ModelFormatError(f"{where}: {path.name} is {state}: {dtype}{list(shape)} needs {size} lines, "
                               f"found {len(lines)}")
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
    if root.exists() and not root.is_dir():
        raise ValidationError(f"golden output {root} exists and is not a directory")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValidationError(f"golden output {root} cannot be created ({exc})") from None
    writer = _Writer(root, formats)
    profile = graph.profile
    tensors = {}
    for index, (name, info) in enumerate(graph.tensors.items()):
        if name in trace.tensors:
            entry = writer.entry(f"tensors/{index:03d}_{_safe(name)}", trace.tensors[name], _tensor_layout(graph, name))
            tensors[name] = {**entry, "scale": info.scale, "zero_point": info.zero_point,
                             "bits": info.bits or 8 * info.np_dtype.itemsize}
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
        if node.name in graph.metadata.get("layer_formats", {}):
            record["format"] = graph.metadata["layer_formats"][node.name]
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
    if math.prod(shape) * np.dtype(dtype_name).itemsize > MAX_ARRAY_BYTES:
        raise ModelFormatError(f"{where}: {dtype_name}{shape} is over the limit of {MAX_ARRAY_BYTES} bytes")
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
    manifest = read_json_file(path, where, MANIFEST)
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
