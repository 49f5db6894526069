"""Metrics per subgroup (e.g. per sex, age band or site) with bootstrap CIs, and the largest gap between subgroups.

:func:`subgroup_metrics` returns plain JSON, stored as ``metrics.json["test"]["subgroups"]``::

    {"task": "binary", "threshold": 0.5, "positive": "malignant", "replicates": 1000, "seed": 0, "level": 0.95,
     "columns": {
       "sex": {
         "groups": {                      # one entry per value, sorted; "(none)" (no value) last
           "F": {"n": 40, "class_counts": {"benign": 29, "malignant": 11},
                 "prevalence": 0.275,     # binary: share of the positive class
                 "auc": 0.91, "auc_ci": [0.82, 0.98], "acc": 0.85, "acc_ci": [...],
                 "sensitivity": 0.73, "sensitivity_ci": [...],   # binary: recall of the positive class
                 "specificity": 0.9, "specificity_ci": [...],    # binary: recall of the other class
                 "undefined": {},         # metric -> why it is None (e.g. "only class 'benign' present")
                 "notes": []},            # e.g. a CI computed from fewer resamples than asked
           ...},
         "gaps": {"auc": {"gap": 0.12, "max": {"group": "F", "value": 0.91}, "min": {"group": "M", "value": 0.79}},
                  "sensitivity": {"gap": None, "max": None, "min": None, "reason": "..."}, ...}}}}

* ``auc`` and ``acc`` are MedMNIST's (:func:`medbench.metrics.auc` / :func:`~medbench.metrics.acc`, ``acc`` at
  ``threshold``), so each equals scikit-learn's ``roc_auc_score`` / ``accuracy_score`` on the subgroup's images.
* Decisions follow :func:`medbench.tasks.decide` at ``threshold``; ``positive`` (binary, a class index, default 1:
  MedMNIST's last column) only names which class's recall is the sensitivity.
* CIs: percentile bootstrap within each subgroup (its images resampled with replacement, ``replicates`` times,
  :func:`medbench.metrics.bootstrap_replicates`); a resample where a metric is undefined (e.g. no positive drawn)
  is left out of its CI and a note says how many were used. ``replicates=0``: no CIs (the ``_ci`` keys are None).
* Undefined metrics (a subgroup with one class) are ``None`` with the reason in ``undefined``, never NaN.
* Gaps: max - min over the subgroups whose value is defined, naming both; the ``"(none)"`` subgroup (images
  without a value) is left out of the gaps, since it is not a value of the attribute.
"""
from __future__ import annotations

import warnings

import numpy as np

from medbench.metrics.classification import acc
from medbench.metrics.ranking import auc
from medbench.metrics.resampling import bootstrap_replicates, percentile_ci, resample_counts
from medbench.metrics.validation import UndefinedMetricWarning, _as_arrays, _check_level, _check_task
from medbench.tasks import decide

NONE = "(none)"  # medbench.data.subgroups.NONE: images without a subgroup value
GAP_METRICS = ("auc", "acc", "sensitivity", "specificity")


def subgroup_metrics(labels, scores, task: str, groups: dict, *, threshold: float = 0.5, bootstrap: int = 1000,
                     seed: int = 0, class_names=None, positive: int | None = None, level: float = 0.95) -> dict:
    """Per subgroup n, class counts, AUC, ACC (and binary: prevalence, sensitivity, specificity) with bootstrap
    CIs, and the largest gap per metric, for every subgroup attribute in ``groups`` ({name: [N] values}). The
    record's layout is in the module docstring. ``labels``/``scores`` as for :func:`compute_metrics`."""
    _check_task(task)
    _check_level(level)
    y, s = _as_arrays(labels, scores)
    k = y.shape[1] if task == "multilabel" else (2 if task == "binary" else s.shape[1])
    names = [str(c) for c in class_names] if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for {k} {'labels' if task == 'multilabel' else 'classes'}")
    pos = None
    if task == "binary":
        pos = 1 if positive is None else int(positive)
        if pos not in (0, 1):
            raise ValueError(f"positive must be the index of a class (0 or 1), got {positive}")
    ctx = dict(task=task, threshold=float(threshold), replicates=int(bootstrap), seed=int(seed), level=level,
               names=names, pos=pos)
    columns = {}
    for col, values in groups.items():
        v = np.asarray(values).astype(str).reshape(-1)
        if len(v) != len(y):
            raise ValueError(f"subgroup {col!r}: {len(v)} values for {len(y)} images")
        order = sorted(set(v.tolist()), key=lambda g: (g == NONE, g))
        recs = {g: _group(y[v == g], s[v == g], ctx) for g in order}
        columns[str(col)] = {"groups": recs, "gaps": _gaps(recs, task)}
    return {"task": task, "threshold": float(threshold), "positive": names[pos] if pos is not None else None,
            "replicates": int(bootstrap), "seed": int(seed), "level": level, "columns": columns}


