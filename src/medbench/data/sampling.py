"""The class-balanced batch order (``--sampler balanced``): an epoch of as many draws as there are training images,
drawn with replacement so that every class is drawn equally often (each image at a rate inverse to its class's
frequency).

Multi-label: an image belongs to the group of its rarest positive label (fewest positives in train); images with no
positive label (-1 uncertain entries do not count) form one more group, so that "no finding" keeps a share.

The draws come from the run's batch generator: one seed gives one order, on every rank of a data-parallel run and
again when a run resumes mid-epoch (the generator is restored to the epoch's start).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from medbench.errors import MedbenchError


def sample_groups(labels, task: str) -> np.ndarray:
    """Each training image's group: its class (single-label tasks), or for multi-label its rarest positive label
    (ties: the first), L for images without a positive label."""
    y = np.asarray(labels.cpu() if torch.is_tensor(labels) else labels)
    y = y.reshape(len(y), -1)
    if task != "multilabel":
        return y[:, 0].astype(np.int64)
    positive = y == 1
    counts = positive.sum(0)
    # rank labels by rarity; an image's group is its positive label of lowest rank
    rank = np.argsort(np.argsort(counts, kind="stable"), kind="stable")
    ranked = np.where(positive, rank[None, :], len(counts))
    rarest_rank = ranked.min(1)
    by_rank = np.argsort(counts, kind="stable")
    return np.where(rarest_rank < len(counts), by_rank[np.minimum(rarest_rank, len(counts) - 1)], len(counts))


class BalancedSampler:
    """Draws row indices with replacement, every non-empty group equally likely, a uniform member within it."""

    def __init__(self, labels, task: str, names: Sequence | None = None):
        groups = sample_groups(labels, task)
        if len(groups) == 0:
            raise MedbenchError("sampler balanced: the training split is empty")
        present, counts = np.unique(groups, return_counts=True)
        order = np.argsort(groups, kind="stable")
        self.members = torch.as_tensor(order, dtype=torch.long)  # rows sorted by group
        self.counts = torch.as_tensor(counts, dtype=torch.long)
        self.offsets = torch.as_tensor(np.concatenate([[0], np.cumsum(counts)[:-1]]), dtype=torch.long)
        self.groups = [int(g) for g in present]
        self.n = len(groups)
        names = list(names or [])
        extra = "no positive label" if task == "multilabel" else None
        self.group_names = [str(names[g]) if g < len(names) else (extra or str(g)) for g in self.groups]

    def draw(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` row indices: a group uniformly at random, then a member uniformly (int64, CPU)."""
        g = torch.randint(len(self.groups), (n,), generator=generator)
        within = (torch.rand(n, generator=generator, dtype=torch.float64) * self.counts[g]).long()
        within = torch.minimum(within, self.counts[g] - 1)  # rand < 1, but float rounding must not leave the group
        return self.members[self.offsets[g] + within]

    def epoch(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """One epoch's order: as many draws as training images."""
        return self.draw(self.n, generator)

    def describe(self) -> str:
        """e.g. 'balanced sampler: 2 groups (malignant 147, benign 399 images), each drawn 1/2 of the time'."""
        sizes = ", ".join(f"{name} {int(c)}" for name, c in zip(self.group_names, self.counts))
        return (f"balanced sampler: {len(self.groups)} groups ({sizes} images), each drawn 1/{len(self.groups)} of "
                f"the time")
