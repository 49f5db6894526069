"""Matplotlib figures of a run: training curves, ROC / precision-recall, confusion matrices, reliability.

Every function builds and returns its own :class:`matplotlib.figure.Figure` with an Agg canvas: nothing
goes through ``pyplot``'s global state, so figures never leak into each other and need no display
(TensorBoard's ``add_figure`` takes them as they are). ``figure_to_png`` renders one to PNG bytes.

Scores follow :mod:`medbench.tasks`: binary ``[N, 2]`` (positive = last column), multi-class / ordinal
``[N, K]`` probabilities, multi-label ``[N, L]`` per-label sigmoids; labels are ``[N, 1]`` ints or
``[N, L]`` 0/1.
"""
from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medbench.tasks import decide

DPI = 100


def new_figure(width: float, height: float, layout: str | None = "constrained") -> Figure:
    """A Figure on its own Agg canvas (no pyplot)."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def figure_to_png(fig: Figure, dpi: int | None = None) -> bytes:
    buf = io.BytesIO()
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    fig.savefig(buf, format="png", dpi=dpi or fig.dpi, facecolor="white")
    return buf.getvalue()


# ---- labels and scores ----

def _arrays(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    y = y.reshape(len(y), -1)
    s = s.reshape(len(s), -1)
    if y.shape[0] != s.shape[0]:
        raise ValueError(f"{y.shape[0]} labels but {s.shape[0]} score rows")
    return y.astype(np.int64), s


def one_vs_rest(y_true, scores, task: str, class_names: Sequence[str]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, binary truth, score)`` per curve: the positive class for binary tasks, every class
    (one-vs-rest) for multi-class / ordinal, every label for multi-label (over its known rows: -1 is unknown)."""
    y, s = _arrays(y_true, scores)
    names = list(class_names) or [str(i) for i in range(s.shape[1])]
    if task == "binary":
        return [(names[-1] if len(names) == s.shape[1] else "positive", (y[:, 0] == s.shape[1] - 1).astype(int),
                 s[:, -1])]
    if task == "multilabel":
        return [(_name(names, i), y[y[:, i] >= 0, i].astype(int), s[y[:, i] >= 0, i]) for i in range(s.shape[1])]
    return [(_name(names, i), (y[:, 0] == i).astype(int), s[:, i]) for i in range(s.shape[1])]


def _name(names: Sequence[str], i: int, limit: int = 24) -> str:
    n = str(names[i]) if i < len(names) else str(i)
    return n if len(n) <= limit else n[: limit - 1] + "…"


def _both_classes(y: np.ndarray) -> bool:
    return 0 < int(y.sum()) < len(y)


def _legend(ax, n: int) -> None:
    if n:
        ax.legend(loc="lower right" if n <= 8 else "center left", fontsize=8 if n <= 8 else 6,
                  bbox_to_anchor=None if n <= 8 else (1.01, 0.5), frameon=False)


# ---- ROC and precision-recall ----

def roc_figure(y_true, scores, task: str, class_names: Sequence[str]) -> Figure:
    """ROC curve per class (one-vs-rest) or label, AUC in the legend; the chance diagonal dashed."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig = new_figure(5.2, 4.4)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", c="0.6", lw=1)
    drawn = 0
    for name, yb, sb in one_vs_rest(y_true, scores, task, class_names):
        if not _both_classes(yb):
            ax.plot([], [], label=f"{name} (AUC n/a: one class only)")
            continue
        fpr, tpr, _ = roc_curve(yb, sb)
        ax.plot(fpr, tpr, lw=1.6, label=f"{name} (AUC {roc_auc_score(yb, sb):.3f})")
        drawn += 1
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="false positive rate (1 − specificity)",
           ylabel="true positive rate (sensitivity)", title="ROC" + (" (one-vs-rest)" if task in
                                                                   ("multiclass", "ordinal") else ""))
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    _legend(ax, len(ax.get_lines()) - 1)
    return fig


def pr_figure(y_true, scores, task: str, class_names: Sequence[str]) -> Figure:
    """Precision-recall curve per class (one-vs-rest) or label, average precision in the legend; a dotted
    line at each curve's prevalence (the precision of guessing)."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    fig = new_figure(5.2, 4.4)
    ax = fig.add_subplot()
    curves = one_vs_rest(y_true, scores, task, class_names)
    for name, yb, sb in curves:
        if not _both_classes(yb):
            ax.plot([], [], label=f"{name} (AP n/a: one class only)")
            continue
        precision, recall, _ = precision_recall_curve(yb, sb)
        line, = ax.plot(recall, precision, lw=1.6, drawstyle="steps-post",
                        label=f"{name} (AP {average_precision_score(yb, sb):.3f})")
        if len(curves) <= 3:
            ax.axhline(yb.mean(), ls=":", lw=1, c=line.get_color())
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.02), xlabel="recall (sensitivity)", ylabel="precision (PPV)",
           title="Precision–recall")
    ax.grid(alpha=0.3)
    _legend(ax, len(curves))
    return fig


