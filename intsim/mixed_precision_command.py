"""The ``intsim mixed-precision`` command's options (:func:`intsim.search_mixed_precision`).

Kept beside the search they drive, as the debug command's are; importing this module imports nothing
heavy (the CLI builds its parser before it knows the command).
"""

HELP = "search per-layer formats (AMP) within an accuracy budget; writes the layer config TOML"

OPTIONS = (
    (("model",), {"help": "float ONNX model (a classifier)"}),
    (("--calibration",), {"required": True, "help": "calibration inputs .npy (samples first, model layout)"}),
    (("--data",), {"required": True, "help": "inputs .npy the configurations are measured on"}),
    (("--labels",), {"help": "integer class labels .npy (accuracy; default: top-1 agreement with float)"}),
    (("--validation-data",), {"metavar": "X.npy",
                              "help": "inputs .npy the found configuration must hold the budget on, backing off "
                                      "where it does not (best: images the model was not trained on); default: "
                                      "--validation-split of --data"}),
    (("--validation-labels",), {"metavar": "Y.npy", "help": "class labels of --validation-data (with --labels)"}),
    (("--validation-split",), {"type": float, "default": 0.5,
                               "help": "without --validation-data, the fraction of --data held out as validation "
                                       "(default 0.5; 0: no validation)"}),
    (("--confidence",), {"type": float, "default": 0.99,
                         "help": "one-sided confidence that the validation drop is within budget (default 0.99; "
                                 "0.5: the measured drop alone)"}),
    (("-o", "--output"), {"required": True, "help": "the layer config .toml to write"}),
    (("--profile",), {"default": "paper", "help": "built-in profile name or a .toml file (default paper)"}),
    (("--candidates",), {"default": "w8a8,w6a8,w4a8",
                         "help": "formats a layer may take (default w8a8,w6a8,w4a8)"}),
    (("--max-accuracy-drop",), {"type": float, "default": 0.005,
                                "help": "budget below the float metric, a fraction (default 0.005: half a point)"}),
    (("--objective",), {"choices": ("size", "bitops"), "default": "size",
                        "help": "minimise weight bits (size) or MACs x weight bits x activation bits (bitops)"}),
    (("--range-method",), {"choices": ("minmax", "percentile", "mse", "cross_entropy"),
                           "help": "activation range setting (default minmax)"}),
    (("--weight-range-method",), {"choices": ("minmax", "mse"), "help": "weight range setting (default minmax)"}),
    (("--batch-size",), {"type": int, "default": 256, "help": "batch size (default 256)"}),
    (("--json",), {"dest": "json_path", "help": "also write the search (front, sensitivities) as JSON"}),
)


def add_options(parser) -> None:
    """Register :data:`OPTIONS` on the command's ``argparse`` parser."""
    for flags, options in OPTIONS:
        parser.add_argument(*flags, **options)
