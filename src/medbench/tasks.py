"""The four MedMNIST task types: how many outputs, which loss, which scores, which labels.

Scores are what metrics and predictions files see: one probability per class (binary tasks keep two
columns, as the MedMNIST benchmark's softmax does), or one per label for multi-label tasks.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from medbench.errors import MedbenchError
from medbench.losses import sigmoid_focal, softmax_focal

TASKS = ("binary", "multiclass", "multilabel", "ordinal")
ORDINAL_LOSSES = ("ce", "corn")
LOSSES = ("ce", "focal")


def decide(scores, task: str, threshold: float = 0.5):
    """The decision rule, the one place it lives: scores (numpy or torch, [N, C]) -> decided labels.

    - binary: class 1 when P(class 1) (the last column) > ``threshold`` (0.5, or the run's validation-chosen
      threshold); returns [N] class indices;
    - multi-label: each label 1 when its probability > ``threshold`` (0.5 in MedMNIST); returns [N, L] 0/1;
    - multi-class and ordinal: the argmax; returns [N] class indices.
    """
    if task not in TASKS:
        raise MedbenchError(f"unknown task '{task}'; valid: {', '.join(TASKS)}")
    if task == "binary":
        return (scores[:, -1] > threshold) * 1
    if task == "multilabel":
        return (scores > threshold) * 1
    return scores.argmax(1)


class Task:
    """Single-label classification with softmax cross-entropy (binary, multi-class, ordinal with ``ce``).

    The training objective (:mod:`medbench.losses`): ``weights`` one per class (multi-label: the positive weight
    per label; CORN: per true class), ``gamma`` > 0 the focal loss. Without them the loss is the benchmark's.
    """

    def __init__(self, name: str, num_classes: int, label_smoothing: float = 0.0,
                 weights: Sequence[float] | None = None, gamma: float = 0.0):
        self.name = name
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.weights = None if weights is None else torch.tensor([float(w) for w in weights], dtype=torch.float32)
        self.gamma = float(gamma)
        self._on: dict = {}

    @property
    def num_outputs(self) -> int:
        return self.num_classes

    def _weights(self, device: torch.device) -> torch.Tensor | None:
        """The weights on ``device`` (copied once per device, not per step)."""
        if self.weights is None:
            return None
        if device not in self._on:
            self._on[device] = self.weights.to(device)
        return self._on[device]

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, smoothing: float | None = None) -> torch.Tensor:
        eps = self.label_smoothing if smoothing is None else smoothing
        return softmax_focal(logits, labels[:, 0], gamma=self.gamma, weight=self._weights(logits.device),
                             smoothing=eps)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().softmax(dim=1)

    def decide(self, scores, threshold: float = 0.5):
        """Decided labels for these scores: :func:`decide` for this task."""
        return decide(scores, self.name, threshold)


class MultiLabelTask(Task):
    """Independent sigmoid per label, binary cross-entropy; predictions at 0.5 (MedMNIST).

    A label of -1 (CheXpert "uncertain" kept by ``--uncertain u-ignore``) is masked out: the loss is the mean
    over the known entries only. ``weights`` are positive weights (``pos_weight``), one per label.
    """

    def loss(self, logits, labels, smoothing=None):
        eps = self.label_smoothing if smoothing is None else smoothing
        target = labels.float().clamp_min(0) * (1 - eps) + eps / 2
        per = sigmoid_focal(logits, target, gamma=self.gamma, pos_weight=self._weights(logits.device))
        known = (labels >= 0).float()  # no branch on the mask: a host sync per step on a GPU
        return (per * known).sum() / known.sum().clamp_min(1)

    def scores(self, logits):
        return logits.float().sigmoid()



class CornTask(Task):
    """Ordinal regression with CORN (Shi et al., 2021): K-1 conditional binary tasks "y > k given y > k-1".

    Rank-consistent by construction: P(y > k) = prod_{j<=k} sigmoid(l_j) falls with k, so the class
    probabilities P(y = k) = P(y > k-1) - P(y > k) are never negative and sum to one.
    """

    @property
    def num_outputs(self):
        return self.num_classes - 1

    def loss(self, logits, labels, smoothing=None):
        y = labels[:, :1]  # [N, 1]
        k = torch.arange(self.num_classes - 1, device=logits.device)
        mask = (y >= k).float()  # task k only sees samples that passed threshold k-1
        target = (y > k).float()
        per = sigmoid_focal(logits, target, gamma=self.gamma)
        w = self._weights(logits.device)
        if w is not None:  # every conditional task of an image weighs as its true class
            mask = mask * w[y[:, 0]][:, None]
        return (per * mask).sum() / mask.sum().clamp_min(1e-12 if w is not None else 1)

    def scores(self, logits):
        above = torch.cumprod(logits.float().sigmoid(), dim=1)  # P(y > k)
        ones = torch.ones_like(above[:, :1])
        zeros = torch.zeros_like(above[:, :1])
        return torch.cat([ones, above], 1) - torch.cat([above, zeros], 1)


def make_task(name: str, num_classes: int, *, ordinal_loss: str = "ce", label_smoothing: float = 0.0,
              loss: str = "ce", focal_gamma: float = 2.0, weights: Sequence[float] | None = None) -> Task:
    """The task ``name`` with its training objective: ``loss`` ce or focal (``focal_gamma``), ``weights`` one per
    class (multi-label: positive weight per label) or None."""
    if name not in TASKS:
        raise MedbenchError(f"unknown task '{name}'; valid: {', '.join(TASKS)}")
    if loss not in LOSSES:
        raise MedbenchError(f"unknown loss '{loss}'; valid: {', '.join(LOSSES)}")
    if weights is not None and len(weights) != num_classes:
        raise MedbenchError(f"{len(weights)} class weights for a task of {num_classes} classes or labels")
    kw = {"weights": weights, "gamma": focal_gamma if loss == "focal" else 0.0}
    if name == "multilabel":
        return MultiLabelTask(name, num_classes, label_smoothing, **kw)
    if name == "ordinal":
        if ordinal_loss not in ORDINAL_LOSSES:
            raise MedbenchError(f"unknown ordinal loss '{ordinal_loss}'; valid: {', '.join(ORDINAL_LOSSES)}")
        if ordinal_loss == "corn":
            return CornTask(name, num_classes, label_smoothing, **kw)
    return Task(name, num_classes, label_smoothing, **kw)
