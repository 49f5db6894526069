"""How long a run will take, from a short measured warm-up, shown before it starts (and in dry runs).

The warm-up trains a throwaway deep copy of the run's network with a throwaway optimiser for a few real steps (the
run's batch size, augmentation, preprocessing, precision and device, through :func:`medbench.engine.train_one_epoch`
itself), after one or two unmeasured steps, then predicts a few validation batches. Every random state is forked
and the run's batch generator is never drawn from, so a run with the estimate trains exactly as one without it.
The seconds per step and per predicted image are then scaled to the run: ``epochs`` x (steps per epoch + the
validation split + one checkpoint write) + the final evaluation (every split predicted, twice with TTA, once per
ensembled checkpoint) + the report.
"""
from __future__ import annotations

import contextlib
import copy
import json
import random
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from medbench.config import RunConfig
from medbench.distributed import Dist
from medbench.engine import Precision, WeightEMA, build_optimizer, predict_logits, train_one_epoch
from medbench.progress import console
from medbench.training import build_loop

HINT_AFTER_S = 600.0  # a CPU run estimated longer than this is pointed at the fast recipe
REPORT_FIXED_S = 3.0  # report.html and the final figures without the model's own work (2.6-3.4 s here, cnn5)
WARMUP_STEPS = 2  # unmeasured: the first steps allocate buffers and pick kernels
MAX_LOOK_S = 30.0  # the longest measurement (runs of an hour and more)


@dataclass(frozen=True)
class Estimate:
    """A run's expected wall time: ``epochs`` x (training + validation) + the final evaluation (and report).

    ``runs``: networks trained one after another (deep-ensemble members x cross-validation folds), each costing
    ``epochs`` x ``epoch_seconds`` + ``eval_seconds``."""
    seconds: float
    epoch_seconds: float
    epochs: int
    measured_steps: int
    train_seconds: float = 0.0  # per epoch
    val_seconds: float = 0.0  # per epoch, with the checkpoint written after it
    eval_seconds: float = 0.0  # once per network: every split predicted, and the report
    runs: int = 1
    device: str = "cpu"
    precision: str = "fp32"
    note: str = ""

    def scaled(self, epochs: int, runs: int = 1, eval_seconds: float | None = None) -> Estimate:
        """The same measurement for ``epochs`` epochs and ``runs`` networks."""
        ev = self.eval_seconds if eval_seconds is None else eval_seconds
        return replace(self, epochs=epochs, runs=runs, eval_seconds=ev,
                       seconds=runs * (epochs * self.epoch_seconds + ev))

    def short(self) -> str:
        """e.g. '~1 h 32 min' (for a progress bar)."""
        return "~" + duration(self.seconds)

    def text(self) -> str:
        """e.g. '1 h 32 min: 100 epochs x 55 s (train 50 s + val 5 s) + evaluation 10 s, measured on cpu fp32'."""
        if self.note:
            return self.note
        epochs = f"{self.epochs} epoch{'s' if self.epochs != 1 else ''}"
        per = (f"{epochs} x {duration(self.epoch_seconds)} (train {duration(self.train_seconds)} + val "
               f"{duration(self.val_seconds)}) + evaluation {duration(self.eval_seconds)}")
        if self.runs > 1:
            per = f"{self.runs} networks x ({per})"
        return f"{duration(self.seconds)}: {per}, measured on {self.device} {self.precision}"

    def as_dict(self) -> dict:
        return {"seconds": round(self.seconds, 1), "epoch_seconds": round(self.epoch_seconds, 3),
                "train_seconds": round(self.train_seconds, 3), "val_seconds": round(self.val_seconds, 3),
                "eval_seconds": round(self.eval_seconds, 2), "epochs": self.epochs, "runs": self.runs,
                "measured_steps": self.measured_steps, "device": self.device, "precision": self.precision,
                **({"note": self.note} if self.note else {})}


