"""Train one of the small CNNs of ``nets.py`` on CPU and export it to ONNX.

Usage::

    python tools/models/train.py --arch resnet|mobilenet|mobilenet_wide --dataset digits|fashion [--epochs N] [--out DIR]

Writes ``models/<arch>_<dataset>.onnx`` (or into ``--out``) (legacy TorchScript exporter, opset 17,
input ``x`` [batch, 1, H, W], output ``logits`` [batch, 10]; BatchNorm folded
into Conv), for digits also ``models/<arch>_digits_dynamo.onnx`` (the
torch.export-based exporter, same names, dynamic batch), and records the
exported file's float test accuracy, measured with onnxruntime, under
``"<arch>_<dataset>"`` in ``models/accuracy.json`` (``DIR/accuracy.json``).
``mobilenet_wide`` is not shipped: it is the MobileNetV2 of the ResNet's size that
``benchmarks/bench_qat.py --onnx`` trains on (issue 20).

Training is seeded and deterministic (``torch.use_deterministic_algorithms``),
but float results can still differ across CPUs and torch versions; the shipped
files, not a rerun, are what the tests check.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F

from intsim.datasets import DATASETS, load_dataset

import nets  # the script's own folder is on sys.path

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"  # the shipped models (intsim.models)
SEED = 0
THREADS = 2

# Per data set: epochs, batch size, peak learning rate, pixels of random
# translation, random horizontal flip.  Digits are not flipped (a flipped 2 is
# not a 2); clothes are.
RECIPES = {
    "digits": dict(epochs=100, batch=64, lr=5e-3, shift=1, flip=False),
    "fashion": dict(epochs=5, batch=128, lr=5e-3, shift=0, flip=True),
}


def augment(x: torch.Tensor, shift: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to ``shift`` pixels (zero fill) and random
    horizontal flip, one draw per image."""
    n, _, h, w = x.shape
    if shift:
        padded = F.pad(x, (shift, shift, shift, shift))
        dy, dx = torch.randint(0, 2 * shift + 1, (2, n), generator=gen)
        rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
        x = padded[torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols]
    if flip:
        mirror = torch.rand(n, generator=gen) < 0.5
        x = torch.where(mirror[:, None, None, None], x.flip(3), x)
    return x


def train(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, recipe: dict) -> None:
    """AdamW with a one-cycle learning-rate schedule; channels-last layout
    (several times faster for depthwise convs on CPU)."""
    gen = torch.Generator().manual_seed(SEED)
    x_all = torch.from_numpy(images)
    y_all = torch.from_numpy(labels)
    steps_per_epoch = -(-len(x_all) // recipe["batch"])
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=recipe["lr"], epochs=recipe["epochs"], steps_per_epoch=steps_per_epoch
    )
    model.to(memory_format=torch.channels_last).train()
    for epoch in range(recipe["epochs"]):
        order = torch.randperm(len(x_all), generator=gen)
        total = 0.0
        for start in range(0, len(x_all), recipe["batch"]):
            idx = order[start : start + recipe["batch"]]
            x = augment(x_all[idx], recipe["shift"], recipe["flip"], gen).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(x), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1}/{recipe['epochs']}: loss {total / len(x_all):.4f}", flush=True)
    model.to(memory_format=torch.contiguous_format).eval()


def torch_logits(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([model(torch.from_numpy(b)) for b in np.array_split(images, -(-len(images) // 1000))]).numpy()


def onnx_logits(path: Path, images: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"x": images})[0]


def accuracy_percent(logits: np.ndarray, labels: np.ndarray) -> float:
    return 100.0 * float(np.mean(logits.argmax(1) == labels))


def export(model: torch.nn.Module, sample: torch.Tensor, path: Path, dynamo: bool) -> None:
    names = dict(input_names=["x"], output_names=["logits"])
    if dynamo:
        batch = torch.export.Dim("batch")
        program = torch.onnx.export(model, (sample,), dynamo=True, dynamic_shapes=({0: batch},), **names)
        proto = program.model_proto
        for node in proto.graph.node:  # source stack traces: absolute paths, line numbers
            del node.metadata_props[:]
        onnx.save(proto, path)
    else:
        torch.onnx.export(
            model,
            sample,
            path,
            dynamo=False,
            opset_version=17,
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
            **names,
        )
    onnx.checker.check_model(onnx.load(path), full_check=True)


def check_export(model: torch.nn.Module, path: Path, images: np.ndarray, labels: np.ndarray) -> float:
    """Compare the ONNX file with torch on the test images; return its accuracy."""
    reference = torch_logits(model, images)
    logits = onnx_logits(path, images)
    ops = sorted({node.op_type for node in onnx.load(path).graph.node})
    print(
        f"{path.name}: {path.stat().st_size} bytes, ops {ops}, max |onnxruntime - torch| "
        f"{np.abs(logits - reference).max():.3g}, accuracy {accuracy_percent(logits, labels):.2f}% "
        f"(torch {accuracy_percent(reference, labels):.2f}%)"
    )
    return accuracy_percent(logits, labels)


def record(accuracy_json: Path, key: str, entry: dict) -> None:
    table = json.loads(accuracy_json.read_text()) if accuracy_json.exists() else {}
    table[key] = entry
    accuracy_json.write_text(json.dumps(dict(sorted(table.items())), indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=nets.ARCHS, required=True)
    parser.add_argument("--dataset", choices=DATASETS, required=True)
    parser.add_argument("--epochs", type=int, help="default: the data set's recipe")
    parser.add_argument("--out", type=Path, default=MODELS_DIR,
                        help="folder of the ONNX file and its accuracy.json (default: the shipped models, models/)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    torch.set_num_threads(THREADS)
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    recipe = dict(RECIPES[args.dataset])
    if args.epochs is not None:
        recipe["epochs"] = args.epochs

    train_x, train_y = load_dataset(args.dataset, "train")
    test_x, test_y = load_dataset(args.dataset, "test")
    model = nets.build(args.arch, args.dataset)
    params = sum(p.numel() for p in model.parameters())
    print(f"{args.arch} on {args.dataset}: {params} parameters, {len(train_x)} train / {len(test_x)} test images")
    start = time.perf_counter()
    train(model, train_x, train_y, recipe)
    print(f"trained in {time.perf_counter() - start:.1f} s")

    key = f"{args.arch}_{args.dataset}"
    path = args.out / f"{key}.onnx"
    sample = torch.from_numpy(test_x[:1])
    export(model, sample, path, dynamo=False)
    accuracy = check_export(model, path, test_x, test_y)
    if args.dataset == "digits":
        dynamo_path = args.out / f"{key}_dynamo.onnx"
        export(model, sample, dynamo_path, dynamo=True)
        check_export(model, dynamo_path, test_x, test_y)
    record(
        args.out / "accuracy.json",
        key,
        {
            "float_test_accuracy": round(accuracy, 2),
            "test_samples": len(test_x),
            "epochs": recipe["epochs"],
            "params": params,
            "onnx_bytes": path.stat().st_size,
        },
    )


if __name__ == "__main__":
    main()
