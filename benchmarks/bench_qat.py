"""Ablation of quantization-aware training (white paper §4) against PTQ (§3.5) on the shipped models.

Every accuracy is top-1 of the exported integer model (``Model.run``, the bit-exact integer
datapath) on the test set.  Columns:

* ``PTQ``: :func:`intsim.convert` with ``pipeline="standard"`` (CLE, MSE ranges, cross-entropy
  logits range, AdaRound with ``--adaround-iterations`` steps per layer), calibrated on 512 training
  images;
* ``QAT``: :func:`intsim.qat.prepare` (the standard pipeline without AdaRound), :func:`intsim.qat.train`
  on ``--train`` training images for ``--epochs`` epochs, :func:`intsim.qat.export`.  Variants:
  ``distill`` (no labels, distillation from the float model, learned ranges: the default),
  ``labels`` (cross-entropy on the labels, learned ranges), ``fixed`` (distillation, the PTQ ranges
  kept), ``bnstats`` (distillation, every Conv trained with a batch norm on batch statistics, white
  paper §4.2's variant, instead of static folding: the shipped models' exporters folded their batch
  norms, so each is put back as the identity on its output's statistics on the calibration images,
  :meth:`intsim.qat.FakeQuantModel.keep_batch_norms`); per-layer precision (``layer_config``, as chips
  often keep the edges of a network wider): ``logits8`` (distillation, the last layer's output at 8 bits)
  and ``edges8`` (distillation, the first and last layer at W8A8); training schedules (distillation, one
  :func:`intsim.qat.train` option each, Nagel et al. 2022 and issue 20's follow-ups): ``damp`` (oscillation
  dampening), ``freeze`` (iterative weight freezing), ``scalelr`` (the scales at a tenth of the learning
  rate), ``freezescales`` (the scales fixed for the last 20% of the steps);
* ``QAT start``: the integer model of the QAT starting point itself (standard pipeline without AdaRound
  and bias correction), before any training;
* ``agree``: top-1 agreement of the integer model with the fake-quant model it was exported from,
  on the test set (float64 fake quant);
* times: wall seconds of the PTQ conversion and of each QAT variant (prepare + train + export).

Per-channel weights, the ``paper`` profile.  Writes ``benchmarks/results/qat_<model>_<rows>_<variants>.md``;
``--variants ''`` gives the PTQ and QAT-start columns alone.  ``--held-out`` selects settings without the
test set: it scores the fake-quant model (no PTQ, no export) on training images 55000-59999, which QAT
and calibration never see, and writes ``..._heldout.md``; ``--seeds 0,1,2`` repeats each variant with
other batch orders (cells: the mean, then each seed's result).

    python benchmarks/bench_qat.py [--model resnet_fashion | --onnx DIR/mobilenet_wide_fashion.onnx] [--rows W4A3,W4A4] [--variants distill,labels,fixed,bnstats,logits8,edges8]
                                   [--no-ptq] [--train 4000] [--epochs 2] [--test 10000] [--adaround-iterations 2000]
                                   [--batch-size 64] [--temperature 2] [--held-out] [--seeds 0]

A training setting off its default (``--train``, ``--epochs``, ``--lr``, ``--batch-size``, ``--temperature``)
is named in the results file (``..._train8000_batch32...``).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

import intsim
from intsim.datasets import load_dataset
from intsim.models import model_path
from intsim.ptq.adaround import AdaRoundOptions
from intsim.qat import export, layer_agreement, predict, prepare, train
from intsim.qat.module import MAC_OPS

RESULTS = Path(__file__).resolve().parent / "results"
ROWS = {"W8A8": (8, 8), "W4A8": (4, 8), "W4A4": (4, 4), "W4A3": (4, 3), "W3A3": (3, 3)}
VARIANTS = {"distill": {"labels": False, "learn_ranges": True, "batch_norms": False},
            "labels": {"labels": True, "learn_ranges": True, "batch_norms": False},
            "fixed": {"labels": False, "learn_ranges": False, "batch_norms": False},
            "bnstats": {"labels": False, "learn_ranges": True, "batch_norms": True},
            "logits8": {"labels": False, "learn_ranges": True, "batch_norms": False, "edges": ("last",),
                        "edge_format": {"activation_bits": 8}},
            "edges8": {"labels": False, "learn_ranges": True, "batch_norms": False, "edges": ("first", "last"),
                       "edge_format": {"weight_bits": 8, "activation_bits": 8}},
            "damp": {"labels": False, "learn_ranges": True, "batch_norms": False, "train": {"dampening": 0.01}},
            "freeze": {"labels": False, "learn_ranges": True, "batch_norms": False,
                       "train": {"freeze_oscillations": 0.02}},
            "scalelr": {"labels": False, "learn_ranges": True, "batch_norms": False, "train": {"scale_lr": 1e-4}},
            "freezescales": {"labels": False, "learn_ranges": True, "batch_norms": False,
                             "train": {"freeze_scales": 0.2}}}
HELD_OUT = slice(55000, 60000)  # training images that QAT (the first --train) and calibration never see
CALIBRATION = 512
LAYER_SAMPLES = 500  # test images for the per-layer code agreement (printed, not tabulated)
BATCH = 1000


def _cpu():
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return f"{names[0]} x{len(names)}" if names else platform.processor() or "unknown"


def _accuracy(logits, labels):
    return 100.0 * float(np.mean(logits.argmax(axis=1) == labels))


def _integer_logits(model, x):
    return np.concatenate([model.run(x[i : i + BATCH]) for i in range(0, len(x), BATCH)])


def _edge_layers(onnx, spec, calibration, w, a) -> dict | None:
    """The variant's ``layer_config``: its ``edge_format`` on the first and / or last Conv / Gemm layer."""
    if "edges" not in spec:
        return None
    layers = [n.name for n in prepare(onnx, calibration, weight_bits=w, activation_bits=a, progress=False).graph.nodes
              if n.op in MAC_OPS]
    return {layers[0 if edge == "first" else -1]: spec["edge_format"] for edge in spec["edges"]}


