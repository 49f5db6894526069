"""A CSV dataset of real images for the subgroup tests: BreastMNIST's images written to PNG, its official splits in
a ``split`` column, and generated ``sex`` and ``site`` columns (site blank on some rows)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

SPLIT_NAMES = {"train": "train", "val": "val", "test": "test"}


def write_breast_csv(folder: Path, medmnist_dir: Path, *, per_split: int | None = None, seed: int = 0) -> Path:
    """``folder/labels.csv`` (columns path, label, split, sex, site) beside ``folder/img/SPLIT_I.png``; returns the
    CSV. ``per_split``: keep only the first so many images of each split."""
    data = np.load(medmnist_dir / "breastmnist.npz")
    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for split in SPLIT_NAMES:
        images, labels = data[f"{split}_images"], data[f"{split}_labels"][:, 0]
        n = len(images) if per_split is None else min(per_split, len(images))
        for i in range(n):
            rel = f"img/{split}_{i:04d}.png"
            Image.fromarray(images[i]).save(folder / rel)
            sex = "F" if rng.random() < 0.55 else "M"
            site = "" if i % 10 == 3 else ("A" if rng.random() < 0.5 else "B")
            rows.append({"path": rel, "label": int(labels[i]), "split": split, "sex": sex, "site": site})
    out = folder / "labels.csv"
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "split", "sex", "site"])
        w.writeheader()
        w.writerows(rows)
    return out


def read_column(csv_path: Path, col: str) -> dict[str, str]:
    """path -> value of ``col``, read with the csv module (independently of medbench)."""
    with open(csv_path, newline="", encoding="utf-8") as f:
        return {r["path"]: r[col] for r in csv.DictReader(f)}
