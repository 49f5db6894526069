"""The four MedMNIST task types: how many outputs, which loss, which scores, which labels.

Scores are what metrics and predictions files see: one probability per class (binary tasks keep two
columns, as the MedMNIST benchmark's softmax does), or one per label for multi-label tasks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from medbench.errors import MedbenchError

TASKS = ("binary", "multiclass", "multilabel", "ordinal")
ORDINAL_LOSSES = ("ce", "corn")


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
    """Single-label classification with softmax cross-entropy (binary, multi-class, ordinal with ``ce``)."""

    def __init__(self, name: str, num_classes: int, label_smoothing: float = 0.0):
        self.name = name
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing

    @property
    def num_outputs(self) -> int:
        return self.num_classes

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, smoothing: float | None = None) -> torch.Tensor:
        eps = self.label_smoothing if smoothing is None else smoothing
        return F.cross_entropy(logits.float(), labels[:, 0], label_smoothing=eps)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().softmax(dim=1)

    def decide(self, scores, threshold: float = 0.5):
        """Decided labels for these scores: :func:`decide` for this task."""
        return decide(scores, self.name, threshold)


class MultiLabelTask(Task):
    """Independent sigmoid per label, binary cross-entropy; predictions at 0.5 (MedMNIST).

    A label of -1 (CheXpert "uncertain" kept by ``--uncertain u-ignore``) is masked out: the loss is the mean
    over the known entries only.
    """

    def loss(self, logits, labels, smoothing=None):
        eps = self.label_smoothing if smoothing is None else smoothing
        target = labels.float().clamp_min(0) * (1 - eps) + eps / 2
        per = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
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
        per = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
        return (per * mask).sum() / mask.sum().clamp_min(1)

    def scores(self, logits):
        above = torch.cumprod(logits.float().sigmoid(), dim=1)  # P(y > k)
        ones = torch.ones_like(above[:, :1])
        zeros = torch.zeros_like(above[:, :1])
        return torch.cat([ones, above], 1) - torch.cat([above, zeros], 1)


def make_task(name: str, num_classes: int, *, ordinal_loss: str = "ce", label_smoothing: float = 0.0) -> Task:
    if name not in TASKS:
        raise MedbenchError(f"unknown task '{name}'; valid: {', '.join(TASKS)}")
    if name == "multilabel":
        return MultiLabelTask(name, num_classes, label_smoothing)
    if name == "ordinal":
        if ordinal_loss not in ORDINAL_LOSSES:
            raise MedbenchError(f"unknown ordinal loss '{ordinal_loss}'; valid: {', '.join(ORDINAL_LOSSES)}")
        if ordinal_loss == "corn":
            return CornTask(name, num_classes, label_smoothing)
    return Task(name, num_classes, label_smoothing)
