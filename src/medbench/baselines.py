"""Classical baselines: scikit-learn models on flattened pixels or HOG features (``--model sk:NAME``).

They produce the same run directory as a network (config.yaml, history.csv, metrics.json, predictions/,
report.html) except the weights: a fitted scikit-learn model can only be stored by pickling, which medbench
never loads, so ``evaluate`` refits it instead (deterministic for the run's seed; seconds on MedMNIST sizes).
"""
from __future__ import annotations

import numpy as np
import torch

from medbench.errors import MedbenchError

PREFIX = "sk:"
ESTIMATORS = {
    "decision_tree": "a CART decision tree (scikit-learn defaults)",
    "random_forest": "200 trees",
    "logreg": "standardised features, L2 logistic regression",
    "svm": "standardised features, RBF SVM with Platt-scaled probabilities",
}


def is_baseline(model: str) -> bool:
    return model.startswith(PREFIX)


def make_estimator(model: str, seed: int, task: str):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.multioutput import MultiOutputClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC
    from sklearn.tree import DecisionTreeClassifier

    name = model[len(PREFIX):]
    if name not in ESTIMATORS:
        raise MedbenchError(f"unknown classical model '{model}'; valid: "
                            f"{', '.join(PREFIX + n for n in ESTIMATORS)}")
    if name == "decision_tree":
        return DecisionTreeClassifier(random_state=seed)  # trees take multi-label targets natively
    if name == "random_forest":
        return RandomForestClassifier(n_estimators=200, random_state=seed, n_jobs=torch.get_num_threads())
    est = (make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)) if name == "logreg" else
           make_pipeline(StandardScaler(), SVC(probability=True, random_state=seed)))
    return MultiOutputClassifier(est) if task == "multilabel" else est


def features(images: torch.Tensor, kind: str) -> np.ndarray:
    """uint8 ``[N, C, H, W]`` -> ``[N, D]`` float32: pixels in [0, 1], or HOG (9 orientations, 8x8 cells of
    the image, 2x2-cell blocks). Images read from disk are featurised a block at a time."""
    if not torch.is_tensor(images):
        from medbench.data.store import rows

        step = max(1, (256 << 20) // max(1, int(np.prod(images.shape[1:]))))
        return np.concatenate([features(rows(images, a, a + step), kind) for a in range(0, len(images), step)])
    x = images.cpu().numpy()
    if kind == "pixels":
        return x.reshape(len(x), -1).astype(np.float32) / 255.0
    if kind != "hog":
        raise MedbenchError(f"unknown features '{kind}'; valid: pixels, hog")
    try:
        from skimage.feature import hog
    except ImportError:
        raise MedbenchError("HOG features need scikit-image: pip install 'medbench[classical]'") from None
    cell = max(2, x.shape[-1] // 8)
    rgb = x.shape[1] == 3
    out = [hog(img.transpose(1, 2, 0) if rgb else img[0], orientations=9, pixels_per_cell=(cell, cell),
               cells_per_block=(2, 2), channel_axis=-1 if rgb else None) for img in x]
    return np.asarray(out, dtype=np.float32)


def _targets(labels: torch.Tensor, task: str) -> np.ndarray:
    y = labels.cpu().numpy()
    return y if task == "multilabel" else y[:, 0]


class _PerLabelKnownRows:
    """One estimator per label fitted on the rows where that label is known (multi-label with -1 = unknown,
    ``--uncertain u-ignore``); exposes ``estimators_`` and a per-label ``predict_proba`` like
    MultiOutputClassifier."""

    def __init__(self, base):
        self.base = base

    def fit(self, x, y):
        from sklearn.base import clone

        self.estimators_ = []
        for j in range(y.shape[1]):
            keep = y[:, j] >= 0
            if not keep.any():
                raise MedbenchError(f"label {j} is unknown (-1) for every training image; nothing to fit")
            self.estimators_.append(clone(self.base).fit(x[keep], y[keep, j]))
        self.classes_ = [e.classes_ for e in self.estimators_]
        return self

    def predict_proba(self, x):
        return [e.predict_proba(x) for e in self.estimators_]


def fit(model: str, seed: int, task: str, feature_kind: str, train_split):
    y = _targets(train_split.labels, task)
    est = make_estimator(model, seed, task)
    if task == "multilabel" and (y < 0).any():
        est = _PerLabelKnownRows(est.estimator if hasattr(est, "estimator") else est)
    est.fit(features(train_split.images, feature_kind), y)
    return est


def scores(est, images: torch.Tensor, task: str, num_classes: int, feature_kind: str) -> np.ndarray:
    """Scores in the task's format: class probabilities ``[N, K]`` (classes absent from training get 0), or one
    positive-label probability per label ``[N, L]`` for multi-label tasks."""
    proba = est.predict_proba(features(images, feature_kind))
    if task == "multilabel":
        classes = est.classes_  # one array per label (multi-output trees and forests, MultiOutputClassifier)
        cols = []
        for p, c in zip(proba, classes):
            c = list(c)
            cols.append(p[:, c.index(1)] if 1 in c else np.zeros(len(p)))
        return np.stack(cols, 1).astype(np.float64)
    out = np.zeros((len(proba), num_classes))
    out[:, np.asarray(est.classes_, dtype=int)] = proba
    return out
