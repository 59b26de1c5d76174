"""The ``intsim qat`` subcommand: quantization-aware training of an ONNX model from .npy data.

Registered by :func:`intsim.cli.build_parser`; torch is imported only when the command runs.
"""

from __future__ import annotations


def add_parser(sub) -> None:
    """Add ``qat`` to the ``intsim`` subcommands."""
    p = sub.add_parser("qat", help="quantization-aware training (white paper §4) into an integer .intsim model; "
                                   "needs intsim[qat]")
    p.add_argument("model", help="float ONNX model")
    p.add_argument("--data", required=True, help="training inputs .npy (samples first, model layout; unlabeled is enough)")
    p.add_argument("--labels", help="integer class labels .npy (adds cross-entropy to the distillation loss)")
    p.add_argument("--calibration", help="inputs .npy for the PTQ start (default: the first 1024 of --data)")
    p.add_argument("-o", "--output", required=True, help="the .intsim file to write")
    p.add_argument("--profile", default="paper", help="built-in profile name or a .toml file (default paper)")
    p.add_argument("--weight-bits", type=int, help="override the profile's weight bits (2..16)")
    p.add_argument("--activation-bits", type=int, help="override the profile's activation bits (2..16)")
    p.add_argument("--per-channel", dest="per_channel", action="store_true", default=None,
                   help="per-channel weight scales")
    p.add_argument("--per-tensor", dest="per_channel", action="store_false", help="per-tensor weight scales")
    p.add_argument("--epochs", type=int, default=2, help="passes over --data (default 2)")
    p.add_argument("--batch-size", type=int, default=64, help="samples per step (default 64)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate, cosine-annealed (default 1e-3)")
    p.add_argument("--fixed-ranges", dest="learn_ranges", action="store_false",
                   help="keep the PTQ ranges (default: learn the scales, LSQ)")
    p.add_argument("--distillation", type=float,
                   help="weight of the distillation loss (default 1 without labels, 0 with labels)")
    p.add_argument("--seed", type=int, default=0, help="seed of the batch order (default 0)")
    p.set_defaults(func=_cmd_qat)


def _cmd_qat(args) -> int:
    import numpy as np

    import sys

    from intsim.cli import EXIT_RUNTIME_ERROR, _load_npy

    try:
        from intsim.qat import finetune
    except ImportError as exc:
        print(f"intsim: error: {exc}", file=sys.stderr)
        return EXIT_RUNTIME_ERROR

    def floats(path, what):
        array = _load_npy(path, what)
        return array.astype(np.float32) if array.dtype.kind in "iu" else array

    data = floats(args.data, "data")
    labels = _load_npy(args.labels, "labels") if args.labels else None
    calibration = floats(args.calibration, "calibration") if args.calibration else None
    model = finetune(args.model, data, labels=labels, calibration=calibration, profile=args.profile,
                     weight_bits=args.weight_bits, activation_bits=args.activation_bits, per_channel=args.per_channel,
                     epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, learn_ranges=args.learn_ranges,
                     distillation=args.distillation, seed=args.seed)
    model.save(args.output)
    info = model.graph.metadata["qat"]
    print(f"wrote {args.output}: {len(model.graph.nodes)} integer nodes, profile {model.profile.name!r}, "
          f"{info['epochs']} epoch(s) on {info['samples']} samples in {info['seconds']:.1f} s, "
          f"final loss {info['final_loss']:.4f}, top-1 agreement {100 * info['agreement']:.1f}%")
    return 0
