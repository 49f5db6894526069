"""Peak memory (RSS) of a training run as the data grows: PneumoniaMNIST and a 200,000-image 28 px dataset.

Each case runs in a fresh process: the baseline is the RSS after importing medbench and torch; then one
``train`` (``--epochs`` epochs of ``--model``, evaluation of every split, 1000-resample bootstrap CIs of every
metric, predictions files, model card) and the peak RSS (``ru_maxrss``) is read. The generated dataset holds
uint8 noise images with a class signal in their brightness, built in memory (no npz on disk), with
MedMNIST-like split proportions.

Usage: ``python benchmarks/memory.py [--n 200000] [--epochs 1] [--model cnn2]``; writes
``benchmarks/results/memory.json`` and prints one line per case.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
import medbench
from medbench.run import train
case, n, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
model, out, data = sys.argv[4], sys.argv[5], sys.argv[6]
kb = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
base = kb()
cfg = {"model": model, "epochs": epochs, "bootstrap": 1000, "seed": 0}
t0 = time.perf_counter()
if case == "pneumoniamnist":
    ds = medbench.load_dataset("pneumoniamnist", 28, data_dir=data)
else:
    from medbench.data import ImageDataset, Split
    g = torch.Generator().manual_seed(0)
    sizes = {"train": int(n * 0.7), "val": int(n * 0.1)}
    sizes["test"] = n - sizes["train"] - sizes["val"]
    splits = {}
    for s, m in sizes.items():
        y = torch.randint(0, 2, (m, 1), generator=g)
        x = torch.empty(m, 1, 28, 28, dtype=torch.uint8)
        for i in range(0, m, 10000):  # in blocks: the float noise must not dominate the peak being measured
            k = min(10000, m - i)
            level = 100 + 40 * y[i:i + k].view(k, 1, 1, 1)
            x[i:i + k] = (torch.randn(k, 1, 28, 28, generator=g) * 40 + level).clamp(0, 255)
        splits[s] = Split(x, y)
    ds = ImageDataset("generated", "binary", ["a", "b"], splits, 28)
data_bytes = sum(sp.images.numel() + sp.labels.numel() * 8 for sp in ds.splits.values())
train({**cfg, "dataset": ds.name if case == "pneumoniamnist" else "generated"}, out, dataset=ds, quiet=True,
      report=False)
print(json.dumps({"case": case, "images": sum(len(sp) for sp in ds.splits.values()), "data_mb": data_bytes / 2**20,
                  "baseline_mb": base / 1024, "peak_mb": kb() / 1024, "wall_s": time.perf_counter() - t0}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--model", default="cnn2")
    ap.add_argument("--data-dir", default=os.environ.get("MEDBENCH_DATA", str(ROOT.parent / "shared" / "data" /
                                                                           "medmnist")))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "memory.json")
    args = ap.parse_args()
    rows = []
    for case, n in (("pneumoniamnist", 0), ("generated", args.n)):
        with tempfile.TemporaryDirectory() as tmp:
            r = subprocess.run([sys.executable, "-c", CHILD, case, str(n), str(args.epochs), args.model,
                                str(Path(tmp) / "run"), args.data_dir], capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"{case} failed:\n{r.stderr[-3000:]}")
        row = json.loads(r.stdout.strip().splitlines()[-1])
        row["growth_mb"] = row["peak_mb"] - row["baseline_mb"]
        rows.append({k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()})
        print(f"{row['case']}: {row['images']} images ({row['data_mb']:.0f} MB of tensors), peak RSS "
              f"{row['peak_mb']:.0f} MB ({row['growth_mb']:.0f} MB above the {row['baseline_mb']:.0f} MB after "
              f"imports), {row['wall_s']:.0f} s", flush=True)
    result = {"benchmark": "memory", "model": args.model, "epochs": args.epochs, "bootstrap": 1000,
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
              "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
