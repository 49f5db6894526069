"""Metrics of a split's predictions, their bootstrap confidence intervals, and paired comparisons of two models.

``acc`` and ``auc`` follow ``medmnist.evaluator.getACC/getAUC`` exactly:

- binary: the last score column, threshold 0.5;
- multi-label: mean over labels of per-label AUC / accuracy at 0.5;
- multi-class and ordinal: one-vs-rest macro AUC, argmax accuracy.

Every other metric of :func:`compute_metrics` comes from *weighted sufficient statistics*: confusion counts,
per-calibration-bin sums and summed losses, each a row vector over the samples times a weight per sample.
A point estimate weights every sample once; a bootstrap replicate weights each sample by how often the resample
drew it, so one matrix product with the [n, replicates] count matrix of :func:`resample_counts` gives every
replicate's statistics at once (:func:`bootstrap_replicates`), and replicate ``b`` is the same resample for every
metric.

A metric that is undefined (an AUC with a class or label absent from the split, a sensitivity without positives)
is ``None`` with a warning, never NaN and never a crash: every result is plain JSON.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
from scipy import sparse
from scipy.stats import norm, rankdata
from threadpoolctl import ThreadpoolController

from medbench.errors import InvalidScoresError

TASK_NAMES = ("binary", "multiclass", "multilabel", "ordinal")
ECE_BINS = 15
LOG_LOSS_EPS = 1e-15  # probabilities are clipped to [LOG_LOSS_EPS, 1] before the log
_ECE_INNER_EDGES = np.linspace(0.0, 1.0, ECE_BINS + 1)[1:-1]
SHOWN_NAMES = 5  # classes named in an aggregated warning; the rest are counted


class UndefinedMetricWarning(UserWarning):
    """A metric reported as null (None) because the split cannot define it; the CLI prints these once when quiet."""


def _undefined(message: str, stacklevel: int = 2) -> None:
    warnings.warn(message, UndefinedMetricWarning, stacklevel=stacklevel + 1)


def check_finite(scores: np.ndarray, what: str = "scores") -> None:
    """NaN or infinite scores make every metric meaningless (a NaN compares False, so it would silently count as a
    negative): :class:`InvalidScoresError` (a ``ValueError``) naming how many and where the first one is."""
    finite = np.isfinite(scores)
    if finite.all():
        return
    bad = np.argwhere(~finite)[0]
    first = scores[tuple(bad)]
    n_nan, n_inf = int(np.isnan(scores).sum()), int(np.isinf(scores).sum())
    kinds = " and ".join(k for k in (f"{n_nan} NaN" if n_nan else "", f"{n_inf} infinite" if n_inf else "") if k)
    where = f"row {bad[0]}" + (f", column {bad[1]}" if len(bad) > 1 else "")
    raise InvalidScoresError(f"{what} hold {kinds} value(s) (the first, {first}, at {where}); metrics need finite "
                             f"probabilities: a model whose training diverged gives NaN, so retrain it (e.g. with a "
                             f"lower --lr) or fix the predictions file")


def _as_arrays(y_true, scores):
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if s.ndim == 1:
        s = s[:, None]
    if y.shape[0] != s.shape[0]:
        raise ValueError(f"{y.shape[0]} labels but {s.shape[0]} score rows")
    check_finite(s)
    if y.size and y.dtype.kind not in "biu":
        yf = y.astype(np.float64)
        if not (np.isfinite(yf).all() and (yf == np.round(yf)).all()):
            raise ValueError("labels must be whole numbers (class indices, or 0/1/-1 per label); found "
                             f"{yf[~(np.isfinite(yf) & (yf == np.round(yf)))][0]}")
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


def _binary_auc(y, s) -> float | None:
    """The AUC of one class (label) against the rest; None when the split holds only one of the two values."""
    return float(rank_auc(y, s)[0]) if np.unique(y).size == 2 else None


def _warn_undefined_auc(kind: str, undefined: list[int], total: int) -> None:
    """One warning for all the classes (labels) whose AUC is undefined: hundreds of classes, one line."""
    if not undefined:
        return
    shown = ", ".join(map(str, undefined[:SHOWN_NAMES])) + (", ..." if len(undefined) > SHOWN_NAMES else "")
    what = f"{kind} {shown}" if total == 1 or len(undefined) == 1 else \
        f"{len(undefined)} of {total} {'classes' if kind == 'class' else 'labels'} ({shown})"
    _undefined(f"AUC undefined for {what}: only one class present; reported as null", stacklevel=3)


def auc(y_true, scores, task: str) -> float | None:
    y, s = _as_arrays(y_true, scores)
    if task == "binary":
        value = _binary_auc(y[:, 0], s[:, -1])
        if value is None:
            _undefined("AUC undefined for the positive class: only one class present; reported as null")
        return value
    if task == "multilabel":  # -1 entries (unknown, --uncertain u-ignore) are left out of their label's AUC
        per = [_binary_auc(y[y[:, i] >= 0, i], s[y[:, i] >= 0, i]) for i in range(s.shape[1])]
    else:
        per = [_binary_auc((y[:, 0] == i).astype(float), s[:, i]) for i in range(s.shape[1])]
    _warn_undefined_auc("label" if task == "multilabel" else "class", [i for i, a in enumerate(per) if a is None],
                        len(per))
    return None if any(a is None for a in per) else sum(per) / s.shape[1]


def acc(y_true, scores, task: str, threshold: float = 0.5) -> float | None:
    """MedMNIST's accuracy; ``None`` with a warning when undefined (no samples; multi-label: a label without any
    known entry)."""
    y, s = _as_arrays(y_true, scores)
    if not len(y):
        _undefined("accuracy undefined: no samples; reported as null", stacklevel=2)
        return None
    if task == "binary":
        return float(np.mean(y[:, 0] == (s[:, -1] > threshold)))
    if task == "multilabel":  # per label over its known (>= 0) entries, then the mean over labels
        known, hit = y >= 0, y == (s > threshold)
        counts = known.sum(0)
        if not counts.all():
            empty = np.flatnonzero(counts == 0).tolist()
            shown = empty[:SHOWN_NAMES] + (["..."] if len(empty) > SHOWN_NAMES else [])
            _undefined(f"accuracy undefined: {len(empty)} label(s) {shown} have no known (0/1) entry; reported as "
                       f"null", stacklevel=2)
            return None
        return float(np.mean((hit & known).sum(0) / counts))
    return float(np.mean(y[:, 0] == s.argmax(axis=1)))


# ---- per-sample quantities and their weighted sufficient statistics ----

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


def _check_task(task: str) -> None:
    if task not in TASK_NAMES:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASK_NAMES)}")


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
        true, pred = y == 1, (s > threshold) & known
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
        pred = (p1 > threshold).astype(np.int64)
        conf = np.where(pred == 1, p1, 1.0 - p1)
        p_true = np.where(true == 1, p1, 1.0 - p1)
    else:
        rows = np.arange(n)
        pred = s.argmax(axis=1)
        conf, p_true = s[rows, pred], s[rows, true]
    loss = -np.log(np.clip(p_true, LOG_LOSS_EPS, 1.0))
    return _Samples(task, n, k, true, pred, conf, pred == true, loss)


def _ece_bin(conf: np.ndarray) -> np.ndarray:
    """Bin b of 15 equal-width bins holds b/15 < conf <= (b+1)/15 (bin 0 also holds 0)."""
    return np.searchsorted(_ECE_INNER_EDGES, conf, side="left")


def _stat_rows(d: _Samples) -> tuple[np.ndarray, np.ndarray]:
    """Row vectors over the samples whose weighted sums are the sufficient statistics.

    Integer rows (0/1 indicators): confusion cells (single-label, row ``true * k + pred``) or per-label TP,
    predicted-positive, positive and known indicators (multi-label; unknown entries count nowhere). Real rows: 15 ECE bins holding
    ``correct - confidence`` of the samples in the bin, then the per-sample log loss (summed over labels).
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
    chunk = chunk or max(1, min(256, AUC_BLOCK // max(n, 1)))
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


def _div0(a, b):
    """a / b, and 0 where b == 0 (scikit-learn's zero_division=0)."""
    a = np.asarray(a, dtype=np.float64)
    return np.divide(a, b, out=np.zeros(np.broadcast_shapes(a.shape, np.shape(b))), where=np.asarray(b) > 0)


def _nandiv(a, b):
    """a / b, and NaN (undefined) where b == 0."""
    a = np.asarray(a, dtype=np.float64)
    return np.divide(a, b, out=np.full(np.broadcast_shapes(a.shape, np.shape(b)), np.nan), where=np.asarray(b) > 0)


def _per_class(task: str, st: dict) -> dict:
    """Per class (per label) precision, recall, F1 and support, each [k, B]; zero division gives 0."""
    if task == "multilabel":
        tp, pred_sum, true_sum = st["tp"], st["pp"], st["pos"]
    else:
        cm = st["cm"]
        tp = np.diagonal(cm, axis1=0, axis2=1).T
        true_sum, pred_sum = cm.sum(axis=1), cm.sum(axis=0)
    return {"precision": _div0(tp, pred_sum), "recall": _div0(tp, true_sum),
            "f1": _div0(2 * tp, true_sum + pred_sum), "support": true_sum, "tp": tp, "pred_sum": pred_sum}


def scalar_names(task: str) -> list[str]:
    """The scalar metrics of :func:`compute_metrics` for a task (besides ``n`` and ``threshold``), in order;
    :func:`bootstrap_metrics` gives a ``<name>_ci`` for each."""
    _check_task(task)
    names = ["acc", "auc", "balanced_acc", "precision_macro", "recall_macro", "f1_macro", "f1_weighted", "ece",
             "log_loss"]
    if task == "binary":
        names += ["sensitivity", "specificity"]
    if task == "ordinal":
        names += ["kappa_quadratic", "mae"]
    return names


def _scalars(task: str, st: dict) -> dict[str, np.ndarray]:
    """Every scalar metric except ``auc`` from the sufficient statistics: {name: [B]}, NaN where undefined."""
    pc = _per_class(task, st)
    total = st["total"]
    k = pc["tp"].shape[0]
    # calibration and log loss run over every known (sample, label) entry
    items = st["known"].sum(axis=0) if task == "multilabel" else total
    out = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        if task == "multilabel":
            tp, pos, pp, known = pc["tp"], pc["support"], pc["pred_sum"], st["known"]
            neg, tn = known - pos, known - pos - pp + tp
            out["acc"] = _nandiv(tp + tn, known).mean(axis=0)
            # per label, scikit-learn's balanced accuracy: the mean recall of the values (0, 1) present
            has1, has0 = pos > 0, neg > 0
            out["balanced_acc"] = _nandiv(pc["recall"] * has1 + _div0(tn, neg) * has0, has1 * 1.0 + has0).mean(0)
            out["precision_macro"] = pc["precision"].mean(axis=0)
            out["recall_macro"] = pc["recall"].mean(axis=0)
            out["f1_macro"] = pc["f1"].mean(axis=0)
            weight = pos.sum(axis=0)  # all-zero weights: scikit-learn falls back to the plain mean (of zeros)
            out["f1_weighted"] = np.where(weight > 0, _div0((pc["f1"] * pos).sum(0), weight), pc["f1"].mean(0))
        else:
            tp, true_sum, pred_sum = pc["tp"], pc["support"], pc["pred_sum"]
            out["acc"] = _nandiv(tp.sum(axis=0), total)
            has = true_sum > 0  # classes present in y_true
            out["balanced_acc"] = _nandiv((pc["recall"] * has).sum(0), has.sum(0))
            seen = (true_sum + pred_sum) > 0  # scikit-learn's macro average: classes in y_true or y_pred
            for name in ("precision", "recall", "f1"):
                out[f"{name}_macro"] = _nandiv((pc[name] * seen).sum(0), seen.sum(0))
            out["f1_weighted"] = _nandiv((pc["f1"] * true_sum).sum(0), true_sum.sum(0))
        out["ece"] = _nandiv(np.abs(st["ece"]).sum(axis=0), items)
        out["log_loss"] = _nandiv(st["loss"], items)
        if task == "binary":
            out["sensitivity"] = _nandiv(tp[1], true_sum[1])
            out["specificity"] = _nandiv(tp[0], true_sum[0])
        if task == "ordinal":
            cm = st["cm"]
            i = np.arange(k, dtype=np.float64)
            dist = np.abs(i[:, None] - i[None, :])
            observed = np.einsum("ij,ijb->b", dist ** 2, cm)
            expected = _nandiv(np.einsum("ij,ib,jb->b", dist ** 2, true_sum, pred_sum), total)
            out["kappa_quadratic"] = 1.0 - _nandiv(observed, expected)
            out["mae"] = _nandiv(np.einsum("ij,ijb->b", dist, cm), total)
    return out


_UNDEFINED_WHY = {
    "sensitivity": "no positive samples", "specificity": "no negative samples",
    "kappa_quadratic": "no variation to agree on (one class in both labels and predictions)",
}


def _json_float(value, name: str, stacklevel: int = 3) -> float | None:
    v = float(value)
    if math.isfinite(v):
        return v
    why = _UNDEFINED_WHY.get(name, "no samples, or non-finite scores")
    _undefined(f"{name} undefined: {why}; reported as null", stacklevel=stacklevel)
    return None


def compute_metrics(y_true, scores, task: str, *, threshold: float = 0.5, class_names=None) -> dict:
    """The per-split metric record (``loss`` is added by the engine, which has the logits).

    ``scores``: binary [N, 2] softmax (the positive class is the last column; [N] or [N, 1] is read as that
    column), multi-class and ordinal [N, K] class probabilities, multi-label [N, L] sigmoid per label.
    ``y_true``: [N, 1] class indices, or [N, L] 0/1 for multi-label tasks.

    Predictions: binary ``P(positive) > threshold``; multi-class and ordinal argmax; multi-label each label
    ``> threshold``. Keys (plain floats/ints/lists/dicts; an undefined value is ``None`` with a warning):

    - ``acc``, ``auc``: MedMNIST's definitions (module docstring); ``acc`` applies ``threshold``. ``n``.
    - ``balanced_acc``: mean recall over the classes present in ``y_true`` (scikit-learn's
      ``balanced_accuracy_score``); multi-label: that, per label over its values 0/1, averaged over labels.
    - ``precision_macro``, ``recall_macro``, ``f1_macro``, ``f1_weighted``: scikit-learn's
      ``precision_recall_fscore_support`` with ``zero_division=0``: a class never predicted has precision 0;
      single-label macro averages run over the classes present in ``y_true`` or in the predictions (its
      default ``labels``), multi-label ones over every label; ``f1_weighted`` weights by support.
    - ``per_class``: {class name, or ``str(index)`` without ``class_names``: {precision, recall, f1, support,
      auc}}, one-vs-rest AUC (binary: class 0 is scored by 1 - P(positive)); multi-label: one entry per label.
    - ``confusion_matrix``: rows true class, columns predicted; multi-label: per label ``[[tn, fp], [fn, tp]]``.
    - ``ece``: expected calibration error over 15 equal-width confidence bins ``(b/15, (b+1)/15]``:
      ``sum_b |B_b|/N * |acc(B_b) - conf(B_b)|``, the confidence being the probability of the predicted class
      (binary: of the class the threshold picks, ``P`` or ``1 - P``). Multi-label: every (sample, label)
      probability is one binary prediction (confidence ``p`` if predicted 1, else ``1 - p``), all N * L of
      them pooled into the same 15 bins.
    - ``log_loss``: mean ``-log p(true class)`` with ``p`` clipped to [1e-15, 1]; multi-label: the mean binary
      cross-entropy over all N * L entries (``p`` or ``1 - p``, clipped the same way).
    - multi-label labels of -1 (unknown: CheXpert's uncertain under ``--uncertain u-ignore``) are left out of
      every metric of their label (AUC, accuracy, counts, calibration, log loss); ``per_class[label]["n"]``
      is the number of known entries.
    - binary: ``sensitivity`` (recall of class 1), ``specificity`` (recall of class 0), ``threshold``.
    - multi-label: ``per_label_auc`` (list, ``None`` where undefined) and ``threshold``.
    - ordinal: ``kappa_quadratic`` (Cohen's kappa of the argmax with weights ``(i - j)^2`` on the class
      indices) and ``mae`` (mean absolute class-index error of the argmax).
    """
    d = _samples(y_true, scores, task, threshold)
    y, s = _as_arrays(y_true, scores)
    names = [str(i) for i in range(d.k)] if class_names is None else [str(c) for c in class_names]
    if len(names) != d.k:
        raise ValueError(f"{len(names)} class names for {d.k} {'labels' if task == 'multilabel' else 'classes'}")
    st = _stats(d, np.ones((d.n, 1), np.uint8))
    sc = {name: v[0] for name, v in _scalars(task, st).items()}
    out = {"acc": acc(y, s, task, threshold), "auc": auc(y, s, task),
           "n": d.n}
    for name in scalar_names(task)[2:]:
        out[name] = _json_float(sc[name], name)
    if task in ("binary", "multilabel"):
        out["threshold"] = float(threshold)
    # one-vs-rest AUC of every class (label); undefined ones were already reported by auc() above
    if task == "multilabel":
        cy, cs = y, s
    elif task == "binary":
        cy, cs = np.stack([d.true == 0, d.true == 1], 1), np.stack([1.0 - s[:, -1], s[:, -1]], 1)
    else:
        cy, cs = d.true[:, None] == np.arange(d.k), s
    if task == "multilabel" and not d.known.all():  # per label over its known rows
        raw = [rank_auc(y[d.known[:, i], i], s[d.known[:, i], i])[0] if d.known[:, i].any() else np.nan
               for i in range(d.k)]
    else:
        raw = rank_auc(cy, cs) if d.n else [np.nan] * d.k
    class_auc = [None if not math.isfinite(a) else float(a) for a in raw]
    pc = {key: v[:, 0] for key, v in _per_class(task, st).items()}
    out["per_class"] = {name: {"precision": float(pc["precision"][i]), "recall": float(pc["recall"][i]),
                               "f1": float(pc["f1"][i]), "support": int(round(pc["support"][i])), "auc": class_auc[i]}
                        for i, name in enumerate(names)}
    if task == "multilabel":
        out["per_label_auc"] = class_auc
        tp, pp, pos, n = (np.rint(st[key][:, 0]).astype(int) for key in ("tp", "pp", "pos", "known"))
        for j, name in enumerate(names):
            out["per_class"][name]["n"] = int(n[j])
        out["confusion_matrix"] = [[[int(n[j] - pp[j] - pos[j] + tp[j]), int(pp[j] - tp[j])],
                                    [int(pos[j] - tp[j]), int(tp[j])]] for j in range(d.k)]
    else:
        out["confusion_matrix"] = np.rint(st["cm"][:, :, 0]).astype(int).tolist()
    return out


def youden_threshold(y_true, scores) -> float | None:
    """The binary threshold on the positive-class score that maximises Youden's J = sensitivity + specificity - 1.

    ``scores``: [N, 2] (the last column is used) or [N]. The rule is the one ``acc`` uses: positive when
    ``score > threshold``. Only the cut points between observed scores give different predictions, so every
    cut is tried (exact integer arithmetic for J): between two consecutive distinct scores the midpoint is
    returned (or the lower score, should the midpoint round onto the upper one); calling everything positive
    returns the largest float below the lowest score, everything negative the highest score. Ties in J go to
    the lowest threshold (the highest sensitivity). ``None`` with a warning when one class is absent.
    """
    y, s = _as_arrays(y_true, scores)
    true, p1 = y[:, 0] == 1, s[:, -1]
    n_pos = int(true.sum())
    n_neg = len(true) - n_pos
    if not n_pos or not n_neg:
        _undefined("Youden threshold undefined: only one class present; reported as null", stacklevel=2)
        return None
    u = np.unique(p1)  # cut i (0..len(u)) calls the scores >= u[i] positive (none for i = len(u))
    tp = n_pos - np.searchsorted(np.sort(p1[true]), u, side="left")
    fp = n_neg - np.searchsorted(np.sort(p1[~true]), u, side="left")
    j = np.append(tp * np.int64(n_neg) - fp * np.int64(n_pos), 0)  # J * n_pos * n_neg, exactly
    i = int(np.argmax(j))
    if i == 0:
        return float(np.nextafter(u[0], -np.inf))
    if i == len(u):
        return float(u[-1])
    mid = u[i - 1] + (u[i] - u[i - 1]) / 2
    return float(mid if u[i - 1] <= mid < u[i] else u[i - 1])


# ---- bootstrap: all replicates at once ----

RESAMPLE_BLOCK = 2 ** 22  # indices drawn at once by resample_counts (32 MB of int64)
AUC_BLOCK = 2 ** 23  # samples x replicates handled at once by weighted_auc (bounds its float temporaries)


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


def _running_sum_rows(a: np.ndarray, block: int = 64) -> np.ndarray:
    """Inclusive running sum down the rows of a C-contiguous [rows, B] array, in place (exact for integers).

    ``np.cumsum(axis=0)`` walks each column with a stride of a whole row; here rows are added as whole vectors,
    ``block`` row-blocks at a time, then each block is shifted by the running total of the blocks before it.
    """
    rows = len(a)
    nb = rows // block
    if nb:
        v = a[:nb * block].reshape(nb, block, -1)
        for i in range(1, block):
            np.add(v[:, i - 1], v[:, i], out=v[:, i])
        if nb > 1:
            v[1:] += np.cumsum(v[:-1, -1], axis=0)[:, None, :]
    for i in range(max(nb * block, 1), rows):
        np.add(a[i - 1], a[i], out=a[i])
    return a


def weighted_auc(y, s, counts: np.ndarray) -> np.ndarray:
    """AUC of one binary column for every replicate, each sample weighted by its count: [replicates].

    Sort once. Each positive's score cuts the sorted negatives twice (below and above its ties), and the cuts
    split them into segments: per replicate, the segments' weights are one sparse 0/1 matrix times the count
    matrix, and their running sums give, for every positive, the weight of the negatives below it and up to
    it. AUC = sum over positives of ``w * (below + tied / 2)`` / (positive weight * negative weight), exactly
    Mann-Whitney's with ties counted one half. Integer counts with totals below 2**23 run in float32 (every
    value is then an integer float32 holds exactly); the final sum over positives is float64.
    """
    y = np.asarray(y).ravel()  # 1 positive, 0 negative; anything else (-1: unknown) is left out
    s = np.asarray(s, dtype=np.float64).ravel()
    counts = np.asarray(counts)
    neg, pos = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    if not len(neg) or not len(pos) or not counts.shape[1]:
        return np.full(counts.shape[1], np.nan)
    neg, pos = neg[np.argsort(s[neg], kind="stable")], pos[np.argsort(s[pos], kind="stable")]
    lo = np.searchsorted(s[neg], s[pos], "left")
    hi = np.searchsorted(s[neg], s[pos], "right")
    cuts, where = np.unique(np.concatenate([lo, hi]), return_inverse=True)
    # negative i (in sorted order) lies in segment g when cuts[g-1] <= i < cuts[g]; segment len(cuts) is the rest
    segment = np.searchsorted(cuts, np.arange(len(neg)), side="right")
    small = np.issubdtype(counts.dtype, np.integer) and int(counts.sum(0, dtype=np.int64).max()) < 2 ** 23
    dtype = np.float32 if small else np.float64
    onto = sparse.csr_matrix((np.ones(len(neg), dtype), (segment, np.arange(len(neg)))),
                             shape=(len(cuts) + 1, len(neg)))
    out = np.empty(counts.shape[1])
    block = max(1, AUC_BLOCK // max(len(y), 1))  # replicates at a time: temporaries stay ~AUC_BLOCK values each
    for j in range(0, counts.shape[1], block):
        c = counts[:, j:j + block]
        below_cut = _running_sum_rows(np.ascontiguousarray(onto @ c[neg].astype(dtype)))  # [cut g + 1, b]
        below, upto = below_cut[where[:len(pos)]], below_cut[where[len(pos):]]
        w_pos = c[pos]
        num = np.einsum("pb,pb->b", w_pos.astype(np.float64), (below + upto).astype(np.float64)) * 0.5
        total_pos = w_pos.sum(0, dtype=np.int64 if np.issubdtype(counts.dtype, np.integer) else np.float64)
        total_neg = below_cut[-1].astype(np.int64) if small else below_cut[-1]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[j:j + block] = num / (total_pos * total_neg.astype(np.float64))
    return out


def _columns(y, s, task):
    """(labels, scores) of the binary problems whose mean is the task's AUC."""
    if task == "binary":
        return [(y[:, 0], s[:, -1])]
    if task == "multilabel":
        return [(y[:, i], s[:, i]) for i in range(s.shape[1])]
    return [((y[:, 0] == i).astype(int), s[:, i]) for i in range(s.shape[1])]


def _auc_replicates(y, s, task, counts) -> np.ndarray:
    return np.mean([weighted_auc(yc, sc, counts) for yc, sc in _columns(y, s, task)], axis=0)


def bootstrap_replicates(y_true, scores, task: str, *, replicates: int = 1000, seed: int = 0,
                         threshold: float = 0.5, counts: np.ndarray | None = None,
                         metrics: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Every scalar metric of :func:`compute_metrics` on every resample: {name: float64 [replicates]}, NaN
    where a resample leaves it undefined.

    The resamples are ``counts`` ([n, B], how often each sample is drawn; default
    ``resample_counts(n, replicates, seed)``), the same ones for every metric. Nothing is resampled explicitly:
    confusion counts, calibration-bin sums and summed losses are indicator (or per-sample value) rows times
    ``counts``; AUCs come from :func:`weighted_auc`. ``metrics`` restricts the output to some of
    :func:`scalar_names`.
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
        sc = _scalars(task, _stats(d, counts))
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


def bootstrap_p(diffs) -> float | None:
    """Two-sided paired-bootstrap p of a difference: ``min(1, 2 min(P(d <= 0), P(d >= 0)))`` over the finite
    replicates (None if none)."""
    d = np.asarray(diffs, dtype=np.float64)
    d = d[np.isfinite(d)]
    return min(1.0, 2 * min(float(np.mean(d <= 0)), float(np.mean(d >= 0)))) if len(d) else None


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")


def bootstrap_metrics(y_true, scores, task: str, *, replicates: int = 1000, seed: int = 0, level: float = 0.95,
                      threshold: float = 0.5, metrics: Iterable[str] | None = None) -> dict:
    """Percentile bootstrap CIs of every scalar metric of :func:`compute_metrics`: {"<metric>_ci": [lo, hi]}.

    Resamples of the split with replacement (as CheXtransfer does for its test sets), all computed at once by
    :func:`bootstrap_replicates`; the interval is the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles
    (2.5 % and 97.5 % for 0.95, numpy's linear interpolation). Resamples where a metric is undefined (say a
    class drawn zero times for an AUC) are left out of its CI with a warning; ``None`` when all are.
    """
    return _bootstrap_cis(y_true, scores, task, replicates, seed, level, threshold, metrics)


def _bootstrap_cis(y_true, scores, task, replicates, seed, level, threshold, metrics, stacklevel=3) -> dict:
    _check_level(level)
    reps = bootstrap_replicates(y_true, scores, task, replicates=replicates, seed=seed, threshold=threshold,
                                metrics=metrics)
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


# ---- paired comparison of two models on the same split ----

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
