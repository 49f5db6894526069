"""Generated images for the training split: from a generator (sampled with the run's seed) or a samples npz."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medbench.config import RunConfig
from medbench.data import ImageDataset, Split
from medbench.data.medmnist import ARRAYS_FIX, arrays_to_split, check_shapes
from medbench.data.npz import open_npz
from medbench.errors import MedbenchError
from medbench.gan.generator import GENERATOR, file_sha256, generate, load_generator


def class_counts(real: torch.Tensor, num_classes: int, total: int, mode: str) -> list[int]:
    """How many synthetic images per class: ``match`` keeps the real class mix; ``balance`` gives each new image
    to the class that is rarest so far (real + synthetic)."""
    counts = torch.bincount(real, minlength=num_classes).tolist()
    if mode == "match":
        shares = np.array(counts, dtype=float) / max(sum(counts), 1)
        out = np.floor(shares * total).astype(int)
        for i in np.argsort(-(shares * total - out))[: total - out.sum()]:  # largest remainders
            out[i] += 1
        return out.tolist()
    out = [0] * num_classes
    for _ in range(total):
        i = min(range(num_classes), key=lambda c: counts[c] + out[c])
        out[i] += 1
    return out


def _from_npz(path: Path, ds: ImageDataset) -> Split:
    fix = "write one with `medbench gan sample`"
    with open_npz(path, fix=fix) as npz:  # bounded: headers are checked before any data is decompressed
        if not {"train_images", "train_labels"} <= set(npz.files):
            raise MedbenchError(f"{path}: needs train_images and train_labels arrays (found {sorted(npz.files)}); "
                                f"{fix}")
        images, labels = npz.header("train_images"), npz.header("train_labels")
        check_shapes(path, "train", images, labels, ds.task, ds.class_names, ds.in_chans, ds.size, ARRAYS_FIX)
        return arrays_to_split(path, "train", npz.read("train_images"), npz.read("train_labels"), ds.task,
                               ds.class_names, ds.in_chans, ds.size)


def _pick(split: Split, counts: list[int], seed: int, path: Path) -> Split:
    """``counts[c]`` images of class c, drawn without replacement from a samples file."""
    gen = torch.Generator().manual_seed(seed)
    idx = []
    for c, want in enumerate(counts):
        have = (split.labels[:, 0] == c).nonzero().flatten()
        if want > len(have):
            raise MedbenchError(f"{path} holds {len(have)} images of class {c}, the run needs {want}: sample more "
                                f"with `medbench gan sample --per-class N` or lower synthetic_ratio")
        idx.append(have[torch.randperm(len(have), generator=gen)[:want]])
    idx = torch.cat(idx)
    return Split(split.images[idx], split.labels[idx])


def synthetic_split(cfg: RunConfig, ds: ImageDataset, device) -> tuple[Split, dict]:
    """``round(synthetic_ratio x n_train)`` generated images and labels, and what to record in config.yaml."""
    if ds.task not in ("binary", "multiclass", "ordinal"):
        raise MedbenchError(f"synthetic images need a single-label task; {ds.name} is {ds.task}")
    path = Path(cfg.synthetic)
    real = ds["train"].labels[:, 0]
    total = round(cfg.synthetic_ratio * len(real))
    counts = class_counts(real, ds.num_classes, total, cfg.synthetic_classes)
    if path.suffix == ".npz" and path.is_file():
        split = _pick(_from_npz(path, ds), counts, cfg.seed, path)
        file = path
    else:
        g, info = load_generator(path)
        file = path / GENERATOR if path.is_dir() else path
        if (info["size"], info["channels"]) != (ds.size, ds.in_chans) or info["class_names"] != ds.class_names:
            raise MedbenchError(f"{file} makes {info['channels']}-channel {info['size']} px images of "
                                f"{info['dataset']} ({len(info['class_names'])} classes); this run trains on "
                                f"{ds.in_chans}-channel {ds.size} px {ds.name} ({ds.num_classes} classes)")
        labels = torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in enumerate(counts)])
        split = Split(generate(g, labels, seed=cfg.seed), labels[:, None])
    record = {"path": str(path.resolve()), "sha256": file_sha256(file), "count": total,
              "per_class": dict(zip(ds.class_names, counts))}
    return Split(split.images.to(device), split.labels.to(device)), record
