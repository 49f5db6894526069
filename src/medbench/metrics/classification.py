"""Thresholded and calibration metrics of one split: MedMNIST's accuracy, the per-class and scalar metrics
computed from the sufficient statistics (``scalar_names``), and the per-split record ``compute_metrics``.

``acc`` and ``auc`` follow ``medmnist.evaluator.getACC/getAUC`` exactly:

- binary: the last score column, threshold 0.5;
- multi-label: mean over labels of per-label AUC / accuracy at 0.5;
- multi-class and ordinal: one-vs-rest macro AUC, argmax accuracy.

Labels are decided by :func:`medbench.tasks.decide`, the one decision rule of the package.
"""
from __future__ import annotations

import math

import numpy as np

from medbench.metrics.ranking import auc, rank_auc
from medbench.metrics.sufficient import _Samples, _samples, _stats
from medbench.metrics.validation import SHOWN_NAMES, _as_arrays, _check_task, _undefined
from medbench.tasks import decide


def acc(y_true, scores, task: str, threshold: float = 0.5) -> float | None:
    """MedMNIST's accuracy; ``None`` with a warning when undefined (no samples; multi-label: a label without any
    known entry)."""
    _check_task(task)
    y, s = _as_arrays(y_true, scores)
    if not len(y):
        _undefined("accuracy undefined: no samples; reported as null", stacklevel=2)
        return None
    pred = decide(s, task, threshold)
    if task == "multilabel":  # per label over its known (>= 0) entries, then the mean over labels
        known, hit = y >= 0, y == pred
        counts = known.sum(0)
        if not counts.all():
            empty = np.flatnonzero(counts == 0).tolist()
            shown = empty[:SHOWN_NAMES] + (["..."] if len(empty) > SHOWN_NAMES else [])
            _undefined(f"accuracy undefined: {len(empty)} label(s) {shown} have no known (0/1) entry; reported as "
                       f"null", stacklevel=2)
            return None
        return float(np.mean((hit & known).sum(0) / counts))
    return float(np.mean(y[:, 0] == pred))


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


def _scalars(task: str, st: dict, positive: int = 1) -> dict[str, np.ndarray]:
    """Every scalar metric except ``auc`` from the sufficient statistics: {name: [B]}, NaN where undefined.
    ``positive`` (binary): the class whose recall is the sensitivity; the other one's is the specificity."""
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
            out["sensitivity"] = _nandiv(tp[positive], true_sum[positive])
            out["specificity"] = _nandiv(tp[1 - positive], true_sum[1 - positive])
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


def _class_aucs(d: _Samples, y: np.ndarray, s: np.ndarray) -> list[float | None]:
    """One-vs-rest AUC of every class (label), None where undefined; binary: class 0 is scored by 1 - P(1)."""
    if d.task == "multilabel":
        cy, cs = y, s
    elif d.task == "binary":
        cy, cs = np.stack([d.true == 0, d.true == 1], 1), np.stack([1.0 - s[:, -1], s[:, -1]], 1)
    else:
        cy, cs = d.true[:, None] == np.arange(d.k), s
    if d.task == "multilabel" and not d.known.all():  # per label over its known rows
        raw = [rank_auc(y[d.known[:, i], i], s[d.known[:, i], i])[0] if d.known[:, i].any() else np.nan
               for i in range(d.k)]
    else:
        raw = rank_auc(cy, cs) if d.n else [np.nan] * d.k
    return [None if not math.isfinite(a) else float(a) for a in raw]


def check_positive(task: str, positive: int) -> int:
    """``positive`` as a binary class index (0 or 1); other tasks have no positive class (``ValueError``)."""
    if task != "binary":
        raise ValueError(f"a positive class applies to binary tasks only, not {task}")
    if isinstance(positive, bool) or int(positive) != positive or positive not in (0, 1):
        raise ValueError(f"positive must be the index of a class (0 or 1), got {positive!r}")
    return int(positive)


def compute_metrics(y_true, scores, task: str, *, threshold: float = 0.5, class_names=None,
                    positive: int | None = None) -> dict:
    """The per-split metric record (``loss`` is added by the engine, which has the logits).

    ``scores``: binary [N, 2] softmax (the decision reads the last column, P(class 1); [N] or [N, 1] is read as
    that column), multi-class and ordinal [N, K] class probabilities, multi-label [N, L] sigmoid per label.
    ``y_true``: [N, 1] class indices, or [N, L] 0/1 for multi-label tasks.

    Predictions: binary ``P(class 1) > threshold``; multi-class and ordinal argmax; multi-label each label
    ``> threshold``. Keys (plain floats/ints/lists/dicts; an undefined value is ``None`` with a warning):

    - ``acc``, ``auc``: MedMNIST's definitions (module docstring); ``acc`` applies ``threshold``. ``n``.
    - ``balanced_acc``: mean recall over the classes present in ``y_true`` (scikit-learn's
      ``balanced_accuracy_score``); multi-label: that, per label over its values 0/1, averaged over labels.
    - ``precision_macro``, ``recall_macro``, ``f1_macro``, ``f1_weighted``: scikit-learn's
      ``precision_recall_fscore_support`` with ``zero_division=0``: a class never predicted has precision 0;
      single-label macro averages run over the classes present in ``y_true`` or in the predictions (its
      default ``labels``), multi-label ones over every label; ``f1_weighted`` weights by support.
    - ``per_class``: {class name, or ``str(index)`` without ``class_names``: {precision, recall, f1, support,
      auc}}, one-vs-rest AUC (binary: class 0 is scored by 1 - P(class 1)); multi-label: one entry per label.
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
    - binary: ``sensitivity`` (recall of the ``positive`` class, a class index; default 1, MedMNIST's last
      column), ``specificity`` (recall of the other class), ``class_of`` (``{"sensitivity": positive class name,
      "specificity": the other's}``) and ``threshold``. ``positive`` names which class is positive and nothing
      else: the decision stays ``P(class 1) > threshold`` and ``acc``/``auc`` stay MedMNIST's.
    - multi-label: ``per_label_auc`` (list, ``None`` where undefined) and ``threshold``.
    - ordinal: ``kappa_quadratic`` (Cohen's kappa of the argmax with weights ``(i - j)^2`` on the class
      indices) and ``mae`` (mean absolute class-index error of the argmax).
    """
    d = _samples(y_true, scores, task, threshold)
    y, s = _as_arrays(y_true, scores)
    names = [str(i) for i in range(d.k)] if class_names is None else [str(c) for c in class_names]
    if len(names) != d.k:
        raise ValueError(f"{len(names)} class names for {d.k} {'labels' if task == 'multilabel' else 'classes'}")
    pos = 1 if positive is None and task == "binary" else None if positive is None else check_positive(task, positive)
    st = _stats(d, np.ones((d.n, 1), np.uint8))
    sc = {name: v[0] for name, v in _scalars(task, st, pos if pos is not None else 1).items()}
    out = {"acc": acc(y, s, task, threshold), "auc": auc(y, s, task),
           "n": d.n}
    for name in scalar_names(task)[2:]:
        out[name] = _json_float(sc[name], name)
    if task == "binary":  # the class each class-specific metric is about, for every reader to name it
        out["class_of"] = {"sensitivity": names[pos], "specificity": names[1 - pos]}
    if task in ("binary", "multilabel"):
        out["threshold"] = float(threshold)
    class_auc = _class_aucs(d, y, s)  # undefined ones were already reported by auc() above
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
