"""Paired comparison of two models' predictions on the same split: DeLong's test of two binary AUCs and the
paired bootstrap (differences, their percentile interval and two-sided p); and of two groups of runs (seeds), by
a two-level bootstrap that resamples the runs as well as the samples."""
from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm, rankdata

from medbench.metrics.classification import acc
from medbench.metrics.ranking import auc
from medbench.metrics.resampling import (
    bootstrap_replicates,
    percentile_ci,
    resample_counts,
    seed_resample_means,
)
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


MIN_SEEDS = 3  # fewer runs per arm leave nothing to estimate the seed-to-seed spread from


def two_level_difference(per_run_a, per_run_b, *, seed: int = 0, level: float = 0.95) -> dict:
    """A - B of two groups of runs (seeds) scored on the same B resamples of the same samples: the two-level
    bootstrap of the difference of their mean-over-runs metric.

    ``per_run_a`` [R_a, B], ``per_run_b`` [R_b, B]: each run's metric on resample b (one resample shared by both
    groups, so the image level is paired). Per replicate, each group's runs are resampled independently with
    replacement (:func:`seed_resample_means`) and the difference of the group means taken. Returns {"diffs" [B],
    "diff_ci", "p_value", "n_runs_a", "n_runs_b", "replicates"}; ``p_value`` as in :func:`compare_predictions`.
    """
    _check_level(level)
    a, b = np.asarray(per_run_a, dtype=np.float64), np.asarray(per_run_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"per-run replicates must be [runs, B] with the same B, got {a.shape} and {b.shape}")
    rng = np.random.default_rng(seed)
    diffs = seed_resample_means(a, rng) - seed_resample_means(b, rng)
    return {"diffs": diffs, "diff_ci": percentile_ci(diffs, level), "p_value": bootstrap_p(diffs),
            "n_runs_a": a.shape[0], "n_runs_b": b.shape[0], "replicates": a.shape[1]}


def compare_run_groups(y_true, runs_a, runs_b, task: str, *, replicates: int = 1000, seed: int = 0,
                       level: float = 0.95, threshold: float = 0.5, min_runs: int = MIN_SEEDS) -> dict:
    """Two groups of runs (e.g. one architecture's seeds against another's), all scored on the same samples:
    A - B of the mean-over-runs ``auc`` and ``acc`` with seed variance included.

    ``runs_a`` / ``runs_b``: sequences of score arrays. Two-level bootstrap (:func:`two_level_difference`): every
    replicate resamples the samples once (shared by every run of both groups) and each group's runs with
    replacement. Each metric gets {"value_a", "value_b" (means over runs), "diff", "diff_ci", "p_value",
    "image_only_ci", "image_only_p" (the paired bootstrap over samples alone, for contrast)}; ``diff_ci`` and
    ``p_value`` are None when a group has fewer than ``min_runs`` runs (``too_few`` says so): with two seeds the
    seed spread cannot be told from the effect.
    """
    _check_level(level)
    if not len(runs_a) or not len(runs_b):
        raise ValueError("each group needs at least one run")
    y = _as_arrays(y_true, runs_a[0])[0]
    counts = resample_counts(len(y), replicates, seed)
    reps = [[bootstrap_replicates(y, _as_arrays(y_true, sc)[1], task, counts=counts, threshold=threshold,
                                  metrics=("auc", "acc")) for sc in group] for group in (runs_a, runs_b)]
    too_few = min(len(runs_a), len(runs_b)) < min_runs
    out: dict = {"n_runs_a": len(runs_a), "n_runs_b": len(runs_b), "replicates": replicates,
                 "too_few": too_few_text(len(runs_a), len(runs_b), min_runs) if too_few else None}
    for name in ("auc", "acc"):
        per = [np.stack([r[name] for r in group]) for group in reps]
        vals = [[auc(y, sc, task) if name == "auc" else acc(y, sc, task, threshold) for sc in g]
                for g in (runs_a, runs_b)]
        means = [None if any(v is None for v in g) else float(np.mean(g)) for g in vals]
        two = two_level_difference(per[0], per[1], seed=seed, level=level)
        image = per[0].mean(axis=0) - per[1].mean(axis=0)
        out[name] = {"value_a": means[0], "value_b": means[1],
                     "diff": None if None in means else means[0] - means[1],
                     "diff_ci": None if too_few else two["diff_ci"], "p_value": None if too_few else two["p_value"],
                     "image_only_ci": percentile_ci(image, level), "image_only_p": bootstrap_p(image)}
    return out


def too_few_text(n_a: int, n_b: int, min_runs: int = MIN_SEEDS) -> str:
    """Why no p-value: the seeds per arm, in words."""
    n = f"{n_a}" if n_a == n_b else f"{n_a} vs {n_b}"
    return f"{n} seeds per arm: too few to separate seed noise from the effect (need {min_runs}+)"