# ---- confusion matrices ----

def confusion_figure(cm, class_names: Sequence[str], normalize: bool) -> Figure:
    """Heatmap of a ``[K, K]`` confusion matrix (rows: true, columns: predicted), counts or row-normalised
    (each true class sums to 1). A ``[L, 2, 2]`` stack (multi-label, one matrix per label) is drawn as
    small multiples with the label names as titles."""
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim == 3:
        n = cm.shape[0]
        cols = min(n, 5)
        rows = math.ceil(n / cols)
        fig = new_figure(2.1 * cols + 0.6, 2.1 * rows + 0.5)
        axes = fig.subplots(rows, cols, squeeze=False)
        for i, ax in enumerate(axes.flat):
            if i >= n:
                ax.set_axis_off()
                continue
            _draw_matrix(ax, cm[i], ["0", "1"], normalize, small=True)
            ax.set_title(_name(class_names, i, 20), fontsize=8)
        fig.suptitle("Confusion per label" + (" (row-normalised)" if normalize else " (counts)"), fontsize=10)
        return fig
    k = cm.shape[0]
    side = min(max(3.8, 0.55 * k + 2.2), 12)
    fig = new_figure(side + 0.8, side)
    ax = fig.add_subplot()
    names = [_name(class_names, i, 18) for i in range(k)]
    im = _draw_matrix(ax, cm, names, normalize, small=k > 10)
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_title("Confusion matrix" + (" (row-normalised)" if normalize else " (counts)"))
    return fig


def _draw_matrix(ax, cm: np.ndarray, names: Sequence[str], normalize: bool, small: bool):
    if normalize:
        rows = cm.sum(axis=1, keepdims=True)
        values = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
        vmax = 1.0
    else:
        values, vmax = cm, max(float(cm.max()), 1.0)
    im = ax.imshow(values, cmap="Blues", vmin=0, vmax=vmax)
    k = cm.shape[0]
    if k <= 20:
        for i in range(k):
            for j in range(k):
                text = f"{values[i, j]:.2f}" if normalize else f"{int(round(cm[i, j]))}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7 if small else 9,
                        color="white" if values[i, j] > 0.6 * vmax else "black")
    ax.set_xticks(range(k), names, rotation=45 if k > 2 or max(map(len, names)) > 8 else 0, ha="right"
                  if k > 2 else "center", fontsize=7 if small else 8)
    ax.set_yticks(range(k), names, fontsize=7 if small else 8)
    ax.set_xlabel("predicted", fontsize=8)
    ax.set_ylabel("true", fontsize=8)
    return im


# ---- calibration ----

def reliability_bins(y_true, scores, task: str, bins: int = 15, threshold: float = 0.5) -> dict:
    """Equal-width confidence bins: mean confidence, observed accuracy / frequency and count per bin, and
    the expected calibration error. Single-label tasks use the confidence of the decided class (binary: at
    ``threshold``, the run's decision rule) against accuracy; multi-label tasks pool every label's
    probability against the label's observed frequency."""
    y, s = _arrays(y_true, scores)
    if task == "multilabel":
        conf, hit = s[y >= 0], y[y >= 0].astype(np.float64)  # -1: unknown label, left out
    else:
        pred = decide(s, task, threshold)
        conf = s[np.arange(len(s)), pred]  # binary: pred is 0 or 1, the last column
        hit = (pred == y[:, 0]).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    count = np.bincount(idx, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, conf, bins) / count
        mean_hit = np.bincount(idx, hit, bins) / count
    filled = count > 0
    ece = float(np.sum(count[filled] * np.abs(mean_conf[filled] - mean_hit[filled])) / max(count.sum(), 1))
    return {"edges": edges, "confidence": mean_conf, "accuracy": mean_hit, "count": count, "ece": ece}


