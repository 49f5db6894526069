"""Acceptance of `medbench tune`: 20 trials on BreastMNIST (the `fast` recipe's cnn5 at 28 px; lr, weight decay,
dropout and augmentation searched; median pruning) with 2 workers on this machine, then the best trial retrained
from best.yaml with the same torch threads, whose validation AUC must equal the trial's.

    MEDBENCH_DATA=../shared/data/medmnist python benchmarks/tune_breast.py --out /tmp/tune-breast \\
        --json benchmarks/results/tune-breast.json
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from medbench.engine import describe_machine
from medbench.fileio import write_json
from medbench.study.tune import run_tune

SPACE = Path(__file__).resolve().parents[1] / "examples" / "tune" / "breast-tune.yaml"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", type=Path, default=SPACE)
    p.add_argument("--out", type=Path, required=True, help="tune folder (removed first)")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    summary = run_tune(args.space, args.out, trials=args.trials, workers=args.workers, quiet=False)
    wall = time.perf_counter() - t0
    load1 = os.getloadavg()
    rows = list(csv.DictReader((args.out / "trials.csv").open()))
    best = summary["best"]
    threads = next(r["threads"] for r in rows if int(r["number"]) == best["number"])
    rep = args.out / "reproduced"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t1 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "medbench", "train", "--config", str(args.out / "best.yaml"), "--out",
                    str(rep), "--quiet", "--no-report"], check=True, env=env)
    again = json.loads((rep / "metrics.json").read_text())["val"]["auc"]
    result = {"space": str(args.space), "trials": args.trials, "workers": args.workers, "wall_s": round(wall, 1),
              "states": {s: sum(r["state"] == s for r in rows) for s in sorted({r["state"] for r in rows})},
              "epochs_run": sum(int(r["epochs_run"] or 0) for r in rows), "best": best,
              "reproduced_val_auc": again, "reproduced_exactly": again == best["value"],
              "reproduce_s": round(time.perf_counter() - t1, 1), "threads_per_worker": int(threads),
              "load_average_before": [round(x, 2) for x in load0], "load_average_after": [round(x, 2) for x in load1],
              "machine": describe_machine()}
    print(json.dumps(result, indent=2, default=str))
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
