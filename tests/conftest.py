import os

import pytest

# One thread: the test machine is shared and noisy, and results must not depend on it.
os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


@pytest.fixture
def batch_norm_net(tmp_path):
    """A small torch CNN whose BatchNormalization nodes survive the ONNX export, with running statistics
    of real activations: ``(net, x, path to the ONNX file)``."""
    torch = pytest.importorskip("torch")
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
    path = tmp_path / "bn.onnx"
    torch.onnx.export(net, x[:1], str(path), dynamo=False, opset_version=17, do_constant_folding=False,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    return net, x, path
