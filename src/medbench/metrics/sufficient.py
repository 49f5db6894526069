"""Per-sample quantities of a split and their *weighted sufficient statistics*.

Every metric of :func:`~medbench.metrics.compute_metrics` except the AUCs comes from confusion counts,
per-calibration-bin sums and summed losses, each a row vector over the samples times a weight per sample. A
point estimate weights every sample once; a bootstrap replicate weights each sample by how often the resample
drew it, so one matrix product with the [n, replicates] count matrix of
:func:`~medbench.metrics.resample_counts` gives every replicate's statistics at once, and replicate ``b`` is the
same resample for every metric.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from threadpoolctl import ThreadpoolController

from medbench.metrics import ranking
from medbench.metrics.validation import _as_arrays, _check_task
from medbench.tasks import decide

ECE_BINS = 15
LOG_LOSS_EPS = 1e-15  # probabilities are clipped to [LOG_LOSS_EPS, 1] before the log
_ECE_INNER_EDGES = np.linspace(0.0, 1.0, ECE_BINS + 1)[1:-1]


@dataclass
class _Samples:
    """What every metric needs from one split, per sample (per sample and label for multi-label tasks)."""

    task: str
    n: int
    k: int  # classes (2 for binary), or labels for multi-label tasks
    true: np.ndarray  # int [n] class index, or bool [n, L]
    pred: np.ndarray  # int [n] predicted class, or bool [n, L]
    conf: np.ndarray  # confidence of the predicted class (of the predicted 0/1 for each label)
    correct: np.ndarray  # bool: pred == true
    loss: np.ndarray  # -log of the probability given to the true class (true 0/1), clipped
    known: np.ndarray | None = None  # multi-label: bool [n, L], False where the label is -1 (unknown)


def _samples(y_true, scores, task: str, threshold: float) -> _Samples:
    _check_task(task)
    y, s = _as_arrays(y_true, scores)
    n = len(y)
    if task == "multilabel":
        if y.shape != s.shape:
            raise ValueError(f"multi-label labels have shape {y.shape} but scores {s.shape}")
        if n and not np.isin(y, (-1, 0, 1)).all():
            raise ValueError("multi-label labels must be 0, 1 or -1 (unknown, left out)")
        known = y >= 0
        true, pred = y == 1, decide(s, task, threshold).astype(bool) & known
        conf = np.where(pred, s, 1.0 - s)
        p_true = np.where(true, s, 1.0 - s)
        loss = -np.log(np.clip(p_true, LOG_LOSS_EPS, 1.0)) * known
        return _Samples(task, n, s.shape[1], true, pred, conf, pred == true, loss, known)
    if y.shape[1] != 1:
        raise ValueError(f"{task} labels must be one class index per sample, got shape {y.shape}")
    true = y[:, 0].astype(np.int64)
    k = 2 if task == "binary" else s.shape[1]
    if n and (true.min() < 0 or true.max() >= k):
        raise ValueError(f"class labels must lie in [0, {k - 1}], found [{true.min()}, {true.max()}]")
    if task == "binary":  # the positive-class column alone decides, as in acc/auc: P(class 0) = 1 - P(class 1)
        p1 = s[:, -1]
        pred = decide(s, task, threshold).astype(np.int64, copy=False)
        conf = np.where(pred == 1, p1, 1.0 - p1)
        p_true = np.where(true == 1, p1, 1.0 - p1)
    else:
        rows = np.arange(n)
        pred = decide(s, task)
        conf, p_true = s[rows, pred], s[rows, true]
    loss = -np.log(np.clip(p_true, LOG_LOSS_EPS, 1.0))
    return _Samples(task, n, k, true, pred, conf, pred == true, loss)


def _ece_bin(conf: np.ndarray) -> np.ndarray:
    """Bin b of 15 equal-width bins holds b/15 < conf <= (b+1)/15 (bin 0 also holds 0)."""
    return np.searchsorted(_ECE_INNER_EDGES, conf, side="left")


def _stat_rows(d: _Samples) -> tuple[np.ndarray, np.ndarray]:
    """Row vectors over the samples whose weighted sums are the sufficient statistics.

    Integer rows (0/1 indicators): confusion cells (single-label, row ``true * k + pred``) or per-label TP,
    predicted-positive, positive and known indicators (multi-label; unknown entries count nowhere). Real rows:
    15 ECE bins holding ``correct - confidence`` of the samples in the bin, then the per-sample log loss (summed
    over labels).
    """
    n, k, cols = d.n, d.k, np.arange(d.n)
    gap = d.correct - d.conf
    real = np.zeros((ECE_BINS + 1, n))
    if d.task == "multilabel":
        ints = np.concatenate([(d.true & d.pred).T, d.pred.T, d.true.T, d.known.T]).astype(np.float32)
        flat = (_ece_bin(d.conf) * n + cols[:, None]).ravel()
        real[:ECE_BINS] = np.bincount(flat, weights=(gap * d.known).ravel(),
                                      minlength=ECE_BINS * n).reshape(ECE_BINS, n)
        real[ECE_BINS] = d.loss.sum(axis=1)
    else:
        ints = np.zeros((k * k, n), np.float32)
        ints[d.true * k + d.pred, cols] = 1.0
        real[_ece_bin(d.conf), cols] = gap
        real[ECE_BINS] = d.loss
    return ints, real


_BLAS = []


def _one_blas_thread():
    """Products this thin gain little from BLAS threads, and spinning BLAS threads crawl on a shared machine
    (measured 20-50x slower with 2 threads while another process used one of 2 cores)."""
    if not _BLAS:  # scanning the loaded libraries costs about a millisecond: once per process
        _BLAS.append(ThreadpoolController())
    return _BLAS[0].limit(limits=1, user_api="blas")


def _weighted_sums(ints: np.ndarray, real: np.ndarray, counts: np.ndarray, chunk: int | None = None):
    """``ints @ counts``, ``real @ counts`` (float64 [rows, B]) and the total weight per column.

    Integer weights whose column totals stay below 2**24 use a float32 product for the 0/1 rows: every partial
    sum is then an integer that float32 holds exactly. The real rows always use float64. Columns are taken
    ``chunk`` at a time (default: 256, fewer for large splits), so the float copies of the (usually uint8) count
    matrix stay small.
    """
    n, reps = counts.shape
    chunk = chunk or max(1, min(256, ranking.AUC_BLOCK // max(n, 1)))
    if ints.shape[1] != n:
        raise ValueError(f"{ints.shape[1]} samples but a weight matrix for {n}")
    total = counts.sum(axis=0, dtype=np.int64 if np.issubdtype(counts.dtype, np.integer) else np.float64)
    exact32 = np.issubdtype(counts.dtype, np.integer) and (not reps or int(total.max()) < 2 ** 24)
    idtype = np.float32 if exact32 else np.float64
    ints = ints.astype(idtype, copy=False)
    out_i, out_r = np.empty((ints.shape[0], reps)), np.empty((real.shape[0], reps))
    with _one_blas_thread():
        for j in range(0, reps, chunk):
            c = counts[:, j:j + chunk]
            ci = c.astype(idtype)
            out_i[:, j:j + chunk] = ints @ ci
            out_r[:, j:j + chunk] = real @ (ci if idtype is np.float64 else c.astype(np.float64))
    return out_i, out_r, total.astype(np.float64)


def _stats(d: _Samples, counts: np.ndarray) -> dict:
    ints, real, total = _weighted_sums(*_stat_rows(d), counts)
    st = {"total": total, "ece": real[:ECE_BINS], "loss": real[ECE_BINS]}
    if d.task == "multilabel":
        k = d.k
        st.update(tp=ints[:k], pp=ints[k:2 * k], pos=ints[2 * k:3 * k], known=ints[3 * k:])
    else:
        st["cm"] = ints.reshape(d.k, d.k, -1)  # [true, pred, replicate]
    return st

