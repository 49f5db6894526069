"""The duration estimate against the real wall time of the run it was made for (the issue-22 acceptance: within
+-30 % for a 10-epoch run on this machine).

Each config is one ordinary ``medbench.run.train`` (not quiet: the estimate is made by ``announce`` before the first
epoch, as on the command line). Recorded per run: the estimate, the measured wall time of what it covers (from the
end of the warm-up to the end of the run: training, evaluation, report), the ratio, the whole call's wall time
(with the data loading and the warm-up itself) and the load average before and after (the machine is shared: a
load that changes during the run moves the real time and not the estimate). Also the dry-run estimate of the
default recipe on BreastMNIST (100 epochs of ResNet-18) with its hint. Writes
``benchmarks/results/estimate<tag>.json``.

    MEDBENCH_DATA=../shared/data/medmnist python benchmarks/estimate.py [--configs breast-resnet18 breast-cnn5]
        [--repeats 2] [--tag -1]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import medbench.training as training
from medbench.build import build_dataset
from medbench.config import resolve_config
from medbench.engine import describe_machine
from medbench.estimate import estimate_config, long_run_hint
from medbench.fileio import write_json
from medbench.run import train

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "breast-resnet18": {"dataset": "breastmnist", "model": "resnet18", "epochs": 10},
    "breast-cnn5": {"dataset": "breastmnist", "recipe": "fast", "epochs": 10},
    "pneumonia-cnn5": {"dataset": "pneumoniamnist", "recipe": "fast", "epochs": 10},
    "breast-cnn5-64": {"dataset": "breastmnist", "recipe": "fast", "epochs": 10, "size": 64},
}


def load() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def one(name: str, settings: dict, work: Path) -> dict:
    """Train ``settings`` once, catching the estimate that ``announce`` makes before the first epoch."""
    seen: dict = {}
    announce = training.announce

    def catching(loop, quiet, first_epoch=1):
        est = announce(loop, quiet, first_epoch=first_epoch)
        seen["estimate"], seen["t"] = est, time.perf_counter()
        return est

    training.announce = catching
    load_before = load()
    t0 = time.perf_counter()
    try:
        train(settings, work / f"{name}-{int(t0)}", quiet=False)
    finally:
        training.announce = announce
    end = time.perf_counter()
    est = seen["estimate"]
    real = end - seen["t"]
    return {"config": name, "settings": settings, "estimate": est.as_dict(), "estimate_text": est.text(),
            "real_seconds": round(real, 1), "ratio_estimate_to_real": round(est.seconds / real, 3),
            "within_30_percent": abs(est.seconds / real - 1) <= 0.30,
            "call_seconds": round(end - t0, 1), "load_before": load_before, "load_after": load()}


def default_recipe() -> dict:
    cfg = resolve_config({"dataset": "breastmnist"})
    ds = build_dataset(cfg)
    t0 = time.perf_counter()
    est = estimate_config(cfg, dataset=ds)
    took = time.perf_counter() - t0
    return {"settings": {"dataset": "breastmnist"}, "estimate": est.as_dict(), "text": f"estimated {est.text()}",
            "hint": long_run_hint(cfg, est, dataset=ds), "warmup_seconds": round(took, 1), "load": load()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=["breast-cnn5", "breast-resnet18"], choices=list(CONFIGS))
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--no-default", action="store_true", help="skip the default recipe's dry-run estimate")
    p.add_argument("--tag", default="")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for _ in range(args.repeats):
            for name in args.configs:
                rows.append(one(name, CONFIGS[name], Path(d)))
                r = rows[-1]
                print(f"{name}: estimate {r['estimate']['seconds']:.0f} s, real {r['real_seconds']:.0f} s, ratio "
                      f"{r['ratio_estimate_to_real']:.2f} (load {r['load_before'][0]:.1f} -> {r['load_after'][0]:.1f})",
                      flush=True)
    out = {"runs": rows, "machine": describe_machine(), "cpus": os.cpu_count(),
           "note": "shared machine: other processes ran beside these; see load_before/load_after (1, 5, 15 min)"}
    if not args.no_default:
        out["default_recipe"] = default_recipe()
        print(out["default_recipe"]["text"], out["default_recipe"]["hint"], sep="\n")
    path = ROOT / "benchmarks" / "results" / f"estimate{args.tag}.json"
    write_json(path, out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
