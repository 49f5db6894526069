"""Benchmark fidelity: the official MedMNIST v2 script against ``medbench train --recipe medmnist-v2``.

For each MedMNIST set and seed, runs MedMNIST/experiments ``MedMNIST2D/train_and_eval_pytorch.py`` (a copy kept
outside the repository: ``--official DIR`` holds it and its ``models.py``; never committed here) and medbench's
recipe, on the same machine, for the same epochs, ResNet-18 at 28 px with grey repeated to 3 channels (the
script's ``--as_rgb``), CPU, fp32, a fixed number of torch threads per process. Prints and writes
(``--out``/fidelity.json and fidelity.md) the test AUC/ACC means +- sd (ddof 1) side by side and |Delta| against
the ReScience replication tolerance (|dAUC| <= 0.02, |dACC| <= 0.03).

The official file runs unmodified. What this wrapper does around it, recorded in the output: it seeds
``random``/numpy/torch with the seed (the script seeds nothing), fixes the torch threads, points ``HOME`` at a
temporary folder whose ``.medmnist`` links to the local .npz files (the script's datasets and ``Evaluator`` read
``~/.medmnist``, and it passes no root), and passes ``--gpu_ids -1`` (CPU). It needs ``medmnist``, ``tqdm`` and
``tensorboardX`` importable (e.g. ``pip install --target DIR tensorboardX`` and ``PYTHONPATH=DIR``).

    nice -n 10 python benchmarks/fidelity.py --official /work/official/MedMNIST2D --datasets breastmnist \\
        --seeds 3 --epochs 12 --jobs 2 --data-dir ../shared/data/medmnist
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from medbench.engine import describe_machine
from medbench.fileio import write_json, write_text

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = {"auc": 0.02, "acc": 0.03}  # ReScience C replication tolerance used by issue 21
OFFICIAL_FILES = ("train_and_eval_pytorch.py", "models.py")
# Seeds and threads, then the official script as __main__ with its own arguments: nothing in it is changed.
WRAPPER = """import random, runpy, sys
import numpy as np, torch
folder, seed, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
random.seed(seed); np.random.seed(seed); torch.manual_seed(seed); torch.set_num_threads(threads)
sys.path.insert(0, folder)
sys.argv = [folder + '/train_and_eval_pytorch.py'] + sys.argv[4:]
runpy.run_path(sys.argv[0], run_name='__main__')
"""


def _official_run(args, flag: str, seed: int, work: Path, home: Path) -> dict:
    out = work / f"official-{flag}-{seed}"
    cmd = [sys.executable, "-c", WRAPPER, str(args.official), str(seed), str(args.threads), "--data_flag", flag,
           "--num_epochs", str(args.epochs), "--gpu_ids", "-1", "--as_rgb", "--model_flag", "resnet18",
           "--output_root", str(out), "--run", f"seed{seed}"]
    text = _run(cmd, {"HOME": str(home)}, out)
    test = re.findall(r"test  auc: ([\d.]+)  acc: ([\d.]+)", text)
    val = re.findall(r"val  auc: ([\d.]+)  acc: ([\d.]+)", text)
    best = re.findall(r"cur_best_epoch (\d+)", text)
    return {"test_auc": float(test[-1][0]), "test_acc": float(test[-1][1]), "val_auc": float(val[-1][0]),
            "best_epoch": int(best[-1]) + 1 if best else 1}


def _medbench_run(args, flag: str, seed: int, work: Path) -> dict:
    out = work / f"medbench-{flag}-{seed}"
    cmd = [sys.executable, "-m", "medbench", "train", "--dataset", flag, "--recipe", "medmnist-v2", "--as-rgb",
           "--model", "resnet18", "--epochs", str(args.epochs), "--seed", str(seed), "--device", "cpu",
           "--data-dir", str(args.data_dir), "--out", str(out), "--quiet"]
    _run(cmd, {}, out)
    metrics = json.loads((out / "metrics.json").read_text())
    history = (out / "history.csv").read_text().splitlines()
    return {"test_auc": metrics["test"]["auc"], "test_acc": metrics["test"]["acc"], "val_auc": metrics["val"]["auc"],
            "epochs_logged": len(history) - 1}


def _run(cmd: list[str], env: dict, out: Path) -> str:
    """Run one side; its output in ``out``.log; a failure raises with the log's last lines."""
    out.parent.mkdir(parents=True, exist_ok=True)
    threads = os.environ.get("FIDELITY_THREADS", "1")
    full_env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, **env}
    proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True, cwd=out.parent)
    text = proc.stdout + proc.stderr
    write_text(out.with_suffix(".log"), text)
    if proc.returncode != 0:
        tail = "\n".join(text.splitlines()[-15:])
        raise RuntimeError(f"{' '.join(cmd[:3])}... failed (exit {proc.returncode}):\n{tail}")
    return text


