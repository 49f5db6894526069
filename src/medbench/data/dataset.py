"""The dataset every source is turned into: uint8 images (in memory, or read from a store on disk as indexed) and
integer labels per split."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    images: torch.Tensor  # uint8 [N, C, H, W], or a disk source indexed like one (medbench.data.store.DiskImages)
    labels: torch.Tensor  # int64 [N, L]: L = 1 for single-label tasks, number of labels for multi-label
    hashes: list[str] | None = None  # per image, from a store (computed while decoding): the leakage check

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


def item_ids(ds: ImageDataset, split: str) -> list[str]:
    """What each image of a split is, in order (the one place that says it): its path relative to the data root
    for folder and CSV data (``meta["files"]``, each split's files as decoded), else its index as text (MedMNIST,
    or a dataset built in code whose split no longer matches its file list)."""
    n = len(ds[split])
    files = (getattr(ds, "meta", None) or {}).get("files", {}).get(split)
    if files is not None and len(files) == n:
        return [str(f) for f in files]
    return [str(i) for i in range(n)]


_WHY = {"train": "a classifier needs two classes at least to learn from",
        "val": "choosing the best epoch (validation AUC) and the binary decision threshold need two classes there"}
_FIX = {"train": "add images of the other class(es) to the training split",
        "val": "add images of another class to the val split, or draw val from the training images with "
               "--val-from-train 0.2"}


def check_classes(ds: ImageDataset, source, fix: str | None = None) -> None:
    """A single-label dataset's train and val splits must each hold two classes at least; otherwise one
    :class:`MedbenchError` naming ``source``, the split, its class and the fix (``fix``, or a generic one)."""
    from medbench.errors import MedbenchError

    if ds.task == "multilabel":
        return
    for s in ("train", "val"):
        sp = ds.splits.get(s)
        if sp is None:
            continue
        present = sp.labels[:, 0].unique().tolist() if len(sp) else []
        if len(present) >= 2:
            continue
        what = (f"only class {ds.class_names[present[0]]!r} ({len(sp)} image(s))" if present else "no images")
        raise MedbenchError(f"{source}: the {s} split holds {what}; {_WHY[s]}: {fix or _FIX[s]}")
    trained = set(ds.splits["train"].labels[:, 0].unique().tolist()) if "train" in ds.splits else set()
    for s in ("val", "test"):
        sp = ds.splits.get(s)
        unseen = sorted(set(sp.labels[:, 0].unique().tolist()) - trained) if sp is not None and len(sp) else []
        if trained and unseen:
            c = unseen[0]
            raise MedbenchError(f"{source}: class {ds.class_names[c]!r} has {int((sp.labels[:, 0] == c).sum())} "
                                f"image(s) in the {s} split but none in train, so no model can learn it: add "
                                f"training images of {ds.class_names[c]!r}, or remove the class from {s}")
