"""``RUN_DIR/report.html``: one self-contained page about a training run.

Everything is inline: figures are PNG data URIs, the style sheet is a ``<style>`` block, and there is
no script, external font or link, so the file reads offline and can be mailed or archived as it is.

Sources: ``metrics.json`` (summary, gap, threshold, evaluation settings), ``history.csv`` (curves),
``predictions/test.csv`` with the dataset's test labels (ROC, precision-recall, confusion, calibration,
per-class table, confident errors), the saved weights (Grad-CAM) and ``config.yaml`` (configuration,
provenance). A missing or older-format piece leaves a note in its section instead of failing the report.
"""
from __future__ import annotations

import csv
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from medbench.errors import MedbenchError
from medbench.fileio import write_text
from medbench.report import figures as F
from medbench.report.html import CSS, fmt, fmt_ci
# private aliases: study/report.py still imports these names from here
from medbench.report.html import escape as _e, note as _note, png_img as _png_img, table as _table  # noqa: E501

REPORT = "report.html"
SPLIT_ORDER = ("train", "val", "test")
RESERVED = {"gap", "threshold", "evaluation"}  # top-level keys of metrics.json that are not splits
METRIC_LABELS = {
    "n": "images (n)", "acc": "accuracy", "auc": "AUC", "loss": "loss", "balanced_acc": "balanced accuracy",
    "precision_macro": "precision (macro)", "recall_macro": "recall (macro)", "f1_macro": "F1 (macro)",
    "f1_weighted": "F1 (weighted)", "sensitivity": "sensitivity", "specificity": "specificity",
    "kappa_quadratic": "Cohen's κ (quadratic)", "mae": "mean absolute error", "ece": "calibration error (ECE)",
    "log_loss": "log loss", "threshold": "threshold",
}
N_ERRORS = 16
N_CAM = 8


# ---- formatting ----

def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (int, float, str, bool, np.integer, np.floating))


def _label(key: str) -> str:
    return f"{_e(METRIC_LABELS.get(key, key.replace('_', ' ')))} <code>{_e(key)}</code>"


def _metric_keys(records: Iterable[dict]) -> list[str]:
    """Scalar metric keys in a stable order: the known ones first, then the rest as they appear."""
    seen: list[str] = []
    for rec in records:
        for k, v in rec.items():
            if k not in seen and not k.endswith("_ci") and _scalar(v):
                seen.append(k)
    known = [k for k in METRIC_LABELS if k in seen]
    return known + [k for k in seen if k not in known]


# ---- HTML pieces ----

def _metric_table(records: dict[str, dict], table_id: str) -> str:
    """Rows: metrics; columns: splits. Cells carry ``data-split`` / ``data-metric`` for tools and tests."""
    splits = list(records)
    rows = []
    for key in _metric_keys(records.values()):
        cells = [_label(key)]
        for s in splits:
            rec = records[s]
            text = fmt_ci(rec.get(key), rec.get(f"{key}_ci")) if key in rec else "—"
            cells.append(f'<td data-split="{_e(s)}" data-metric="{_e(key)}">{_e(text)}</td>')
        rows.append(cells)
    return _table(["metric"] + [_e(s) for s in splits], rows, table_id)


def _kv_table(mapping: dict, table_id: str, value_header: str = "value") -> str:
    rows = []
    for k, v in mapping.items():
        if k.endswith("_ci") and k[:-3] in mapping:
            continue
        text = fmt_ci(v, mapping.get(f"{k}_ci")) if _scalar(v) else json.dumps(v, default=str)
        rows.append([_e(k), f'<td data-key="{_e(k)}">{_e(text)}</td>'])
    return _table(["setting", _e(value_header)], rows, table_id, css_class="kv")


# ---- inputs ----

def _read_history(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _read_predictions(path: Path) -> np.ndarray:
    table = np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float64)
    order = np.argsort(table[:, 0], kind="stable")
    return table[order, 1:]


def _model_scores(model, task, prep, images, batch: int = 256) -> np.ndarray:
    import torch

    from medbench.engine import model_device

    out = []
    model.eval()
    device = model_device(model)
    with torch.no_grad():
        for i in range(0, len(images), batch):
            out.append(task.scores(model(prep(images[i:i + batch].to(device)))).double().cpu())
    return torch.cat(out).numpy()


def _best_epoch(weights: Path) -> str | None:
    try:
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            return (f.metadata() or {}).get("epoch")
    except Exception:  # an unreadable weights file is reported where the model is needed
        return None


# ---- analyses on the test split ----

