"""Serialize an intsim TOSA program and run it through the TOSA reference model.

Runs inside the tosa-tools virtual environment (``tosa-tools`` pins numpy < 2.2,
so it cannot share intsim's environment)::

    .venv-tosa/bin/python tools/tosa_run.py PROGRAM_DIR INPUTS.npz OUTPUTS.npz

``PROGRAM_DIR`` holds what :func:`intsim.exporters.tosa.export_tosa` writes:
``program.json`` (tensors, operators) and ``consts.npz``.  This script writes
``PROGRAM_DIR/model.tosa`` (the TOSA flatbuffer), feeds the arrays of
``INPUTS.npz`` (named like the graph inputs) to the reference model and saves its
outputs, named like the graph outputs, to ``OUTPUTS.npz``.  Any reference-model
status other than VALID exits non-zero.
"""

import json
import sys
from pathlib import Path

import numpy as np
import tosa_reference_model
from tosa.NanPropagationMode import NanPropagationMode
from tosa.RoundingMode import RoundingMode
from serializer import tosa_serializer as ts  # the pure-Python serializer (tosa_serializer is the C++ binding)

DTYPES = {"int8": ts.DType.INT8, "int16": ts.DType.INT16, "int32": ts.DType.INT32, "shape": ts.DType.SHAPE}
ROUNDING = {"double": RoundingMode.DOUBLE_ROUND, "single": RoundingMode.SINGLE_ROUND}


def _attribute(ser, op, attrs):
    a = ts.TosaSerializerAttribute()
    acc = ts.DType.INT32
    if op in ("CONV2D", "DEPTHWISE_CONV2D"):
        getattr(a, "Conv2dAttribute" if op == "CONV2D" else "DepthwiseConv2dAttribute")(
            attrs["pad"], attrs["stride"], attrs["dilation"], False, acc)
    elif op == "RESCALE":
        a.RescaleAttribute(True, ROUNDING[attrs["rounding"]], attrs["per_channel"], False, False)
    elif op == "CLAMP":
        dtype = np.dtype(attrs["dtype"])
        a.ClampAttribute(ser.builder, list(np.array([attrs["min"]], dtype).tobytes()),
                         list(np.array([attrs["max"]], dtype).tobytes()), NanPropagationMode.PROPAGATE)
    elif op == "MAX_POOL2D":
        a.MaxPool2dAttribute(attrs["kernel"], attrs["stride"], attrs["pad"], NanPropagationMode.PROPAGATE)
    elif op == "CONCAT":
        a.ConcatAttribute(attrs["axis"])
    elif op == "TRANSPOSE":
        a.TransposeAttribute(attrs["perms"])
    elif op == "REDUCE_SUM":
        a.ReduceSumAttribute(attrs["axis"])
    else:
        getattr(a, {"ADD": "AddAttribute", "SUB": "SubAttribute", "TABLE": "TableAttribute",
                    "RESHAPE": "ReshapeAttribute", "PAD": "PadAttribute"}[op])()
    return a


def build(program_dir: Path) -> Path:
    program = json.loads((program_dir / "program.json").read_text())
    consts = np.load(program_dir / "consts.npz")
    ser = ts.TosaSerializer(str(program_dir))
    block = ser.currRegion.currBasicBlock
    for name in program["inputs"]:
        shape, dtype = program["tensors"][name]
        block.addTensor(name, shape, DTYPES[dtype], None)
        block.addInput(name)
    for name, (shape, dtype) in program["consts"].items():
        ser.addConst(shape, DTYPES[dtype], consts[name], name=name)
    for name, (shape, dtype) in program["tensors"].items():
        if name not in program["inputs"]:
            block.addTensor(name, shape, DTYPES[dtype], None)
    for op, inputs, outputs, attrs in program["operators"]:
        ser.addOperator(getattr(ts.Op, op), inputs, outputs, _attribute(ser, op, attrs))
    for name in program["outputs"]:
        block.addOutput(name)
    path = program_dir / "model.tosa"
    path.write_bytes(ser.serialize())
    return path


def main(argv):
    program_dir, inputs_path, outputs_path = Path(argv[1]), argv[2], argv[3]
    program = json.loads((program_dir / "program.json").read_text())
    path = build(program_dir)
    feeds = np.load(inputs_path)
    outputs, status = tosa_reference_model.run(path.read_bytes(), [feeds[n] for n in program["inputs"]])
    if status != tosa_reference_model.GraphStatus.TOSA_VALID:
        sys.exit(f"tosa_reference_model: {path} finished with status {status}")
    results = {}
    for name, raw in zip(program["outputs"], outputs):
        shape, dtype = program["tensors"][name]
        results[name] = np.asarray(raw).view(np.dtype(dtype)).reshape(shape) if np.asarray(raw).dtype == np.uint8 \
            else np.asarray(raw).astype(np.dtype(dtype)).reshape(shape)
    np.savez(outputs_path, **results)


if __name__ == "__main__":
    main(sys.argv)
