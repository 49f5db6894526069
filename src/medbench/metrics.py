"""Metrics. ``acc`` and ``auc`` follow ``medmnist.evaluator.getACC/getAUC`` exactly:

- binary: the last score column, threshold 0.5;
- multi-label: mean over labels of per-label AUC / accuracy at 0.5;
- multi-class and ordinal: one-vs-rest macro AUC, argmax accuracy.

An AUC that is undefined (a class or label absent from the split) is ``None`` with a warning, never a crash.
"""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import roc_auc_score


def _as_arrays(y_true, scores):
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if s.ndim == 1:
        s = s[:, None]
    if y.shape[0] != s.shape[0]:
        raise ValueError(f"{y.shape[0]} labels but {s.shape[0]} score rows")
    return y, s


def _binary_auc(y, s, what: str) -> float | None:
    if np.unique(y).size < 2:
        warnings.warn(f"AUC undefined for {what}: only one class present; reported as null", stacklevel=3)
        return None
    return float(roc_auc_score(y, s))


def auc(y_true, scores, task: str) -> float | None:
    y, s = _as_arrays(y_true, scores)
    if task == "binary":
        return _binary_auc(y[:, 0], s[:, -1], "the positive class")
    if task == "multilabel":
        per = [_binary_auc(y[:, i], s[:, i], f"label {i}") for i in range(s.shape[1])]
        return None if any(a is None for a in per) else sum(per) / s.shape[1]
    per = [_binary_auc((y[:, 0] == i).astype(float), s[:, i], f"class {i}") for i in range(s.shape[1])]
    return None if any(a is None for a in per) else sum(per) / s.shape[1]


def acc(y_true, scores, task: str, threshold: float = 0.5) -> float:
    y, s = _as_arrays(y_true, scores)
    if task == "binary":
        return float(np.mean(y[:, 0] == (s[:, -1] > threshold)))
    if task == "multilabel":
        pred = s > threshold
        return sum(float(np.mean(y[:, i] == pred[:, i])) for i in range(y.shape[1])) / y.shape[1]
    return float(np.mean(y[:, 0] == s.argmax(axis=1)))


def compute_metrics(y_true, scores, task: str) -> dict:
    """The per-split metric record (``loss`` is added by the engine, which has the logits)."""
    return {"acc": acc(y_true, scores, task), "auc": auc(y_true, scores, task), "n": int(np.shape(y_true)[0])}