def per_class_table(y_true, scores, task: str, class_names: Sequence[str]) -> dict[str, dict]:
    """Precision, recall, F1, support and one-vs-rest AUC per class (per label for multi-label tasks)."""
    from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

    y = np.asarray(y_true).reshape(len(y_true), -1)
    pred = F.predicted(scores, task)
    curves = F.one_vs_rest(y_true, scores, task, class_names)
    out: dict[str, dict] = {}
    if task == "multilabel":
        for i, (name, yb, sb) in enumerate(curves):  # yb, sb: the label's known rows
            p, r, f1, _ = precision_recall_fscore_support(yb, pred[y[:, i] >= 0, i], average="binary",
                                                          zero_division=0)
            out[str(class_names[i]) if i < len(class_names) else name] = {
                "precision": float(p), "recall": float(r), "f1": float(f1), "support": int(yb.sum()),
                "auc": float(roc_auc_score(yb, sb)) if 0 < yb.sum() < len(yb) else None}
        return out
    k = np.asarray(scores).shape[1]
    p, r, f1, support = precision_recall_fscore_support(y[:, 0], pred, labels=list(range(k)), zero_division=0)
    s = np.asarray(scores, dtype=np.float64)
    for i in range(k):
        yb = (y[:, 0] == i).astype(int)
        auc = float(roc_auc_score(yb, s[:, i])) if 0 < yb.sum() < len(yb) else None
        name = str(class_names[i]) if i < len(class_names) else str(i)
        out[name] = {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f1[i]),
                     "support": int(support[i]), "auc": auc}
    return out


def confusion(y_true, scores, task: str) -> np.ndarray:
    """``[K, K]`` counts (rows true, columns predicted), or ``[L, 2, 2]`` for multi-label tasks."""
    from sklearn.metrics import confusion_matrix, multilabel_confusion_matrix

    y = np.asarray(y_true).reshape(len(y_true), -1)
    pred = F.predicted(scores, task)
    if task == "multilabel":  # per label over its known rows (-1: unknown)
        return np.stack([multilabel_confusion_matrix(y[y[:, i] >= 0, i:i + 1], pred[y[:, i] >= 0, i:i + 1])[0]
                         for i in range(y.shape[1])])
    return confusion_matrix(y[:, 0], pred, labels=list(range(np.asarray(scores).shape[1])))


def confident_errors(y_true, scores, task: str, k: int = N_ERRORS) -> list[tuple[int, int, int, float]]:
    """The ``k`` most confident wrong decisions as ``(image index, true, predicted, probability of the
    prediction)``, most confident first. Single-label: misclassified images by the probability of the
    wrong class. Multi-label: wrong per-label decisions (true/predicted are 0/1 and the second field the
    label; returned as ``(index, label, predicted, probability)``)."""
    y = np.asarray(y_true).reshape(len(y_true), -1)
    s = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
    pred = F.predicted(s, task)
    if task == "multilabel":
        wrong = np.argwhere((pred != y) & (y >= 0))
        conf = np.where(pred[wrong[:, 0], wrong[:, 1]] == 1, s[wrong[:, 0], wrong[:, 1]],
                        1 - s[wrong[:, 0], wrong[:, 1]])
        order = np.argsort(-conf, kind="stable")[:k]
        return [(int(wrong[j, 0]), int(wrong[j, 1]), int(pred[wrong[j, 0], wrong[j, 1]]), float(conf[j]))
                for j in order]
    idx = np.flatnonzero(pred != y[:, 0])
    conf = s[idx, pred[idx]]
    order = np.argsort(-conf, kind="stable")[:k]
    return [(int(idx[j]), int(y[idx[j], 0]), int(pred[idx[j]]), float(conf[j])) for j in order]


def _cam_indices(y: np.ndarray, task: str, k: int = N_CAM) -> list[int]:
    """``k`` test images: round-robin over true classes (first images of each), evenly spaced for
    multi-label tasks."""
    n = len(y)
    if n <= k:
        return list(range(n))
    if task == "multilabel":
        return sorted({int(round(i)) for i in np.linspace(0, n - 1, k)})
    queues = [list(np.flatnonzero(y[:, 0] == c)) for c in np.unique(y[:, 0])]
    picked: list[int] = []
    while len(picked) < k and any(queues):
        for q in queues:
            if q and len(picked) < k:
                picked.append(int(q.pop(0)))
    return sorted(picked)


def _short(names: Sequence[str], i: int, limit: int = 16) -> str:
    n = str(names[i]) if 0 <= i < len(names) else str(i)
    return n if len(n) <= limit else n[: limit - 1] + "…"


# ---- the report ----

