"""Batches straight from the in-memory uint8 tensors: no DataLoader workers, no per-sample Python."""
from __future__ import annotations

from typing import Iterator, Sequence

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
    """uint8 batch -> float, normalised as ``(x/255 - mean) / std`` (one value, or one per channel), grey
    repeated to RGB when asked."""

    def __init__(self, mean: float | Sequence[float] = 0.5, std: float | Sequence[float] = 0.5,
                 to_rgb: bool = False, channels_last: bool = False):
        self.mean, self.std, self.to_rgb, self.channels_last = mean, std, to_rgb, channels_last
        m = torch.tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
        self._scale, self._shift = 1.0 / (255.0 * s), m / s  # one fused multiply-subtract
        self._on: dict = {}

    def _consts(self, device: torch.device):
        if device not in self._on:
            self._on[device] = (self._scale.to(device), self._shift.to(device))
        return self._on[device]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.to_rgb and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        scale, shift = self._consts(x.device)
        x = x.float().mul_(scale).sub_(shift)  # [C,1,1] constants broadcast over the batch
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x
