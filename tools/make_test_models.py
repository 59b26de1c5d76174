"""Write the small torch exports the tests read, so that the test path needs no torch.

    pip install -e '.[torch]'          # torch 2.13.0, CPU wheel (see the README)
    python tools/make_test_models.py   # writes tests/data/batch_norm_net.onnx and .npz

``batch_norm_net``: a CNN whose BatchNormalization nodes survive the ONNX export (no constant
folding), with running statistics gathered on its own inputs. The ``.npz`` holds those inputs ``x``
(float32 [256, 1, 8, 8]) and torch's outputs ``y`` on them, the reference the data-free PTQ tests
compare against. Re-running the script with the same torch version writes the same numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parent.parent / "tests" / "data"


def batch_norm_net(out: Path = OUT) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4))
    x = torch.rand(256, 1, 8, 8)
    net.train()
    with torch.no_grad():
        for _ in range(20):
            net(x)
    net.eval()
    torch.onnx.export(net, x[:1], str(out / "batch_norm_net.onnx"), dynamo=False, opset_version=17,
                      do_constant_folding=False, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    with torch.no_grad():
        y = net(x)
    np.savez_compressed(out / "batch_norm_net.npz", x=x.numpy(), y=y.numpy())


if __name__ == "__main__":
    batch_norm_net()
    print(f"wrote {OUT / 'batch_norm_net.onnx'} and {OUT / 'batch_norm_net.npz'}")