def _qat_run(args, onnx, spec, x_train, y_train, x_test, y_test, w, a, seed):
    """One QAT run of a variant: ``(top-1 %, wall seconds, top-1 agreement %)``; held out: the fake-quant
    model's top-1 and no agreement (no export), else the exported integer model's."""
    start = time.perf_counter()
    layer_config = _edge_layers(onnx, spec, x_train[:CALIBRATION], w, a)
    qat = prepare(onnx, x_train[:CALIBRATION], weight_bits=w, activation_bits=a, learn_ranges=spec["learn_ranges"],
                  layer_config=layer_config, progress=False)
    if spec["batch_norms"]:
        qat.keep_batch_norms([n.name for n in qat.graph.nodes if n.op == "Conv"], x_train[:CALIBRATION])
    labels = y_train[: args.train] if spec["labels"] else None
    train(qat, x_train[: args.train], labels, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
          temperature=args.temperature, seed=seed, progress=False, **spec.get("train", {}))
    fake = predict(qat, x_test)
    if args.held_out:
        accuracy = _accuracy(fake, y_test)
        print(f"  seed {seed}: fake quant {accuracy:.2f}% ({time.perf_counter() - start:.0f} s)", flush=True)
        return accuracy, time.perf_counter() - start, None
    model = export(qat)
    seconds = time.perf_counter() - start
    integer = _integer_logits(model, x_test)
    accuracy = _accuracy(integer, y_test)
    agreement = 100.0 * float(np.mean(integer.argmax(axis=1) == fake.argmax(axis=1)))
    layers = layer_agreement(qat, model, x_test[:LAYER_SAMPLES])
    print(f"  seed {seed}: {accuracy:.2f}% (fake quant {_accuracy(fake, y_test):.2f}%, top-1 agreement "
          f"{agreement:.2f}%, lowest per-layer code agreement {100.0 * min(layers.values()):.4f}%, {seconds:.0f} s)",
          flush=True)
    return accuracy, seconds, agreement


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet_fashion",
                        help="a shipped model (intsim.models), named <arch>_<dataset>")
    parser.add_argument("--onnx", type=Path,
                        help="a float ONNX file named <arch>_<dataset>.onnx instead of a shipped model, e.g. the "
                             "MobileNetV2 of the ResNet's size: tools/models/train.py --arch mobilenet_wide "
                             "--dataset fashion --out DIR")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--train", type=int, default=4000, help="training images for QAT (default 4000)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=2.0, help="distillation softmax temperature")
    parser.add_argument("--test", type=int, default=10000, help="test images (default: all)")
    parser.add_argument("--adaround-iterations", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--ptq", action=argparse.BooleanOptionalAction, default=True, help="the PTQ column")
    parser.add_argument("--held-out", action="store_true",
                        help="score the fake-quant model on training images 55000-59999 (selection), not the test set")
    parser.add_argument("--seeds", default="0", help="batch-order seeds, comma-separated (default 0)")
    args = parser.parse_args(argv)
    if args.train > HELD_OUT.start:
        parser.error(f"--train {args.train}: at most {HELD_OUT.start} (the held-out images start there)")
    torch.set_num_threads(args.threads)
    if args.onnx is not None:
        args.model = args.onnx.stem
    dataset = args.model.split("_")[-1]
    x_train, y_train = load_dataset(dataset, "train")
    if args.held_out:
        x_test, y_test = x_train[HELD_OUT], y_train[HELD_OUT]
        args.ptq = False
    else:
        x_test, y_test = load_dataset(dataset, "test")
        x_test, y_test = x_test[: args.test], y_test[: args.test]
    seeds = [int(seed) for seed in args.seeds.split(",")]
    onnx = str(args.onnx) if args.onnx is not None else model_path(f"{args.model}.onnx")
    variants = [v for v in args.variants.split(",") if v]
    float_accuracy = None
    rows = []
    for row in args.rows.split(","):
        w, a = ROWS[row]
        cells = [row]
        if args.ptq:
            start = time.perf_counter()
            ptq = intsim.convert(onnx, calibration=x_train[:CALIBRATION], weight_bits=w, activation_bits=a,
                                 pipeline="standard", adaround=AdaRoundOptions(iterations=args.adaround_iterations),
                                 progress=False)
            ptq_seconds = time.perf_counter() - start
            ptq_accuracy = _accuracy(_integer_logits(ptq, x_test), y_test)
            print(f"{row} PTQ {ptq_accuracy:.2f}% ({ptq_seconds:.0f} s)", flush=True)
            cells.append(f"{ptq_accuracy:.2f} ({ptq_seconds:.0f} s)")
        initial = prepare(onnx, x_train[:CALIBRATION], weight_bits=w, activation_bits=a, progress=False)
        if float_accuracy is None:
            float_accuracy = _accuracy(predict(initial, x_test, quantize=False), y_test)
        start_accuracy = _accuracy(predict(initial, x_test) if args.held_out
                                   else _integer_logits(export(initial), x_test), y_test)
        print(f"{row} QAT start (standard pipeline without AdaRound): {start_accuracy:.2f}%", flush=True)
        cells.append(f"{start_accuracy:.2f}")
        for variant in variants:
            results = [_qat_run(args, onnx, VARIANTS[variant], x_train, y_train, x_test, y_test, w, a, seed)
                       for seed in seeds]
            accuracy = np.mean([r[0] for r in results])
            seconds = np.mean([r[1] for r in results])
            each = f", seeds {'/'.join(f'{r[0]:.2f}' for r in results)}" if len(seeds) > 1 else ""
            agree = "" if args.held_out else f", agree {min(r[2] for r in results):.2f}"
            print(f"{row} QAT {variant}: mean {accuracy:.2f}%{each}", flush=True)
            cells.append(f"{accuracy:.2f} ({seconds:.0f} s{agree}{each})")
        rows.append(cells)
    header = (["config"] + ["PTQ standard + AdaRound"] * args.ptq + ["QAT start (PTQ without AdaRound)"]
              + [f"QAT {v}" for v in variants])
    scored = (f"held-out training images {HELD_OUT.start}-{HELD_OUT.stop - 1}" if args.held_out
              else "test images")
    cells_are = ("fake-quant top-1 % (mean wall time per run; per seed)" if args.held_out else
                 "integer top-1 % (wall time; lowest agreement of the integer model's top-1 with the fake-quant "
                 "model's; per seed)")
    note = (f"{args.model}, `paper` profile, per-channel weights; float top-1 {float_accuracy:.2f}% on {len(y_test)} "
            f"{scored}. PTQ: calibration {CALIBRATION} training images, AdaRound {args.adaround_iterations} "
            f"steps/layer. QAT: {args.train} training images, {args.epochs} epochs, lr {args.lr}, "
            f"batch {args.batch_size}, temperature {args.temperature}, "
            f"{args.threads} torch thread(s), seeds {args.seeds}. Cells: {cells_are}. CPU: {_cpu()}, load average "
            f"at the end {os.getloadavg()[0]:.1f}.")
    title = "fake-quant top-1 % on held-out training images" if args.held_out else "integer top-1 %"
    lines = [f"### QAT vs PTQ (white paper §4), {title}", "", note, "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    schedule = [f"{flag}{value:g}" for flag, value, default in
                (("train", args.train, 4000), ("epochs", args.epochs, 2), ("lr", args.lr, 1e-3),
                 ("batch", args.batch_size, 64), ("t", args.temperature, 2.0)) if value != default]
    name = "_".join([args.model, *args.rows.split(","), *(variants or ["start"]), *schedule,
                     *["heldout"] * args.held_out,
                     *[f"seeds{''.join(map(str, seeds))}"] * (len(seeds) > 1)])
    (RESULTS / f"qat_{name}.md").write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
