"""A verifier for TFLite flatbuffers: every offset, size and index checked before the importer reads it.

The flatbuffer reader follows offsets wherever they point, so a damaged file is
read as whatever bytes the offsets land on.  :func:`verify_tflite` walks the
parts of the schema (``tensorflow/lite/schema/schema.fbs``) that intsim reads,
with the checks of the flatbuffers verifier that LiteRT runs before it builds
an interpreter:

* the buffer: at least 8 bytes, file identifier ``TFL3``, under 2 GiB;
* each table: its ``soffset`` 4-byte aligned and inside the buffer, its vtable
  2-byte aligned, of even size >= 4 and inside the buffer, the object inside
  the buffer, each present field inside the object and aligned to its size;
* each offset field: 4-byte aligned, pointing inside the buffer;
* each vector: a 4-byte aligned length, elements aligned to their size and
  inside the buffer; each string NUL-terminated;
* nesting and the number of tables bounded (the flatbuffers defaults, 64 and
  10^6).

and then LiteRT's own checks of the model it builds: tensor indices of the
subgraph and of every operator in range (``-1`` only for an optional operator
input), buffer and opcode indices in range, known tensor types, non-negative
dimensions, as many zero points as scales and a quantized dimension inside the
rank, and a builtin options table of the type its operator expects.
Failures raise :class:`~intsim.errors.ModelFormatError` naming the table and
field.
"""

from __future__ import annotations

import struct

from intsim.errors import ModelFormatError

MAX_DEPTH = 64
MAX_TABLES = 1_000_000
MAX_BYTES = 2**31 - 1

# Field kinds: a scalar size in bytes (1, 2, 4, 8), "string", ("vector", element size), ("tables", name),
# ("table", name), or "union" (a table whose type the preceding *_type field names; checked as a table of
# unknown fields).
SCHEMA = {
    "Model": {0: 4, 1: ("tables", "OperatorCode"), 2: ("tables", "SubGraph"), 3: "string", 4: ("tables", "Buffer"),
              5: ("vector", 4), 6: ("tables", "Metadata"), 7: ("tables", "SignatureDef")},
    "Metadata": {0: "string", 1: 4},
    "SignatureDef": {0: ("tables", "TensorMap"), 1: ("tables", "TensorMap"), 2: "string", 4: 4},
    "TensorMap": {0: "string", 1: 4},
    "OperatorCode": {0: 1, 1: "string", 2: 4, 3: 4},
    "SubGraph": {0: ("tables", "Tensor"), 1: ("vector", 4), 2: ("vector", 4), 3: ("tables", "Operator"),
                 4: "string"},
    "Tensor": {0: ("vector", 4), 1: 1, 2: 4, 3: "string", 4: ("table", "QuantizationParameters"), 5: 1,
               7: ("vector", 4), 8: 1},
    "QuantizationParameters": {0: ("vector", 4), 1: ("vector", 4), 2: ("vector", 4), 3: ("vector", 8), 4: 1,
                               5: "union", 6: 4},
    "Operator": {0: 4, 1: ("vector", 4), 2: ("vector", 4), 3: 1, 4: "union", 5: ("vector", 1), 6: 1,
                 7: ("vector", 1), 8: ("vector", 4)},
    "Buffer": {0: ("vector", 1), 1: 8, 2: 8},
}

TENSOR_TYPES = frozenset(range(0, 18))  # FLOAT32 .. the newest TensorType LiteRT knows


