"""The README's Python example runs and says what it claims."""

import re
from pathlib import Path

import numpy as np


def test_readme_python_example(tmp_path, monkeypatch):
    text = (Path(__file__).parent.parent / "README.md").read_text()
    code = next(block for block in re.findall(r"```python\n(.*?)```", text, re.S) if "TensorInfo(" in block)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    model = namespace["model"]
    # The README's comment: acc 13 * 0.25 = 3.25, double rounding gives 4, plus zero point 2.
    np.testing.assert_array_equal(model.run_int(np.array([[3, -1]], np.int8)), np.array([[6]], np.int8), strict=True)
    assert (tmp_path / "fc.intsim").exists()
