"""Bootstrap confidence intervals, all replicates at once: the resamples as a count matrix
(``resample_counts``), every scalar metric of every resample (``bootstrap_replicates``) and their percentile
intervals (``bootstrap_metrics``)."""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from medbench.metrics.classification import _scalars, scalar_names
from medbench.metrics.ranking import _auc_replicates
from medbench.metrics.sufficient import _samples, _stats
from medbench.metrics.validation import _as_arrays, _check_level, _undefined

RESAMPLE_BLOCK = 2 ** 22  # indices drawn at once by resample_counts (32 MB of int64)


def resample_counts(n: int, replicates: int, seed: int = 0) -> np.ndarray:
    """[n, replicates]: how often each sample is drawn in each resample with replacement.

    Replicate ``b`` is the resample ``torch.randint(0, n, (replicates, n), generator=seeded)[b]``; counts are
    uint8 when they fit (they always do in practice: a count of 256 needs n >= 256 and odds far below 1e-300),
    which keeps the memory traffic 4x lower than int32; otherwise int32.
    """
    def draw(dtype):
        # the index matrix is drawn a block of replicates at a time (the generator's stream is the same as one
        # call), so memory stays near the counts themselves: 8 bytes per index would be 1.1 GB for 140,000
        # samples x 1000 replicates
        g = torch.Generator().manual_seed(seed)
        counts = torch.zeros(n, replicates, dtype=dtype)  # filled in place: no transposed copy
        block = max(1, RESAMPLE_BLOCK // max(n, 1))
        for start in range(0, replicates, block):
            rows = min(block, replicates - start)
            idx = torch.randint(0, n, (rows, n), generator=g)
            counts[:, start:start + rows].scatter_add_(0, idx.T, torch.ones(1, dtype=dtype).expand(n, rows))
        return counts.numpy()

    out = draw(torch.uint8)
    if n >= 256 and not (out.sum(axis=0, dtype=np.int64) == n).all():  # a count wrapped past 255
        out = draw(torch.int32)
    return out


def bootstrap_replicates(y_true, scores, task: str, *, replicates: int = 1000, seed: int = 0,
                         threshold: float = 0.5, counts: np.ndarray | None = None,
                         metrics: Iterable[str] | None = None, positive: int | None = None) -> dict[str, np.ndarray]:
    """Every scalar metric of :func:`compute_metrics` on every resample: {name: float64 [replicates]}, NaN
    where a resample leaves it undefined.

    The resamples are ``counts`` ([n, B], how often each sample is drawn; default
    ``resample_counts(n, replicates, seed)``), the same ones for every metric. Nothing is resampled explicitly:
    confusion counts, calibration-bin sums and summed losses are indicator (or per-sample value) rows times
    ``counts``; AUCs come from :func:`weighted_auc`. ``metrics`` restricts the output to some of
    :func:`scalar_names`. ``positive`` (binary): the class whose recall is the sensitivity (default 1).
    """
    d = _samples(y_true, scores, task, threshold)
    if not d.n:
        raise ValueError("no samples to resample")
    if counts is None and replicates < 1:
        raise ValueError(f"replicates must be at least 1, got {replicates}")
    y, s = _as_arrays(y_true, scores)
    if counts is None:
        counts = resample_counts(d.n, replicates, seed)
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[0] != d.n or not counts.shape[1]:
        raise ValueError(f"counts must be [{d.n}, replicates >= 1], got {counts.shape}")
    names = scalar_names(task)
    wanted = names if metrics is None else list(metrics)
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        raise ValueError(f"unknown metrics for a {task} task: {unknown}; known: {names}")
    out = {}
    if set(wanted) - {"auc"}:
        sc = _scalars(task, _stats(d, counts), 1 if positive is None else positive)
        out = {name: sc[name] for name in wanted if name != "auc"}
    if "auc" in wanted:
        out["auc"] = _auc_replicates(y, s, task, counts)
    return {name: out[name] for name in wanted}


def _percentiles(values: np.ndarray, level: float) -> tuple[list[float] | None, np.ndarray]:
    valid = values[np.isfinite(values)]
    if not len(valid):
        return None, valid
    lo, hi = (100 - 100 * level) / 2, (100 + 100 * level) / 2  # 2.5 and 97.5 exactly for 0.95
    return [float(v) for v in np.percentile(valid, [lo, hi])], valid


def percentile_ci(values, level: float = 0.95) -> list[float] | None:
    """The ``(1 - level) / 2`` and ``(1 + level) / 2`` percentiles of the finite values (None if none)."""
    return _percentiles(np.asarray(values, dtype=np.float64), level)[0]


def bootstrap_metrics(y_true, scores, task: str, *, replicates: int = 1000, seed: int = 0, level: float = 0.95,
                      threshold: float = 0.5, metrics: Iterable[str] | None = None,
                      positive: int | None = None) -> dict:
    """Percentile bootstrap CIs of every scalar metric of :func:`compute_metrics`: {"<metric>_ci": [lo, hi]}.

    Resamples of the split with replacement (as CheXtransfer does for its test sets), all computed at once by
    :func:`bootstrap_replicates`; the interval is the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles
    (2.5 % and 97.5 % for 0.95, numpy's linear interpolation). Resamples where a metric is undefined (say a
    class drawn zero times for an AUC) are left out of its CI with a warning; ``None`` when all are.
    """
    return _bootstrap_cis(y_true, scores, task, replicates, seed, level, threshold, metrics, positive=positive)


def _bootstrap_cis(y_true, scores, task, replicates, seed, level, threshold, metrics, stacklevel=3,
                   positive: int | None = None) -> dict:
    _check_level(level)
    reps = bootstrap_replicates(y_true, scores, task, replicates=replicates, seed=seed, threshold=threshold,
                                metrics=metrics, positive=positive)
    out = {}
    for name, values in reps.items():
        out[f"{name}_ci"], valid = _percentiles(values, level)
        if len(valid) < len(values):
            label = "AUC" if name == "auc" else name
            _undefined(f"{label} undefined in {len(values) - len(valid)} of {len(values)} resamples (e.g. a "
                       f"class drawn zero times); {'its CI uses the rest' if len(valid) else 'no CI'}",
                       stacklevel=stacklevel)
    return out


def bootstrap(y_true, scores, task: str, replicates: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile CIs of ``acc`` and ``auc`` only (see :func:`bootstrap_metrics`): the same resamples and values."""
    return _bootstrap_cis(y_true, scores, task, replicates, seed, level, 0.5, ("acc", "auc"))



def seed_resample_means(per_run, rng: np.random.Generator) -> np.ndarray:
    """The second level of a two-level bootstrap: [B] means over runs (seeds) resampled with replacement.

    ``per_run`` [R, B]: each run's metric on each of B resamples of the samples that every run shares (the first
    level: :func:`resample_counts` columns). For replicate b, R runs are drawn with replacement (independently per
    replicate, from ``rng``) and their replicate-b values averaged. The drawn runs' deviations from the replicate's
    mean over all runs are scaled by ``sqrt(R / (R - 1))``: a plain resample of R values has variance of the mean
    ``(R - 1) / R * s^2 / R``, which for 3 seeds understates the seed noise by a third; scaled, it is ``s^2 / R``,
    the usual standard error (the rescaling of Rao & Wu's bootstrap). One run: the values themselves (no seed
    level to resample). NaN in a replicate where any run's value is NaN (left out of CIs downstream).
    """
    v = np.asarray(per_run, dtype=np.float64)
    if v.ndim != 2 or not v.shape[0] or not v.shape[1]:
        raise ValueError(f"per_run must be [runs >= 1, replicates >= 1], got {v.shape}")
    runs, reps = v.shape
    if runs == 1:
        return v[0].copy()
    draws = rng.integers(0, runs, size=(runs, reps))  # [R, B]: the runs drawn for each replicate
    mean = v.mean(axis=0)
    drawn = np.take_along_axis(v, draws, axis=0).mean(axis=0)
    return mean + np.sqrt(runs / (runs - 1)) * (drawn - mean)