class _Verifier:
    def __init__(self, blob: bytes, where: str):
        self.blob = blob
        self.size = len(blob)
        self.where = where
        self.tables = 0

    def fail(self, what: str, message: str):
        raise ModelFormatError(f"{self.where}: corrupt or truncated TFLite file (invalid flatbuffer: {what}: "
                               f"{message})")

    def read(self, fmt: str, pos: int, what: str):
        width = struct.calcsize(fmt)
        if pos < 0 or pos + width > self.size:
            self.fail(what, f"reads {width} bytes at {pos}, outside the {self.size}-byte buffer")
        return struct.unpack_from(fmt, self.blob, pos)[0]

    def aligned(self, pos: int, alignment: int, what: str):
        if pos % alignment:
            self.fail(what, f"offset {pos} is not {alignment}-byte aligned")

    def offset(self, pos: int, what: str) -> int:
        """Follow the uoffset stored at ``pos``."""
        self.aligned(pos, 4, what)
        target = pos + self.read("<I", pos, what)
        if target >= self.size:
            self.fail(what, f"points to {target}, outside the {self.size}-byte buffer")
        return target

    def table(self, pos: int, name: str | None, what: str, depth: int) -> dict:
        """Check the table at ``pos``; ``{field index: absolute position}`` of its present fields."""
        self.tables += 1
        if self.tables > MAX_TABLES:
            self.fail(what, f"more than {MAX_TABLES} tables")
        if depth > MAX_DEPTH:
            self.fail(what, f"nested more than {MAX_DEPTH} deep")
        self.aligned(pos, 4, what)
        vtable = pos - self.read("<i", pos, what)
        self.aligned(vtable, 2, f"{what} vtable")
        vsize = self.read("<H", vtable, f"{what} vtable")
        osize = self.read("<H", vtable + 2, f"{what} vtable")
        if vsize < 4 or vsize % 2 or vtable + vsize > self.size:
            self.fail(f"{what} vtable", f"size {vsize} at {vtable} is invalid")
        if osize < 4 or pos + osize > self.size:
            self.fail(what, f"object of {osize} bytes at {pos} does not fit the buffer")
        fields = {}
        kinds = SCHEMA.get(name, {})
        for index in range((vsize - 4) // 2):
            off = self.read("<H", vtable + 4 + 2 * index, f"{what} vtable")
            if not off:
                continue
            kind = kinds.get(index)
            width = kind if isinstance(kind, int) else 4 if kind is not None else 1
            if off + width > osize:
                self.fail(f"{what} field {index}", f"offset {off} + {width} bytes lies outside the {osize}-byte object")
            self.aligned(pos + off, width, f"{what} field {index}")
            fields[index] = pos + off
            if kind is not None and not isinstance(kind, int):
                self.field(pos + off, kind, f"{what} field {index}", depth)
        return fields

    def vector(self, pos: int, element_size: int, what: str) -> tuple[int, int]:
        """``(start, length)`` of the vector whose offset is stored at ``pos``."""
        start = self.offset(pos, what)
        self.aligned(start, 4, what)
        length = self.read("<I", start, what)
        self.aligned(start + 4, min(element_size, 8), what)
        if start + 4 + length * element_size > self.size:
            self.fail(what, f"{length} elements of {element_size} bytes overrun the buffer")
        return start + 4, length

    def field(self, pos: int, kind, what: str, depth: int):
        if kind == "string":
            start, length = self.vector(pos, 1, what)
            if start + length >= self.size or self.blob[start + length] != 0:
                self.fail(what, "string is not NUL-terminated inside the buffer")
        elif kind == "union":
            self.table(self.offset(pos, what), None, what, depth + 1)
        elif kind[0] == "vector":
            self.vector(pos, kind[1], what)
        elif kind[0] == "table":
            self.table(self.offset(pos, what), kind[1], what, depth + 1)
        else:
            start, length = self.vector(pos, 4, what)
            for i in range(length):
                self.table(self.offset(start + 4 * i, f"{what}[{i}]"), kind[1], f"{what}[{i}]", depth + 1)


def verify_tflite(blob: bytes, where: str) -> None:
    """Check the flatbuffer structure of ``blob`` (see the module docstring); raise
    :class:`~intsim.errors.ModelFormatError` at the first fault."""
    if len(blob) < 8 or blob[4:8] != b"TFL3":
        raise ModelFormatError(f"{where}: not a TFLite flatbuffer (file identifier {blob[4:8]!r}, expected b'TFL3')")
    if len(blob) > MAX_BYTES:
        raise ModelFormatError(f"{where}: {len(blob)} bytes, over the flatbuffer limit of {MAX_BYTES}")
    verifier = _Verifier(blob, where)
    verifier.table(verifier.offset(0, "root"), "Model", "Model", 0)


def check_model(model, where: str) -> None:
    """LiteRT's index and enum checks on a verified ``tflite.Model`` (see the module docstring)."""
    n_buffers, n_codes = model.BuffersLength(), model.OperatorCodesLength()
    for s in range(model.SubgraphsLength()):
        sub = model.Subgraphs(s)
        n_tensors = sub.TensorsLength()
        for i in range(n_tensors):
            t = sub.Tensors(i)
            what = f"{where}: subgraph {s} tensor {i}"
            if t.Type() not in TENSOR_TYPES:
                raise ModelFormatError(f"{what}: unknown tensor type {t.Type()}")
            if t.Buffer() >= n_buffers:
                raise ModelFormatError(f"{what}: buffer index {t.Buffer()} is out of range (the model has {n_buffers})")
            shape = [int(d) for d in t.ShapeAsNumpy()] if t.ShapeLength() else []
            if any(d < 0 for d in shape):
                raise ModelFormatError(f"{what}: shape {shape} has a negative dimension")
            if t.IsVariable() and t.Buffer() != 0:
                raise ModelFormatError(f"{what}: a variable tensor may not have a buffer (it has buffer {t.Buffer()})")
            q = t.Quantization()
            if q is not None and q.ScaleLength():
                if q.ZeroPointLength() != q.ScaleLength():
                    raise ModelFormatError(f"{what}: {q.ScaleLength()} scales but {q.ZeroPointLength()} zero points")
                if q.ScaleLength() > 1 and not 0 <= q.QuantizedDimension() < max(len(shape), 1):
                    raise ModelFormatError(f"{what}: quantized dimension {q.QuantizedDimension()} is outside rank "
                                           f"{len(shape)}")
        for kind, length, values in (("input", sub.InputsLength(), sub.InputsAsNumpy),
                                     ("output", sub.OutputsLength(), sub.OutputsAsNumpy)):
            for v in (values() if length else ()):
                if not 0 <= int(v) < n_tensors:
                    raise ModelFormatError(f"{where}: subgraph {s} {kind} tensor index {int(v)} is out of range "
                                           f"[0, {n_tensors})")
        for o in range(sub.OperatorsLength()):
            op = sub.Operators(o)
            what = f"{where}: subgraph {s} operator {o}"
            if op.OpcodeIndex() >= n_codes:
                raise ModelFormatError(f"{what}: opcode index {op.OpcodeIndex()} is out of range (the model has "
                                       f"{n_codes})")
            for kind, length, values in (("input", op.InputsLength(), op.InputsAsNumpy),
                                         ("output", op.OutputsLength(), op.OutputsAsNumpy)):
                lowest = -1 if kind == "input" else 0  # -1: an optional input left out
                for v in (values() if length else ()):
                    if not lowest <= int(v) < n_tensors:
                        raise ModelFormatError(f"{what}: {kind} tensor index {int(v)} is out of range "
                                               f"[{lowest}, {n_tensors})")
