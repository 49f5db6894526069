"""Data at any scale: peak memory and training speed of the store (read from disk) against the in-memory path.

Generates MedMNIST-layout npz files of the real shapes (224-px RGB like MedMNIST+, no download), then runs each
case in a fresh process so its peak RSS (``VmHWM``) is its own: one epoch of ``cnn5`` plus the evaluation of every
split, as ``medbench.train`` does it. Writes ``benchmarks/results/scale.json``:

* per case: ``n_train``, ``size``, ``path`` (store / memory), ``peak_rss_gb``, ``train_img_s`` (the epoch's
  training images/s), ``convert_s`` (npz -> store, first use only), ``wall_s``, ``test_auc``;
* ``stream_vs_memory``: store / in-memory training images/s on a set both paths can hold (median of the reps,
  alternated in one run), with their test metrics, which must be identical;
* ``ingest_speedup``: from ``benchmarks/ingest_speed.py``'s result, when present.

Usage: ``python benchmarks/scale.py [--sizes 20000,60000] [--data /tmp/scale] [--reps 2]``; ``--quick`` for a
small smoke run. Needs about 1.5x the generated pixels free on disk (npz + store).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULT = HERE / "results" / "scale.json"
NAME = "pathmnist"  # a 9-class RGB MedMNIST set: the catalogue gives task, channels and class names


def _write_member(zf: zipfile.ZipFile, key: str, shape: tuple, blocks) -> None:
    from numpy.lib import format as npy

    with zf.open(f"{key}.npy", "w", force_zip64=True) as f:
        npy.write_array_header_1_0(f, {"descr": "|u1" if len(shape) == 4 else "<i8", "fortran_order": False,
                                       "shape": shape})
        for b in blocks:
            f.write(np.ascontiguousarray(b).tobytes())


def generate(path: Path, n_train: int, size: int, classes: int = 9, seed: int = 0) -> Path:
    """A MedMNIST-layout npz (deflated, like the originals) written a block at a time; images of class c carry a
    class-dependent bright disc at a random place on a smooth background with noise; every image is unique."""
    if path.is_file():
        return path
    n = {"train": n_train, "val": max(n_train // 10, 200), "test": max(n_train // 10, 200)}
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    tmp = path.with_suffix(".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1, allowZip64=True) as zf:
        for split, count in n.items():
            labels = rng.integers(0, classes, count)

            def blocks(labels=labels, count=count):
                for a in range(0, count, 256):
                    lab = labels[a:a + 256]
                    k = len(lab)
                    base = ((xx + yy) * (96 / size) + 40).astype(np.uint8)
                    x = np.repeat(base[None, :, :, None], k, 0).repeat(3, -1)
                    x += rng.integers(0, 16, x.shape, dtype=np.uint8)
                    cy, cx = rng.integers(size // 4, 3 * size // 4, (2, k))
                    for i in range(k):
                        disc = (yy - cy[i]) ** 2 + (xx - cx[i]) ** 2 < (size // 8) ** 2
                        x[i][disc] = np.uint8(100 + 15 * lab[i])
                        x[i, 0, :8, 0] = np.frombuffer(np.int64(a + i).tobytes(), np.uint8)  # unique
                    yield x

            _write_member(zf, f"{split}_images", (count, size, size, 3), blocks())
            _write_member(zf, f"{split}_labels", (count, 1), [labels[:, None].astype(np.int64)])
    os.replace(tmp, path)
    return path


def child(args) -> None:
    """One case in this process: load (convert on first use), train one epoch, evaluate; print one JSON line."""
    import torch

    import medbench
    from medbench.data.medmnist import load_npz

    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    budget = 0.0 if args.path == "store" else 1e6
    ds = load_npz(args.npz, NAME, args.size, memory_budget=budget, cache_dir=args.cache)
    convert_s = time.perf_counter() - t0
    out = Path(args.out)
    cfg = {"dataset": NAME, "size": args.size, "model": "cnn5", "epochs": 1, "batch_size": 128,
           "eval_batch_size": 256, "lr": 1e-3, "optimizer": "adam", "schedule": "constant", "seed": 0,
           "precision": "fp32", "memory_budget": budget}
    if args.model:
        cfg.update(model=args.model, truncate=int(args.truncate or 0))
    t1 = time.perf_counter()
    medbench.train(cfg, out, dataset=ds, quiet=True, report=False)
    wall = time.perf_counter() - t1
    hist = (out / "history.csv").read_text().splitlines()
    row = dict(zip(hist[0].split(","), hist[1].split(",")))
    metrics = json.loads((out / "metrics.json").read_text())
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    kb = int(status["VmHWM"].split()[0])
    print(json.dumps({"n_train": len(ds["train"]), "size": args.size, "path": args.path,
                      "images_on_disk": type(ds["train"].images).__name__ != "Tensor",
                      "peak_rss_gb": round(kb / 2**20, 3), "train_img_s": float(row["images_per_s"]),
                      "convert_s": round(convert_s, 1), "train_and_eval_s": round(wall, 1),
                      "test_auc": metrics["test"]["auc"], "test_acc": metrics["test"]["acc"]}))


def run_case(npz: Path, size: int, path: str, cache: Path, work: Path, model: str | None = None,
             truncate: int = 0) -> dict:
    import shutil

    out = work / f"run-{npz.stem}-{path}-{time.time_ns()}"
    model_args = ["--model", model, "--truncate", str(truncate)] if model else []
    cmd = [sys.executable, __file__, "--child", "--npz", str(npz), "--size", str(size), "--path", path,
           "--cache", str(cache), "--out", str(out), *model_args]
    res = subprocess.run(cmd, capture_output=True, text=True)
    shutil.rmtree(out, ignore_errors=True)
    if res.returncode:
        raise SystemExit(f"case {npz.name} {path} failed:\n{res.stderr[-3000:]}")
    rec = json.loads(res.stdout.strip().splitlines()[-1])
    print(json.dumps(rec), flush=True)
    return rec


def machine() -> dict:
    from medbench.engine import describe_machine

    flags = Path("/proc/cpuinfo").read_text()
    return {"description": describe_machine(), "avx512": "avx512f" in flags, "amx": "amx_tile" in flags,
            "cpus": os.cpu_count()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="20000,60000", help="training-set sizes at 224 px (comma-separated)")
    p.add_argument("--px", type=int, default=224)
    p.add_argument("--compare-n", type=int, default=20000, help="images for the store vs memory comparison")
    p.add_argument("--compare-px", type=int, default=64)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--model", help="the 224-px cases' model (default cnn5: 5.6 images/s training on 2 AVX2 cores, "
                                   "3 hours an epoch of 60,000)")
    p.add_argument("--truncate", type=int, default=0, help="with --model: drop its last K stages")
    p.add_argument("--memory-contrast", action="store_true", help="also run the smallest 224-px set held in memory")
    p.add_argument("--data", default="/tmp/scale")
    p.add_argument("--out", default=str(RESULT))
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run of the whole script")
    p.add_argument("--keep", action="store_true", help="keep the generated files and stores")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for k in ("npz", "size", "path", "cache"):
        p.add_argument(f"--{k}", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.size = int(args.size)
        return child(args)
    if args.quick:
        args.sizes, args.px, args.compare_n, args.reps = "600,1200", 64, 1000, 1
    data, cache = Path(args.data), Path(args.data) / "cache"
    t_start = time.time()
    cases = []
    sizes = [int(v) for v in args.sizes.split(",") if v.strip()]
    if not sizes and Path(args.out).is_file():  # --sizes "": rerun the comparison only, keep the cases
        cases = json.loads(Path(args.out).read_text())["cases"]
    for n in sizes:
        t = time.perf_counter()
        npz = generate(data / f"{NAME}_{args.px}_{n}.npz", n, args.px)
        gen_s = time.perf_counter() - t
        rec = run_case(npz, args.px, "store", cache, data, args.model, args.truncate)
        cases.append({**rec, "npz_gb": round(npz.stat().st_size / 2**30, 2), "generate_s": round(gen_s, 1)})
        if args.memory_contrast and n == min(sizes):  # what holding it whole costs
            cases.append(run_case(npz, args.px, "memory", cache, data, args.model, args.truncate))
    npz = generate(data / f"{NAME}_{args.compare_px}_{args.compare_n}.npz", args.compare_n, args.compare_px)
    runs = {"memory": [], "store": []}
    for _ in range(args.reps):  # alternated, so drifts of the machine hit both paths alike
        for path in ("memory", "store"):
            runs[path].append(run_case(npz, args.compare_px, path, cache, data))
    med = {k: statistics.median(r["train_img_s"] for r in v) for k, v in runs.items()}
    same = all(r["test_auc"] == runs["memory"][0]["test_auc"] and r["test_acc"] == runs["memory"][0]["test_acc"]
               for v in runs.values() for r in v)
    ingest = HERE / "results" / "ingest-speed.json"
    result = {
        "benchmark": "scale", "date": time.strftime("%Y-%m-%d"), "machine": machine(),
        "command": "python benchmarks/scale.py " + " ".join(sys.argv[1:]),
        "model": "1 epoch, batch 128, fp32, then evaluation of train/val/test; "
                 + (f"{args.px}-px cases: {args.model} truncated by {args.truncate}; " if args.model else "")
                 + "comparison: cnn5",
        "cases": cases,
        "stream_vs_memory": round(med["store"] / med["memory"], 3),
        "stream_vs_memory_detail": {"n_train": args.compare_n, "size": args.compare_px, "runs": runs,
                                    "median_img_s": med, "identical_metrics": same},
        "ingest_speedup": json.loads(ingest.read_text()).get("ingest_speedup") if ingest.is_file() else None,
        "seconds": round(time.time() - t_start),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("stream_vs_memory", "ingest_speedup")}))
    if not args.keep:
        import shutil

        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
