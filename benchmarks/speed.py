"""Speed benchmark: medbench's engine vs a faithful re-implementation of the official MedMNIST pipeline.

Everything is measured in one process, so the ratios hold on a noisy machine. Prints a table and, as its last
line, one JSON object. Usage: ``MEDBENCH_DATA=../shared/data/medmnist python benchmarks/speed.py [--steps 10]``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from medbench.config import resolve_config
from medbench.data import load_dataset
from medbench.data.loader import Preprocess, iterate_batches
from medbench.engine import Precision, build_optimizer, cpu_has_native_bf16, describe_machine, resolve_device
from medbench.metrics import bootstrap, resample_counts
from medbench.models import create_model


class OfficialStyle(Dataset):
    """MedMNIST's torch Dataset: one uint8 image -> PIL -> ToTensor -> Normalize(.5, .5) per sample."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        from torchvision import transforms

        self.images, self.labels = images, labels
        self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean=[0.5], std=[0.5])])

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def _time_train_ref(images, labels, steps, batch):
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=2, in_chans=1, img_size=28)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(OfficialStyle(images, labels), batch_size=batch, shuffle=True)
    model.train()
    seen, start = 0, None
    for i, (x, y) in enumerate(loader):
        if i == 2:  # two warm-up steps
            start, seen = time.perf_counter(), 0
        if i == steps + 2:
            break
        loss = F.cross_entropy(model(x), y.squeeze(1).long())
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(y)
    return seen / (time.perf_counter() - start)


def _time_eval_ref(images, labels, n_batches, batch):
    model = create_model("resnet18", num_classes=2, in_chans=1, img_size=28).eval()
    loader = DataLoader(OfficialStyle(images, labels), batch_size=batch, shuffle=False)
    seen, start = 0, None
    with torch.no_grad():
        for i, (x, _) in enumerate(loader):
            if i == 1:
                start, seen = time.perf_counter(), 0
            if i == n_batches + 1:
                break
            model(x).softmax(1)
            seen += len(x)
    return seen / (time.perf_counter() - start)


def _time_train_engine(split, steps, batch, device, precision):
    torch.manual_seed(0)
    cfg = resolve_config({"dataset": "pneumoniamnist", "batch_size": batch})
    model = create_model("resnet18", num_classes=2, in_chans=1, img_size=28).to(
        device, memory_format=torch.channels_last)
    opt = build_optimizer(cfg, model)
    prep = Preprocess(channels_last=True)
    gen = torch.Generator().manual_seed(0)
    model.train()
    seen, start = 0, None
    for i, (x, y) in enumerate(iterate_batches(split, batch, shuffle=True, generator=gen)):
        if i == 2:
            start, seen = time.perf_counter(), 0
        if i == steps + 2:
            break
        with precision.autocast():
            logits = model(prep(x))
        loss = F.cross_entropy(logits.float(), y[:, 0])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start), model


@torch.inference_mode()
def _time_eval_engine(model, split, n_images, batch, precision):
    model.eval()
    prep = Preprocess(channels_last=True)
    seen, start = 0, None
    for i, (x, _) in enumerate(iterate_batches(split, batch)):
        if i == 1:
            start, seen = time.perf_counter(), 0
        if seen >= n_images:
            break
        with precision.autocast():
            model(prep(x)).float().softmax(1)
        seen += len(x)
    return seen / (time.perf_counter() - start)


