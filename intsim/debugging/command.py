"""The ``intsim debug`` command's own options (the conversion options are the CLI's shared ones).

Kept here, beside the workflow they drive; importing this module imports nothing heavy (the CLI builds
its parser before it knows the command).
"""

HELP = ("the white paper's PTQ debugging workflow (§3.7): what loses accuracy, layer by layer, and which fix "
        "recovers it")

OPTIONS = (
    (("model",), {"help": "the float ONNX model"}),
    (("--calibration",), {"required": True, "metavar": "CAL.npy", "help": "calibration inputs (samples first)"}),
    (("--data",), {"required": True, "metavar": "X.npy", "help": "evaluation inputs (samples first)"}),
    (("--labels",), {"metavar": "Y.npy",
                     "help": "integer class labels: the metric is accuracy (else agreement with float)"}),
    (("--tolerance",), {"type": float, "default": 0.01,
                        "help": "metric drop within which the model holds up (default 0.01, one point of accuracy)"}),
    (("--inspect",), {"type": int, "default": 3, "help": "worst tensors to inspect (ranges, plots; default 3)"}),
    (("--datapath",), {"choices": ("integer", "simulated"), "default": "integer",
                       "help": "rank tensors on the integer datapath (default) or in the cheaper simulation alone"}),
    (("--html",), {"metavar": "R.html", "help": "also write the report as an HTML page (range plots with matplotlib)"}),
    (("--json",), {"dest": "json_path", "metavar": "R.json", "help": "also write the report as JSON"}),
)


def add_options(parser) -> None:
    """Register :data:`OPTIONS` on the command's ``argparse`` parser."""
    for flags, options in OPTIONS:
        parser.add_argument(*flags, **options)
