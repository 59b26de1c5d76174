"""Run a ``.tosa`` file written by intsim through the TOSA reference model.

Runs inside the tosa-tools virtual environment (``tosa-tools`` pins numpy < 2.2,
so it cannot share intsim's environment)::

    .venv-tosa/bin/python tools/tosa_run.py MODEL.tosa INPUTS.npz OUTPUTS.npz [INPUTS.npz OUTPUTS.npz ...]

``MODEL.tosa`` is the flatbuffer :func:`intsim.export.tosa.export_tosa` wrote; it
is handed to the reference model byte for byte.  Its basic block's input / output
names and tensor types are read with tosa-tools' own generated flatbuffer reader.
Each ``INPUTS.npz`` holds arrays named like the graph inputs; the outputs, named
like the graph outputs, go to the ``OUTPUTS.npz`` after it.  Any reference-model
status other than VALID exits non-zero.
"""

import sys
from pathlib import Path

import numpy as np
import tosa_reference_model
from tosa.DType import DType
from tosa.TosaGraph import TosaGraph

NUMPY_DTYPES = {DType.INT8: np.int8, DType.INT16: np.int16, DType.INT32: np.int32}


def block_signature(buffer: bytes):
    """``(inputs, outputs)`` of the main block: names, and for outputs also (shape, numpy dtype)."""
    block = TosaGraph.GetRootAs(buffer, 0).Regions(0).Blocks(0)
    tensors = {}
    for i in range(block.TensorsLength()):
        t = block.Tensors(i)
        # Only outputs need a numpy dtype; intermediate int48 accumulators have none.
        tensors[t.Name().decode()] = ([t.Shape(j) for j in range(t.ShapeLength())], NUMPY_DTYPES.get(t.Type()))
    inputs = [block.Inputs(i).decode() for i in range(block.InputsLength())]
    outputs = {block.Outputs(i).decode(): tensors[block.Outputs(i).decode()] for i in range(block.OutputsLength())}
    return inputs, outputs


def main(argv):
    if len(argv) < 4 or len(argv) % 2:
        sys.exit(__doc__)
    path = Path(argv[1])
    buffer = path.read_bytes()
    inputs, outputs = block_signature(buffer)
    for inputs_path, outputs_path in zip(argv[2::2], argv[3::2]):
        feeds = np.load(inputs_path)
        raw, status = tosa_reference_model.run(buffer, [feeds[n] for n in inputs])
        if status != tosa_reference_model.GraphStatus.TOSA_VALID:
            sys.exit(f"tosa_reference_model: {path} on {inputs_path} finished with status {status}")
        results = {}
        for (name, (shape, dtype)), array in zip(outputs.items(), raw):
            array = np.asarray(array)
            # The reference model may hand back raw bytes rather than the tensor's dtype.
            results[name] = (array.view(dtype) if array.dtype == np.uint8 else array.astype(dtype)).reshape(shape)
        np.savez(outputs_path, **results)


if __name__ == "__main__":
    main(sys.argv)