def duration(s: float) -> str:
    """'0.4 s', '55 s', '4 min 10 s', '1 h 32 min'."""
    if s < 10:
        return f"{s:.1f} s"
    if s < 90:
        return f"{s:.0f} s"
    if s < 3600:
        m, sec = divmod(round(s), 60)
        return f"{m} min" + (f" {sec} s" if m < 10 and sec else "")
    h, m = divmod(round(s / 60), 60)
    return f"{h} h {m} min" if m else f"{h} h"


class _Stop(Exception):
    """Raised from the timing bar once enough steps were timed."""


class _Timer:
    """A progress 'bar' for :func:`train_one_epoch` / :func:`predict_logits`: a time stamp per step, and a stop."""

    def __init__(self, stop_after: int, budget_s: float):
        self.stamps = [time.perf_counter()]
        self.stop_after, self.deadline = stop_after, time.perf_counter() + budget_s

    def advance(self, n: float = 1) -> None:
        self.stamps.append(time.perf_counter())
        if len(self.stamps) - 1 >= self.stop_after or time.perf_counter() >= self.deadline:
            raise _Stop

    def set(self, text: str) -> None:
        pass


@dataclass(frozen=True)
class _Local(Dist):
    """This rank's share of every batch, without collectives: the warm-up runs on rank 0 alone."""

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        return t


@contextlib.contextmanager
def isolated(device: torch.device):
    """Every random state as it was afterwards: torch (CPU and the device), numpy, python."""
    py, npy = random.getstate(), np.random.get_state()
    try:
        cuda = device.type == "cuda"
        with torch.random.fork_rng(devices=[device] if cuda else [], device_type="cuda" if cuda else None):
            yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)


def _time_train(loop, model: torch.nn.Module, budget_s: float) -> tuple[float, int]:
    """Seconds per training step of ``model`` (a copy), and the number of steps timed."""
    cfg = loop.cfg
    opt = build_optimizer(cfg, model)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)  # any schedule costs the same per step
    precision = Precision(loop.device, cfg.precision)  # its own gradient scaler
    ema = WeightEMA(model, cfg.ema) if cfg.ema > 0 else None
    gen = torch.Generator().manual_seed(0)  # not the run's batch order
    dist = _Local(rank=0, world=loop.dist.world)
    steps = max(loop.steps, 1)

    def run(n: int, budget: float) -> list[float]:
        """Up to ``n`` steps within ``budget`` seconds (across epochs of the copy): the step durations."""
        out: list[float] = []
        while len(out) < n:
            timer = _Timer(min(n - len(out), steps), max(budget - sum(out), 0.0))
            try:
                train_one_epoch(model, loop.task, loop.splits["train"], opt, sched, loop.prep, precision,
                                cfg.batch_size, gen, timer, dist, augment=loop.augment, mix=loop.mix, ema=ema)
            except _Stop:
                pass
            out += list(np.diff(timer.stamps))
            if sum(out) >= budget:
                break
        return out

    first = run(1, 0.0)[0]
    if first < budget_s / 2:
        first = run(WARMUP_STEPS - 1, 0.0)[0]
    if first >= budget_s:  # a large model: one more step is the measurement
        timed = run(1, 0.0)
    else:  # at least 3 steps (one step's time varies 2x on a busy machine), a whole epoch when it fits
        timed = run(max(steps, 3), budget_s)
        if len(timed) < 3:
            timed += run(3 - len(timed), 0.0)
    # a long run can afford a longer look: up to 1 % of its estimated time (at most MAX_LOOK_S)
    longer = min(0.01 * float(np.mean(timed)) * steps * max(cfg.epochs, 1), MAX_LOOK_S) - sum(timed)
    if longer > budget_s and len(timed) < steps:
        timed += run(steps - len(timed), longer)
    return float(np.mean(timed)), len(timed)


