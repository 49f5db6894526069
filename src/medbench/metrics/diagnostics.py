"""Can the selected epoch and the predictions be trusted? The epoch selection rule with its tie-break, and the
warnings a run records in ``metrics.json["warnings"]`` (and logs) when they cannot.

Selection (:func:`prefer`): the validation ``select_metric`` picks the epoch; values within :data:`TIE_TOL` of each
other are ties, broken by the lower validation loss (``select_metric=loss``: by the higher validation AUC); a tie
in both keeps the earlier epoch. Without the tie-break a validation AUC of 1.000 in every epoch kept epoch 1,
often a model that had not learnt to separate the classes yet.

Warnings (plain strings, each naming its rule):

- :func:`small_validation`: some class has fewer than :data:`MIN_PER_CLASS` validation images (multi-label: a
  label with fewer positives): one image then moves that class's recall by more than 10 points, more than the
  differences between epochs that the selection weighs;
- :func:`saturated_selection`: the best value of the selection metric was shared by at least half of the epochs
  (two or more): the metric could not tell those epochs apart and the tie-break chose;
- :func:`collapse_warning`: a split's decided labels are all the same class (multi-label: the same label set)
  while its true labels hold two or more, so its accuracy is just that class's prevalence.
"""
from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import numpy as np

from medbench.tasks import decide

TIE_TOL = 1e-12  # selection values this close are equal (float noise, not a real difference)
MIN_PER_CLASS = 10  # validation images per class (multi-label: positives per label) below which selection is noise
TIEBREAK = {"auc": "val_loss", "acc": "val_loss", "loss": "val_auc"}  # the history column that breaks a tie


class SelectionWarning(UserWarning):
    """The selected epoch or a split's predictions cannot be trusted as they stand (see the module docstring)."""


