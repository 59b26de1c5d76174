"""The ``.intsim`` file: one zip holding a JSON manifest and ``.npy`` arrays.

Layout (schema version 1)::

    manifest.json          {"format": "intsim", "schema_version": 1, "producer": ..., "graph": {...}}
    arrays/<n>.<param>.npy one array per node parameter, numpy format, no pickles

``graph`` holds ``name``, ``profile`` (every :class:`~intsim.profiles.Profile`
field), ``inputs``, ``outputs``, ``tensors`` (``name``, ``dtype``, ``shape``
with ``null`` for any size, ``scale``, ``zero_point``, and ``bits`` where the codes are
narrower than the dtype), ``nodes`` (``op``,
``name``, ``inputs``, ``outputs``, ``attrs``, and ``params`` mapping each
parameter name to its array's member path) and ``metadata`` (optional JSON the
datapath never reads).  Floats are written with Python's
``repr`` and so round-trip exactly.

Loading reads the members through :mod:`intsim.safeio` (sizes checked
against the bytes present before allocating, manifest size and nesting capped,
``.npy`` headers parsed without pickles), and validates the graph; anything
wrong raises :class:`~intsim.errors.ModelFormatError` naming the file and the
problem.  Nothing in a file is ever executed.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np

from intsim.errors import IntsimError, ModelFormatError
from intsim.graph import Graph, Node, TensorInfo
from intsim.profiles import Profile
from intsim.safeio import MAX_JSON_BYTES, load_json, open_zip, read_member, read_npy_member

FORMAT_NAME = "intsim"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


def save_graph(graph: Graph, path) -> None:
    """Write ``graph`` to ``path`` as a ``.intsim`` file."""
    from intsim import __version__

    arrays = {}
    nodes = []
    for index, node in enumerate(graph.nodes):
        params = {}
        for key, value in node.params.items():
            member = f"arrays/{index}.{key}.npy"
            arrays[member] = np.asarray(value)
            params[key] = member
        nodes.append(
            {
                "op": node.op,
                "name": node.name,
                "inputs": list(node.inputs),
                "outputs": list(node.outputs),
                "attrs": _jsonable(node.attrs),
                "params": params,
            }
        )
    manifest = {
        "format": FORMAT_NAME,
        "schema_version": SCHEMA_VERSION,
        "producer": f"intsim {__version__}",
        "graph": {
            "name": graph.name,
            "profile": graph.profile.to_dict(),
            "inputs": list(graph.inputs),
            "outputs": list(graph.outputs),
            "tensors": [
                {"name": t.name, "dtype": t.dtype, "shape": list(t.shape), "scale": t.scale, "zero_point": t.zero_point,
                 **({} if t.bits is None else {"bits": t.bits})}
                for t in graph.tensors.values()
            ],
            "nodes": nodes,
            "metadata": _jsonable(graph.metadata),
        },
    }
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(MANIFEST, json.dumps(manifest, indent=1))
        for member, array in arrays.items():
            buffer = io.BytesIO()
            np.save(buffer, array, allow_pickle=False)
            zf.writestr(member, buffer.getvalue())


def load_graph(path) -> Graph:
    """Read and validate a ``.intsim`` file."""
    path = Path(path)
    where = f"{path}"
    zf, members = open_zip(path, where)
    with zf:
        _expect(MANIFEST in members, where, f"member {MANIFEST!r} is missing (truncated or not an .intsim file)")
        manifest = load_json(read_member(zf, members[MANIFEST], MAX_JSON_BYTES, where), where)
        _expect(isinstance(manifest, dict), where, "manifest.json must hold a JSON object")
        _expect(manifest.get("format") == FORMAT_NAME, where, f"format must be {FORMAT_NAME!r}, found {manifest.get('format')!r}")
        version = manifest.get("schema_version")
        _expect(
            version == SCHEMA_VERSION,
            where,
            f"schema_version {version!r} is not supported; this intsim reads version {SCHEMA_VERSION}",
        )
        g = _field(manifest, "graph", dict, where)
        try:
            profile = Profile.from_dict(_field(g, "profile", dict, where), where=f"{where}: profile")
            tensor_entries = _items(g, "tensors", where)
            seen = set()
            for t in tensor_entries:
                name = repr(t.get("name"))
                _expect(name not in seen, where, f"tensors lists {name} twice (which entry is meant is ambiguous)")
                seen.add(name)
            tensors = [
                TensorInfo(
                    _field(t, "name", str, where),
                    _field(t, "dtype", str, where),
                    _field(t, "shape", list, where),
                    _field(t, "scale", (int, float), where),
                    _field(t, "zero_point", int, where),
                    _field(t, "bits", int, where) if "bits" in t else None,
                )
                for t in tensor_entries
            ]
            nodes = []
            for n in _items(g, "nodes", where):
                node_where = f"{where}: node {n.get('name')!r}"
                params = {
                    key: _array(zf, members, member, f"{node_where} parameter {key}")
                    for key, member in _field(n, "params", dict, node_where).items()
                }
                nodes.append(
                    Node(
                        _field(n, "op", str, node_where),
                        _field(n, "name", str, node_where),
                        _strings(n, "inputs", node_where),
                        _strings(n, "outputs", node_where),
                        _field(n, "attrs", dict, node_where),
                        params,
                    )
                )
            return Graph(
                _field(g, "name", str, where), profile, tensors, nodes, _strings(g, "inputs", where),
                _strings(g, "outputs", where), _field(g, "metadata", dict, where) if "metadata" in g else {},
            )
        except ModelFormatError:
            raise
        except IntsimError as exc:
            raise ModelFormatError(f"{where}: inconsistent graph: {exc}") from None
        except (TypeError, ValueError, IndexError, KeyError, ZeroDivisionError, OverflowError, AttributeError) as exc:
            # A value of a JSON type no check expected (an op's validation assumes the types it documents).
            raise ModelFormatError(f"{where}: inconsistent graph ({type(exc).__name__}: {exc})") from None


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    return value


def _expect(condition, where, message):
    if not condition:
        raise ModelFormatError(f"{where}: {message}")


def _field(obj, key, kind, where):
    _expect(isinstance(obj, dict), where, f"expected a JSON object holding {key!r}, found {type(obj).__name__}")
    _expect(key in obj, where, f"missing field {key!r}")
    value = obj[key]
    ok = isinstance(value, kind) and not (isinstance(value, bool) and kind in (int, (int, float)))
    names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
    _expect(ok, where, f"field {key!r} must be {names}, found {type(value).__name__}")
    return value


def _items(obj, key, where):
    values = _field(obj, key, list, where)
    for v in values:
        _expect(isinstance(v, dict), where, f"entries of {key!r} must be JSON objects, found {type(v).__name__}")
    return values


def _strings(obj, key, where):
    values = _field(obj, key, list, where)
    _expect(all(isinstance(v, str) for v in values), where, f"field {key!r} must be a list of strings")
    return values


def _array(zf, members, member, where) -> np.ndarray:
    _expect(isinstance(member, str), where, f"member name must be a string, found {member!r}")
    _expect(member in members, where, f"member {member!r} is missing (truncated or not an .intsim file)")
    return read_npy_member(zf, members[member], where)
