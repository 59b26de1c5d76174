"""The PTQ debugging report: the white paper's §3.7 steps as text, JSON and one HTML page."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field

import numpy as np

from intsim.debugging.metric import SQNR_HOLDS_DB
from intsim.plotting import inline_png, pyplot


@dataclass
class Measurement:
    """One converted model on the data: the metric on the integer datapath and in the simulation.

    ``settings`` are the conversion settings that differ from the target's (the target itself: all of them).
    """

    label: str
    settings: dict
    integer: float
    simulated: float
    drop_integer: float
    drop_simulated: float

    def to_dict(self) -> dict:
        return {"label": self.label, "settings": self.settings, "integer": self.integer,
                "simulated": self.simulated, "drop_integer": self.drop_integer,
                "drop_simulated": self.drop_simulated}


@dataclass
class DebugReport:
    """What :func:`intsim.debug` found; ``summary()`` is one line, ``table()`` the text report, ``to_dict()``,
    ``to_json(path)`` and ``to_html(path)`` save it.

    Attributes
    ----------
    model, profile : str
        The model's name and the target profile (overrides applied).
    samples : int
        Rows of the evaluation data.
    metric : str
        ``"accuracy"``, ``"agreement"`` or ``"sqnr_db"`` (:mod:`intsim.debugging.metric`).
    float_value, reference : float
        The float model's metric, and the value drops are measured from.
    tolerance : float
        The drop a model may lose and still hold up.
    target : Measurement
        The model converted as asked.
    holds_up : bool
        The target is within the tolerance: steps 2 to 4 were not needed and are empty.
    steps : dict
        ``"high_bits"`` (step 1), ``"weights_only"`` and ``"activations_only"`` (step 2): Measurements.
    ranking : list of dict
        Step 3, worst first: ``{"node", "op", "kind", "tensor", "drop", "sqnr_db", "drop_simulated",
        "sqnr_db_simulated"}`` (:func:`intsim.debugging.sensitivity.rank`).  ``drop`` is measured on
        ``ranking_datapath`` (``"integer"`` or ``"simulated"``).
    inspected : list of dict
        Range statistics of the worst tensors (:func:`intsim.debugging.sensitivity.channel_ranges`).
    fixes : list of dict
        Step 4: ``{"fix", "section", "changes", "after": Measurement}``, each measured against ``target``;
        where more than one fix helped alone, a last entry ``"combined (A + B)"`` applies them together.
    layers : list of dict
        The target's per-layer SQNR, simulated and integer (:func:`intsim.compare`).
    """

    model: str
    profile: str
    samples: int
    metric: str
    float_value: float
    reference: float
    tolerance: float
    target: Measurement
    holds_up: bool
    steps: dict = field(default_factory=dict)
    ranking: list = field(default_factory=list)
    ranking_datapath: str = "integer"
    inspected: list = field(default_factory=list)
    fixes: list = field(default_factory=list)
    layers: list = field(default_factory=list)

    # --- text ----------------------------------------------------------------
    def _value(self, v: float) -> str:
        return f"{v:.2f} dB" if self.metric == "sqnr_db" else f"{100 * v:.2f}%"

    def _drop(self, d: float) -> str:
        return f"{d:.2f} dB" if self.metric == "sqnr_db" else f"{100 * d:.2f} pt"

    def _measured(self, m: Measurement) -> str:
        return (f"{m.label}: {self.metric} integer {self._value(m.integer)} (drop {self._drop(m.drop_integer)}), "
                f"simulated {self._value(m.simulated)}")

    @property
    def best_fix(self) -> dict | None:
        """The fix with the best integer result, if it beats the target."""
        best = max(self.fixes, key=lambda f: f["after"].integer, default=None)
        return best if best is not None and best["after"].integer > self.target.integer else None

    def summary(self) -> str:
        """One line: the model holds up, or what hurts most and the best fix."""
        head = f"{self.model} on {self.profile!r}"
        if self.holds_up:
            within = (f"at least {SQNR_HOLDS_DB:.0f} dB" if self.metric == "sqnr_db" else
                      f"drop {self._drop(self.target.drop_integer)} within {self._drop(self.tolerance)}")
            return (f"{head} holds up: {self.metric} {self._value(self.target.integer)} on the integer datapath, "
                    f"{within}")
        text = f"{head} loses {self._drop(self.target.drop_integer)} of {self.metric}"
        if self.ranking:
            worst = self.ranking[0]
            text += f"; worst tensor: {worst['kind']} of {worst['node']} ({worst['op']})"
        best = self.best_fix
        if best is not None:
            text += f"; best fix: {best['fix']} -> {self._value(best['after'].integer)}"
        return text

    def table(self, top: int = 10) -> str:
        """The text report: every step, the ``top`` worst tensors; one line for a model that holds up."""
        if self.holds_up:
            return self.summary()
        lines = [self.summary(),
                 f"float {self.metric}: {self._value(self.float_value)} on {self.samples} samples; "
                 f"drops measured from {self._value(self.reference)}",
                 self._measured(self.target)]
        lines.append("step 1, high bit widths: " + self._measured(self.steps["high_bits"]))
        lines.append("step 2, " + self._measured(self.steps["weights_only"]))
        lines.append("step 2, " + self._measured(self.steps["activations_only"]))
        lines.append(f"step 3, one tensor quantized at a time ({self.ranking_datapath}), worst first "
                     "(drop, output SQNR):")
        for e in self.ranking[:top]:
            lines.append(f"  {self._drop(e['drop']):>10}  {e['sqnr_db']:6.1f} dB  {e['kind']:<11} {e['node']} "
                         f"({e['op']})")
        for s in self.inspected:
            lines.append(f"  {s['kind']} of {s['node']}: {s['channels']} channels in [{s['min']:.4g}, {s['max']:.4g}],"
                         f" max/min channel range {s['channel_range_ratio']:.0f}, median channel spans "
                         f"{s['median_channel_codes']:.1f} codes, {s['channels_under_16_codes']} channels under 16")
        lines.append("step 4, fixes (each alone, then those that helped together):")
        for f in self.fixes:
            lines.append(f"  {f['fix']} ({f['section']}): {self._measured(f['after']).split(': ', 1)[1]}")
        return "\n".join(lines)

    # --- files ---------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "model": self.model, "profile": self.profile, "samples": self.samples, "metric": self.metric,
            "float_value": self.float_value, "reference": self.reference, "tolerance": self.tolerance,
            "holds_up": self.holds_up, "summary": self.summary(), "target": self.target.to_dict(),
            "steps": {k: m.to_dict() for k, m in self.steps.items()},
            "ranking": list(self.ranking), "ranking_datapath": self.ranking_datapath,
            "inspected": list(self.inspected),
            "fixes": [{**f, "after": f["after"].to_dict()} for f in self.fixes],
            "layers": list(self.layers),
        }

    def save(self, html_path=None, json_path=None) -> list:
        """Write the HTML page and / or the JSON document where a path is given; returns the paths written."""
        for path, write in ((html_path, self.to_html), (json_path, self.to_json)):
            if path:
                write(path)
        return [path for path in (html_path, json_path) if path]

    def to_json(self, path) -> None:
        """The report as JSON (infinite SQNRs as ``Infinity``, as Python's json writes them)."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=1)

    def to_html(self, path) -> None:
        """One self-contained page: the steps, the ranking, the worst tensors' range plots, the fixes."""
        def table(header, rows):
            head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
            body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
            return f"<table><tr>{head}</tr>{body}</table>"

        def measured(m):
            return [m.label, self._value(m.integer), self._drop(m.drop_integer), self._value(m.simulated),
                    self._drop(m.drop_simulated)]

        header = ["model", f"{self.metric} integer", "drop", "simulated", "drop"]
        parts = [f"<h1>{html.escape(self.summary())}</h1>",
                 f"<p>float {html.escape(self.metric)} {self._value(self.float_value)} on {self.samples} samples</p>",
                 table(header, [measured(self.target)])]
        if not self.holds_up:
            parts += ["<h2>Steps 1 and 2: high bit widths, weights only, activations only</h2>",
                      table(header, [measured(m) for m in self.steps.values()]),
                      f"<h2>Step 3: one tensor quantized at a time ({self.ranking_datapath})</h2>",
                      table(["drop", "simulated drop", "output SQNR dB", "kind", "node", "op"],
                            [[self._drop(e["drop"]), self._drop(e["drop_simulated"]), f"{e['sqnr_db']:.1f}", e["kind"],
                              e["node"], e["op"]] for e in self.ranking]),
                      "<h2>The worst tensors' ranges</h2>"]
            for s in self.inspected:
                parts.append(f"<h3>{html.escape(s['kind'])} of {html.escape(s['node'])}</h3>")
                parts.append(table(["channels", "min", "max", "max/min channel range", "median channel codes",
                                    "channels under 16 codes"],
                                   [[s["channels"], f"{s['min']:.4g}", f"{s['max']:.4g}",
                                     f"{s['channel_range_ratio']:.1f}", f"{s['median_channel_codes']:.1f}",
                                     s["channels_under_16_codes"]]]))
                parts.append(inline_png(lambda file, s=s: plot_channel_ranges(s, file), f"ranges of {s['node']}"))
            parts += ["<h2>Step 4: fixes, each applied alone, then those that helped together</h2>",
                      table(["fix", "white paper", "changes"] + header[1:],
                            [[f["fix"], f["section"], json.dumps(f["changes"])] + measured(f["after"])[1:]
                             for f in self.fixes])]
        if self.layers:
            parts += ["<h2>Per-layer SQNR of the target</h2>",
                      table(["tensor", "op", "SQNR sim dB", "SQNR int dB"],
                            [[r["tensor"], r["op"], f"{r['sqnr_sim_db']:.2f}", f"{r['sqnr_int_db']:.2f}"]
                             for r in self.layers])]
        page = ("<!doctype html><html><head><meta charset='utf-8'><title>intsim debug</title>"
                "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
                "td,th{border:1px solid #ccc;padding:2px 8px}</style></head><body>"
                + "".join(parts) + "</body></html>")
        with open(path, "w", encoding="utf-8") as f:
            f.write(page)


def plot_channel_ranges(stats: dict, path) -> None:
    """Per channel, the largest magnitude of one tensor (white paper §3.7: inspect the per-channel ranges),
    beside its quantization step: a channel whose bar ends near the step keeps a few codes.  A log axis
    where the channels span more than a factor 100.  Needs matplotlib (extra ``plot``)."""
    plt = pyplot()
    peak = np.maximum(np.abs(np.asarray(stats["channel_min"])), np.abs(np.asarray(stats["channel_max"])))
    x = np.arange(peak.size)
    fig, ax = plt.subplots(figsize=(max(6, 0.06 * peak.size), 3.5))
    ax.bar(x, peak, width=0.8, label="max |value|")
    ax.plot(x, stats["step"], "k_", markersize=4, label="quantization step")
    if stats["channel_range_ratio"] > 100:
        ax.set_yscale("log")
    ax.set_xlabel("output channel" if stats["kind"] == "weights" else "channel")
    ax.legend(fontsize=7)
    ax.set_title(f"{stats['kind']} of {stats['node']}: per-channel ranges", fontsize=9, wrap=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