def _num(v) -> float | None:
    """A history value (float, or text from history.csv) as a finite float; None when empty, missing or NaN."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def selection_value(rec: dict, metric: str) -> float:
    """A validation record's value of the selection metric ({"auc", "acc", "loss"}), larger is better; -inf when
    undefined (what the kept checkpoints are ranked by)."""
    v = _num(rec.get(metric))
    return -math.inf if v is None else -v if metric == "loss" else v


def selection_key(row: dict, metric: str) -> tuple[float, float]:
    """(the selection value, the tie-break value) of a history row, both larger-is-better; -inf where undefined."""
    main, tie = _num(row.get(f"val_{metric}")), _num(row.get(TIEBREAK[metric]))
    main = -math.inf if main is None else -main if metric == "loss" else main
    tie = -math.inf if tie is None else tie if metric == "loss" else -tie  # loss: the higher AUC; else lower loss
    return main, tie


def _tied(a: float, b: float) -> bool:
    return a == b or abs(a - b) <= TIE_TOL


def prefer(candidate: dict, incumbent: dict | None, metric: str) -> bool:
    """Whether history row ``candidate`` (a later epoch) replaces ``incumbent`` (the epoch selected so far, None
    before the first) under ``select_metric``: a better value, or a tie (within :data:`TIE_TOL`) with a better
    tie-break value (:data:`TIEBREAK`); a tie in both keeps the earlier epoch."""
    if incumbent is None:
        return True
    (c, ct), (i, it) = selection_key(candidate, metric), selection_key(incumbent, metric)
    if not _tied(c, i):
        return c > i
    return ct > it and not _tied(ct, it)


def select_epoch(history: list[dict], metric: str) -> int:
    """The epoch :func:`prefer` selects from whole history rows (0 for an empty history)."""
    best = None
    for row in history:
        if prefer(row, best, metric):
            best = row
    return int(_num(best["epoch"])) if best is not None else 0


def small_validation(val_labels, task: str, class_names) -> str | None:
    """The warning when some class (label) has fewer than :data:`MIN_PER_CLASS` validation images (positives)."""
    y = np.asarray(val_labels)
    y = y.reshape(len(y), -1)
    names = [str(c) for c in class_names]
    if task == "multilabel":
        counts = (y == 1).sum(axis=0)
    else:
        counts = np.bincount(y[:, 0].astype(np.int64), minlength=len(names))[:len(names)]
    short = [(n, int(c)) for n, c in zip(names, counts) if c < MIN_PER_CLASS]
    if not short:
        return None
    what = "positive validation images" if task == "multilabel" else "validation images"
    listed = ", ".join(f"{n!r} {c}" for n, c in short[:5]) + (f" and {len(short) - 5} more" if len(short) > 5 else "")
    return (f"the validation split is too small to select an epoch: {listed} {what} (rule: fewer than "
            f"{MIN_PER_CLASS} per class, where one image moves that class's recall by more than 10 points); use a "
            f"larger validation split, or read the selected epoch as arbitrary")


def saturated_selection(history: list[dict], metric: str) -> str | None:
    """The warning when the best value of ``select_metric`` is shared by at least half of the epochs (two or
    more): the selection was made by the tie-break (:data:`TIEBREAK`), not by the metric."""
    if len(history) < 2:
        return None
    keys = [selection_key(r, metric)[0] for r in history]
    best = max(keys)
    tied = sum(_tied(k, best) for k in keys)
    if tied < 2 or 2 * tied < len(history):
        return None
    chosen = select_epoch(history, metric)
    value = "undefined" if best == -math.inf else f"{abs(best):.4f}"
    by = "higher validation AUC" if metric == "loss" else "lower validation loss"
    return (f"validation {metric} was at its best ({value}) in {tied} of {len(history)} epochs (rule: the best "
            f"value shared by at least half of the epochs), so it could not tell them apart: epoch {chosen} was "
            f"selected by the {by}; the validation split is too small or too easy to select on")


def collapse_warning(split: str, labels, scores, task: str, class_names, threshold: float = 0.5) -> str | None:
    """The warning when every decided label of ``split`` is the same class (multi-label: the same set of labels)
    while its true labels hold two or more; decisions by :func:`medbench.tasks.decide` at ``threshold``."""
    y = np.asarray(labels)
    y = y.reshape(len(y), -1)
    s = np.asarray(scores, dtype=np.float64)
    if not len(y):
        return None
    names = [str(c) for c in class_names]
    d = decide(s.reshape(len(s), -1), task, threshold)
    at = f" at threshold {threshold:.3f}" if task in ("binary", "multilabel") else ""
    if task == "multilabel":
        if len(np.unique(d, axis=0)) > 1 or len(np.unique(y, axis=0)) < 2:
            return None
        on = [n for n, v in zip(names, d[0]) if v] or ["no label"]
        return (f"{split}: predictions collapsed: all {len(y)} images get the same labels ({', '.join(on)}){at} "
                f"while their true labels differ")
    present = np.unique(y[:, 0])
    if len(present) < 2 or len(np.unique(d)) > 1:
        return None
    only = names[int(d[0])]
    counts = ", ".join(f"{names[int(c)]} {int((y[:, 0] == c).sum())}" for c in present)
    return (f"{split}: predictions collapsed to one class: all {len(y)} images are predicted {only}{at} while the "
            f"labels hold {len(present)} classes ({counts}); accuracy there is only {only}'s prevalence")


def selection_warnings(history: list[dict], metric: str, val_labels, task: str, class_names) -> list[str]:
    """The warnings about the epoch selection of a run with ``history`` (none with fewer than two epochs: nothing
    was selected)."""
    if len(history) < 2:
        return []
    return [w for w in (small_validation(val_labels, task, class_names), saturated_selection(history, metric)) if w]


def split_warnings(labels: dict, scores: dict, task: str, class_names, threshold: float = 0.5) -> list[str]:
    """:func:`collapse_warning` of every split in ``labels`` ({split: labels}; ``scores`` {split: scores})."""
    return [w for s in labels if (w := collapse_warning(s, labels[s], scores[s], task, class_names, threshold))]


def emit(messages: list[str]) -> None:
    """Log each warning (the CLI prints one line per warning)."""
    for m in messages:
        warnings.warn(m, SelectionWarning, stacklevel=2)


def read_history(path: Path) -> list[dict]:
    """A run's history.csv as one dict of strings per epoch; [] when it does not exist."""
    if not Path(path).is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