def _time_predict(loop, model: torch.nn.Module, budget_s: float) -> float:
    """Seconds per predicted image (fp32, eval mode, the evaluation batch size) of ``model``."""
    split = loop.splits["val"] if len(loop.splits["val"]) else loop.splits["train"]
    bs = loop.cfg.eval_batch_size
    warm = _Timer(1, 0.0)
    with contextlib.suppress(_Stop):
        predict_logits(model, split, loop.prep, bs, bar=warm)
    timer = _Timer(10**9, budget_s)
    with contextlib.suppress(_Stop):
        predict_logits(model, split, loop.prep, bs, bar=timer)
    batches = len(timer.stamps) - 1
    images = min(batches * bs, len(split))
    return (timer.stamps[-1] - timer.stamps[0]) / max(images, 1)


def _time_checkpoint(model: torch.nn.Module) -> float:
    """Seconds to write what every epoch writes: the resume state (weights + two optimiser moments) and weights."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        save_file(tensors, str(Path(d) / "w.safetensors"))
        one = time.perf_counter() - t0
    return 4 * one  # resume: weights + Adam's two moments; best weights (often)


def measure(loop, budget_s: float = 3.0) -> dict:
    """Seconds per training step and per predicted image, measured on a copy of ``loop.model``."""
    with isolated(loop.device):
        model = copy.deepcopy(loop.model)
        was = torch.is_grad_enabled()
        try:
            step_s, steps = _time_train(loop, model, 0.75 * budget_s)
            image_s = _time_predict(loop, model, 0.25 * budget_s)
            ckpt_s = _time_checkpoint(model)
        finally:
            torch.set_grad_enabled(was)
            del model
    return {"step_s": step_s, "steps": steps, "image_s": image_s, "checkpoint_s": ckpt_s}


def _eval_seconds(cfg: RunConfig, sizes: dict[str, int], image_s: float, report: bool) -> float:
    """The final evaluation (every split predicted once per view and ensembled checkpoint) and the report
    (its figures, the test split predicted again, Grad-CAM)."""
    views = (2 if cfg.tta else 1) * max(cfg.ensemble, 1)
    ev = image_s * views * sum(sizes.values())
    return ev + (REPORT_FIXED_S + image_s * sizes.get("test", 0) if report else 0.0)


def _from_measure(cfg: RunConfig, m: dict, steps: int, sizes: dict[str, int], epochs: int, device, precision: str,
                  report: bool) -> Estimate:
    train_s = m["step_s"] * steps
    val_s = m["image_s"] * sizes.get("val", 0) + m["checkpoint_s"]
    epoch_s = train_s + val_s
    ev = _eval_seconds(cfg, sizes, m["image_s"], report)
    return Estimate(seconds=epochs * epoch_s + ev, epoch_seconds=epoch_s, epochs=epochs, measured_steps=m["steps"],
                    train_seconds=train_s, val_seconds=val_s, eval_seconds=ev, device=str(device),
                    precision=precision)


def estimate_loop(loop, *, budget_s: float = 3.0, first_epoch: int = 1, report: bool = True) -> Estimate:
    """Measure a few training steps and a validation pass on a throwaway copy of ``loop``'s model (the run's
    weights, optimiser and random state untouched) and extrapolate to the whole run (from ``first_epoch``)."""
    m = measure(loop, budget_s)
    sizes = {s: len(sp) for s, sp in loop.splits.items()}
    epochs = max(loop.cfg.epochs - first_epoch + 1, 0)
    return _from_measure(loop.cfg, m, loop.steps, sizes, epochs, loop.device, loop.precision.name, report)


def _runs(cfg: RunConfig) -> int:
    """Networks one config trains: deep-ensemble members, times cross-validation folds (each fold's training split
    is (K-1)/K of the pooled images: about one run's)."""
    folds = cfg.folds if cfg.fold is None else 1
    return max(cfg.members, 1) * max(folds, 1)


@dataclass(frozen=True)
class _Shape:
    """One measurement, scaled to any config of its shape."""
    m: dict
    steps: int
    sizes: dict
    device: str
    precision: str

    def estimate(self, cfg: RunConfig, report: bool) -> Estimate:
        one = _from_measure(cfg, self.m, self.steps, self.sizes, cfg.epochs, self.device, self.precision, report)
        return one.scaled(cfg.epochs, _runs(cfg))


def _measure_config(cfg: RunConfig, ds, device, budget_s: float) -> _Shape:
    one = cfg.model_copy(update={"members": 1})
    with isolated(device), tempfile.TemporaryDirectory() as tmp:
        loop = build_loop(one, Path(tmp), ds, Dist(), device)
        m = measure(loop, budget_s)
        return _Shape(m, loop.steps, {s: len(sp) for s, sp in loop.splits.items()}, str(device),
                      loop.precision.name)


def estimate_config(cfg, *, data_dir=None, dataset=None, device=None, budget_s: float = 3.0,
                    report: bool = True) -> Estimate:
    """:func:`estimate_loop` for a config not yet run (study and tune dry runs): builds its dataset and loop.
    Members and folds multiply the single network's time; a classical model gets a note, not a measurement."""
    from medbench import baselines
    from medbench.build import dataset_or_build
    from medbench.config import resolve_config
    from medbench.engine import resolve_device

    cfg = cfg if isinstance(cfg, RunConfig) else resolve_config(dict(cfg))
    if baselines.is_baseline(cfg.model):
        return Estimate(0.0, 0.0, 1, 0, note=f"{cfg.model}: a classical model fitted in one step (not estimated)")
    device = resolve_device(cfg.device) if device is None else torch.device(device)
    ds = dataset_or_build(cfg, dataset, data_dir, quiet=True)
    return _measure_config(cfg, ds, device, budget_s).estimate(cfg, report)


# settings that leave the seconds per epoch unchanged: runs differing only in these share one measurement
_NO_COST = {"epochs", "seed", "split_seed", "lr", "weight_decay", "momentum", "schedule", "milestones", "gamma",
            "label_smoothing", "select_metric", "patience", "keep_checkpoints", "decision", "positive_class",
            "calibrate", "subgroup_cols", "subgroup_regex", "bootstrap", "members", "folds", "fold", "loss",
            "focal_gamma", "class_weights", "drop_rate", "drop_path_rate", "init", "recipe", "checkpoint_minutes",
            "detect_anomaly", "ordinal_loss", "sampler", "tta", "ensemble"}


def shape_key(cfg: RunConfig) -> str:
    """What the seconds per step depend on (data, size, model, batch sizes, augmentation, precision, ...)."""
    d = cfg.model_dump(mode="json")
    return json.dumps({k: v for k, v in sorted(d.items()) if k not in _NO_COST}, sort_keys=True)


def estimate_configs(cfgs: list[RunConfig], *, data_dir=None, budget_s: float = 3.0, report: bool = True,
                     on_error=None) -> tuple[list[Estimate | None], int]:
    """One :class:`Estimate` per config, measuring each distinct :func:`shape_key` once and scaling it by epochs,
    members, folds, TTA and ensembled checkpoints. A shape that cannot be measured (data missing, weights not
    downloadable, ...) gives None and calls ``on_error(cfg, error)``. Returns (estimates, shapes measured)."""
    from medbench import baselines
    from medbench.build import build_dataset
    from medbench.engine import resolve_device
    from medbench.errors import MedbenchError

    shapes: dict[str, _Shape | None] = {}
    datasets: dict[str, object] = {}
    out: list[Estimate | None] = []
    for cfg in cfgs:
        if baselines.is_baseline(cfg.model):
            out.append(estimate_config(cfg))
            continue
        key = shape_key(cfg)
        if key not in shapes:
            try:
                data_key = json.dumps([cfg.dataset, cfg.size, cfg.source.loader_options()], default=str)
                if data_key not in datasets:
                    datasets[data_key] = build_dataset(cfg, data_dir, quiet=True)
                shapes[key] = _measure_config(cfg, datasets[data_key], resolve_device(cfg.device), budget_s)
            except (MedbenchError, OSError, RuntimeError, ValueError) as e:
                shapes[key] = None
                if on_error is not None:
                    on_error(cfg, e)
        shape = shapes[key]
        out.append(None if shape is None else shape.estimate(cfg, report))
    return out, sum(1 for v in shapes.values() if v is not None)


def makespan(seconds: list[float], workers: int) -> float:
    """Wall time of ``seconds`` jobs on ``workers`` workers, longest first to the least loaded (a fair guess of
    the study's scheduling; each worker then has 1/workers of the CPU threads)."""
    loads = [0.0] * max(workers, 1)
    for s in sorted(seconds, reverse=True):
        loads[loads.index(min(loads))] += s
    return max(loads) if seconds else 0.0


def fast_config(cfg: RunConfig) -> RunConfig:
    """``cfg``'s data, hardware and augmentation under the ``fast`` recipe (one cnn5 network)."""
    from medbench.config import resolve_config
    from medbench.config.setting import meta

    keep = {k: v for k, v in cfg.model_dump().items()
            if meta(RunConfig.model_fields[k]).get("group") in ("data", "own data", "hardware")
            or k in ("augment", "no_flip", "folds", "fold")}
    return resolve_config({**keep, "recipe": "fast"})


def long_run_hint(cfg: RunConfig, est: Estimate, *, dataset=None, data_dir=None, device=None) -> str | None:
    """For a CPU run estimated over :data:`HINT_AFTER_S` (not already ``fast``): the fast recipe with its own
    estimate (measured the same way, about a second), and fewer epochs."""
    if est.device != "cpu" or est.seconds <= HINT_AFTER_S or cfg.recipe == "fast" or cfg.model == "cnn5":
        return None
    try:
        f = estimate_config(fast_config(cfg), dataset=dataset, data_dir=data_dir, device=device, budget_s=1.0)
        fast = f"about {duration(f.seconds)} here"
    except Exception:  # noqa: BLE001 - a hint only: the typical figure when the fast network cannot be built
        fast = "BreastMNIST: about 20 s on a 2-core CPU, RESULTS.md"
    return (f"hint: that is long on a CPU: --recipe fast (cnn5, 30 epochs, near ResNet-18's AUC on MedMNIST: "
            f"RESULTS.md; {fast}), or fewer epochs (--epochs N, {duration(est.epoch_seconds)} each)")


def loop_dataset(loop):
    """An :class:`ImageDataset` over the loop's own splits (to measure another network on the same data)."""
    from medbench.data import ImageDataset

    names = list(loop.class_names) or [str(i) for i in range(loop.task.num_classes)]
    return ImageDataset(f"{loop.cfg.dataset}", loop.task.name, names, loop.splits, loop.cfg.size)


def announce(loop, quiet: bool, first_epoch: int = 1) -> Estimate | None:
    """Before the first epoch (``first_epoch`` > 1: a resumed run, the epochs left): measure, print the estimate
    (and point a long CPU run at the ``fast`` recipe); None when ``quiet`` (no warm-up at all)."""
    if quiet or first_epoch > loop.cfg.epochs:
        return None
    est = estimate_loop(loop, first_epoch=first_epoch)
    console.print(f"estimated {est.text()}", highlight=False, soft_wrap=True)
    hint = long_run_hint(loop.cfg, est, dataset=loop_dataset(loop), device=loop.device)
    if hint:
        console.print(f"[yellow]{hint}[/]", highlight=False, soft_wrap=True)
    return est


__all__ = ["Estimate", "announce", "duration", "estimate_config", "estimate_configs", "estimate_loop",
           "long_run_hint", "makespan", "measure", "shape_key"]
