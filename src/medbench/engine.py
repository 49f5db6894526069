"""Training and inference loops: device, precision, optimiser and schedule, one epoch, predictions."""
from __future__ import annotations

import contextlib
import copy
import os
import random
import time

import numpy as np
import torch
import torch.nn as nn

from medbench.config import RunConfig
from medbench.data.dataset import Split
from medbench.data.loader import Preprocess, iterate_batches
from medbench.data.sampling import BalancedSampler
from medbench.distributed import Dist
from medbench.errors import MedbenchError
from medbench.models.finetune import freeze_frozen_norms, param_groups
from medbench.tasks import Task


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = torch.cuda.is_available()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MedbenchError(f"device '{name}' requested but CUDA is not available here; use --device cpu")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """Whether ``auto`` picks bf16 autocast on the CPU: where bf16 matmuls run natively (about 2x fp32).

    ``MEDBENCH_CPU_BF16=1`` (or ``0``) overrides the detection, so that the ``auto`` path of another CPU kind
    can be exercised here (the test suite runs under both)."""
    forced = os.environ.get("MEDBENCH_CPU_BF16", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if forced:
        raise MedbenchError(f"MEDBENCH_CPU_BF16 must be 0 or 1, not {forced!r}; unset it to detect the CPU")
    return cpu_bf16_detected()


def cpu_bf16_detected() -> bool:
    """AVX512-BF16 or AMX on this CPU, whatever ``MEDBENCH_CPU_BF16`` says."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # private helpers moved: fall back to the kernel's CPU flags
        try:
            flags = open("/proc/cpuinfo").read()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags


def describe_machine() -> str:
    """E.g. 'AMD EPYC, 2 CPUs, AVX2, no native bf16' or '... + NVIDIA H100': recorded beside benchmark figures."""
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    isa = torch.backends.cpu.get_cpu_capability()
    text = f"{cpu}, {os.cpu_count()} CPUs, {isa}, {'native' if cpu_bf16_detected() else 'no native'} bf16"
    if torch.cuda.is_available():
        text += f" + {torch.cuda.get_device_name()}"
    return text


class Precision:
    """Autocast dtype and gradient scaler for a device and a ``precision`` setting."""

    def __init__(self, device: torch.device, precision: str):
        if precision == "auto":
            if device.type == "cuda":
                precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            else:
                precision = "bf16" if cpu_has_native_bf16() else "fp32"
        if precision == "fp16" and device.type != "cuda":
            raise MedbenchError("fp16 needs CUDA; on the CPU use --precision bf16 or fp32")
        self.name = precision
        self.device_type = device.type
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def build_optimizer(cfg: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The head at ``lr``, the backbone at ``lr * backbone_lr_scale`` or frozen (``freeze=backbone``)."""
    params = param_groups(model, cfg.lr, freeze=cfg.freeze, backbone_lr_scale=cfg.backbone_lr_scale)
    # fused kernels update all parameters in one pass (CPU and CUDA); same maths as the per-tensor loop
    fused = {"fused": True} if all(p.device.type in ("cpu", "cuda") for p in model.parameters()) else {}
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True,
                           **fused)


def build_scheduler(cfg: RunConfig, opt: torch.optim.Optimizer, steps_per_epoch: int):
    """A schedule stepped once per batch; multistep milestones fall on epoch boundaries, as in the benchmark."""
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "multistep":
        milestones = sorted({int(f * cfg.epochs) * steps_per_epoch for f in cfg.milestones})
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=cfg.gamma)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups],
                                                   total_steps=total)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def steps_per_epoch(n: int, batch_size: int, world: int = 1) -> int:
    full, rest = divmod(n, batch_size)
    return full + (rest >= 2 * world)  # iterate_batches skips a too-small trailing batch when shuffling