def _job(args, side: str, flag: str, seed: int, work: Path, home: Path) -> dict:
    start = time.perf_counter()
    res = (_official_run(args, flag, seed, work, home) if side == "official"
           else _medbench_run(args, flag, seed, work))
    res.update(side=side, dataset=flag, seed=seed, seconds=round(time.perf_counter() - start, 1))
    write_json(args.out / "runs" / f"{side}-{flag}-{seed}.json", res)  # kept as each run ends
    print(f"{side:9s} {flag} seed {seed}: test AUC {res['test_auc']:.4f} ACC {res['test_acc']:.4f} "
          f"({res['seconds']:.0f} s)", flush=True)
    return res


def same_network(official: Path) -> dict:
    """Load the official ResNet18's freshly initialised weights into medbench's ``init=torch-default`` ResNet-18
    (state-dict entries in the same order and shapes; only names differ) and compare outputs in train and eval mode:
    0 difference means the same architecture. Also the per-layer weight std of each side's own initialisation."""
    import importlib.util

    import torch

    from medbench.models import create_model

    spec = importlib.util.spec_from_file_location("official_models", official / "models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    theirs, ours = mod.ResNet18(3, 2), create_model("resnet18", num_classes=2, in_chans=3, init="torch-default")
    std = [(round(a.float().std().item(), 4), round(b.float().std().item(), 4))
           for a, b in zip(theirs.state_dict().values(), ours.state_dict().values()) if a.dim() == 4]
    theirs.train()(torch.randn(16, 3, 28, 28))  # non-trivial BatchNorm running statistics
    ours.load_state_dict(dict(zip(ours.state_dict(), theirs.state_dict().values())))
    x, diff = torch.randn(8, 3, 28, 28), {}
    for mode in ("train", "eval"):
        with torch.no_grad():
            diff[mode] = (theirs.train(mode == "train")(x) - ours.train(mode == "train")(x)).abs().max().item()
    return {"max_abs_output_diff": diff, "conv_weight_std_official_vs_medbench": std}


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(rows: list[dict]) -> list[dict]:
    """Per dataset: each side's mean and sd of test AUC/ACC, |Delta| of the means, and whether it is within
    :data:`TOLERANCE`."""
    out = []
    for flag in sorted({r["dataset"] for r in rows}):
        entry = {"dataset": flag}
        for metric in ("auc", "acc"):
            for side in ("official", "medbench"):
                vals = [r[f"test_{metric}"] for r in rows if r["dataset"] == flag and r["side"] == side]
                entry[f"{side}_{metric}"], entry[f"{side}_{metric}_sd"] = _mean_sd(vals)
                entry[f"{side}_n"] = len(vals)
            delta = abs(entry[f"medbench_{metric}"] - entry[f"official_{metric}"])
            entry[f"delta_{metric}"], entry[f"within_{metric}"] = delta, delta <= TOLERANCE[metric]
        out.append(entry)
    return out


def table(summary: list[dict], epochs: int) -> str:
    lines = [f"ResNet-18, 28 px, 3 channels, {epochs} epochs, CPU fp32; test split; mean +- sd over seeds",
             "", "| dataset | seeds | official AUC | medbench AUC | abs dAUC (<= 0.02) | official ACC | medbench ACC "
             "| abs dACC (<= 0.03) |", "|---|---|---|---|---|---|---|---|"]
    for e in summary:
        cells = [e["dataset"], f"{e['official_n']} / {e['medbench_n']}"]
        for metric in ("auc", "acc"):
            cells += [f"{e[f'official_{metric}']:.3f} +- {e[f'official_{metric}_sd']:.3f}",
                      f"{e[f'medbench_{metric}']:.3f} +- {e[f'medbench_{metric}_sd']:.3f}",
                      f"{e[f'delta_{metric}']:.3f} {'within' if e[f'within_{metric}'] else 'OUTSIDE'}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _check_args(args) -> list[str]:
    for name in OFFICIAL_FILES:
        if not (args.official / name).is_file():
            sys.exit(f"--official {args.official}: no {name} there; give the folder holding a copy of "
                     f"MedMNIST/experiments MedMNIST2D (train_and_eval_pytorch.py and models.py)")
    if args.epochs % 4:
        sys.exit(f"--epochs {args.epochs}: give a multiple of 4; the official script's milestones 0.5 N and 0.75 N "
                 f"only fire when they are whole epochs, medbench's always fire")
    flags = args.datasets.split(",") if args.datasets else ["breastmnist", "pneumoniamnist", "retinamnist"]
    present = [f for f in flags if (args.data_dir / f"{f}.npz").is_file()]
    if not present:
        sys.exit(f"--data-dir {args.data_dir}: none of {', '.join(f + '.npz' for f in flags)} there")
    return present


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", type=Path, required=True, help="folder with the official MedMNIST2D files")
    ap.add_argument("--datasets", help="comma-separated MedMNIST flags (default: those of breastmnist, "
                                       "pneumoniamnist, retinamnist present in --data-dir)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 on each side")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (each one process)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("MEDBENCH_DATA", "~/.medmnist")))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fidelity")
    args = ap.parse_args()
    args.official, args.data_dir = args.official.expanduser().resolve(), args.data_dir.expanduser().resolve()
    flags = _check_args(args)
    network = same_network(args.official)
    print(f"same network: max |output difference| {network['max_abs_output_diff']}", flush=True)
    os.environ["FIDELITY_THREADS"] = str(args.threads)
    jobs = [(side, f, s) for f in flags for s in range(args.seeds) for side in ("official", "medbench")]
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        (home / ".medmnist").mkdir(parents=True)
        for f in flags:  # the script reads ~/.medmnist/<flag>.npz: a link to the local file
            (home / ".medmnist" / f"{f}.npz").symlink_to(args.data_dir / f"{f}.npz")
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            rows = list(pool.map(lambda j: _job(args, *j, Path(tmp) / "runs", home), jobs))
    summary = summarise(rows)
    text = table(summary, args.epochs)
    print(text)
    digests = {n: hashlib.sha256((args.official / n).read_bytes()).hexdigest() for n in OFFICIAL_FILES}
    write_json(args.out / "fidelity.json", {
        "epochs": args.epochs, "seeds": list(range(args.seeds)), "threads": args.threads, "jobs": args.jobs,
        "machine": describe_machine(), "official_sha256": digests, "official_modified": False,
        "official_wrapper": "seeds random/numpy/torch, sets torch threads, HOME -> a folder whose .medmnist links "
                            "the local npz files, --gpu_ids -1 --as_rgb --model_flag resnet18",
        "medbench_command": "medbench train --recipe medmnist-v2 --as-rgb --model resnet18 --device cpu",
        "network_check": network, "tolerance": TOLERANCE, "summary": summary, "runs": rows})
    write_text(args.out / "fidelity.md", text)


if __name__ == "__main__":
    main()
