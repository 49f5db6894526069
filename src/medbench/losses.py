"""Class weights from the training labels, and the focal loss (Lin et al., 2017).

The weighting follows PyTorch's conventions, so that a user who knows them meets no surprise:

- single-label (binary, multi-class, ordinal with ``ce``): ``weight[c]`` scales the loss of every image of class c
  (with label smoothing, each class's share of the smoothed target), and the batch loss is the weighted mean,
  divided by the summed weights of the images' true classes: ``F.cross_entropy(weight=...)`` exactly;
- multi-label: ``pos_weight[j]`` scales the positive term of label j, the mean is over the known entries (-1,
  uncertain, left out): ``F.binary_cross_entropy_with_logits(pos_weight=...)`` on those entries;
- ordinal with CORN: each image's conditional tasks are weighted by its class's weight (a weighted mean).

Focal loss: the log-likelihood of class c is scaled by (1 - p_c)^gamma (softmax); a sigmoid output's positive term
by (1 - p)^gamma and its negative term by p^gamma. The class weights act as Lin et al.'s alpha, and gamma 0 is the
cross-entropy above.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medbench.errors import MedbenchError

ONE_MINUS_P_MIN = 1e-30  # (1 - p)^gamma's base is kept above this: its gradient at p = 1 is infinite for gamma < 1


def class_weights(spec: str | Sequence[float], task: str, labels, class_names: Sequence,
                  setting: str = "class_weights") -> list[float] | None:
    """The loss weights for ``spec`` (``none``, ``balanced`` or one number per class/label) from the training
    labels ``labels`` ([N, 1] class indices, or [N, L] 0/1/-1 for multi-label); None for ``none``.

    ``balanced``: single-label n / (K * n_c) over the N training images (each class then weighs as much in the
    loss as any other); multi-label, per label, negatives / positives among the images where the label is known.
    """
    if isinstance(spec, str) and spec == "none":
        return None
    names = [str(c) for c in class_names]
    kind = "label" if task == "multilabel" else "class"
    if not isinstance(spec, str):
        if len(spec) != len(names):
            what = "one positive weight per label" if kind == "label" else "one weight per class"
            listed = ", ".join(map(repr, names))
            raise MedbenchError(f"{setting} has {len(spec)} value(s) but the data have {len(names)} {kind}"
                                f"{'s' if kind == 'label' else 'es'} ({listed}): give {what}, in this order")
        return [float(w) for w in spec]
    if spec != "balanced":
        raise MedbenchError(f"{setting} {spec!r}: none, balanced or one number per {kind}")
    y = np.asarray(labels.cpu() if torch.is_tensor(labels) else labels)
    y = y.reshape(len(y), -1)
    if task == "multilabel":
        pos, neg = (y == 1).sum(0), (y == 0).sum(0)
        missing = [names[j] for j in range(len(names)) if pos[j] == 0 or neg[j] == 0]
        if missing:
            raise MedbenchError(f"{setting} balanced: label(s) {', '.join(missing)} have no positive or no negative "
                                f"training image, so negatives/positives is undefined; give the weights "
                                f"explicitly (one per label)")
        return [float(n / p) for n, p in zip(neg, pos)]
    counts = np.bincount(y[:, 0].astype(np.int64), minlength=len(names))
    empty = [names[c] for c in range(len(names)) if counts[c] == 0]
    if empty:
        raise MedbenchError(f"{setting} balanced: class(es) {', '.join(empty)} have no training image, so their "
                            f"inverse frequency is undefined; give the weights explicitly (one per class)")
    return [float(len(y) / (len(names) * n)) for n in counts]


def softmax_focal(logits: torch.Tensor, target: torch.Tensor, *, gamma: float, weight: torch.Tensor | None = None,
                  smoothing: float = 0.0) -> torch.Tensor:
    """Softmax focal loss of ``logits`` [N, K] against class indices ``target`` [N]: the weighted mean over the
    batch of sum_c w_c q_c (1 - p_c)^gamma (-log p_c), q the (smoothed) target distribution, divided by the summed
    weights of the true classes (N without weights). gamma 0: ``F.cross_entropy`` with the same weight and
    smoothing."""
    if gamma == 0:
        return F.cross_entropy(logits.float(), target, weight=weight, label_smoothing=smoothing)
    return focal_terms(logits, target, gamma=gamma, weight=weight, smoothing=smoothing)


def focal_terms(logits: torch.Tensor, target: torch.Tensor, *, gamma: float, weight: torch.Tensor | None = None,
                smoothing: float = 0.0) -> torch.Tensor:
    """:func:`softmax_focal` written out for every gamma (gamma 0 included: tested against ``F.cross_entropy``)."""
    logp = F.log_softmax(logits.float(), dim=1)
    k = logp.shape[1]
    q = F.one_hot(target, k).to(logp.dtype) * (1 - smoothing) + smoothing / k
    factor = (-torch.expm1(logp)).clamp_min(ONE_MINUS_P_MIN).pow(gamma)  # (1 - p)^gamma
    per = -(q * factor * logp)
    if weight is None:
        return per.sum() / max(len(target), 1)
    return (per * weight).sum() / weight[target].sum()


def sigmoid_focal(logits: torch.Tensor, target: torch.Tensor, *, gamma: float,
                  pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Elementwise sigmoid focal loss (no reduction) against soft targets in [0, 1]:
    -(pw * t * (1 - p)^gamma * log p + (1 - t) * p^gamma * log(1 - p)). gamma 0 and ``pos_weight``:
    ``F.binary_cross_entropy_with_logits(..., pos_weight=pw, reduction="none")``."""
    x = logits.float()
    if gamma == 0:
        return F.binary_cross_entropy_with_logits(x, target, pos_weight=pos_weight, reduction="none")
    log_p, log_q = F.logsigmoid(x), F.logsigmoid(-x)  # log p, log(1 - p): stable, and so are their powers
    pos = target * torch.exp(gamma * log_q) * log_p
    if pos_weight is not None:
        pos = pos * pos_weight
    return -(pos + (1 - target) * torch.exp(gamma * log_p) * log_q)