def _train_flops_per_image(batch=16):
    model = create_model("resnet18", num_classes=2, in_chans=1, img_size=28)
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 2, (batch,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / batch


def _gemm_peak(dtype, trials=3):
    """Best GEMM rate seen through both back ends: torch.mm (BLAS) and a 1x1 convolution (oneDNN).

    BLAS alone can understate the peak badly (on AMD CPUs MKL may take a slower code path than oneDNN).
    """
    best = 0.0
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    x = torch.randn(8, 512, 32, 32, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(512, 512, 1, 1, dtype=dtype).contiguous(memory_format=torch.channels_last)
    for op, flops in ((lambda: torch.mm(a, b), 2 * 2048**3), (lambda: F.conv2d(x, w), 2 * 8 * 512 * 512 * 32 * 32)):
        for _ in range(trials):
            op()
            reps = max(2, int(1e10 / flops))
            start = time.perf_counter()
            for _ in range(reps):
                op()
            best = max(best, flops * reps / (time.perf_counter() - start))
    return best


def _bootstrap_bench():
    rng = np.random.default_rng(0)
    n, labels = 22433, 14  # ChestMNIST test split
    y = (rng.random((n, labels)) < 0.1).astype(int)
    s = rng.random((n, labels)) + 0.3 * y
    start = time.perf_counter()
    ci = bootstrap(y, s, "multilabel", replicates=1000, seed=0)
    fast = time.perf_counter() - start
    from sklearn.metrics import roc_auc_score

    counts = resample_counts(n, 5, seed=0)  # the loop a user would write: resample, then score each label
    idx = [np.repeat(np.arange(n), counts[:, b]) for b in range(5)]
    start = time.perf_counter()
    for r in idx:
        np.mean([roc_auc_score(y[r, j], s[r, j]) for j in range(labels)])
    loop = (time.perf_counter() - start) / 5 * 1000
    return fast, loop, ci


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="timed training steps per side")
    ap.add_argument("--eval-images", type=int, default=2560)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = resolve_device(args.device)
    precision = Precision(device, "auto")
    ds = load_dataset("pneumoniamnist", 28, progress=False)
    with np.load(ds.source) as raw:
        images, labels = raw["train_images"], raw["train_labels"]
    t0 = time.perf_counter()
    ref_train = _time_train_ref(images, labels, args.steps, 128)
    ref_eval = _time_eval_ref(images, labels, args.eval_images // 128, 128)
    split = type(ds["train"])(ds["train"].images.to(device), ds["train"].labels.to(device))
    train_img_s, model = _time_train_engine(split, args.steps, 128, device, precision)
    eval_img_s = _time_eval_engine(model, split, args.eval_images, 1024, precision)
    flops = _train_flops_per_image()
    peak = {"fp32": _gemm_peak(torch.float32)}
    if precision.name == "bf16" or cpu_has_native_bf16():  # an emulated bf16 GEMM would take minutes to time
        peak["bf16"] = _gemm_peak(torch.bfloat16)
    peak_used = peak["bf16" if precision.name == "bf16" else "fp32"]
    boot_s, loop_s, ci = _bootstrap_bench()
    result = {
        "device": str(device), "machine": describe_machine(), "threads": torch.get_num_threads(),
        "precision": precision.name, "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        "train_img_s": round(train_img_s, 1), "eval_img_s": round(eval_img_s, 1),
        "ref_train_img_s": round(ref_train, 1), "ref_eval_img_s": round(ref_eval, 1),
        "train_ratio": round(train_img_s / ref_train, 2), "eval_ratio": round(eval_img_s / ref_eval, 2),
        "train_gflop_per_img": round(flops / 1e9, 3),
        "gemm_peak_gflops": {k: round(v / 1e9, 1) for k, v in peak.items()},
        "mfu": round(flops * train_img_s / peak_used, 3),
        "ref_mfu_fp32": round(flops * ref_train / peak["fp32"], 3),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2),
        "bootstrap_s": round(boot_s, 2), "bootstrap_loop_s": round(loop_s, 1),
        "bootstrap_ratio": round(loop_s / boot_s, 1), "bootstrap_auc_ci": [round(v, 4) for v in ci["auc_ci"]],
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"medbench speed, ResNet-18 28 px PneumoniaMNIST, batch 128 ({result['device']}, "
                    f"{result['threads']} threads)")
    for col in ("", "reference (PIL DataLoader, fp32 eager)", f"medbench ({precision.name}, channels_last)", "ratio"):
        t.add_column(col)
    t.add_row("train images/s", f"{ref_train:.0f}", f"{train_img_s:.0f}", f"{result['train_ratio']:.2f}x")
    t.add_row("eval images/s", f"{ref_eval:.0f}", f"{eval_img_s:.0f}", f"{result['eval_ratio']:.2f}x")
    t.add_row("MFU", f"{result['ref_mfu_fp32']:.2f} (of fp32 GEMM peak)",
              f"{result['mfu']:.2f} (of {precision.name} peak)", "")
    t.add_row("bootstrap 1000 x 22433 x 14 AUC", f"{loop_s:.1f} s (sklearn loop, scaled)", f"{boot_s:.2f} s",
              f"{result['bootstrap_ratio']:.0f}x")
    Console(width=140).print(t)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
