"""Make a shipped MobileNetV2-style model's depthwise channels unbalanced, as training without weight decay does.

Usage::

    python tools/models/unbalance_depthwise.py --dataset digits|fashion [--low 0.01] [--high 0.02] [--seed 0]

Reads ``models/mobilenet_<dataset>.onnx`` and writes ``models/mobilenet_<dataset>_unbalanced.onnx``.  For each
depthwise conv (BN folded) followed by ReLU6 and a 1x1 projection conv, output channel i of the depthwise
weights and bias is multiplied by ``s_i`` and input channel i of the projection's weights by ``1 / s_i``
(the rescaling of white paper §3.2 run backwards).  ``relu6(s x) = s relu6(x)`` holds where ``x <= 6``, so only
channels whose pre-activation stays at most 6 on every image of the data set (train and test) are scaled, by
``s_i`` drawn log-uniformly in ``[low, 1]``; the others keep ``s_i = 1``.  The script checks with onnxruntime
that the logits of every image stay the same (float32 rounding aside) and that no prediction changes.

Per-tensor weights then take their scale from the largest channel and leave the shrunk ones a few codes:
the model the PTQ debugging walkthrough (``docs/debug.md``) breaks and repairs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from intsim.datasets import DATASETS, load_dataset

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
RELU6_MAX = 6.0


def depthwise_blocks(graph: onnx.GraphProto) -> list[tuple[onnx.NodeProto, onnx.NodeProto]]:
    """``(depthwise conv, projection conv)`` pairs joined by one Clip(0, 6)."""
    consumers = {}
    for node in graph.node:
        for t in node.input:
            consumers.setdefault(t, []).append(node)
    pairs = []
    for node in graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.op_type != "Conv" or group == 1:
            continue
        (clip,) = consumers[node.output[0]]
        (projection,) = consumers[clip.output[0]]
        assert clip.op_type == "Clip" and projection.op_type == "Conv", (clip.op_type, projection.op_type)
        pairs.append((node, projection))
    return pairs


def channel_maxima(model: onnx.ModelProto, tensors: list[str], images: np.ndarray) -> list[np.ndarray]:
    """Per channel, the largest value each tensor takes over ``images``."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for name in tensors:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    peaks = [np.full(0, -np.inf)] * len(tensors)
    for start in range(0, len(images), 1024):
        outs = session.run(tensors, {model.graph.input[0].name: images[start:start + 1024]})
        peaks = [o.max(axis=(0, 2, 3)) if p.size == 0 else np.maximum(p, o.max(axis=(0, 2, 3)))
                 for p, o in zip(peaks, outs)]
    return peaks


def unbalance(model: onnx.ModelProto, images: np.ndarray, low: float, high: float,
              seed: int) -> tuple[onnx.ModelProto, dict]:
    rng = np.random.default_rng(seed)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    pairs = depthwise_blocks(out.graph)
    maxima = channel_maxima(model, [dw.output[0] for dw, _ in pairs], images)
    summary = {}
    for (dw, projection), peak in zip(pairs, maxima):
        scale = np.where(peak <= RELU6_MAX, np.exp(rng.uniform(np.log(low), np.log(high), peak.size)), 1.0)
        w = numpy_helper.to_array(inits[dw.input[1]]).astype(np.float64)
        b = numpy_helper.to_array(inits[dw.input[2]]).astype(np.float64)
        p = numpy_helper.to_array(inits[projection.input[1]]).astype(np.float64)
        w *= scale[:, None, None, None]
        b *= scale
        p /= scale[None, :, None, None]
        for name, value in ((dw.input[1], w), (dw.input[2], b), (projection.input[1], p)):
            inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
        ranges = np.abs(w).reshape(w.shape[0], -1).max(axis=1)
        summary[dw.name] = {"scaled": int(np.sum(scale < 1.0)), "channels": int(scale.size),
                            "range_ratio": float(ranges.max() / ranges.min())}
    return out, summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=DATASETS, required=True)
    parser.add_argument("--low", type=float, default=0.01, help="smallest channel factor (default 0.01)")
    parser.add_argument("--high", type=float, default=0.02, help="largest channel factor (default 0.02)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the factors (default 0)")
    args = parser.parse_args(argv)
    source = MODELS_DIR / f"mobilenet_{args.dataset}.onnx"
    target = MODELS_DIR / f"mobilenet_{args.dataset}_unbalanced.onnx"
    images = np.concatenate([load_dataset(args.dataset, split)[0] for split in ("train", "test")])
    model = onnx.load(source)
    broken, summary = unbalance(model, images, args.low, args.high, args.seed)
    for name, info in summary.items():
        print(f"{name}: {info['scaled']}/{info['channels']} channels scaled, max/min channel range "
              f"{info['range_ratio']:.0f}")
    before = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    after = ort.InferenceSession(broken.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = model.graph.input[0].name
    worst = 0.0
    for start in range(0, len(images), 1024):
        a = before.run(None, {feed: images[start:start + 1024]})[0]
        b = after.run(None, {feed: images[start:start + 1024]})[0]
        if not np.array_equal(a.argmax(axis=1), b.argmax(axis=1)):
            raise SystemExit("a prediction changed: the rescaling is not an equivalence on this data")
        worst = max(worst, float(np.max(np.abs(a - b)) / np.max(np.abs(a))))
    onnx.save(broken, target)
    print(f"wrote {target}: every prediction of {len(images)} images unchanged, "
          f"max |logit change| / max |logit| = {worst:.2e}")


if __name__ == "__main__":
    main()
