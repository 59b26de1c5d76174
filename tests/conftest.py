import os
from pathlib import Path

import numpy as np
import pytest

# One thread: the test machine is shared and noisy, and results must not depend on it.
os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


DATA = Path(__file__).parent / "data"


@pytest.fixture
def batch_norm_net():
    """A small CNN whose BatchNormalization nodes survive the ONNX export, with running statistics of
    real activations (``tools/make_test_models.py`` exported it once with torch): ``(path to the ONNX
    file, x, torch's outputs on x)``."""
    with np.load(DATA / "batch_norm_net.npz") as data:
        return DATA / "batch_norm_net.onnx", data["x"], data["y"]
