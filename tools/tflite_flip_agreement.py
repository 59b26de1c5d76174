"""How often intsim loads a byte-flipped TFLite file that LiteRT refuses (issue 14).

    python tools/tflite_flip_agreement.py [--flips 200] [--seed 0]

Flips one random byte (outside the 8-byte header) of each model in
tests/data/tflite in turn and asks both: LiteRT's ``Interpreter`` (building and
``allocate_tensors``) and :func:`intsim.importers.tflite.load_tflite`.  Prints
the counts of each pair of outcomes; "intsim loads, LiteRT refuses" is the
accepted-garbage count.
"""

import argparse
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from intsim.errors import IntsimError
from intsim.importers.tflite import load_tflite

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "tflite"


def litert_accepts(blob: bytes) -> bool:
    from ai_edge_litert.interpreter import Interpreter

    try:
        Interpreter(model_content=blob).allocate_tensors()
    except Exception:  # noqa: BLE001 - any refusal counts
        return False
    return True


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--flips", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    files = sorted(p for p in DATA.glob("*.tflite") if not p.name.startswith("error_"))
    rng = np.random.default_rng(args.seed)
    counts = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "flip.tflite"
        for i in range(args.flips):
            blob = bytearray(files[i % len(files)].read_bytes())
            pos = int(rng.integers(8, len(blob)))
            blob[pos] ^= 1 << int(rng.integers(8))
            path.write_bytes(bytes(blob))
            try:
                load_tflite(path)
                ours = "intsim loads"
            except IntsimError:
                ours = "intsim refuses"
            theirs = "LiteRT loads" if litert_accepts(bytes(blob)) else "LiteRT refuses"
            counts[(ours, theirs)] += 1
    for (ours, theirs), n in sorted(counts.items()):
        print(f"{ours:15s} {theirs:15s} {n}")


if __name__ == "__main__":
    main()
