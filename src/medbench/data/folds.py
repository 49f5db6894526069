"""K-fold splits for cross-validation: the pool (train + val), its folds, and one fold's dataset.

The pool is the dataset's train split followed by its val split (MedMNIST: the official ones; own data: the
given or drawn ones); the test split is never pooled. :func:`assign_folds` gives every pooled image a fold
0..K-1, stratified by class (multi-label: by the whole label row) and, with groups (``--group-regex`` on the
path), keeping each group (patient) wholly in one fold. :func:`fold_dataset` is fold ``i``'s run: val = fold i,
train = the other folds, test untouched; images held on disk stay there (an index view,
:class:`medbench.data.views.IndexedImages`).

Pooled item ids: MedMNIST images are ``train/INDEX`` and ``val/INDEX`` (their index in the official split); own
data keep their path under the data root.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from medbench.data.dataset import ImageDataset, Split, item_ids
from medbench.data.folders import group_ids
from medbench.data.splits import _strata, group_strata
from medbench.data.views import cat_images, select_rows
from medbench.errors import MedbenchError

POOLED = ("train", "val")


@dataclass
class Pool:
    """The pooled images of a cross-validation: labels, ids, groups and each image's fold, in pool order."""
    labels: np.ndarray  # [N, L]
    items: list[str]
    groups: list[str]
    folds: np.ndarray  # [N] fold of each image
    k: int

    def members(self, fold: int) -> np.ndarray:
        return np.flatnonzero(self.folds == fold)


def pooled_items(ds: ImageDataset) -> list[str]:
    """What each pooled image is: its path (own data), else ``split/index``."""
    out = []
    for s in POOLED:
        ids = item_ids(ds, s)
        own = ds.meta.get("files", {}).get(s) is not None and len(ds.meta["files"][s]) == len(ds[s])
        out += ids if own else [f"{s}/{i}" for i in ids]
    return out


def assign_folds(labels, k: int, seed: int = 0, groups=None, *, class_names=None, source: str = "the data"
                 ) -> np.ndarray:
    """Fold ``0..k-1`` of each sample, stratified by label and (``groups``: one id per sample) never splitting a
    group. Groups count for the class of their majority label (ties: the smallest); within a class they are
    shuffled (``seed``), then placed largest first into the fold holding the fewest samples of that class
    (ties: fewest samples in all, then the lowest fold). Deterministic for (labels, k, seed, groups).

    Refused (one line naming ``source``) when a class has fewer than ``k`` groups (images, ungrouped): some
    fold's val would miss it."""
    strata = _strata(labels)
    n = len(strata)
    if k < 2:
        raise MedbenchError(f"--folds {k}: cross-validation needs 2 folds or more")
    members, keys, g_label = group_strata(strata, range(n) if groups is None else groups)
    multilabel = np.asarray(labels).ndim == 2 and np.asarray(labels).shape[1] > 1
    unit = "group(s)" if len(keys) < n else "image(s)"
    if len(keys) < k:
        raise MedbenchError(f"{source}: --folds {k} needs {k} {unit} at least, the pooled train+val holds "
                            f"{len(keys)}; use --folds {max(len(keys), 2)} or fewer")
    if not multilabel:  # label rows of a multi-label task may be rare combinations: only the pool size counts
        counts = {int(c): int((g_label == c).sum()) for c in np.unique(g_label)}
        c_min = min(counts, key=counts.get)
        if counts[c_min] < k:
            name = class_names[c_min] if class_names is not None and c_min < len(class_names) else c_min
            raise MedbenchError(f"{source}: --folds {k} needs {k} {unit} of every class in train+val, class "
                                f"{name!r} has {counts[c_min]}; use --folds {max(counts[c_min], 2)} or fewer")
    rng = np.random.default_rng(seed)
    sizes = np.array([len(members[g]) for g in keys])
    fold_of_group = np.zeros(len(keys), dtype=np.int64)
    total = np.zeros(k, dtype=np.int64)
    for c in np.unique(g_label):
        idx = np.flatnonzero(g_label == c)
        idx = idx[rng.permutation(len(idx))]
        idx = idx[np.argsort(-sizes[idx], kind="stable")]  # largest groups first, shuffled among equals
        in_class = np.zeros(k, dtype=np.int64)
        for gi in idx:
            f = int(np.lexsort((np.arange(k), total, in_class))[0])
            fold_of_group[gi] = f
            in_class[f] += sizes[gi]
            total[f] += sizes[gi]
    out = np.empty(n, dtype=np.int64)
    for gi, g in enumerate(keys):
        out[members[g]] = fold_of_group[gi]
    return out


def make_pool(ds: ImageDataset, k: int, seed: int = 0, group_regex: str | None = None) -> Pool:
    """The pooled train+val of ``ds`` and each image's fold."""
    labels = torch.cat([ds[s].labels.cpu() for s in POOLED]).numpy()
    items = pooled_items(ds)
    groups = group_ids(items, group_regex) if group_regex else list(items)
    folds = assign_folds(labels, k, seed, groups, class_names=ds.class_names, source=ds.source or ds.name)
    return Pool(labels, items, groups, folds, k)


def fold_dataset(ds: ImageDataset, k: int, fold: int, seed: int = 0, group_regex: str | None = None
                 ) -> ImageDataset:
    """Fold ``fold``'s dataset: val = that fold of the pooled train+val, train = the other folds, test as is.
    A dataset that is already this fold's view is returned unchanged."""
    key = {"k": k, "fold": fold, "seed": seed, "group_regex": group_regex}
    if ds.meta.get("cv") == key:
        return ds
    if ds.meta.get("cv") is not None:
        raise MedbenchError(f"the dataset is fold {ds.meta['cv']['fold']} of a {ds.meta['cv']['k']}-fold split "
                            f"already, not fold {fold} of {k}")
    if not 0 <= fold < k:
        raise MedbenchError(f"fold {fold} is not one of 0..{k - 1}")
    pool = make_pool(ds, k, seed, group_regex)
    images = cat_images(ds["train"].images, ds["val"].images)
    hashes = (ds["train"].hashes or []) + (ds["val"].hashes or []) \
        if ds["train"].hashes is not None and ds["val"].hashes is not None else None
    labels = torch.from_numpy(pool.labels)
    parts = {"train": np.flatnonzero(pool.folds != fold), "val": pool.members(fold)}
    splits = {s: Split(select_rows(images, idx), labels[torch.from_numpy(idx)].clone(),
                       None if hashes is None else [hashes[i] for i in idx]) for s, idx in parts.items()}
    splits["test"] = ds["test"]
    files = {s: [pool.items[i] for i in idx] for s, idx in parts.items()}
    files["test"] = item_ids(ds, "test")
    meta = {**ds.meta, "files": files, "cv": key}
    if ds.meta.get("groups"):
        meta["groups"] = {**ds.meta["groups"],
                          **{s: [g.split(":", 1)[1] if g.startswith("group:") else None
                                 for g in (pool.groups[i] for i in idx)] for s, idx in parts.items()}}
    out = ImageDataset(name=ds.name, task=ds.task, class_names=list(ds.class_names), splits=splits, size=ds.size,
                       md5=ds.md5, source=ds.source, meta=meta)
    return out


def fold_of_config(ds: ImageDataset, cfg) -> ImageDataset:
    """``ds`` as the run of ``cfg`` sees it: fold ``cfg.fold`` of ``cfg.folds`` when set, else as is."""
    if getattr(cfg, "fold", None) is None:
        return ds
    return fold_dataset(ds, cfg.folds, cfg.fold, cfg.split_seed, cfg.group_regex)
