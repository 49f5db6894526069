"""The in-memory dataset every source is turned into: uint8 images and integer labels per split."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N, L]: L = 1 for single-label tasks, number of labels for multi-label

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass
class ImageDataset:
    name: str
    task: str  # one of medbench.tasks.TASKS
    class_names: list[str]  # classes, or labels for multi-label tasks
    splits: dict[str, Split]
    size: int
    md5: str | None = None  # of the source file, recorded with each run
    source: str | None = None  # path or URL the data came from
    meta: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_chans(self) -> int:
        return next(iter(self.splits.values())).images.shape[1]

    def __getitem__(self, split: str) -> Split:
        return self.splits[split]
