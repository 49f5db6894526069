"""Generated images for the training split: from a generator (sampled with the run's seed) or a samples npz, used
only when their quality record passes the bar of :func:`quality_bar` (or the run says --synthetic-force)."""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch

from medbench.config import RunConfig
from medbench.data import ImageDataset, Split
from medbench.data.medmnist import ARRAYS_FIX, arrays_to_split, check_shapes
from medbench.data.npz import open_npz
from medbench.errors import MedbenchError
from medbench.gan.generator import GENERATOR, QUALITY, QUALITY_KEY, file_sha256, generate, load_generator

MARGIN = 0.1  # above chance, for every class: see quality_bar


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


def _from_npz(path: Path, ds: ImageDataset) -> tuple[Split, dict | None]:
    """The samples, and the quality record `gan sample` embedded (None when the file has none)."""
    fix = "write one with `medbench gan sample`"
    with open_npz(path, fix=fix) as npz:  # bounded: headers are checked before any data is decompressed
        if not {"train_images", "train_labels"} <= set(npz.files):
            raise MedbenchError(f"{path}: needs train_images and train_labels arrays (found {sorted(npz.files)}); "
                                f"{fix}")
        images, labels = npz.header("train_images"), npz.header("train_labels")
        check_shapes(path, "train", images, labels, ds.task, ds.class_names, ds.in_chans, ds.size, ARRAYS_FIX)
        embedded = None
        if QUALITY_KEY in npz.files:
            try:
                embedded = json.loads(npz.read(QUALITY_KEY, budget=1 << 20).tobytes().decode())
            except (ValueError, UnicodeDecodeError):
                raise MedbenchError(f"{path}: its {QUALITY_KEY} record is damaged; sample it again with "
                                    f"`medbench gan sample`") from None
        return arrays_to_split(path, "train", npz.read("train_images"), npz.read("train_labels"), ds.task,
                               ds.class_names, ds.in_chans, ds.size), embedded


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
        samples, embedded = _from_npz(path, ds)
        quality = check_quality(*_npz_quality(path, embedded), ds.class_names, cfg.synthetic_force)
        split = _pick(samples, counts, cfg.seed, path)
        file = path
    else:
        g, info = load_generator(path)
        file = path / GENERATOR if path.is_dir() else path
        if (info["size"], info["channels"]) != (ds.size, ds.in_chans) or info["class_names"] != ds.class_names:
            raise MedbenchError(f"{file} makes {info['channels']}-channel {info['size']} px images of "
                                f"{info['dataset']} ({len(info['class_names'])} classes); this run trains on "
                                f"{ds.in_chans}-channel {ds.size} px {ds.name} ({ds.num_classes} classes)")
        quality = check_quality(*_generator_quality(file), ds.class_names, cfg.synthetic_force)
        labels = torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in enumerate(counts)])
        split = Split(generate(g, labels, seed=cfg.seed), labels[:, None])
    record = {"path": str(path.resolve()), "sha256": file_sha256(file), "count": total,
              "per_class": dict(zip(ds.class_names, counts)), "quality": quality}
    return Split(split.images.to(device), split.labels.to(device)), record


# ---- the quality gate ----

def quality_bar(num_classes: int) -> float:
    """The least share of a class's generated images that the judge (``quality.json``: a classifier trained on
    the real images) must assign to that class, for every class: chance, 1/K, plus :data:`MARGIN` (0.1).

    Why this bar: images without class signal are assigned to the K classes in shares that sum to about 1,
    however the judge leans, so they cannot reach 1/K + 0.1 in every class; a generator passes only when its
    class conditioning has been learnt (after 5 epochs on BreastMNIST it had not: 0.000 of "malignant" samples
    looked malignant). 0.1 is about 3 standard errors of a share at chance from the judge's 200 samples per
    class (binary: sqrt(0.25 / 200) = 0.035), so a no-signal class passes by luck about 0.2 % of the time. It is a
    floor, not a mark of realistic images; and a class the judge cannot recognise in real images either (its
    ``real_test_recall`` below the bar) fails too, which the error shows.
    """
    return 1.0 / num_classes + MARGIN


