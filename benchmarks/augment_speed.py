"""Augmentation cost against one training step, per preset, for grey and RGB 28 px batches.

Each preset augments a 128-image uint8 batch of real images on the CPU; the reference is one ResNet-18 training
step (forward, backward, optimiser) on the same batch in medbench's engine (channels-last, the ``auto``
precision), and, for scale, one step of the 0.46 M-parameter ``cnn5``. Median of ``--reps`` timings each.
Prints a table and, last, one JSON line; ``--out`` also writes that JSON.
Usage: ``MEDBENCH_DATA=../shared/data/medmnist python benchmarks/augment_speed.py [--reps 20]``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from medbench.augment import PRESETS, BatchMix, build_augment
from medbench.data import load_dataset
from medbench.data.loader import Preprocess
from medbench.engine import Precision, describe_machine
from medbench.models import create_model


def median_seconds(fn, reps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def train_step_seconds(model_name: str, x: torch.Tensor, reps: int) -> float:
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=2, in_chans=x.shape[1], img_size=28)
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    prep = Preprocess(0.5, 0.5, channels_last=True)
    precision = Precision(torch.device("cpu"), "auto")
    y = torch.randint(0, 2, (len(x),))

    def step():
        with precision.autocast():
            loss = F.cross_entropy(model(prep(x)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return median_seconds(step, reps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--step-reps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "augment-speed.json")
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    batches = {"grey": load_dataset("breastmnist")["train"].images[:args.batch],
               "rgb": load_dataset("retinamnist")["train"].images[:args.batch]}
    result = {"machine": describe_machine(), "batch": args.batch, "size": 28, "threads": torch.get_num_threads(),
              "precision": Precision(torch.device("cpu"), "auto").name, "step_s": {}, "augment_s": {}, "ratio": {}}
    for kind, x in batches.items():
        result["step_s"][kind] = {m: round(train_step_seconds(m, x, args.step_reps), 4) for m in ("resnet18", "cnn5")}
    print(f"{'preset':<22} {'grey ms':>8} {'rgb ms':>8} {'% of ResNet-18 step (grey/rgb)':>32} {'% of cnn5 step':>16}")
    mix = BatchMix(mixup=0.2, cutmix=1.0)
    for name in [p for p in PRESETS if p != "none"] + ["mixup+cutmix"]:
        row = {}
        for kind, x in batches.items():
            if name == "mixup+cutmix":
                xf, y = x.float(), torch.zeros(len(x), 1, dtype=torch.long)
                row[kind] = median_seconds(lambda xf=xf, y=y: mix(xf, y), args.reps)
            else:
                torch.manual_seed(0)
                aug = build_augment(name)
                row[kind] = median_seconds(lambda aug=aug, x=x: aug(x), args.reps)
        result["augment_s"][name] = {k: round(v, 5) for k, v in row.items()}
        result["ratio"][name] = {k: round(v / result["step_s"][k]["resnet18"], 4) for k, v in row.items()}
        cnn = [v / result["step_s"][k]["cnn5"] * 100 for k, v in row.items()]
        print(f"{name:<22} {row['grey'] * 1e3:>8.1f} {row['rgb'] * 1e3:>8.1f} "
              f"{result['ratio'][name]['grey'] * 100:>15.1f} / {result['ratio'][name]['rgb'] * 100:<14.1f} "
              f"{cnn[0]:>7.0f} / {cnn[1]:<6.0f}")
    s = result["step_s"]
    print(f"training step, batch {args.batch}, 28 px: ResNet-18 {s['grey']['resnet18'] * 1e3:.0f} / "
          f"{s['rgb']['resnet18'] * 1e3:.0f} ms, cnn5 {s['grey']['cnn5'] * 1e3:.0f} / {s['rgb']['cnn5'] * 1e3:.0f} ms "
          f"(grey / rgb; {result['precision']}; {result['machine']})")
    result["max_ratio_resnet18"] = max(max(v.values()) for v in result["ratio"].values())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
