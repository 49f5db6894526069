"""Wall time until a recipe first reaches the published MedMNIST v2 ResNet-18 (28) test AUC and ACC.

The model is the one chosen on validation so far (best epoch by the recipe's selection metric); the test split
is scored only when that choice changes, and the time spent scoring it is not counted. A seed that does not reach
the target within ``--cap-minutes`` reports its time as a lower bound.

    MEDBENCH_DATA=../shared/data/medmnist python benchmarks/time_to_accuracy.py --dataset breastmnist \\
        --recipe medmnist-v2 --precision fp32 --seeds 0 1 2 --cap-minutes 60
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from medbench.build import build_preprocess as _preprocess
from medbench.build import build_task
from medbench.config import parse_overrides, resolve_config
from medbench.data import load_dataset
from medbench.engine import describe_machine, predict_logits
from medbench.fileio import write_json
from medbench.metrics import compute_metrics
from medbench.run import train

# MedMNIST v2 (Yang et al., 2023), ResNet-18 (28): test AUC, ACC
TARGETS = {"pneumoniamnist": (0.944, 0.854), "breastmnist": (0.901, 0.863), "retinamnist": (0.717, 0.524)}


def run_seed(dataset: str, recipe: str, seed: int, cap_s: float, overrides: dict) -> dict:
    cfg = resolve_config({"dataset": dataset, "recipe": recipe, "seed": seed, **overrides})
    ds = load_dataset(dataset, cfg.size, progress=False)
    task, prep = build_task(cfg, ds), _preprocess(cfg, ds)
    target_auc, target_acc = TARGETS[dataset]
    state = {"reached_s": None, "epoch": None, "test": None, "elapsed_s": 0.0}

    def on_epoch(info: dict) -> bool:
        state["elapsed_s"] = info["train_seconds"]
        if info["is_best"]:
            model = info["model"]
            device = next(model.parameters()).device
            split = type(ds["test"])(ds["test"].images.to(device), ds["test"].labels.to(device))
            logits = predict_logits(model, split, prep, cfg.eval_batch_size)
            state["test"] = compute_metrics(ds["test"].labels.numpy(), task.scores(logits).double().numpy(), task.name)
        test = state["test"]
        if test and test["auc"] is not None and test["auc"] >= target_auc and test["acc"] >= target_acc:
            state["reached_s"], state["epoch"] = info["train_seconds"], info["epoch"]
            return True
        return info["train_seconds"] >= cap_s

    with tempfile.TemporaryDirectory() as tmp:
        train(cfg, Path(tmp) / "run", quiet=True, on_epoch=on_epoch, dataset=ds)
    return {"seed": seed, "reached": state["reached_s"] is not None,
            "time_s": round(state["reached_s"] if state["reached_s"] is not None else state["elapsed_s"], 1),
            "epoch": state["epoch"], "test_auc": state["test"]["auc"], "test_acc": state["test"]["acc"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True, choices=sorted(TARGETS))
    ap.add_argument("--recipe", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--cap-minutes", type=float, default=60)
    ap.add_argument("--precision", help="override the precision (the official pipeline runs fp32)")
    ap.add_argument("--epochs", type=int, help="override the recipe's epochs (the schedule length)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override any RunConfig field (YAML value), e.g. --set batch_size=64")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    overrides = {k: v for k, v in {"precision": args.precision, "epochs": args.epochs}.items() if v is not None}
    overrides.update(parse_overrides(args.set))
    rows = [run_seed(args.dataset, args.recipe, s, args.cap_minutes * 60, overrides) for s in args.seeds]
    times = np.array([r["time_s"] for r in rows])
    result = {"dataset": args.dataset, "recipe": args.recipe, "overrides": overrides,
              "target_auc": TARGETS[args.dataset][0], "target_acc": TARGETS[args.dataset][1],
              "seeds": rows, "all_reached": all(r["reached"] for r in rows),
              "time_s_mean": round(float(times.mean()), 1),
              "time_s_is_lower_bound": not all(r["reached"] for r in rows),
              "machine": describe_machine()}
    tag = "-".join([args.dataset, args.recipe, *(f"{k}{v}" for k, v in overrides.items())])
    write_json(args.out / f"tta-{tag}.json", result)
    for r in rows:
        status = f"reached in epoch {r['epoch']}" if r["reached"] else "not reached (lower bound)"
        print(f"seed {r['seed']}: {r['time_s']:8.1f} s  {status}; test auc {r['test_auc']:.4f} acc {r['test_acc']:.4f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