def write_run_report(run_dir, *, data_dir=None, dataset=None, quiet: bool = True) -> Path:
    """Write ``RUN_DIR/report.html`` (atomically) and return its path.

    ``dataset``: an already loaded :class:`~medbench.data.ImageDataset`; otherwise the run's dataset is
    loaded from ``data_dir`` (or the default data root) as ``medbench.run.evaluate`` does.
    """
    from medbench.rundir import locked

    if not Path(run_dir).is_dir():
        raise MedbenchError(f"{run_dir} is not a folder; give report a run directory (made by medbench train)")
    with locked(run_dir, "medbench report"):
        return _write_run_report(run_dir, data_dir=data_dir, dataset=dataset, quiet=quiet)


def _write_run_report(run_dir, *, data_dir, dataset, quiet: bool) -> Path:
    import torch
    import yaml

    from medbench import run as R
    from medbench.config import PROVENANCE_KEY, load_config

    run_dir = Path(run_dir)
    config_path = run_dir / R.CONFIG
    if not config_path.is_file():
        raise MedbenchError(f"{run_dir} is not a run directory ({R.CONFIG} missing)")
    config_text = config_path.read_text(encoding="utf-8")
    provenance = (yaml.safe_load(config_text) or {}).get(PROVENANCE_KEY) or {}
    cfg = load_config(config_path)
    ds = R._dataset(cfg, dataset, data_dir, quiet)
    task = R.build_task(cfg, ds)
    names = list(ds.class_names)
    notes_top: list[str] = []
    if provenance.get("data_md5") and ds.md5 and provenance["data_md5"] != ds.md5:
        notes_top.append(f"The dataset loaded now (md5 {ds.md5}) differs from the run's training data "
                         f"(md5 {provenance['data_md5']}): test-set figures may not match metrics.json.")

    metrics_path = run_dir / R.METRICS
    metrics: dict = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}
    split_records = {s: metrics[s] for s in SPLIT_ORDER if isinstance(metrics.get(s), dict)}
    split_records.update({k: v for k, v in metrics.items() if k not in split_records and k not in RESERVED
                          and isinstance(v, dict) and "acc" in v and "n" in v})

    # the model: for Grad-CAM, and for scores when predictions/test.csv is missing or stale
    device = torch.device("cpu")
    prep = R._preprocess(cfg, ds)
    model, model_error = None, None
    try:
        model = R.load_run_model(run_dir, cfg, ds, task, device).eval()
    except MedbenchError as e:
        model_error = str(e)

    test = ds["test"]
    y_test = test.labels.cpu().numpy().reshape(len(test), -1)
    scores, scores_note = None, None
    pred_path = run_dir / "predictions" / "test.csv"
    if pred_path.is_file():
        try:
            scores = _read_predictions(pred_path)
        except ValueError as e:
            scores_note = f"{pred_path.name} could not be read ({e})"
        if scores is not None and scores.shape != (len(test), task.num_classes):
            scores_note = (f"predictions/test.csv holds {scores.shape[0]}×{scores.shape[1]} scores, the test split "
                           f"{len(test)} images × {task.num_classes} classes")
            scores = None
    else:
        scores_note = "predictions/test.csv not found"
    if scores is None and model is not None:
        scores = _model_scores(model, task, prep, test.images)
        scores_note = f"{scores_note}; test scores recomputed from the saved weights"
    elif scores is None:
        scores_note = f"{scores_note}; and no model to score with ({model_error})"

    sections: list[tuple[str, str, str]] = []  # (id, heading, html)

    # summary
    body = (_metric_table(split_records, "summary") if split_records
            else _note("metrics.json not found or empty: run `medbench evaluate` first."))
    sections.append(("summary", "Summary metrics", body))

    gap = metrics.get("gap")
    if isinstance(gap, dict) and gap:
        rows = []
        for k, v in gap.items():
            if k.endswith("_ci") or not _scalar(v):
                continue
            text = fmt_ci(v, gap.get(f"{k}_ci"))
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0:
                text = "+" + text
            rows.append([_label(k), f'<td data-metric="{_e(k)}">{_e(text)}</td>'])
        sections.append(("overfitting", "Overfitting (train − test gap)",
                         "<p>Positive values: the model scores higher on its training images than on the test "
                         "set.</p>" + _table(["metric", "train − test"], rows, "gap")))

    thr = metrics.get("threshold")
    youden = {s: r["at_youden"] for s, r in split_records.items() if isinstance(r.get("at_youden"), dict)}
    if isinstance(thr, dict) and thr or youden:
        parts = []
        if isinstance(thr, dict) and thr:
            parts.append("<p>Decision thresholds for the positive-class probability, chosen on the validation "
                         "split.</p>" + _kv_table(thr, "threshold"))
        if youden:
            parts.append("<h3>Metrics at the validation-chosen (Youden) threshold</h3>"
                         + _metric_table(youden, "at-youden"))
        sections.append(("threshold", "Decision threshold", "".join(parts)))

    ev = metrics.get("evaluation")
    if isinstance(ev, dict) and ev:
        sections.append(("evaluation", "Evaluation settings", _kv_table(ev, "evaluation")))

    # training curves
    history_path = run_dir / R.HISTORY
    if history_path.is_file() and (history := _read_history(history_path)):
        body = _png_img(F.curves_figure(history), "curves", f"Training curves ({len(history)} epochs; "
                        f"train values from the training pass)")
    else:
        body = _note("history.csv not found or empty.")
    sections.append(("curves", "Training curves", body))

    n_test = len(test)
    if scores is not None:
        kind = "per label" if task.name == "multilabel" else ("positive class" if task.name == "binary"
                                                             else "per class, one-vs-rest")
        roc = _png_img(F.roc_figure(y_test, scores, task.name, names), "roc", f"ROC on test (n={n_test}), {kind}")
        pr = _png_img(F.pr_figure(y_test, scores, task.name, names), "pr",
                      f"Precision–recall on test (n={n_test}), {kind}")
        sections.append(("roc", "ROC and precision–recall curves (test)",
                         (_note(scores_note) if scores_note else "") + roc + pr))

        cm = (metrics.get("test") or {}).get("confusion_matrix")
        cm_source = "metrics.json"
        try:
            cm = np.asarray(cm, dtype=np.int64) if cm is not None else None
        except (TypeError, ValueError):
            cm = None
        expected = (task.num_classes, 2, 2) if task.name == "multilabel" else (task.num_classes, task.num_classes)
        if cm is None or cm.shape != expected:
            cm, cm_source = confusion(y_test, scores, task.name), "computed from the test predictions"
        what = " (one 2×2 matrix per label: rows true 0/1, columns predicted 0/1)" if task.name == "multilabel" else ""
        body = (f"<p>Rows: true class; columns: predicted class{_e(what)}. Source: {_e(cm_source)}.</p>"
                + _png_img(F.confusion_figure(cm, names, normalize=False), "confusion", "Confusion matrix, counts")
                + _png_img(F.confusion_figure(cm, names, normalize=True), "confusion-normalized",
                           "Confusion matrix, row-normalised (recall per class on the diagonal)"))
        sections.append(("confusion", "Confusion matrix (test)", body))

        sections.append(("calibration", "Calibration (test)",
                         _png_img(F.reliability_figure(y_test, scores, task.name), "reliability",
                                  "Reliability diagram: observed accuracy per confidence bin")))

        per_class = (metrics.get("test") or {}).get("per_class")
        source = "metrics.json"
        if not isinstance(per_class, dict) or not per_class:
            per_class, source = per_class_table(y_test, scores, task.name, names), "computed with scikit-learn"
        rows = []
        for name, rec in per_class.items():
            rec = rec if isinstance(rec, dict) else {}
            rows.append([_e(name)] + [f'<td data-class="{_e(name)}" data-metric="{m}">'
                                      f'{_e(fmt_ci(rec.get(m), rec.get(f"{m}_ci")))}</td>'
                                      for m in ("precision", "recall", "f1", "support", "auc")])
        multilabel = task.name == "multilabel"
        head = "label" if multilabel else "class"
        rule = "at 0.5 per label" if multilabel else "by the MedMNIST rule (binary: p > 0.5, else argmax)"
        sections.append(("per-class", "Per-class metrics (test)",
                         f"<p>Source: {_e(source)}. AUC one-vs-rest; predictions {_e(rule)}.</p>"
                         + _table([head, "precision", "recall", "F1", "support", "AUC"], rows, "per-class")))

        errors = confident_errors(y_test, scores, task.name)
        if errors:
            imgs = [test.images[i].cpu().numpy() for i, *_ in errors]
            if multilabel:
                titles = [f"#{i} {_short(names, lab)}\ntrue {1 - pr} · pred {pr}\np={p:.3f}"
                          for i, lab, pr, p in errors]
            else:
                titles = [f"#{i} true: {_short(names, t)}\npred: {_short(names, pr)}\np={p:.3f}"
                          for i, t, pr, p in errors]
            fig = F.image_grid_figure(imgs, titles, cols=4, panel=1.9)
            wrong = "decision" if multilabel else "class"
            body = _png_img(fig, "errors", f"The {len(errors)} most confident errors on test "
                                           f"(probability of the wrong {wrong})")
        else:
            body = "<p>No errors on the test split.</p>"
        sections.append(("errors", "Most confident errors (test)", body))
    else:
        sections.append(("roc", "ROC and precision–recall curves (test)", _note(scores_note or "no test scores")))

    # Grad-CAM
    if model is None:
        body = _note(f"Grad-CAM skipped: {model_error}")
    else:
        try:
            body = _gradcam_section(model, task, prep, test, y_test, names)
        except Exception as e:  # an explanation must not cost the whole report (e.g. a model with no conv)
            body = _note(f"Grad-CAM failed for model '{cfg.model}': {type(e).__name__}: {e}")
    sections.append(("gradcam", "Grad-CAM (test)", body))

    # configuration and environment
    sections.append(("config", "Configuration",
                     f"<p><code>{_e(config_path.name)}</code></p><pre>{_e(config_text)}</pre>"))
    env = _kv_table(provenance, "environment") if provenance else _note("config.yaml has no provenance block.")
    sections.append(("environment", "Environment", env))

    best = _best_epoch(run_dir / R.WEIGHTS)
    title = f"{ds.name} · {cfg.model}"
    meta = (f"<p class=\"meta\">Run directory <code>{_e(run_dir.resolve())}</code><br>"
            f"Task {_e(task.name)}, {task.num_classes} {'labels' if task.name == 'multilabel' else 'classes'} "
            f"({_e(', '.join(map(str, names)))}); image size {cfg.size} px"
            + (f"; best epoch {_e(best)} of {cfg.epochs} by validation {_e(cfg.select_metric)}" if best else "")
            + f"<br>Generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by medbench</p>")
    nav = "<nav>" + "".join(f'<a href="#{sid}">{_e(h)}</a>' for sid, h, _ in sections) + "</nav>"
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<link rel=\"icon\" href=\"data:,\">"
            f"<title>{_e('Run report: ' + title)}</title><style>{CSS}</style></head><body><main>"
            f"<h1>Run report: {_e(title)}</h1>{meta}"
            + "".join(_note(n) for n in notes_top) + nav
            + "".join(f'<section id="{sid}"><h2>{_e(h)}</h2>{b}</section>' for sid, h, b in sections)
            + "</main></body></html>\n")
    out = run_dir / REPORT
    write_text(out, page)
    if not quiet:
        from medbench.progress import console

        console.print(f"wrote {out}")
    return out