class WeightEMA:
    """An exponential moving average of a model's weights (parameters and float buffers), updated after every
    optimiser step; ``module`` is the averaged copy, used for validation and saved as the run's weights.

    The decay warms up as min(decay, (1 + t) / (10 + t)) after t updates, so that on small datasets (a few hundred
    steps in all) the average is not dominated by the random initialisation."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        # state_dict tensors share storage with the live parameters and buffers, which the optimiser and
        # load_state_dict change in place: pair them once, not on every step
        mine, theirs = self.module.state_dict(), model.state_dict()
        pairs = [(mine[k], theirs[k]) for k in mine]
        self._floats = ([a for a, _ in pairs if a.is_floating_point()], [b for a, b in pairs if a.is_floating_point()])
        self._counters = [(a, b) for a, b in pairs if not a.is_floating_point()]

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self._floats[0], self._floats[1], 1.0 - d)
        for a, b in self._counters:  # counters (BatchNorm's num_batches_tracked) follow the model
            a.copy_(b)


def train_one_epoch(model: nn.Module, task: Task, split: Split, opt, sched, prep: Preprocess,
                    precision: Precision, batch_size: int, generator: torch.Generator, bar=None,
                    dist: Dist = Dist(), augment=None, mix=None, ema: WeightEMA | None = None,
                    partial: dict | None = None, checkpoint=None, checkpoint_s: float = 600.0,
                    sampler: BalancedSampler | None = None) -> dict:
    """One pass over ``split``; returns the mean loss and the (augmented, train-mode) scores and labels.

    ``sampler``: the epoch's batches are a class-balanced draw with replacement from ``generator``
    (:mod:`medbench.data.sampling`), not a shuffle.

    ``augment`` maps each uint8 batch to an augmented uint8 batch; ``mix`` (a :class:`medbench.augment.BatchMix`)
    mixes the normalised batch and the loss; ``ema`` is updated after every optimiser step.

    Under data parallelism each rank sees its share of every batch; loss and throughput cover all ranks,
    scores and labels are this rank's.

    Mid-epoch state (large data: an epoch can take hours): every ``checkpoint_s`` seconds ``checkpoint(state)`` is
    called with the steps done and the sums so far (:func:`epoch_state`); ``partial`` (such a state, with
    ``generator`` back at the epoch's start) continues the epoch after its last step, without reading the batches
    already trained on.
    """
    model.train()
    freeze_frozen_norms(model)
    device = model_device(model)
    total = torch.zeros(2, device=device)  # loss sum, samples
    first_bad = torch.full((), -1, dtype=torch.long, device=device)  # first non-finite loss step
    scores, labels = [], []
    done, before = 0, 0.0
    if partial is not None:
        done, before = partial["step"], partial["seconds"]
        total += torch.tensor([partial["loss_sum"], partial["seen"]], device=device)
        first_bad.fill_(partial["first_bad"])
        scores, labels = [torch.as_tensor(partial["scores"])], [torch.as_tensor(partial["labels"])]
    start = last_save = time.perf_counter()
    order = sampler.epoch(generator) if sampler is not None else None  # drawn before skipping: resume sees it too
    batches = iterate_batches(split, batch_size, shuffle=True, generator=generator, device=device,
                              shard=(dist.rank, dist.world), skip=done, order=order)
    for step, (x, y) in enumerate(batches, start=done + 1):
        if augment is not None:
            x = augment(x)
        x = prep(x)
        if mix:
            x, partner, lam = mix(x, y)
        with precision.autocast():
            logits = model(x)
        loss = task.loss(logits, y)
        if mix:
            loss = lam * loss + (1 - lam) * task.loss(logits, partner)
        opt.zero_grad(set_to_none=True)
        if precision.scaler is not None:
            precision.scaler.scale(loss).backward()
            precision.scaler.step(opt)
            precision.scaler.update()
        else:
            loss.backward()
            opt.step()
        sched.step()
        if ema is not None:
            ema.update()
        total[0] += loss.detach() * len(y)  # stays on the device: no sync per step
        total[1] += len(y)
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), step, first_bad)
        scores.append(task.scores(logits.detach()))
        labels.append(y)
        if bar is not None:
            bar.advance(1)
        if checkpoint is not None and time.perf_counter() - last_save >= checkpoint_s:
            checkpoint(epoch_state(step, total, first_bad, scores, labels, before + time.perf_counter() - start))
            last_save = time.perf_counter()
    loss_sum, seen = dist.all_sum(total).tolist()
    seconds = before + time.perf_counter() - start
    return {"loss": loss_sum / max(seen, 1), "scores": torch.cat(scores).cpu().double().numpy(),
            "labels": torch.cat(labels).cpu().numpy(), "seconds": seconds, "images_per_s": seen / seconds,
            "first_bad_step": int(first_bad)}


def epoch_state(step: int, total: torch.Tensor, first_bad: torch.Tensor, scores: list, labels: list,
                seconds: float) -> dict:
    """What :func:`train_one_epoch` needs to continue after ``step``: sums, this rank's scores and labels so far."""
    loss_sum, seen = total.tolist()
    return {"step": step, "loss_sum": loss_sum, "seen": seen, "first_bad": int(first_bad), "seconds": seconds,
            "scores": torch.cat(scores).detach().cpu(), "labels": torch.cat(labels).cpu()}


@torch.inference_mode()
def predict_logits(model: nn.Module, split: Split, prep: Preprocess, batch_size: int, bar=None,
                   dist: Dist = Dist(), flip: bool = False) -> torch.Tensor:
    """Logits (float32, CPU) for every image of ``split``, in order; each rank predicts its block once.
    ``flip``: of the horizontally flipped images (flipped a batch at a time, never the whole split).

    Always in fp32, whatever precision trained the model: validation, the recorded predictions, ``predict``,
    ``serve`` and the exported graph then give one answer for one run on every CPU (bf16 autocast moved
    probabilities by up to 6e-4, enough to flip a label at its threshold)."""
    model.eval()
    device = model_device(model)
    out = []
    for x, _ in iterate_batches(split, batch_size, rows=dist.block(len(split)), device=device):
        out.append(model(prep(x.flip(-1) if flip else x)).float())
        if bar is not None:
            bar.advance(1)
    logits = torch.cat(out) if out else torch.empty(0, device=device)
    return dist.gather_rows(logits, len(split)).cpu()


def model_device(model: nn.Module) -> torch.device:
    """Where the model computes (its first parameter or buffer; the CPU for a model with neither)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")
