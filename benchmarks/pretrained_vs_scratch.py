"""Pretrained vs scratch for one model on one dataset, same budget (recipe, epochs, seeds), test AUC/ACC per seed.

    MEDBENCH_DATA=../shared/data/medmnist python benchmarks/pretrained_vs_scratch.py --dataset breastmnist \\
        --model tf_efficientnet_lite0 --epochs 15 --seeds 0 1 2 --set input_adapt=resize --set input_size=224
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from medbench.config import parse_overrides, resolve_config
from medbench.engine import describe_machine
from medbench.fileio import write_json
from medbench.run import train


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    extra = parse_overrides(args.set)
    result = {"dataset": args.dataset, "model": args.model, "epochs": args.epochs, "settings": extra,
              "machine": describe_machine(), "arms": {}}
    for arm, pretrained in (("scratch", False), ("pretrained", True)):
        rows = []
        for seed in args.seeds:
            cfg = resolve_config({"dataset": args.dataset, "model": args.model, "epochs": args.epochs,
                                  "seed": seed, "pretrained": pretrained, **extra})
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                out = train(cfg, Path(tmp) / "run", quiet=True)
                m = json.loads((out / "metrics.json").read_text())
            rows.append({"seed": seed, "val_auc": m["val"]["auc"], "test_auc": m["test"]["auc"],
                         "test_acc": m["test"]["acc"], "wall_s": round(time.perf_counter() - t0, 1)})
            print(arm, rows[-1], flush=True)
        auc, acc = np.array([r["test_auc"] for r in rows]), np.array([r["test_acc"] for r in rows])
        result["arms"][arm] = {"seeds": rows, "test_auc_mean": float(auc.mean()), "test_auc_std": float(auc.std()),
                               "test_acc_mean": float(acc.mean()), "test_acc_std": float(acc.std())}
    tag = "-".join([args.dataset, args.model, "pretrained-vs-scratch", *(f"{k}{v}" for k, v in extra.items())])
    write_json(args.out / f"{tag}.json", result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
