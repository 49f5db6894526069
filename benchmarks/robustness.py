"""Corruption robustness of trained runs, timed: ``score_corruptions`` on each run directory (its test split clean
and under every corruption of the preset at severities 1-5), printing the AUC and ACC tables, the wall and CPU
seconds and the machine; writes ``benchmarks/results/robustness-<dataset>.json`` (``--tag`` adds a suffix).

Each evaluation goes to the run's own ``evaluations/corruptions-PRESET[-k]/robustness.json`` as
``medbench evaluate RUN --corruptions`` would write it.

    medbench train --dataset breastmnist --model cnn5 --epochs 5 --out runs/breast
    MEDBENCH_DATA=../shared/data/medmnist python benchmarks/robustness.py runs/breast [runs/retina ...] \\
        [--preset auto] [--seed 0]
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from medbench.engine import describe_machine
from medbench.fileio import write_json
from medbench.robustness import format_table, score_corruptions

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+", help="run directories made by medbench train")
    ap.add_argument("--preset", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="", help="suffix for the result file name")
    args = ap.parse_args()
    for run in args.runs:
        wall, cpu = time.perf_counter(), time.process_time()
        rec = score_corruptions(run, args.preset, seed=args.seed, quiet=False)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        load = os.getloadavg()[0]
        print(f"\n{run} ({rec['dataset']}, {rec['model']}): {wall:.1f} s wall, {cpu:.1f} s CPU, "
              f"load average {load:.1f} on {os.cpu_count()} CPUs")
        print(format_table(rec, "auc"))
        print(format_table(rec, "acc"))
        out = ROOT / "benchmarks" / "results" / f"robustness-{rec['dataset']}{args.tag}.json"
        write_json(out, {"run": str(run), "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "load_average": load,
                         "machine": describe_machine(), "robustness": rec})
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
