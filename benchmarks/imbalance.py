"""Class imbalance: on a generated binary set with 5 % positives, what do ``--class-weights balanced``,
``--sampler balanced`` and ``--loss focal`` do to the test AUC and to the balanced accuracy at the 0.5 decision?

The images are grey noise; a positive holds a faint Gaussian spot (random place, random strength, some too
faint to see), a few negatives a fainter one: learnable, not perfectly. One fixed data set (1000 train, 500 val,
2000 test images at 16 px, small enough for 2 CPU cores), ``--seeds`` training seeds per arm, cnn5 for 5 epochs.
Prints a table (seed, AUC, balanced accuracy per arm, then mean and sd) and writes
``benchmarks/results/imbalance.json`` (``--tag`` adds a suffix).

    python benchmarks/imbalance.py [--seeds 3] [--epochs 5] [--model cnn5] [--out /tmp/imbalance-runs]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from medbench.data import ImageDataset
from medbench.data.dataset import Split
from medbench.engine import describe_machine
from medbench.fileio import write_json
from medbench.run import train
from medbench.rundir import read_metrics

ROOT = Path(__file__).resolve().parents[1]
ARMS = {
    "none": {},
    "balanced": {"class_weights": "balanced"},
    "sampler": {"sampler": "balanced"},
    "focal": {"loss": "focal", "focal_gamma": 2.0},
}
SIZES = {"train": 1000, "val": 500, "test": 2000}
SIZE = 16  # px: small enough for a few minutes on 2 CPU cores


def make_split(n: int, rng: np.random.Generator, positive_share: float = 0.05, size: int = SIZE) -> Split:
    """``n`` images, ``positive_share`` of them positive (exactly, rounded), in random order."""
    pos = int(round(n * positive_share))
    labels = rng.permutation(np.r_[np.ones(pos), np.zeros(n - pos)]).astype(np.int64)
    img = rng.normal(100.0, 25.0, (n, size, size))
    yy, xx = np.mgrid[0:size, 0:size]
    # positives: a spot of strength 10-40 grey levels (the noise sd is 25); 10 % of negatives: a fainter one, 0-20
    faint = (labels == 0) & (rng.random(n) < 0.10)
    strength = np.where(labels == 1, rng.uniform(10, 40, n), np.where(faint, rng.uniform(0, 20, n), 0.0))
    cy, cx = rng.uniform(3, size - 3, n), rng.uniform(3, size - 3, n)
    spots = np.exp(-((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2) / (2 * 2.0 ** 2))
    img += strength[:, None, None] * spots
    images = torch.from_numpy(img.clip(0, 255).astype(np.uint8)[:, None])
    return Split(images, torch.from_numpy(labels[:, None]))


def make_dataset(seed: int = 2022) -> ImageDataset:
    rng = np.random.default_rng(seed)
    splits = {s: make_split(n, rng) for s, n in SIZES.items()}
    return ImageDataset("generated-imbalance", "binary", ["negative", "positive"], splits, SIZE,
                        source=f"benchmarks/imbalance.py make_dataset(seed={seed})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--model", default="cnn5")
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated: " + ", ".join(ARMS))
    ap.add_argument("--out", type=Path, default=None, help="where the runs go (default: a temporary folder)")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    torch.set_num_threads(min(torch.get_num_threads(), os.cpu_count() or 1))
    ds = make_dataset()
    arms = args.arms.split(",")
    base = {"dataset": ds.name, "model": args.model, "size": SIZE, "epochs": args.epochs, "batch_size": 32,
            "lr": 1e-3, "schedule": "cosine", "device": "cpu"}
    results: list[dict] = []
    wall = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        for seed in range(args.seeds):
            for arm in arms:
                t0 = time.perf_counter()
                run = train({**base, **ARMS[arm], "seed": seed}, root / f"{arm}-s{seed}", dataset=ds, quiet=True,
                            report=False)
                test = read_metrics(run)["test"]
                results.append({"seed": seed, "arm": arm, "auc": test["auc"], "balanced_acc": test["balanced_acc"],
                                "sensitivity": test.get("sensitivity"), "specificity": test.get("specificity"),
                                "seconds": round(time.perf_counter() - t0, 1)})
                print(f"seed {seed} {arm:9s} AUC {test['auc']:.4f}  balanced acc {test['balanced_acc']:.4f}  "
                      f"sens {test.get('sensitivity', float('nan')):.3f}  ({results[-1]['seconds']} s)", flush=True)
    wall = time.perf_counter() - wall
    table = format_table(results, arms, args.seeds)
    print("\n" + table)
    load = os.getloadavg()[0]
    print(f"\n{wall:.0f} s wall; load average {load:.1f} on {os.cpu_count()} CPUs ({describe_machine()})")
    out = ROOT / "benchmarks" / "results" / f"imbalance{args.tag}.json"
    write_json(out, {"data": {"train": SIZES["train"], "val": SIZES["val"], "test": SIZES["test"],
                              "positive_share": 0.05, "source": ds.source},
                     "settings": base, "arms": {a: ARMS[a] for a in arms}, "runs": results,
                     "summary": summary(results, arms), "wall_s": round(wall, 1), "load_average": load,
                     "machine": describe_machine(), "table": table})
    print(f"wrote {out}")


def summary(results: list[dict], arms: list[str]) -> dict:
    out = {}
    for arm in arms:
        rows = [r for r in results if r["arm"] == arm]
        out[arm] = {k: {"mean": round(statistics.fmean(r[k] for r in rows), 4),
                        "sd": round(statistics.stdev([r[k] for r in rows]), 4) if len(rows) > 1 else 0.0}
                    for k in ("auc", "balanced_acc")}
    return out


def format_table(results: list[dict], arms: list[str], seeds: int) -> str:
    head = "seed  " + "  ".join(f"{a + ' AUC':>14s} {a + ' bACC':>14s}" for a in arms)
    lines = [head]
    for seed in range(seeds):
        cells = []
        for arm in arms:
            r = next(r for r in results if r["seed"] == seed and r["arm"] == arm)
            cells.append(f"{r['auc']:>14.4f} {r['balanced_acc']:>14.4f}")
        lines.append(f"{seed:<4d}  " + "  ".join(cells))
    s = summary(results, arms)
    lines.append("mean  " + "  ".join(f"{s[a]['auc']['mean']:>14.4f} {s[a]['balanced_acc']['mean']:>14.4f}"
                                      for a in arms))
    lines.append("sd    " + "  ".join(f"{s[a]['auc']['sd']:>14.4f} {s[a]['balanced_acc']['sd']:>14.4f}"
                                      for a in arms))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
