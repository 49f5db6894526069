"""Test accuracy of a recipe over seeds, for the comparison with the published MedMNIST v2 results (RESULTS.md).

Each seed is one ordinary ``train`` run: the model is chosen on validation only (the recipe's selection metric,
checkpoint ensemble and threshold rules) and the test split is scored once, at the end. Writes
``benchmarks/results/<dataset>-<recipe>.json`` (``--tag`` adds a suffix) with per-seed test/val metrics and wall
time, their means and standard deviations (ddof 1), the settings and the machine.

    MEDBENCH_DATA=../shared/data/medmnist python benchmarks/accuracy.py --dataset breastmnist --recipe fast \\
        --seeds 0 1 2 [--set KEY=VALUE ...] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from medbench.config import parse_overrides, resolve_config
from medbench.engine import describe_machine
from medbench.fileio import write_json
from medbench.run import train

ROOT = Path(__file__).resolve().parents[1]


def _stats(values: list[float | None]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def _acc_at_half(run: Path) -> float:
    """Test ACC at MedMNIST's 0.5 threshold, from the saved predictions (for runs whose headline is Youden's)."""
    from medbench.metrics import acc
    from medbench.rundir import read_prediction_table

    table = read_prediction_table(run / "predictions" / "test.csv")  # the true labels are in the file
    return acc(table.labels, table.scores, "binary")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--recipe", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--tag", default="", help="suffix for the result file name")
    ap.add_argument("--keep", type=Path, help="keep the run directories here (default: a temporary folder)")
    args = ap.parse_args()
    overrides = parse_overrides(args.overrides)
    rows, settings = [], None
    with tempfile.TemporaryDirectory() as tmp:
        where = args.keep or Path(tmp)
        for seed in args.seeds:
            cfg = resolve_config({"dataset": args.dataset, "recipe": args.recipe, "size": args.size, "seed": seed,
                                  **overrides}, where="accuracy")
            settings = cfg.model_dump(mode="json", exclude={"seed"})
            t0 = time.perf_counter()
            run = train(cfg, where / f"{args.dataset}-{args.recipe}{args.tag}-s{seed}", quiet=True, report=False)
            wall = time.perf_counter() - t0
            m = json.loads((run / "metrics.json").read_text())
            rows.append({"seed": seed, "test_auc": m["test"]["auc"], "test_acc": m["test"]["acc"],
                         "val_auc": m["val"]["auc"], "val_acc": m["val"]["acc"], "wall_s": round(wall, 1),
                         **({"threshold": m["threshold"]["headline"],
                             "test_acc_at_0.5": m["test"]["acc"] if m["threshold"]["headline"] == 0.5 else
                             _acc_at_half(run)} if "threshold" in m else {})})
            print(f"seed {seed}: test auc {m['test']['auc']:.4f} acc {m['test']['acc']:.4f} "
                  f"(val auc {m['val']['auc']:.4f}) in {wall:.0f} s", flush=True)
    out = {"dataset": args.dataset, "recipe": args.recipe, "size": args.size, "overrides": overrides,
           "seeds": rows, "machine": describe_machine(), "settings": settings}
    for key in ("test_auc", "test_acc", "val_auc"):
        out[f"{key}_mean"], out[f"{key}_std"] = _stats([r[key] for r in rows])
    out["wall_s_mean"] = statistics.fmean(r["wall_s"] for r in rows)
    path = ROOT / "benchmarks" / "results" / f"{args.dataset}-{args.recipe}{args.tag}.json"
    write_json(path, out)
    print(f"test auc {out['test_auc_mean']:.4f} ± {out['test_auc_std']:.4f}, acc {out['test_acc_mean']:.4f} ± "
          f"{out['test_acc_std']:.4f} over {len(rows)} seeds -> {path}")


if __name__ == "__main__":
    main()
