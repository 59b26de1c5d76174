"""Write a :class:`~intsim.export.tosa.TosaProgram` as a TOSA flatbuffer (``.tosa``).

The file is what the TOSA reference model and TOSA tooling read: one ``TosaGraph``
holding one region ``main`` with one basic block ``main``.  Constants are embedded
(``TosaTensor.data`` for CONST, ``TosaShape.data`` for CONST_SHAPE), so the file is
self-contained.  Only the ``flatbuffers`` package's ``Builder`` is used; the facts
below (field ids, enum values, file identifier) come from the TOSA schema
``tosa.fbs`` (TOSA 1.x, as shipped with ``tosa-tools``).

In the schema every op has exactly one attribute table and the ``Attribute`` union
lists them in op order, so an operator's union type equals its op code.  A union
field takes two field ids (type, then value), hence ``TosaOperator``'s ids below.
"""

from __future__ import annotations

from pathlib import Path

import flatbuffers
import numpy as np

FILE_IDENTIFIER = b"TOSA"
# The specification the file claims (``Version``): TOSA 1.0, the release whose operators
# are written here.  The reference model of tosa-tools 2026.8.0 (spec 1.1 draft) reads it
# as backward compatible.  ``software_version`` (the serialization library that wrote
# the file) is left out: this writer is not that library.
TOSA_VERSION = {"major": 1, "minor": 0, "patch": 0, "draft": False}

# The enum values this writer uses.
DTYPES = {"int8": 3, "int16": 4, "int32": 5, "int48": 6}
ROUNDING_MODES = {"single": 1, "double": 3}
NAN_MODES = {"propagate": 1}
ENUMS = {"dtype": DTYPES, "rounding_mode": ROUNDING_MODES, "nan_mode": NAN_MODES}
# How an attribute field of each kind is written: scalars inline (Builder method, conversion),
# vectors as a reference to a vector built first (_Writer method).
SCALAR_KINDS = {"bool": ("PrependBoolSlot", bool), "int32": ("PrependInt32Slot", int),
                **{kind: ("PrependUint32Slot", codes.__getitem__) for kind, codes in ENUMS.items()}}
VECTOR_KINDS = {"int32s": "int32s", "bytes": "values"}

_CONV = (("pad", "int32s"), ("stride", "int32s"), ("dilation", "int32s"), ("local_bound", "bool"),
         ("acc_type", "dtype"))

# op -> (code in ``enum Op``, fields of its attribute table in field-id order).
# A field's kind is "int32s" ([int32]), "bytes" ([ubyte], 8-aligned, the little-endian
# values of a numpy array of the operand's dtype), "bool", "int32", or an enum of ENUMS.
OPS = {
    "CONV2D": (3, _CONV),
    "DEPTHWISE_CONV2D": (5, _CONV),
    "MATMUL": (7, ()),
    "MAX_POOL2D": (8, (("kernel", "int32s"), ("stride", "int32s"), ("pad", "int32s"), ("nan_mode", "nan_mode"))),
    "CLAMP": (11, (("min_val", "bytes"), ("max_val", "bytes"), ("nan_mode", "nan_mode"))),
    "ADD": (15, ()),
    "MUL": (28, ()),
    "SUB": (30, ()),
    "TABLE": (31, ()),
    "REDUCE_SUM": (54, (("axis", "int32"),)),
    "CONCAT": (55, (("axis", "int32"),)),
    "PAD": (56, ()),
    "RESHAPE": (57, ()),
    "SLICE": (59, ()),
    "TRANSPOSE": (61, (("perms", "int32s"),)),
    "RESCALE": (66, (("scale32", "bool"), ("rounding_mode", "rounding_mode"), ("per_channel", "bool"),
                     ("input_unsigned", "bool"), ("output_unsigned", "bool"))),
    "CONST": (67, ()),
    "CONST_SHAPE": (75, ()),
}

# Field ids of the container tables.
GRAPH = {"version": 0, "regions": 1}
VERSION = {"major": (0, "PrependInt32Slot"), "minor": (1, "PrependInt32Slot"), "patch": (2, "PrependInt32Slot"),
           "draft": (3, "PrependBoolSlot")}
REGION = {"name": 0, "blocks": 1}
BLOCK = {"name": 0, "operators": 1, "tensors": 2, "inputs": 3, "outputs": 4, "shapes": 5}
OPERATOR = {"op": 0, "attribute_type": 1, "attribute": 2, "inputs": 3, "outputs": 4, "location": 5}
TENSOR = {"name": 0, "shape": 1, "type": 2, "data": 3}
SHAPE = {"name": 0, "rank": 1, "data": 2}
LOCATION = {"text": 0}


def _raw(array, dtype: str) -> np.ndarray:
    """Little-endian bytes of ``array`` as TOSA stores ``dtype`` (SHAPE values are int64; int48 values
    the low 6 bytes of their two's complement int64)."""
    numpy_dtype = "<i8" if dtype in ("shape", "int48") else np.dtype(dtype).newbyteorder("<")
    raw = np.ascontiguousarray(np.asarray(array).astype(numpy_dtype)).reshape(-1).view(np.uint8)
    return np.ascontiguousarray(raw.reshape(-1, 8)[:, :6]).reshape(-1) if dtype == "int48" else raw


