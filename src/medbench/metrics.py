"""Metrics. ``acc`` and ``auc`` follow ``medmnist.evaluator.getACC/getAUC`` exactly:

- binary: the last score column, threshold 0.5;
- multi-label: mean over labels of per-label AUC / accuracy at 0.5;
- multi-class and ordinal: one-vs-rest macro AUC, argmax accuracy.

An AUC that is undefined (a class or label absent from the split) is ``None`` with a warning, never a crash.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy.stats import rankdata


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


def rank_auc(y_true, scores) -> np.ndarray:
    """AUC of every column at once from average ranks (Mann-Whitney U; a tie counts one half).

    ``y_true`` and ``scores`` are [N, M]; columns with one class only give NaN.
    """
    y = np.asarray(y_true, dtype=np.float64).reshape(len(y_true), -1)
    s = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
    ranks = rankdata(s, axis=0)
    pos = y.sum(0)
    neg = y.shape[0] - pos
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * y).sum(0) - pos * (pos + 1) / 2) / (pos * neg)


def _binary_auc(y, s, what: str) -> float | None:
    if np.unique(y).size < 2:
        warnings.warn(f"AUC undefined for {what}: only one class present; reported as null", stacklevel=3)
        return None
    return float(rank_auc(y, s)[0])


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


# ---- bootstrap: all replicates at once ----

def resample_counts(n: int, replicates: int, seed: int = 0) -> np.ndarray:
    """[n, replicates]: how often each sample is drawn in each resample with replacement.

    Replicate ``b`` is the resample ``torch.randint(0, n, (replicates, n), generator=seeded)[b]``; counts are
    uint8 when they fit (they always do in practice), which keeps the memory traffic 4x lower than int32.
    """
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (replicates, n), generator=g)
    flat = (idx + (torch.arange(replicates) * n)[:, None]).view(-1)
    counts = torch.zeros(replicates * n, dtype=torch.int32)
    counts.index_add_(0, flat, torch.ones(1, dtype=torch.int32).expand(replicates * n))
    counts = counts.view(replicates, n).T
    return (counts.to(torch.uint8) if int(counts.max()) < 256 else counts).contiguous().numpy()


def weighted_auc(y, s, counts: np.ndarray) -> np.ndarray:
    """AUC of one binary column for every replicate, each sample weighted by its count: [replicates].

    Sort once; for each positive, the weight of negatives scored below it (and half of those tied with it)
    comes from prefix sums of the count matrix taken only at the positives' boundaries.
    """
    y = np.asarray(y).ravel() == 1
    s = np.asarray(s, dtype=np.float64).ravel()
    neg, pos = np.flatnonzero(~y), np.flatnonzero(y)
    if not len(neg) or not len(pos):
        return np.full(counts.shape[1], np.nan)
    neg, pos = neg[np.argsort(s[neg], kind="stable")], pos[np.argsort(s[pos], kind="stable")]
    lo = np.searchsorted(s[neg], s[pos], "left")
    hi = np.searchsorted(s[neg], s[pos], "right")
    bounds, where = np.unique(np.concatenate([[0], lo, hi]), return_inverse=True)
    w_neg = counts[np.append(neg, neg[-1])]  # an extra row so that a boundary at len(neg) is a valid index
    seg = np.add.reduceat(w_neg, bounds, axis=0, dtype=np.int64)
    prefix = np.zeros((len(bounds), counts.shape[1]), np.int64)
    np.cumsum(seg[:-1], axis=0, out=prefix[1:])  # negatives' weight below each boundary
    below, upto = prefix[where[1:1 + len(pos)]], prefix[where[1 + len(pos):]]
    w_pos = counts[pos]
    num = (w_pos * (below + upto)).sum(0) * 0.5  # below + tied / 2
    total_pos = w_pos.sum(0, dtype=np.int64)
    total_neg = counts[neg].sum(0, dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / (total_pos * total_neg.astype(np.float64))


def _columns(y, s, task):
    """(labels, scores) of the binary problems whose mean is the task's AUC."""
    if task == "binary":
        return [(y[:, 0], s[:, -1])]
    if task == "multilabel":
        return [(y[:, i], s[:, i]) for i in range(s.shape[1])]
    return [((y[:, 0] == i).astype(int), s[:, i]) for i in range(s.shape[1])]


def bootstrap(y_true, scores, task: str, replicates: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile CIs of ``acc`` and ``auc`` over resamples of the split, every replicate computed at once."""
    y, s = _as_arrays(y_true, scores)
    counts = resample_counts(len(y), replicates, seed)
    n = len(y)
    if task == "binary":
        correct = (y[:, 0] == (s[:, -1] > 0.5)).astype(np.float64)
    elif task == "multilabel":
        correct = (y == (s > 0.5)).mean(1)
    else:
        correct = (y[:, 0] == s.argmax(1)).astype(np.float64)
    accs = correct @ counts / n
    aucs = np.mean([weighted_auc(yc, sc, counts) for yc, sc in _columns(y, s, task)], axis=0)
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    out = {"acc_ci": [float(v) for v in np.percentile(accs, [lo, hi])]}
    valid = aucs[np.isfinite(aucs)]
    if len(valid) < replicates:
        warnings.warn(f"AUC undefined in {replicates - len(valid)} of {replicates} resamples (a class drawn "
                      f"zero times); the CI uses the rest", stacklevel=2)
    out["auc_ci"] = [float(v) for v in np.percentile(valid, [lo, hi])] if len(valid) else None
    return out
