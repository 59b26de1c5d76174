"""Run ONNX models through onnxruntime's CPU execution provider, one thread, and save every output.

Meant to run under an emulated CPU, so that MLAS dispatches on that CPU's
features rather than this machine's (``tests/test_onnxruntime_avx2.py``)::

    qemu-x86_64 -cpu Haswell .venv/bin/python tools/ort_run.py DIR

For every ``DIR/NAME.onnx`` with a ``DIR/NAME.in.npz`` whose arrays are named
``RUN:INPUT`` (``INPUT`` a graph input; one run per ``RUN``), writes
``DIR/NAME.out.npz`` with every graph output of every run, named
``RUN:OUTPUT``.  Emulation is slow: one process runs all the models.
"""

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort


def main(folder: Path) -> None:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    for model in sorted(folder.glob("*.onnx")):
        name = model.name[: -len(".onnx")]
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        runs: dict[str, dict[str, np.ndarray]] = {}
        with np.load(folder / f"{name}.in.npz") as arrays:
            for key in arrays.files:
                run, input_name = key.split(":", 1)
                runs.setdefault(run, {})[input_name] = arrays[key]
        names = [o.name for o in session.get_outputs()]
        results = {}
        for run, feeds in runs.items():
            results.update({f"{run}:{n}": value for n, value in zip(names, session.run(None, feeds))})
        np.savez(folder / f"{name}.out.npz", **results)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
