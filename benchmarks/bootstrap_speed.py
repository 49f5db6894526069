"""Speed of the vectorised bootstrap: ``bootstrap_metrics`` (every scalar metric, 1000 resamples) on three splits.

- multi-label 22,433 x 14 (ChestMNIST's test split size): random labels with 5-30 % positives per label, random
  scores (the acceptance case: at most 5 s on a 2-core machine);
- binary 624 samples (PneumoniaMNIST's test split) and 5-class ordinal 400 samples (RetinaMNIST's test split).

Each case is timed ``--repeats`` times (best and median reported; the first call includes one-off warm-up) and
compared with the plain loop a user would write: materialise a resample, call ``compute_metrics``, repeat
(timed on ``--loop-replicates`` resamples and scaled to 1000). Prints a table and, as its last line, one JSON
object. Usage: ``python benchmarks/bootstrap_speed.py [--threads 2]``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from medbench.metrics import bootstrap_metrics, compute_metrics, resample_counts

REPLICATES = 1000


def make_case(name: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    if name == "multilabel":
        n, labels = 22433, 14
        prevalence = rng.uniform(0.05, 0.30, labels)
        y = (rng.random((n, labels)) < prevalence).astype(np.int64)
        return y, rng.random((n, labels)), "multilabel"
    if name == "binary":
        n = 624
        y = rng.integers(0, 2, (n, 1))
        p = np.clip(rng.random(n) * 0.8 + 0.2 * y[:, 0], 0, 1)
        return y, np.stack([1 - p, p], 1), "binary"
    n, k = 400, 5
    y = rng.integers(0, k, (n, 1))
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y[:, 0]]
    return y, np.exp(logits) / np.exp(logits).sum(1, keepdims=True), "ordinal"


def time_bootstrap(y, s, task, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        bootstrap_metrics(y, s, task, replicates=REPLICATES, seed=0)
        times.append(time.perf_counter() - start)
    return times


def time_loop(y, s, task, replicates: int) -> float:
    """Seconds for 1000 resamples with the explicit loop, measured on ``replicates`` of them."""
    counts = resample_counts(len(y), replicates, seed=0)
    rows = np.arange(len(y))
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for b in range(replicates):
            idx = np.repeat(rows, counts[:, b])
            compute_metrics(y[idx], s[idx], task)
    return (time.perf_counter() - start) / replicates * REPLICATES


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="torch and BLAS threads")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--loop-replicates", type=int, default=20, help="resamples the explicit loop is timed on")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    rows = []
    with threadpool_limits(limits=args.threads), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("multilabel", "binary", "ordinal"):
            y, s, task = make_case(name)
            times = time_bootstrap(y, s, task, args.repeats)
            loop = time_loop(y, s, task, args.loop_replicates if name == "multilabel" else 4 * args.loop_replicates)
            best = min(times)
            rows.append({"case": name, "task": task, "n": int(len(y)), "columns": int(s.shape[1]),
                         "first_s": round(times[0], 3), "best_s": round(best, 3),
                         "median_s": round(statistics.median(times), 3), "loop_s_scaled": round(loop, 1),
                         "speedup": round(loop / best, 1)})
    result = {"replicates": REPLICATES, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
              "loadavg_before": [round(v, 2) for v in load_before],
              "loadavg_after": [round(v, 2) for v in os.getloadavg()],
              "acceptance_multilabel_best_s": rows[0]["best_s"],
              "acceptance_met": rows[0]["best_s"] <= 5.0, "cases": rows}

    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"bootstrap_metrics, {REPLICATES} resamples, every scalar metric ({result['threads']} threads, "
                    f"load average before {result['loadavg_before'][0]})")
    for col in ("case", "n x columns", "first (s)", "best (s)", "median (s)", "explicit loop (s, scaled)", "speed-up"):
        t.add_column(col)
    for r in rows:
        t.add_row(f"{r['case']} ({r['task']})", f"{r['n']} x {r['columns']}", f"{r['first_s']:.2f}",
                  f"{r['best_s']:.2f}", f"{r['median_s']:.2f}", f"{r['loop_s_scaled']:.1f}", f"{r['speedup']:.0f}x")
    Console(width=140).print(t)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
