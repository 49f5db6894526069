"""Batches straight from the in-memory uint8 tensors: no DataLoader workers, no per-sample Python."""
from __future__ import annotations

from typing import Iterator

import torch

from medbench.data.dataset import Split


def iterate_batches(split: Split, batch_size: int, *, shuffle: bool = False,
                    generator: torch.Generator | None = None, device: torch.device | None = None,
                    shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(images uint8 [B,C,H,W], labels int64 [B,L])`` on the split's device.

    When shuffling (training), a last batch of a single sample is skipped: batch-norm cannot train on it,
    and it is a different random sample each epoch. ``shard=(rank, world)`` keeps every world-th sample of
    each batch for data-parallel training; all ranks draw the same order from equally seeded generators.
    """
    rank, world = shard
    n = len(split)
    order = torch.randperm(n, generator=generator).to(split.images.device) if shuffle else None
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        if shuffle and stop - start < 2 * world:
            break
        if order is None:
            x, y = split.images[start:stop], split.labels[start:stop]
        else:
            idx = order[start:stop][rank::world]
            x, y = split.images[idx], split.labels[idx]
        if device is not None:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        yield x, y


class Preprocess:
    """uint8 batch -> float, normalised as ``(x/255 - mean) / std``, grey repeated to RGB when asked."""

    def __init__(self, mean: float = 0.5, std: float = 0.5, to_rgb: bool = False, channels_last: bool = False):
        self.mean, self.std, self.to_rgb, self.channels_last = mean, std, to_rgb, channels_last
        self._scale, self._shift = 1.0 / (255.0 * std), mean / std  # one fused multiply-subtract

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().mul_(self._scale).sub_(self._shift)
        if self.to_rgb and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x
