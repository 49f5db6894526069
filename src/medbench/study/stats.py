"""Statistics of the study report: mean ± std over seeds, bootstrap CIs and p-values from replicates computed on
shared test resamples (arm comparisons by a two-level bootstrap over seeds and test images), Spearman's rho over
architectures and Wilcoxon signed-rank tests across datasets. Pure functions of numbers."""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy.stats import spearmanr, wilcoxon

from medbench import metrics
from medbench.metrics.comparison import MIN_SEEDS, too_few_text, two_level_difference

LEVEL = 0.95


def finite(v: Any) -> bool:
    """A real number that is not NaN or infinite (bools are not numbers here)."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def mean_std(values: Iterable[Any]) -> dict:
    """{"n", "mean", "std"} of the finite values: the sample standard deviation (``ddof=1``), None below 2 values."""
    vals = [float(v) for v in values if finite(v)]
    n = len(vals)
    if not n:
        return {"n": 0, "mean": None, "std": None}
    return {"n": n, "mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)) if n > 1 else None}


def percentile_ci(replicates: np.ndarray | None, level: float = LEVEL) -> list[float] | None:
    """:func:`medbench.metrics.percentile_ci`, None for a missing replicate set."""
    return None if replicates is None else metrics.percentile_ci(replicates, level)


def bootstrap_p(diffs: np.ndarray | None) -> float | None:
    """:func:`medbench.metrics.bootstrap_p` (as in ``compare_predictions``), None for missing replicates."""
    return None if diffs is None else metrics.bootstrap_p(diffs)


def mean_replicates(per_run: Sequence[np.ndarray]) -> np.ndarray | None:
    """Per replicate, the mean over runs ([runs, B] -> [B]); None without runs."""
    if not per_run:
        return None
    return np.mean(np.stack([np.asarray(r, dtype=np.float64) for r in per_run]), axis=0)


def paired_difference(reps_a: np.ndarray | None, reps_b: np.ndarray | None, level: float = LEVEL) -> dict:
    """CI and p of A - B from replicates computed on the same resamples."""
    if reps_a is None or reps_b is None:
        return {"ci": None, "p": None}
    d = np.asarray(reps_a, dtype=np.float64) - np.asarray(reps_b, dtype=np.float64)
    return {"ci": percentile_ci(d, level), "p": bootstrap_p(d)}


def arm_difference(runs_a: np.ndarray | None, runs_b: np.ndarray | None, *, n_images: int | None = None,
                   seed: int = 0, level: float = LEVEL) -> dict:
    """A - B of two arms' mean-over-seeds metric by the two-level bootstrap: each replicate resamples the seeds
    of each arm with replacement and the test images (one resample shared by both arms, which score the same
    images); :func:`medbench.metrics.comparison.two_level_difference`.

    ``runs_a`` / ``runs_b``: [seeds, B] per-run replicates on the shared test resamples (None without any).
    Returns {"ci", "p", "n_seeds_a", "n_seeds_b", "caveat" (what was resampled, to print beside p), "too_few"
    (instead of a CI and p when an arm has fewer than 3 seeds), "test_images_only" (the CI and p of the paired
    bootstrap over test images alone, which ignores seed noise: kept for contrast, not shown as the result)}.
    """
    na = 0 if runs_a is None else len(runs_a)
    nb = 0 if runs_b is None else len(runs_b)
    out = {"ci": None, "p": None, "n_seeds_a": na, "n_seeds_b": nb, "caveat": None, "too_few": None,
           "test_images_only": None}
    if not na or not nb:
        return out
    image = np.mean(runs_a, axis=0) - np.mean(runs_b, axis=0)
    out["test_images_only"] = {"ci": percentile_ci(image, level), "p": bootstrap_p(image)}
    if min(na, nb) < MIN_SEEDS:
        out["too_few"] = too_few_text(na, nb)
        return out
    two = two_level_difference(runs_a, runs_b, seed=seed, level=level)
    images = f"{n_images} test images" if n_images else "the test images"
    out.update(ci=two["diff_ci"], p=two["p_value"],
               caveat=f"two-level bootstrap: seeds resampled within each arm ({na} vs {nb}) and {images} "
                      f"(shared by both arms), {two['replicates']} replicates; approximate with few seeds")
    return out


def min_wilcoxon_p(n: int) -> float:
    """The smallest exact two-sided Wilcoxon signed-rank p with ``n`` non-zero, untied differences: 2 / 2**n."""
    return min(1.0, 2.0 / 2 ** n) if n > 0 else 1.0


def spearman(x: Sequence[Any], y: Sequence[Any]) -> dict:
    """Spearman's rho and its p-value (:func:`scipy.stats.spearmanr`) over the pairs where both are finite.

    {"n", "rho", "p", "note"}: rho and p are None with fewer than 3 pairs or a constant side.
    """
    pairs = [(float(a), float(b)) for a, b in zip(x, y) if finite(a) and finite(b)]
    n = len(pairs)
    if n < 3:
        return {"n": n, "rho": None, "p": None, "note": f"needs at least 3 architectures with values (has {n})"}
    xs, ys = zip(*pairs)
    if len(set(xs)) < 2 or len(set(ys)) < 2:
        return {"n": n, "rho": None, "p": None, "note": "one side is constant"}
    res = spearmanr(xs, ys)
    note = "p from scipy's t approximation; rough for fewer than 10 architectures" if n < 10 else None
    return {"n": n, "rho": float(res.statistic), "p": float(res.pvalue), "note": note}


def wilcoxon_pairs(table: dict[str, dict[str, float]], min_datasets: int = 2) -> list[dict]:
    """Wilcoxon signed-rank tests (:func:`scipy.stats.wilcoxon`, two-sided) of every pair of arms over the
    datasets both ran on. ``table``: arm -> {dataset: mean test AUC}. Pairs with fewer than ``min_datasets``
    shared datasets are left out. Each result says the smallest p its n could reach."""
    names = list(table)
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            common = [d for d in table[a] if d in table[b] and finite(table[a][d]) and finite(table[b][d])]
            if len(common) >= min_datasets:
                out.append(_wilcoxon_pair(a, b, table, common))
    return out


def _wilcoxon_pair(a: str, b: str, table: dict[str, dict[str, float]], common: list[str]) -> dict:
    va = np.array([table[a][d] for d in common], dtype=np.float64)
    vb = np.array([table[b][d] for d in common], dtype=np.float64)
    diff = va - vb
    n = len(common)
    stat = p = None
    note = None
    if np.all(diff == 0):
        note = "identical AUC on every dataset"
    else:
        try:
            res = wilcoxon(va, vb)
            stat, p = float(res.statistic), float(res.pvalue)
        except ValueError as e:
            note = str(e)
    floor = min_wilcoxon_p(n)
    return {"a": a, "b": b, "datasets": common, "n": n, "a_wins": int(np.sum(diff > 0)),
            "b_wins": int(np.sum(diff < 0)), "median_diff": float(np.median(diff)),
            "statistic": stat, "p": p, "min_p": floor, "can_reach_005": floor < 0.05,
            "too_few": None if floor < 0.05 else
            f"n = {n} datasets: the exact two-sided p cannot go below {floor:.4g} (2/2^n), so p < 0.05 "
            f"is impossible whatever the data", "note": note}