def _gradcam_section(model, task, prep, test, y_test: np.ndarray, names: Sequence[str]) -> str:
    from medbench.explain import gradcam, overlay

    idx = _cam_indices(y_test, task.name)
    images = test.images[idx].cpu()
    x = prep(images)
    scores = _model_scores(model, task, prep, images)
    pred = F.predicted(scores, task.name)
    if task.name == "multilabel":
        targets = scores.argmax(1)
        titles = [f"#{i} CAM: {_short(names, t)}\ntrue: {_label_set(y_test[i], names)}\npred: "
                  f"{_label_set(pred[j], names)}" for j, (i, t) in enumerate(zip(idx, targets))]
    else:
        targets = pred
        titles = [f"#{i} true: {_short(names, int(y_test[i, 0]))}\npred: {_short(names, int(pred[j]))} "
                  f"({scores[j, pred[j]]:.2f})" for j, i in enumerate(idx)]
    output_fn = None
    if task.num_outputs != task.num_classes:  # e.g. CORN: outputs are thresholds; explain log P(class)
        output_fn = lambda logits: task.scores(logits).clamp_min(1e-12).log()  # noqa: E731
    cams = gradcam(model, x, [int(t) for t in targets], output_fn=output_fn)
    panels = [images[j].numpy() for j in range(len(idx))] + [overlay(images[j], cams[j]) for j in range(len(idx))]
    fig = F.image_grid_figure(panels, titles + ["Grad-CAM"] * len(idx), cols=len(idx), panel=1.45)
    what = "the highest-scoring label" if task.name == "multilabel" else "the predicted class"
    return (f"<p>Top row: test images; bottom row: Grad-CAM of {what} at the last convolution with a spatial "
            "output (red: regions that raise its score).</p>"
            + _png_img(fig, "gradcam", f"Grad-CAM on {len(idx)} test images"))


def _label_set(row, names: Sequence[str]) -> str:
    on = [_short(names, i, 10) for i in np.flatnonzero(np.asarray(row) == 1)]
    return ", ".join(on[:2]) + ("…" if len(on) > 2 else "") if on else "none"