def reliability_figure(y_true, scores, task: str, bins: int = 15, threshold: float = 0.5) -> Figure:
    """Reliability diagram (observed accuracy per confidence bin against the diagonal) with the bin counts
    below and the expected calibration error in the title."""
    r = reliability_bins(y_true, scores, task, bins, threshold)
    fig = new_figure(5.0, 5.0)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    edges, width = r["edges"], 1.0 / bins
    filled = r["count"] > 0
    top.plot([0, 1], [0, 1], ls="--", c="0.5", lw=1, label="perfect calibration")
    top.bar(edges[:-1][filled], r["accuracy"][filled], width=width, align="edge", color="#4c78a8",
            edgecolor="white", label="observed")
    gap_lo = np.minimum(r["accuracy"], r["confidence"])[filled]
    gap_hi = np.maximum(r["accuracy"], r["confidence"])[filled]
    top.bar(edges[:-1][filled], gap_hi - gap_lo, bottom=gap_lo, width=width, align="edge", fill=False,
            hatch="///", edgecolor="#e45756", linewidth=0.8, label="gap to confidence")
    multilabel = task == "multilabel"
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="observed frequency" if multilabel else "accuracy",
            title=f"Reliability (ECE {r['ece']:.3f}, {bins} bins)")
    top.grid(alpha=0.3)
    top.legend(loc="upper left", fontsize=8, frameon=False)
    bottom.bar(edges[:-1], r["count"], width=width, align="edge", color="0.55", edgecolor="white")
    bottom.set(xlabel="predicted probability" if multilabel else "confidence (probability of the decided class)",
               ylabel="count")
    bottom.grid(alpha=0.3)
    return fig


# ---- training curves ----

def _number(v) -> float:
    if v is None:
        return math.nan
    if isinstance(v, str):
        v = v.strip()
        if not v or v.lower() in ("none", "nan", "null", "n/a"):
            return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def curves_figure(history_rows: Iterable[Mapping]) -> Figure:
    """Loss, accuracy and AUC per epoch, training pass against validation, from ``history.csv`` rows
    (``epoch, lr, train_loss, train_acc, train_auc, val_loss, val_acc, val_auc, ...``; empty strings or
    None where a value is undefined)."""
    rows = list(history_rows)
    epochs = np.array([_number(r.get("epoch", i + 1)) for i, r in enumerate(rows)])
    fig = new_figure(11.0, 3.4)
    axes = fig.subplots(1, 3)
    for ax, metric, title in zip(axes, ("loss", "acc", "auc"), ("Loss", "Accuracy", "AUC")):
        for split, colour in (("train", "#4c78a8"), ("val", "#f58518")):
            ys = np.array([_number(r.get(f"{split}_{metric}")) for r in rows])
            if len(ys) and np.isfinite(ys).any():
                ax.plot(epochs, ys, marker="o", ms=3, lw=1.6, c=colour, label=split)
        ax.set(title=title, xlabel="epoch")
        if metric != "loss":
            low = [np.nanmin(line.get_ydata()) for line in ax.get_lines()]
            ax.set_ylim(max(0.0, min(low + [1.0]) - 0.05), 1.01)
        if len(rows) <= 12 and len(rows):
            ax.set_xticks([int(e) for e in epochs if np.isfinite(e)])
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=8, frameon=False)
        else:
            ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes, color="0.5")
    return fig


# ---- image grids ----

def image_grid_figure(images: Sequence, titles: Sequence[str], cols: int = 4, panel: float = 1.6,
                      title: str | None = None) -> Figure:
    """Images (uint8 ``[C, H, W]`` with 1 or 3 channels, or ``[H, W, 3]`` RGB arrays) in a grid, each with
    its title (a few short lines); grey images in grey, pixels shown unsmoothed."""
    n = len(images)
    cols = max(1, min(cols, n))
    rows = max(1, math.ceil(n / cols))
    lines = max([str(t).count("\n") + 1 for t in titles] + [1])
    height = (panel + 0.16 * lines) * rows + (0.3 if title else 0.0)
    fig = new_figure(panel * cols + 0.2, height, layout=None)  # fixed margins: constrained layout costs ~1 s here
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.01, top=1 - (0.3 if title else 0.05) / height,
                        wspace=0.08, hspace=0.16 * lines * 1.4 / panel)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        img = np.asarray(images[i])
        if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
            img = np.transpose(img, (1, 2, 0))
        if img.ndim == 3 and img.shape[-1] == 1:
            img = img[..., 0]
        if img.ndim == 2:
            ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        else:
            ax.imshow(img.astype(np.uint8), interpolation="nearest")
        ax.set_title(str(titles[i]) if i < len(titles) else "", fontsize=7, linespacing=1.1)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