class _Writer:
    def __init__(self):
        self.b = flatbuffers.Builder(1024)
        # Every scalar is written, so no schema default (Version's are -1 and true) is relied on.
        self.b.ForceDefaults(True)

    def bytes8(self, data: np.ndarray) -> int:
        """A [ubyte] vector whose first byte is 8-aligned (the schema's ``force_align: 8``)."""
        self.b.Prep(8, data.size)
        return self.b.CreateNumpyVector(data)

    def values(self, array: np.ndarray) -> int:
        """The little-endian bytes of ``array``'s values (CLAMP bounds), 8-aligned."""
        return self.bytes8(_raw(array, array.dtype.name))

    def int32s(self, values) -> int:
        return self.b.CreateNumpyVector(np.asarray(values, "<i4").reshape(-1))

    def strings(self, values) -> int:
        return self.offsets([self.b.CreateString(v) for v in values])

    def offsets(self, offsets) -> int:
        self.b.StartVector(4, len(offsets), 4)
        for offset in reversed(offsets):
            self.b.PrependUOffsetTRelative(offset)
        return self.b.EndVector()

    def table(self, n_fields, scalars=(), references=()):
        """Build a table: ``scalars`` are (id, Builder prepend method, value), ``references`` (id, offset)."""
        self.b.StartObject(n_fields)
        for slot, method, value in scalars:
            getattr(self.b, method)(slot, value, 0)
        for slot, offset in references:
            self.b.PrependUOffsetTRelativeSlot(slot, offset, 0)
        return self.b.EndObject()

    def attribute(self, op, attrs):
        fields = OPS[op][1]
        scalars, references = [], []
        for slot, (name, kind) in enumerate(fields):
            if kind in VECTOR_KINDS:
                references.append((slot, getattr(self, VECTOR_KINDS[kind])(attrs[name])))
            else:
                method, convert = SCALAR_KINDS[kind]
                scalars.append((slot, method, convert(attrs[name])))
        return self.table(len(fields), scalars, references)

    def operator(self, operator):
        code = OPS[operator.op][0]
        attribute = self.attribute(operator.op, operator.attrs)
        inputs, outputs = self.strings(operator.inputs), self.strings(operator.outputs)
        location = self.table(1, references=[(LOCATION["text"], self.b.CreateString(operator.location))])
        return self.table(len(OPERATOR),
                          [(OPERATOR["op"], "PrependUint32Slot", code),
                           (OPERATOR["attribute_type"], "PrependUint8Slot", code)],
                          [(OPERATOR["attribute"], attribute), (OPERATOR["inputs"], inputs),
                           (OPERATOR["outputs"], outputs), (OPERATOR["location"], location)])

    def tensor(self, name, shape, dtype, data=None):
        references = [(TENSOR["name"], self.b.CreateString(name)), (TENSOR["shape"], self.int32s(shape))]
        if data is not None:
            references.append((TENSOR["data"], self.bytes8(_raw(data, dtype))))
        return self.table(len(TENSOR), [(TENSOR["type"], "PrependUint32Slot", DTYPES[dtype])], references)

    def shape(self, name, values):
        references = [(SHAPE["name"], self.b.CreateString(name)), (SHAPE["data"], self.bytes8(_raw(values, "shape")))]
        return self.table(len(SHAPE), [(SHAPE["rank"], "PrependUint32Slot", int(np.asarray(values).size))], references)

    def graph(self, program) -> bytes:
        tensors = [self.tensor(n, shape, dtype) for n, (shape, dtype) in program.tensors.items()]
        tensors += [self.tensor(n, a.shape, program.const_dtypes[n], a)
                    for n, a in program.consts.items() if program.const_dtypes[n] != "shape"]
        shapes = [self.shape(n, a) for n, a in program.consts.items() if program.const_dtypes[n] == "shape"]
        operators = [self.operator(o) for o in program.operators]
        block = self.table(len(BLOCK), references=[
            (BLOCK["name"], self.b.CreateString("main")), (BLOCK["operators"], self.offsets(operators)),
            (BLOCK["tensors"], self.offsets(tensors)), (BLOCK["inputs"], self.strings(program.inputs)),
            (BLOCK["outputs"], self.strings(program.outputs)), (BLOCK["shapes"], self.offsets(shapes))])
        region = self.table(len(REGION), references=[(REGION["name"], self.b.CreateString("main")),
                                                     (REGION["blocks"], self.offsets([block]))])
        version = self.table(len(VERSION), [(slot, method, TOSA_VERSION[k]) for k, (slot, method) in VERSION.items()])
        root = self.table(len(GRAPH), references=[(GRAPH["version"], version),
                                                  (GRAPH["regions"], self.offsets([region]))])
        self.b.Finish(root, FILE_IDENTIFIER)
        return bytes(self.b.Output())


def tosa_flatbuffer(program) -> bytes:
    """The bytes of the ``.tosa`` file holding ``program`` (schema ``tosa.fbs``, identifier ``TOSA``)."""
    return _Writer().graph(program)


def write_tosa(program, path) -> Path:
    """Write ``program`` to ``path`` as a TOSA flatbuffer and return the path."""
    path = Path(path)
    path.write_bytes(tosa_flatbuffer(program))
    return path
