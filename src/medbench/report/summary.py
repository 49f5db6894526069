"""The run report's sections about what the run recorded: metrics.json (summary, gap, threshold, evaluation
settings), history.csv (training curves), config.yaml (configuration, environment), and the page's header.

A section is ``(id, heading, body HTML)``.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

import numpy as np

from medbench.report import figures as F
from medbench.report.analysis import split_records, youden_records
from medbench.report.html import escape, fmt_ci, note, png_img, table
from medbench.report.inputs import RunInputs
from medbench.rundir import CONFIG

Section = tuple[str, str, str]
METRIC_LABELS = {
    "n": "images (n)", "acc": "accuracy", "auc": "AUC", "loss": "loss", "balanced_acc": "balanced accuracy",
    "precision_macro": "precision (macro)", "recall_macro": "recall (macro)", "f1_macro": "F1 (macro)",
    "f1_weighted": "F1 (weighted)", "sensitivity": "sensitivity", "specificity": "specificity",
    "kappa_quadratic": "Cohen's κ (quadratic)", "mae": "mean absolute error", "ece": "calibration error (ECE)",
    "log_loss": "log loss", "threshold": "threshold",
}


# ---- tables of metrics ----

def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (int, float, str, bool, np.integer, np.floating))


def metric_label(key: str, class_of: dict | None = None) -> str:
    """A metric's readable name (with the class it is about, for class-specific ones such as sensitivity) and its
    key, as HTML."""
    name = METRIC_LABELS.get(key, key.replace("_", " "))
    if class_of and class_of.get(key) is not None:
        name = f"{name} ({class_of[key]})"
    return f"{escape(name)} <code>{escape(key)}</code>"


def class_of(records: Iterable[dict]) -> dict:
    """Which class each class-specific metric is about (compute_metrics' ``class_of``), where the records agree;
    {} for records from before it was recorded."""
    said = [r["class_of"] for r in records if isinstance(r.get("class_of"), dict)]
    return {k: v for k, v in (said[0] if said else {}).items() if all(c.get(k) == v for c in said)}


def _metric_keys(records: Iterable[dict]) -> list[str]:
    """Scalar metric keys in a stable order: the known ones first, then the rest as they appear."""
    seen: list[str] = []
    for rec in records:
        for k, v in rec.items():
            if k not in seen and not k.endswith("_ci") and _scalar(v):
                seen.append(k)
    known = [k for k in METRIC_LABELS if k in seen]
    return known + [k for k in seen if k not in known]


def metric_table(records: dict[str, dict], table_id: str, classes: dict | None = None) -> str:
    """Rows: metrics; columns: splits. Cells carry ``data-split`` / ``data-metric`` for tools and tests.
    ``classes``: the class of each class-specific metric (default: the records' own ``class_of``)."""
    splits = list(records)
    classes = class_of(records.values()) if classes is None else classes
    rows = []
    for key in _metric_keys(records.values()):
        cells = [metric_label(key, classes)]
        for s in splits:
            rec = records[s]
            text = fmt_ci(rec.get(key), rec.get(f"{key}_ci")) if key in rec else "—"
            cells.append(f'<td data-split="{escape(s)}" data-metric="{escape(key)}">{escape(text)}</td>')
        rows.append(cells)
    return table(["metric"] + [escape(s) for s in splits], rows, table_id)


def kv_table(mapping: dict, table_id: str, value_header: str = "value") -> str:
    """One row per setting; a value's ``_ci`` sibling joins it, nested values show as JSON."""
    rows = []
    for k, v in mapping.items():
        if k.endswith("_ci") and k[:-3] in mapping:
            continue
        text = fmt_ci(v, mapping.get(f"{k}_ci")) if _scalar(v) else json.dumps(v, default=str)
        rows.append([escape(k), f'<td data-key="{escape(k)}">{escape(text)}</td>'])
    return table(["setting", escape(value_header)], rows, table_id, css_class="kv")


# ---- sections from metrics.json ----

def metric_sections(metrics: dict) -> list[Section]:
    """Warnings (first, when recorded), the summary, then (where recorded) the train − test gap, the decision
    threshold, the evaluation settings."""
    records = split_records(metrics)
    body = (metric_table(records, "summary") if records
            else note("metrics.json not found or empty: run `medbench evaluate` first."))
    out = [warnings_section(metrics["warnings"])] if metrics.get("warnings") else []
    out.append(("summary", "Summary metrics", body))
    gap = metrics.get("gap")
    if isinstance(gap, dict) and gap:
        out.append(("overfitting", "Overfitting (train − test gap)", _gap_body(gap)))
    thr, youden = metrics.get("threshold"), youden_records(records)
    if isinstance(thr, dict) and thr or youden:
        out.append(("threshold", "Decision threshold", _threshold_body(thr, youden, class_of(records.values()))))
    ev = metrics.get("evaluation")
    if isinstance(ev, dict) and ev:
        out.append(("evaluation", "Evaluation settings", kv_table(ev, "evaluation")))
    return out


def _gap_body(gap: dict) -> str:
    rows = []
    for k, v in gap.items():
        if k.endswith("_ci") or not _scalar(v):
            continue
        text = fmt_ci(v, gap.get(f"{k}_ci"))
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0:
            text = "+" + text
        rows.append([metric_label(k), f'<td data-metric="{escape(k)}">{escape(text)}</td>'])
    return ("<p>Positive values: the model scores higher on its training images than on the test set.</p>"
            + table(["metric", "train − test"], rows, "gap"))


def warnings_section(messages) -> Section:
    """metrics.json's ``warnings``: what makes the selected epoch or a split's predictions untrustworthy."""
    items = [messages] if isinstance(messages, str) else list(messages)
    body = ("<p>Read the numbers below with these in mind:</p><ul class=\"warnings\">"
            + "".join(f"<li>{note(str(m))}</li>" for m in items) + "</ul>")
    return ("warnings", f"Warnings ({len(items)})", body)


def _threshold_body(thr, youden: dict[str, dict], classes: dict) -> str:
    parts = []
    if isinstance(thr, dict) and thr:
        parts.append("<p>Decision thresholds for the positive-class probability, chosen on the validation "
                     "split.</p>" + kv_table(thr, "threshold"))
    if youden:
        parts.append("<h3>Metrics at the validation-chosen (Youden) threshold</h3>"
                     + metric_table(youden, "at-youden", classes))
    return "".join(parts)


# ---- history.csv and config.yaml ----

def curves_section(history: list[dict]) -> Section:
    if history:
        body = png_img(F.curves_figure(history), "curves",
                       f"Training curves ({len(history)} epochs; train values from the training pass)")
    else:
        body = note("history.csv not found or empty.")
    return ("curves", "Training curves", body)


def setup_sections(inputs: RunInputs) -> list[Section]:
    """The configuration as saved, and the environment it ran in (the provenance block)."""
    config = f"<p><code>{escape(CONFIG)}</code></p><pre>{escape(inputs.config_text)}</pre>"
    env = (kv_table(inputs.provenance, "environment") if inputs.provenance
           else note("config.yaml has no provenance block."))
    return [("config", "Configuration", config), ("environment", "Environment", env)]


def page_meta(inputs: RunInputs) -> str:
    """The line under the title: run directory, task and classes, image size, best epoch (and an early stop),
    the training objective when it is not the benchmark's, generation time."""
    cfg, task, names = inputs.cfg, inputs.task, inputs.names
    kind = "labels" if task.name == "multilabel" else "classes"
    best = inputs.best_epoch
    objective = objective_text(cfg, inputs.provenance)
    return (f"<p class=\"meta\">Run directory <code>{escape(inputs.run_dir.resolve())}</code><br>"
            f"Task {escape(task.name)}, {task.num_classes} {kind} ({escape(', '.join(map(str, names)))}); "
            f"image size {cfg.size} px"
            + (f"; best epoch {escape(best)} of {cfg.epochs} by validation {escape(cfg.select_metric)}" if best else "")
            + stop_text(inputs.provenance)
            + (f'<br><span id="objective">Training objective: {escape(objective)}</span>' if objective else "")
            + f"<br>Generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by medbench</p>")


def stop_text(provenance: dict) -> str:
    """'; stopped early after epoch 7 of 30 (reason)' from config.yaml's ``stopped_early``; '' when it ran out."""
    stop = provenance.get("stopped_early")
    if not isinstance(stop, dict) or "epoch" not in stop:
        return ""
    of = f" of {stop['of']}" if "of" in stop else ""
    return (f'; <span id="stopped-early">stopped early after epoch {escape(stop["epoch"])}{escape(of)}'
            f"{': ' + escape(stop['reason']) if stop.get('reason') else ''}</span>")


def objective_text(cfg, provenance: dict) -> str:
    """What the run trained on beyond the benchmark's cross-entropy over shuffled batches ('' for that): the loss,
    the class weights actually used (from provenance), the sampler."""
    parts = []
    if getattr(cfg, "loss", "ce") == "focal":
        parts.append(f"focal loss (gamma {cfg.focal_gamma:g})")
    weights = provenance.get("class_weights")
    if isinstance(weights, dict):
        per = next((v for k, v in weights.items() if k != "from" and isinstance(v, dict)), {})
        what = "positive weights" if "positive_weight_per_label" in weights else "class weights"
        listed = ", ".join(f"{c} {float(w):.4g}" for c, w in per.items())
        parts.append(f"{what} {weights.get('from', '')} ({listed})".replace("  ", " "))
    if getattr(cfg, "sampler", "shuffle") == "balanced":
        parts.append("class-balanced sampler (drawn with replacement)")
    return "; ".join(parts)
