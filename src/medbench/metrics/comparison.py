"""Paired comparison of two models' predictions on the same split: DeLong's test of two binary AUCs and the
paired bootstrap (differences, their percentile interval and two-sided p)."""
from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm, rankdata

from medbench.metrics.classification import acc
from medbench.metrics.ranking import auc
from medbench.metrics.resampling import bootstrap_replicates, percentile_ci, resample_counts
from medbench.metrics.validation import _as_arrays, _check_level, _undefined, check_finite


def bootstrap_p(diffs) -> float | None:
    """Two-sided paired-bootstrap p of a difference: ``min(1, 2 min(P(d <= 0), P(d >= 0)))`` over the finite
    replicates (None if none)."""
    d = np.asarray(diffs, dtype=np.float64)
    d = d[np.isfinite(d)]
    return min(1.0, 2 * min(float(np.mean(d <= 0)), float(np.mean(d >= 0)))) if len(d) else None


def _positive_column(scores) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    return s[:, -1] if s.ndim == 2 else s


def delong_test(y_true, score_a, score_b) -> dict:
    """DeLong's test of two correlated binary AUCs on the same samples (DeLong, DeLong & Clarke-Pearson 1988).

    Scores are positive-class scores ([N], or [N, 2] whose last column is used). The structural components
    come from midranks (Sun & Xu 2014): with m positives X and n negatives Y, for each model ``V10(X_i) =
    (rank of X_i among all - rank among positives) / n`` (the share of negatives below X_i, ties one half) and
    ``V01(Y_j) = 1 - (rank of Y_j among all - rank among negatives) / m``; AUC is the mean of V10. The variance
    of the difference is ``var(V10_a - V10_b) / m + var(V01_a - V01_b) / n`` (sample variances, ddof 1),
    ``z = diff / se`` and the two-sided normal p-value ``2 * (1 - Phi(|z|))``. When se is 0, a zero difference
    gives z 0 and p 1; a nonzero one z ``None`` and p 0 (with a warning). Returns {"auc_a", "auc_b", "diff",
    "se", "z", "p_value"}, all ``None`` (with a warning) when one class is absent.
    """
    y = np.asarray(y_true).reshape(len(y_true), -1)[:, 0] == 1
    a, b = _positive_column(score_a), _positive_column(score_b)
    check_finite(a, "scores of A")
    check_finite(b, "scores of B")
    if not (len(a) == len(b) == len(y)):
        raise ValueError(f"{len(y)} labels but {len(a)} and {len(b)} scores")
    m, n = int(y.sum()), int((~y).sum())
    keys = ("auc_a", "auc_b", "diff", "se", "z", "p_value")
    if not m or not n:
        _undefined("DeLong test undefined: only one class present; reported as null", stacklevel=2)
        return dict.fromkeys(keys)
    x_scores, y_scores = np.stack([a[y], b[y]]), np.stack([a[~y], b[~y]])
    t_all = rankdata(np.concatenate([x_scores, y_scores], axis=1), axis=1)
    v10 = (t_all[:, :m] - rankdata(x_scores, axis=1)) / n
    v01 = 1.0 - (t_all[:, m:] - rankdata(y_scores, axis=1)) / m
    aucs = (t_all[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    out = {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "diff": float(aucs[0] - aucs[1])}
    if m < 2 or n < 2:
        _undefined("DeLong variance undefined with fewer than two positives or negatives; se, z and p are null",
                   stacklevel=2)
        return {**out, "se": None, "z": None, "p_value": None}
    var = np.var(v10[0] - v10[1], ddof=1) / m + np.var(v01[0] - v01[1], ddof=1) / n
    se = math.sqrt(max(float(var), 0.0))
    if se > 0:
        z = out["diff"] / se
        return {**out, "se": se, "z": z, "p_value": min(1.0, float(2 * norm.sf(abs(z))))}
    if out["diff"] == 0:
        return {**out, "se": 0.0, "z": 0.0, "p_value": 1.0}
    _undefined("DeLong standard error is 0 with a nonzero AUC difference; z is null and p 0", stacklevel=2)
    return {**out, "se": 0.0, "z": None, "p_value": 0.0}


def compare_predictions(y_true, scores_a, scores_b, task: str, *, replicates: int = 1000, seed: int = 0,
                        level: float = 0.95, threshold: float = 0.5) -> dict:
    """Paired comparison of two models' predictions on the same samples: A - B for ``auc`` and ``acc``.

    Each gets {"value_a", "value_b", "diff", "diff_ci", "p_value"}. Paired bootstrap: every resample
    (:func:`resample_counts`, the same for both models) scores both, giving one difference per resample;
    ``diff_ci`` is its percentile interval at ``level``; ``p_value`` is the two-sided paired-bootstrap p
    ``min(1, 2 * min(share of differences <= 0, share >= 0))``, i.e. twice the share of resamples on the far
    side of zero (the smallest ``1 - level`` whose percentile interval reaches 0). Resamples where a metric is
    undefined are left out. Binary tasks add ``delong`` (:func:`delong_test`).
    """
    _check_level(level)
    y, sa = _as_arrays(y_true, scores_a)
    _, sb = _as_arrays(y_true, scores_b)
    if sa.shape != sb.shape:
        raise ValueError(f"scores of A have shape {sa.shape}, of B {sb.shape}")
    counts = resample_counts(len(y), replicates, seed)
    reps = [bootstrap_replicates(y, sc, task, counts=counts, threshold=threshold, metrics=("auc", "acc"))
            for sc in (sa, sb)]
    out = {}
    for name in ("auc", "acc"):
        va, vb = ((auc(y, sc, task) if name == "auc" else acc(y, sc, task, threshold)) for sc in (sa, sb))
        diffs = reps[0][name] - reps[1][name]
        ci, p = percentile_ci(diffs, level), bootstrap_p(diffs)
        out[name] = {"value_a": va, "value_b": vb, "diff": None if va is None or vb is None else va - vb,
                     "diff_ci": ci, "p_value": p}
    if task == "binary":
        out["delong"] = delong_test(y, sa, sb)
    return out
