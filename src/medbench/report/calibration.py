"""The run report's temperature-scaling section: the temperature, ECE before and after per split, and the
reliability curves before and after (from ``calibration.json``, written by ``--calibrate temperature``).

The section is left out when the run has no ``calibration.json``; a damaged one becomes a note in its place.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from medbench.errors import MedbenchError
from medbench.fileio import read_json
from medbench.report.figures import new_figure
from medbench.report.html import escape, fmt, note, png_img, table
from medbench.rundir import CALIBRATION

Section = tuple[str, str, str]
SECTION_ID = "temperature-scaling"
HEADING = "Calibration repair: temperature scaling"
SPLIT_ORDER = ("val", "test", "train")


def _splits(record: dict) -> list[str]:
    found = record.get("splits") or {}
    return [s for s in SPLIT_ORDER if s in found] + [s for s in found if s not in SPLIT_ORDER]


def _curve(bins: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(confidence, accuracy, count) of the filled bins."""
    rows = [(c, a, n) for c, a, n in zip(bins["confidence"], bins["accuracy"], bins["count"]) if n]
    if not rows:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    conf, acc, count = (np.asarray(v, dtype=np.float64) for v in zip(*rows))
    return conf, acc, count


def reliability_before_after_figure(record: dict, splits: list[str] | None = None) -> Figure:
    """One panel per split: accuracy against mean confidence per bin, before (uncalibrated) and after
    temperature scaling, marker area proportional to the bin's count, with the diagonal of perfect calibration."""
    splits = splits or _splits(record)
    fig = new_figure(4.2 * max(len(splits), 1), 4.2)
    axes = np.atleast_1d(fig.subplots(1, max(len(splits), 1), sharey=True))
    t = record["temperature"]
    for ax, split in zip(axes, splits):
        r = record["splits"][split]
        ax.plot([0, 1], [0, 1], ls="--", c="0.5", lw=1, label="perfect calibration")
        for key, colour, label in (("before", "#e45756", "before"), ("after", "#4c78a8", f"after (T = {t:.3g})")):
            conf, acc, count = _curve(r["reliability"][key])
            ece = r[f"ece_{key}"]
            size = 12 + 160 * count / max(count.max(), 1) if len(count) else count
            ax.plot(conf, acc, c=colour, lw=1.3, alpha=0.85)
            ax.scatter(conf, acc, s=size, c=colour, alpha=0.8, edgecolors="white", linewidths=0.5,
                       label=f"{label}: ECE {fmt(ece)}")
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="confidence (mean per bin)", title=f"{split}")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8, frameon=False)
    axes[0].set_ylabel("accuracy (observed per bin)")
    return fig


def read_calibration_record(run_dir: str | Path) -> dict | None:
    """``RUN_DIR/calibration.json``; None when absent. Damage: :class:`MedbenchError` naming the file."""
    path = Path(run_dir) / CALIBRATION
    if not path.exists():
        return None
    record = read_json(path, "calibration record", "delete it, or re-run medbench evaluate --calibrate temperature")
    if not isinstance(record.get("temperature"), (int, float)) or not isinstance(record.get("splits"), dict):
        raise MedbenchError(f"{path}: not a temperature-scaling record (no temperature or splits); delete it, or "
                            f"re-run medbench evaluate --calibrate temperature")
    return record


def calibration_section(run_dir: str | Path) -> Section | None:
    """The section, or None when the run was not calibrated."""
    try:
        record = read_calibration_record(run_dir)
    except MedbenchError as e:
        return SECTION_ID, HEADING, note(str(e))
    if record is None:
        return None
    splits = _splits(record)
    rows = [[escape(s), fmt(sum(record["splits"][s]["reliability"]["after"]["count"])),
             fmt(record["splits"][s]["ece_before"]), fmt(record["splits"][s]["ece_after"])] for s in splits]
    try:
        figure = png_img(reliability_before_after_figure(record, splits), "reliability-before-after",
                         "Reliability before and after temperature scaling (marker area: images in the bin)")
    except (KeyError, TypeError, ValueError) as e:  # a hand-edited record: the table still stands
        figure = note(f"{CALIBRATION}: the reliability bins cannot be drawn ({type(e).__name__}: {e})")
    intro = (f"<p>One temperature <b>T = {fmt(record['temperature'], 4)}</b>, fitted on the "
             f"{escape(record.get('fitted_on', 'val'))} split ({fmt(record.get('n_fit'))} labels) by minimising its "
             f"negative log-likelihood ({fmt(record.get('nll_before'), 4)} before, {fmt(record.get('nll_after'), 4)} "
             f"after), rescales every probability: softmax(log p / T), or sigmoid(logit p / T) per label. "
             f"Rankings (binary AUC) and argmax decisions are unchanged; metrics, predictions, "
             f"<code>medbench predict</code>, <code>serve</code> and <code>export</code> use the calibrated "
             f"probabilities. ECE: {record.get('bins', 15)} equal-width confidence bins.</p>")
    body = intro + table(["split", "n", "ECE before", "ECE after"], rows, table_id="calibration-ece") + figure
    return SECTION_ID, HEADING, body


def calibration_sections(directory: str | Path) -> list[Section]:
    """The run report's hook: ``[section]`` for a calibrated run (or evaluation folder), else ``[]``."""
    found = calibration_section(directory)
    return [found] if found else []
