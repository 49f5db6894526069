"""Temperature scaling: one temperature ``T > 0`` fitted on validation scores, and the calibration record.

Scores are probabilities (averaged ensemble / TTA probabilities included), not logits, so the temperature acts
on their logarithms: single-label tasks ``softmax(log p / T)`` per row (``p`` clipped away from 0), binary
``sigmoid(logit(P(positive)) / T)`` (the same map for two columns, computed from the positive column alone so
the ranking, and the AUC, is unchanged exactly), multi-label ``sigmoid(logit(p) / T)`` per label with one ``T``
shared by every label. ``T`` minimises the negative log-likelihood of the validation labels; argmax decisions
and decisions at 0.5 (binary, multi-label) never change, since ``logit(0.5) = 0``.

The record's ECE is :func:`~medbench.metrics.compute_metrics`' ``ece`` (same bins, same sums) and its
reliability bins are the ones that ECE sums over.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_softmax, logit

from medbench.errors import MedbenchError
from medbench.fileio import read_json, write_json
from medbench.metrics.classification import _scalars
from medbench.metrics.sufficient import ECE_BINS, _ece_bin, _samples, _stats
from medbench.metrics.thresholds import youden_threshold
from medbench.metrics.validation import _as_arrays, _check_task

# log T is searched in [-LOG_T_BOUND, LOG_T_BOUND]: T from 0.018 to 55, far beyond any useful rescaling
LOG_T_BOUND = 4.0
# softmax tasks clip p to this before the log: float32's smallest normal number, below which a network's float32
# probability is an underflow (log -87.3); the exported graph clips at the same value
PROB_FLOOR = float(np.finfo(np.float32).tiny)
_FIT_CLIP = 1e-15  # the fit's likelihood clips p to [1e-15, 1 - 1e-15], as log_loss does


def _check_scores(scores, task: str) -> np.ndarray:
    _check_task(task)
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or (task != "binary" and s.shape[1] < 1):
        raise ValueError(f"{task} scores must be [N, K] probabilities, got shape {s.shape}")
    if s.size and (not np.isfinite(s).all() or s.min() < 0 or s.max() > 1):
        raise ValueError("scores must be probabilities in [0, 1] (finite)")
    return s


def apply_temperature(scores, task: str, temperature: float) -> np.ndarray:
    """Re-scaled probabilities (float64, same shape): see the module docstring. ``T = 1`` returns a copy."""
    s = _check_scores(scores, task)
    t = float(temperature)
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    if t == 1.0:
        return s.copy()
    with np.errstate(divide="ignore", over="ignore"):
        if task == "multilabel":
            return expit(logit(s) / t)  # 0 and 1 stay 0 and 1 (logit is -inf / inf there)
        if task == "binary":  # from P(positive) alone: a strictly increasing map of the column the AUC ranks
            p1 = expit(logit(s[:, -1]) / t)
            return np.stack([1.0 - p1, p1], axis=1) if s.shape[1] == 2 else p1[:, None]
        return np.exp(log_softmax(np.log(np.maximum(s, PROB_FLOOR)) / t, axis=1))


def _nll_fn(labels, scores, task: str):
    """Negative log-likelihood of ``labels`` as a function of ``log T`` (mean over the known entries)."""
    y, s = _as_arrays(labels, scores)
    if task == "multilabel":
        known = y >= 0
        z = logit(np.clip(s[known], _FIT_CLIP, 1 - _FIT_CLIP))
        sign = np.where(y[known] == 1, 1.0, -1.0)  # -log sigmoid(+-z / T)
        return lambda log_t: float(np.logaddexp(0.0, -sign * z / math.exp(log_t)).mean()), int(known.sum())
    true = y[:, 0].astype(np.int64)
    if task == "binary":
        z = logit(np.clip(s[:, -1], _FIT_CLIP, 1 - _FIT_CLIP))
        sign = np.where(true == 1, 1.0, -1.0)
        return lambda log_t: float(np.logaddexp(0.0, -sign * z / math.exp(log_t)).mean()), len(true)
    logp = np.log(np.clip(s, _FIT_CLIP, 1.0))
    rows = np.arange(len(true))
    return lambda log_t: float(-log_softmax(logp / math.exp(log_t), axis=1)[rows, true].mean()), len(true)


def fit_temperature(labels, scores, task: str) -> float:
    """The temperature minimising the NLL of ``labels`` under :func:`apply_temperature` (validation scores).

    A grid over ``log T`` in [-4, 4] finds the basin (the NLL is unimodal in ``1/T`` but a grid costs nothing
    and survives flat stretches), then a bounded Brent search refines it between the grid neighbours. Warns
    when ``T`` ends on the search bound (e.g. a validation split the model separates perfectly).
    """
    s = _check_scores(scores, task)
    nll, n = _nll_fn(labels, s, task)
    if n == 0:
        raise ValueError("no validation labels to fit a temperature on")
    grid = np.linspace(-LOG_T_BOUND, LOG_T_BOUND, 33)
    values = [nll(g) for g in grid]
    i = int(np.argmin(values))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    best = minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-6})
    log_t = float(best.x) if best.fun <= values[i] else float(grid[i])
    if abs(log_t) > LOG_T_BOUND - 1e-3:
        warnings.warn(f"temperature {math.exp(log_t):.4g} is at the search bound (log T = +-{LOG_T_BOUND}): the "
                      f"validation split gives no finite optimum (perfectly separated, or scores all alike)",
                      stacklevel=2)
    return math.exp(log_t)


def reliability(labels, scores, task: str, threshold: float = 0.5) -> dict:
    """ECE and its bins, exactly as :func:`~medbench.metrics.compute_metrics` computes ``ece``: per bin of
    :data:`ECE_BINS` equal-width confidence bins the count, mean confidence and accuracy (None when empty)."""
    d = _samples(labels, scores, task, threshold)
    st = _stats(d, np.ones((d.n, 1), np.uint8))
    ece = float(_scalars(task, st)["ece"][0])
    keep = d.known if task == "multilabel" else np.ones(d.n, bool)
    idx, conf, hit = _ece_bin(d.conf)[keep], d.conf[keep], d.correct[keep].astype(np.float64)
    count = np.bincount(idx, minlength=ECE_BINS)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, conf, ECE_BINS) / count
        mean_hit = np.bincount(idx, hit, ECE_BINS) / count
    opt = [None if c == 0 else float(v) for c, v in zip(count, mean_conf)]
    return {"ece": ece if math.isfinite(ece) else None, "count": count.astype(int).tolist(), "confidence": opt,
            "accuracy": [None if c == 0 else float(v) for c, v in zip(count, mean_hit)]}


def _thresholds(task: str, decision: str, val_labels, before, after) -> tuple[float, float]:
    """The binary decision threshold before and after (evaluation's rule: Youden on val, else 0.5)."""
    if task != "binary" or decision != "youden":
        return 0.5, 0.5
    with warnings.catch_warnings():  # an undefined threshold is reported by the evaluation itself
        warnings.simplefilter("ignore")
        t0, t1 = youden_threshold(val_labels, before), youden_threshold(val_labels, after)
    return (0.5 if t0 is None else t0), (0.5 if t1 is None else t1)


def calibrate_splits(task: str, scores: dict, labels: dict, *, decision: str = "0.5", fit_split: str = "val"
                     ) -> tuple[dict, dict]:
    """Fit ``T`` on ``scores[fit_split]`` and apply it to every split: ``(calibrated scores, record)``.

    ``decision``: the run's binary decision rule (``"0.5"`` or ``"youden"``, chosen on ``fit_split``) at which
    each split's ECE is computed before and after, so the "after" ECE equals the calibrated metrics' ``ece``.
    The record is what ``calibration.json`` holds: method, temperature, the fit split and its size, the NLL of
    the fit split before and after, and per split the ECE and reliability bins before and after.
    """
    if fit_split not in scores or fit_split not in labels:
        raise MedbenchError(f"temperature scaling is fitted on the '{fit_split}' split, which was not scored")
    t = fit_temperature(labels[fit_split], scores[fit_split], task)
    out = {s: apply_temperature(v, task, t) for s, v in scores.items()}
    nll, n = _nll_fn(labels[fit_split], scores[fit_split], task)
    th0, th1 = _thresholds(task, decision, labels[fit_split], scores[fit_split], out[fit_split])
    splits = {}
    for s in scores:
        if s not in labels:
            continue
        before, after = reliability(labels[s], scores[s], task, th0), reliability(labels[s], out[s], task, th1)
        splits[s] = {"ece_before": before.pop("ece"), "ece_after": after.pop("ece"),
                     "reliability": {"before": before, "after": after}}
        if task == "binary":
            splits[s]["threshold"] = {"before": th0, "after": th1}
    record = {"method": "temperature", "temperature": t, "fitted_on": fit_split, "n_fit": n,
              "nll_before": nll(0.0), "nll_after": nll(math.log(t)), "bins": ECE_BINS,
              "edges": np.linspace(0.0, 1.0, ECE_BINS + 1).tolist(), "splits": splits}
    return out, record


def calibration_summary(record: dict) -> dict:
    """The short form for metrics.json: temperature, fit split and ECE before/after per split (no bins)."""
    return {"method": record["method"], "temperature": record["temperature"], "fitted_on": record["fitted_on"],
            "ece": {s: {"before": r["ece_before"], "after": r["ece_after"]} for s, r in record["splits"].items()}}


def write_calibration(path, record: dict) -> None:
    """Write ``calibration.json`` atomically."""
    write_json(path, record)


def read_temperature(path) -> float | None:
    """The temperature recorded in ``calibration.json`` at ``path``; None when there is no such file. A damaged
    file, or one that is not a temperature record, is a :class:`MedbenchError` naming it."""
    if not Path(path).exists():
        return None
    fix = "delete it to use the uncalibrated probabilities, or retrain with --calibrate temperature"
    record = read_json(path, "calibration record", fix)
    t = record.get("temperature")
    if (record.get("method") != "temperature" or isinstance(t, bool) or not isinstance(t, (int, float))
            or not math.isfinite(t) or t <= 0):
        raise MedbenchError(f"{path}: not a temperature-scaling record (needs method 'temperature' and a "
                            f"temperature > 0); {fix}")
    return float(t)