def _generator_quality(file: Path) -> tuple[dict | None, str, tuple[str, str]]:
    """The generator's quality.json (None when absent or written for other weights), where it is, and what to
    say (the problem, the fix) when it is not usable."""
    qpath = file.parent / QUALITY
    retrain = "retrain it with a judge (`medbench gan train --judge-epochs N`, N >= 1)"
    if not qpath.is_file():
        return None, str(qpath), (f"{qpath} is missing (`gan train --judge-epochs 0` skips it): whether the "
                                  f"generated images look like their classes is unknown", retrain)
    try:
        quality = json.loads(qpath.read_text())
    except (OSError, ValueError) as e:
        raise MedbenchError(f"{qpath}: cannot read it ({e}); {retrain}") from None
    judged = quality.get("generator_sha256") if isinstance(quality, dict) else None
    if not isinstance(quality, dict) or (judged and judged != file_sha256(file)):
        return None, str(qpath), (f"{qpath} does not describe {file} (other weights, sha256 differs): its "
                                  f"quality is unknown", retrain)
    return quality, str(qpath), ("", "")


def _npz_quality(path: Path, embedded: dict | None) -> tuple[dict | None, str, tuple[str, str]]:
    quality = (embedded or {}).get("quality") if isinstance(embedded, dict) else None
    if not isinstance(quality, dict):
        return None, str(path), (f"{path} has no quality record (`medbench gan sample` copies the generator's "
                                 f"quality.json into the file): whether its images look like their classes is "
                                 f"unknown", "sample it from a `gan train` folder that has quality.json")
    return quality, f"{path} (the quality.json that `gan sample` copied in)", ("", "")


def check_quality(quality: dict | None, where: str, unknown: tuple[str, str], class_names: list[str],
                  force: bool) -> dict:
    """What config.yaml records about the images' quality. Below the bar or of unknown quality (``unknown``:
    the problem and its fix) they are refused in one line, unless ``force``: then a warning, recorded
    (``forced``, ``warning``)."""
    bar = quality_bar(len(class_names))
    rec: dict = {"source": where, "bar": round(bar, 4),
                 "rule": f"every class's generated images assigned to it by the judge at least {bar:.3f} of the "
                         f"time (chance 1/{len(class_names)} + {MARGIN})", "passed": False, "forced": False}
    problem, fix = unknown
    if quality is not None:
        per = quality.get("per_class") or {}
        shares = {c: (per.get(c) or {}).get("generated_as_intended") for c in class_names}
        rec["generated_as_intended"] = shares
        rec["below_bar"] = {c: v for c, v in shares.items() if not _finite(v) or v < bar}
        if rec["below_bar"]:
            problem = _below_bar_text(where, rec["below_bar"], per, bar, len(class_names))
            fix = "train the generator longer (`medbench gan train --epochs`)"
    if not problem:
        rec["passed"] = True
        return rec
    if not force:
        raise MedbenchError(f"{problem}; {fix}, or pass --synthetic-force to use them anyway")
    rec["forced"] = True
    rec["warning"] = f"--synthetic-force: generated images used despite the quality check ({problem})"
    warnings.warn(rec["warning"], stacklevel=3)
    return rec


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _below_bar_text(where: str, below: dict, per: dict, bar: float, k: int) -> str:
    """The worst class in words (with the judge's recall of real ones), the others below the bar listed."""
    order = sorted(below, key=lambda c: below[c] if _finite(below[c]) else -1.0)
    worst, v = order[0], below[order[0]]
    real = (per.get(worst) or {}).get("real_test_recall")
    seen = f" (it recognises {real:.3f} of real ones)" if _finite(real) else ""
    first = (f"the judge assigns {v:.3f} of the generated '{worst}' images to '{worst}'{seen}" if _finite(v)
             else f"it has no share for class '{worst}'")
    others = ", ".join(f"'{c}' {below[c]:.3f}" if _finite(below[c]) else f"'{c}' none" for c in order[1:])
    return f"{where}: {first}, below the bar {bar:.3f} (chance 1/{k} + {MARGIN})" + \
        (f"; also below: {others}" if others else "")
