"""What the run report shows, computed: the split records, the decision threshold the run used, and the test-split
findings (confusion matrix, per-class metrics, most confident errors, images for Grad-CAM).

metrics.json is the source wherever it has the value; what it lacks (an older run, a minimal file) is computed from
the test scores with the run's own decision rule (:func:`medbench.tasks.decide` at the threshold the run used) and
its own metric code (:func:`medbench.metrics.compute_metrics`), so a recomputed value equals what
``medbench evaluate`` would have written.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from medbench.metrics import compute_metrics
from medbench.tasks import Task, decide

SPLIT_ORDER = ("train", "val", "test")
RESERVED = {"gap", "threshold", "evaluation"}  # top-level keys of metrics.json that are not splits
DEFAULT_THRESHOLD = 0.5
N_ERRORS = 16
N_CAM = 8
FROM_METRICS = "metrics.json"


def split_records(metrics: dict) -> dict[str, dict]:
    """The per-split records of metrics.json: train, val, test first, then any other split-like record."""
    records = {s: metrics[s] for s in SPLIT_ORDER if isinstance(metrics.get(s), dict)}
    records.update({k: v for k, v in metrics.items() if k not in records and k not in RESERVED
                    and isinstance(v, dict) and "acc" in v and "n" in v})
    return records


def youden_records(records: dict[str, dict]) -> dict[str, dict]:
    """Each split's metrics at the validation-chosen (Youden) threshold, where recorded."""
    return {s: r["at_youden"] for s, r in records.items() if isinstance(r.get("at_youden"), dict)}


def decision_threshold(metrics: dict, task: str) -> float:
    """The threshold of the run's headline decisions: metrics.json's ``threshold.headline`` for binary tasks
    (``--decision youden`` makes it the Youden threshold), else 0.5 (the MedMNIST rule)."""
    if task != "binary":
        return DEFAULT_THRESHOLD
    thr = metrics.get("threshold")
    headline = thr.get("headline") if isinstance(thr, dict) else None
    if isinstance(headline, (int, float)) and not isinstance(headline, bool) and math.isfinite(headline):
        return float(headline)
    return DEFAULT_THRESHOLD


@dataclass
class Findings:
    """The test split's confusion matrix and per-class metrics (each with its source) and confident errors."""
    threshold: float
    confusion: np.ndarray  # [K, K] (rows true), or [L, 2, 2] for multi-label tasks
    confusion_source: str
    per_class: dict[str, dict]
    per_class_source: str
    errors: list[tuple[int, int, int, float]]


def findings(metrics: dict, y_test: np.ndarray, scores: np.ndarray, task: Task, names) -> Findings:
    threshold = decision_threshold(metrics, task.name)
    recorded = metrics.get("test") if isinstance(metrics.get("test"), dict) else {}
    computed: dict[str, Any] = {}

    def from_scores() -> dict:  # computed once, and only when metrics.json lacks something
        if not computed:
            computed.update(computed_record(y_test, scores, task.name, threshold, names))
        return computed

    cm, cm_source = _recorded_confusion(recorded, task), FROM_METRICS
    if cm is None:
        cm, cm_source = np.asarray(from_scores()["confusion_matrix"], dtype=np.int64), \
            "computed from the test predictions"
    per_class, pc_source = recorded.get("per_class"), FROM_METRICS
    if not isinstance(per_class, dict) or not per_class:
        per_class, pc_source = from_scores()["per_class"], "computed by medbench.metrics from the test predictions"
    errors = confident_errors(y_test, scores, task.name, threshold)
    return Findings(threshold, cm, cm_source, per_class, pc_source, errors)


def computed_record(y_true, scores, task: str, threshold: float, names) -> dict:
    """The test record ``medbench evaluate`` writes, from the scores; undefined values (AUC of a class absent
    from the test split, ...) are shown as n/a, so their warnings are left out here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compute_metrics(y_true, scores, task, threshold=threshold, class_names=[str(n) for n in names])


def _recorded_confusion(record: dict, task: Task) -> np.ndarray | None:
    """metrics.json's confusion matrix when it has the task's shape (an older or damaged one: None)."""
    cm = record.get("confusion_matrix")
    try:
        cm = np.asarray(cm, dtype=np.int64) if cm is not None else None
    except (TypeError, ValueError):
        return None
    k = task.num_classes
    expected = (k, 2, 2) if task.name == "multilabel" else (k, k)
    return cm if cm is not None and cm.shape == expected else None


def confident_errors(y_true, scores, task: str, threshold: float = DEFAULT_THRESHOLD,
                     k: int = N_ERRORS) -> list[tuple[int, int, int, float]]:
    """The ``k`` most confident wrong decisions as ``(image index, true, predicted, probability of the
    prediction)``, most confident first. Single-label: misclassified images by the probability of the
    wrong class. Multi-label: wrong per-label decisions (true/predicted are 0/1 and the second field the
    label; returned as ``(index, label, predicted, probability)``)."""
    y = np.asarray(y_true).reshape(len(y_true), -1)
    s = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
    pred = decide(s, task, threshold)
    if task == "multilabel":
        wrong = np.argwhere((pred != y) & (y >= 0))
        conf = np.where(pred[wrong[:, 0], wrong[:, 1]] == 1, s[wrong[:, 0], wrong[:, 1]],
                        1 - s[wrong[:, 0], wrong[:, 1]])
        order = np.argsort(-conf, kind="stable")[:k]
        return [(int(wrong[j, 0]), int(wrong[j, 1]), int(pred[wrong[j, 0], wrong[j, 1]]), float(conf[j]))
                for j in order]
    idx = np.flatnonzero(pred != y[:, 0])
    conf = s[idx, pred[idx]]
    order = np.argsort(-conf, kind="stable")[:k]
    return [(int(idx[j]), int(y[idx[j], 0]), int(pred[idx[j]]), float(conf[j])) for j in order]


def cam_indices(y: np.ndarray, task: str, k: int = N_CAM) -> list[int]:
    """``k`` test images: round-robin over true classes (first images of each), evenly spaced for
    multi-label tasks."""
    n = len(y)
    if n <= k:
        return list(range(n))
    if task == "multilabel":
        return sorted({int(round(i)) for i in np.linspace(0, n - 1, k)})
    queues = [list(np.flatnonzero(y[:, 0] == c)) for c in np.unique(y[:, 0])]
    picked: list[int] = []
    while len(picked) < k and any(queues):
        for q in queues:
            if q and len(picked) < k:
                picked.append(int(q.pop(0)))
    return sorted(picked)