def _counts(y: np.ndarray, task: str, names: list[str]) -> dict[str, int]:
    """Images per class; multi-label: positive entries per label."""
    if task == "multilabel":
        return {n: int((y[:, j] == 1).sum()) for j, n in enumerate(names)}
    return {n: int((y[:, 0] == i).sum()) for i, n in enumerate(names)}


def _auc_reason(y: np.ndarray, task: str, names: list[str]) -> str:
    if task == "multilabel":
        one = [n for j, n in enumerate(names) if len(set(y[y[:, j] >= 0, j].tolist())) < 2]
        return f"label(s) {', '.join(map(repr, one))} have one value only in this subgroup"
    present = [names[i] for i in sorted(set(y[:, 0].tolist()))]
    if len(present) == 1:
        return f"only class {present[0]!r} present"
    absent = [n for n in names if n not in present]
    return f"class(es) {', '.join(map(repr, absent))} absent"


def _point(y: np.ndarray, s: np.ndarray, ctx: dict) -> tuple[dict, dict]:
    """The subgroup's values (None where undefined) and why each undefined one is."""
    task, names, pos = ctx["task"], ctx["names"], ctx["pos"]
    with warnings.catch_warnings():  # undefined values get their reason here instead of a warning
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        rec = {"auc": auc(y, s, task), "acc": acc(y, s, task, ctx["threshold"])}
    why = {}
    if rec["auc"] is None:
        why["auc"] = _auc_reason(y, task, names)
    if rec["acc"] is None:
        why["acc"] = "a label has no known (0/1) entry in this subgroup"
    if task == "binary":
        pred = decide(s, task, ctx["threshold"])
        for key, c, what in (("sensitivity", pos, "positive"), ("specificity", 1 - pos, "negative")):
            mask = y[:, 0] == c
            rec[key] = float(np.mean(pred[mask] == c)) if mask.any() else None
            if not mask.any():
                why[key] = f"no {what} ({names[c]!r}) images in this subgroup"
    return rec, why


def _replicates(y: np.ndarray, s: np.ndarray, ctx: dict) -> dict[str, np.ndarray]:
    """Every metric on the same ``replicates`` resamples of the subgroup: {name: [B]}, NaN where undefined."""
    counts = resample_counts(len(y), ctx["replicates"], ctx["seed"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        reps = bootstrap_replicates(y, s, ctx["task"], counts=counts, threshold=ctx["threshold"],
                                    metrics=("auc", "acc"))
    if ctx["task"] == "binary":  # per-class recall from the resample counts (independent of any default positive)
        pred = decide(s, ctx["task"], ctx["threshold"])
        c64 = counts.astype(np.float64)
        for key, c in (("sensitivity", ctx["pos"]), ("specificity", 1 - ctx["pos"])):
            mask = y[:, 0] == c
            with np.errstate(invalid="ignore", divide="ignore"):
                reps[key] = ((mask & (pred == c)) @ c64) / (mask @ c64)
    return reps


def _group(y: np.ndarray, s: np.ndarray, ctx: dict) -> dict:
    task, names = ctx["task"], ctx["names"]
    rec: dict = {"n": int(len(y)), "class_counts": _counts(y, task, names)}
    if task == "binary":
        rec["prevalence"] = float(np.mean(y[:, 0] == ctx["pos"]))
    values, why = _point(y, s, ctx)
    reps = _replicates(y, s, ctx) if ctx["replicates"] else {}
    notes = []
    for key, v in values.items():
        rec[key] = v
        ci = None
        if v is not None and key in reps:
            finite = int(np.isfinite(reps[key]).sum())
            ci = percentile_ci(reps[key], ctx["level"])
            if finite < len(reps[key]):
                notes.append(f"{key} CI from {finite} of {len(reps[key])} resamples (the rest left it undefined)")
        rec[f"{key}_ci"] = ci
    rec["undefined"] = why
    rec["notes"] = notes
    return rec


def _gaps(recs: dict[str, dict], task: str) -> dict:
    """Per metric, max - min over the subgroups (not "(none)") whose value is defined, naming both."""
    out = {}
    for key in GAP_METRICS if task == "binary" else GAP_METRICS[:2]:
        vals = [(g, r[key]) for g, r in recs.items() if g != NONE and r.get(key) is not None]
        if len(vals) < 2:
            out[key] = {"gap": None, "max": None, "min": None,
                        "reason": f"fewer than two subgroups with a defined {key} ({len(vals)})"}
            continue
        lo = min(vals, key=lambda t: t[1])
        hi = max(reversed(vals), key=lambda t: t[1])  # on a tie (gap 0) two different subgroups are named
        out[key] = {"gap": hi[1] - lo[1], "max": {"group": hi[0], "value": hi[1]},
                    "min": {"group": lo[0], "value": lo[1]}}
    return out
