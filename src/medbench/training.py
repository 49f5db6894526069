"""Training a network (or fitting a classical model) into a run directory; evaluation, the model card and the
report follow in :mod:`medbench.run`.

``train_network`` reads top to bottom: build the loop's objects from the config, start the run directory (or
restore the resume state), then run epochs, each ending with the handlers of :mod:`medbench.handlers`.
"""
from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from medbench import baselines
from medbench.augment import BatchMix, build_augment
from medbench.build import build_model, build_preprocess, build_task, build_training_task, place_model
from medbench.checkpoint import KeptCheckpoints, load_resume, restore, save_resume
from medbench.config import RunConfig, dump_config
from medbench.data import ImageDataset
from medbench.data.memory import fits_on_device
from medbench.data.sampling import BalancedSampler
from medbench.data.splits import leakage_report
from medbench.data.store import on_disk
from medbench.data.subgroups import subgroup_values_for
from medbench.data.views import cat_images
from medbench.engine import (
    Precision,
    WeightEMA,
    build_optimizer,
    build_scheduler,
    predict_logits,
    steps_per_epoch,
    train_one_epoch,
)
from medbench.errors import MedbenchError
from medbench.fileio import write_json, write_text
from medbench.gan.synthetic import synthetic_split
from medbench.handlers import Checkpointing, ConsoleLog, TensorBoard, early_stop, last_good_state
from medbench.metrics import acc, auc
from medbench.metrics.diagnostics import collapse_warning, emit, prefer, selection_value, selection_warnings
from medbench.metrics.positive import positive_index
from medbench.progress import console, progress_bar
from medbench.rundir import CONFIG, LEAKAGE, SKIPPED, TENSORBOARD, read_provenance, write_data_spec
from medbench.tasks import Task


def versions() -> dict[str, str]:
    import torchvision

    from medbench import __version__

    return {"medbench": __version__, "torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "python": platform.python_version()}


def provenance(ds: ImageDataset, **more) -> dict:
    """What config.yaml records beside the settings: versions, the data, and ``more`` (device, precision, ...)."""
    return {**versions(), "data_md5": ds.md5, "data_source": ds.source, **more,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def start_run_dir(out: Path, cfg: RunConfig, ds: ImageDataset, record: dict, quiet: bool) -> None:
    """config.yaml (with its provenance), dataset.json and the data checks: what every run writes first."""
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / CONFIG, dump_config(cfg, record))
    write_data_spec(out, ds)
    data_checks(out, ds, quiet)


def data_checks(out: Path, ds: ImageDataset, quiet: bool) -> None:
    """Record skipped files (own data with skip_bad) and exact-duplicate images across splits (leakage)."""
    if ds.meta.get("skipped"):
        write_json(out / SKIPPED, ds.meta["skipped"])
        if not quiet:
            console.print(f"[yellow]{len(ds.meta['skipped'])} unreadable file(s) skipped: listed in "
                          f"{out / SKIPPED}[/]")
    files = ds.meta.get("files")
    dups = leakage_report(ds.splits, files if isinstance(files, dict) else None)
    write_json(out / LEAKAGE, {"duplicates_across_splits": len(dups), "duplicates": dups})
    if dups and not quiet:
        console.print(f"[yellow]leakage check: {len(dups)} image(s) appear in more than one split (exact "
                      f"duplicates; see {out / LEAKAGE})[/]")


def on_device(ds: ImageDataset, device: torch.device) -> dict:
    """Splits held in memory move to the device whole when they fit there (batches are then one index); splits read
    from disk, or too large for the GPU, stay where they are and are copied a batch at a time."""
    out = {}
    for s, sp in ds.splits.items():
        whole = not on_disk(sp.images) and fits_on_device(sp.images.nbytes, device)
        out[s] = type(sp)(sp.images.to(device), sp.labels.to(device)) if whole else sp
    return out


def epoch_metrics(task: Task, labels, scores: np.ndarray) -> dict:
    """The per-epoch ``acc`` and ``auc`` only: the full record (per class, ECE, ...) is for the final evaluation."""
    return {"acc": acc(labels, scores, task.name), "auc": auc(labels, scores, task.name)}


@dataclass
class Loop:
    """The objects one network's training is made of, built from the config."""
    cfg: RunConfig
    out: Path
    dist: object
    device: torch.device
    task: Task
    model: torch.nn.Module  # the parameters (saved, restored)
    net: torch.nn.Module  # what is called: compiled and/or DDP-wrapped ``model``
    chosen: torch.nn.Module  # the weights validated, selected and saved (the EMA copy when on)
    evaluated: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: object
    precision: Precision
    gen: torch.Generator
    ema: WeightEMA | None
    prep: object
    splits: dict
    steps: int
    augment: object
    mix: BatchMix
    record: dict  # provenance
    class_names: list = field(default_factory=list)
    sampler: BalancedSampler | None = None  # --sampler balanced: each epoch's class-balanced draw


@dataclass
class State:
    """What changes from epoch to epoch (and is saved to resume)."""
    kept: KeptCheckpoints
    history: list = field(default_factory=list)
    best: float = -math.inf
    best_epoch: int = 0
    train_seconds: float = 0.0
    start: int = 1
    partial: dict | None = None
    score: float = -math.inf
    is_best: bool = False
    t0: float = 0.0
    best_collapse: str | None = None  # the selected epoch's validation predictions collapsed to one class
    warnings: list = field(default_factory=list)  # about the selection, once training ended
    stopped: dict | None = None  # why training ended before the last epoch (--patience, or on_epoch)

    def best_row(self) -> dict | None:
        """The history row of the epoch selected so far."""
        return next((r for r in self.history if r["epoch"] == self.best_epoch), None)

    def resume_info(self, loop: Loop, epoch: int) -> dict:
        """The state after ``epoch`` ended (without the training time, added by the caller)."""
        return {"epoch": epoch, "best": self.best, "best_epoch": self.best_epoch, "history": self.history,
                "best_collapse": self.best_collapse,
                "kept": self.kept.entries, **({"ema_updates": loop.ema.updates} if loop.ema is not None else {}),
                "config": loop.cfg.model_dump(mode="json")}


def check_evaluation_settings(cfg: RunConfig, ds: ImageDataset, task: Task) -> None:
    """What the evaluation at the end will need, checked before training: a bad positive class, subgroup column or
    regex fails in seconds, not after the last epoch."""
    positive_index(cfg.positive_class, ds.class_names, ds["train"].labels.numpy(), task.name)
    if "test" in ds.splits:
        subgroup_values_for(ds, "test", cfg)


def build_loop(cfg: RunConfig, out: Path, ds: ImageDataset, dist, device: torch.device) -> Loop:
    precision = Precision(device, cfg.precision)
    task = build_task(cfg, ds)
    check_evaluation_settings(cfg, ds, task)
    model = place_model(build_model(cfg, ds, task), cfg, device)
    net = torch.compile(model) if cfg.compile else model  # same parameters; state_dict keys from ``model``
    if dist.active:
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
    prep = build_preprocess(cfg, ds)
    splits = on_device(ds, device)
    synthetic = None
    if cfg.synthetic:  # generated images join the training split only; evaluation reloads the real data
        synth_split, synthetic = synthetic_split(cfg, ds, device)
        splits["train"] = type(synth_split)(cat_images(splits["train"].images, synth_split.images),
                                            torch.cat([splits["train"].labels.to(device), synth_split.labels]))
    # the objective's class weights and the sampler's groups come from the training split as trained
    train_labels = splits["train"].labels.cpu()
    task, objective = build_training_task(cfg, ds, train_labels)
    sampler = BalancedSampler(train_labels, ds.task, ds.class_names) if cfg.sampler == "balanced" else None
    steps = steps_per_epoch(len(splits["train"]), cfg.batch_size, dist.world)
    opt = build_optimizer(cfg, model)
    sched = build_scheduler(cfg, opt, steps)
    gen = torch.Generator().manual_seed(cfg.seed)  # the same batch order on every rank
    ema = WeightEMA(model, cfg.ema) if cfg.ema > 0 else None
    own = cfg.source.kind != "medmnist"
    record = provenance(ds, device=str(device),
                        **({"data_cache_key": ds.meta["cache"]["key"]} if own and "cache" in ds.meta else {}),
                        precision=precision.name, world_size=dist.world,
                        **({"weights_source": model.weights_source} if getattr(model, "weights_source", None)
                           else {}),
                        **({"synthetic": synthetic} if synthetic else {}), **objective)
    chosen = ema.module if ema is not None else model
    return Loop(cfg, out, dist, device, task, model, net, chosen, chosen if ema is not None else net, opt, sched,
                precision, gen, ema, prep, splits, steps, build_augment(cfg.augment, no_flip=cfg.no_flip),
                BatchMix(cfg.mixup, cfg.cutmix), record, list(ds.class_names), sampler)


def describe_objective(loop: Loop) -> list[str]:
    """The console lines about a non-default objective or sampler: the weights actually used, the sampler's
    groups, and a warning when two corrections of the imbalance are stacked."""
    cfg, lines = loop.cfg, []
    weights = loop.record.get("class_weights")
    if weights:
        per = next(v for k, v in weights.items() if k != "from")
        lines.append(f"class weights ({weights['from']}): " + ", ".join(f"{c} {w:.4g}" for c, w in per.items()))
    if cfg.loss == "focal":
        lines.append(f"focal loss, gamma {cfg.focal_gamma:g}" + (" (= cross-entropy)" if cfg.focal_gamma == 0 else ""))
    if loop.sampler is not None:
        lines.append(loop.sampler.describe())
        if cfg.class_weights == "balanced":
            lines.append("[yellow]--sampler balanced and --class-weights balanced both correct the class imbalance: "
                         "together they over-correct (the rare classes now dominate the loss); use one[/]")
    return lines


def start_or_restore(loop: Loop, ds: ImageDataset, resume: bool, quiet: bool) -> State:
    """A new run writes its first files; a resumed one gets back every tensor, RNG and counter it saved."""
    state = State(KeptCheckpoints(loop.out, loop.cfg.keep_checkpoints))
    if not resume:
        if loop.dist.is_main:
            start_run_dir(loop.out, loop.cfg, ds, loop.record, quiet)
        return state
    tensors, saved = load_resume(loop.out, loop.cfg)
    restore(tensors, saved, loop.model, loop.opt, loop.sched, loop.precision, loop.gen, loop.device)
    if loop.ema is not None:
        loop.ema.module.load_state_dict({k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")})
        loop.ema.updates = saved["ema_updates"]
    state.history, state.best, state.best_epoch = saved["history"], saved["best"], saved["best_epoch"]
    state.best_collapse = saved.get("best_collapse")
    state.kept.entries, state.train_seconds, state.start = saved["kept"], saved["train_seconds"], saved["epoch"] + 1
    if saved.get("partial"):  # killed within an epoch: continue after its last saved step
        state.partial = {**saved["partial"], "scores": tensors["partial.scores"], "labels": tensors["partial.labels"]}
    if not quiet:
        within = f", step {state.partial['step']} of epoch {state.partial['epoch']}" if state.partial else ""
        console.print(f"resuming {loop.out} after epoch {saved['epoch']}{within} of {loop.cfg.epochs}")
    return state


def train_network(cfg: RunConfig, out: Path, ds: ImageDataset, dist, device: torch.device, *, quiet: bool,
                  on_epoch: Callable[[dict], bool] | None = None, resume: bool = False,
                  handlers: list | None = None, announce: Callable | None = None) -> tuple[Task, State]:
    """Train one network into ``out`` (config, weights, history, checkpoints, resume state, TensorBoard).

    ``handlers``: more per-epoch handlers (e.g. a tracker of :mod:`medbench.tracking`), run after the built-in ones.
    ``announce(loop, quiet, first_epoch)``: called before the first epoch, returns what the progress bar shows as
    the run's expected duration (:func:`medbench.estimate.announce`) or None.
    """
    loop = build_loop(cfg, out, ds, dist, device)
    state = start_or_restore(loop, ds, resume, quiet)
    if not quiet and dist.is_main:
        for line in describe_objective(loop):
            console.print(line)
    # a resumed run whose history already met --patience trains no more (killed after it stopped, before the end)
    state.stopped = early_stop(state.history, cfg.select_metric, cfg.patience, cfg.epochs)
    est = announce(loop, quiet or not dist.is_main, first_epoch=state.start) if announce else None
    tb = TensorBoard(out / TENSORBOARD, enabled=dist.is_main)
    state.t0 = time.perf_counter() - state.train_seconds
    try:
        with progress_bar(f"{cfg.model} on {ds.name}" + (f" (est. {est.short()})" if est is not None else ""),
                          total=(cfg.epochs - state.start + 1) * loop.steps,
                          enabled=not quiet) as bar, torch.autograd.set_detect_anomaly(cfg.detect_anomaly):
            every = [tb, Checkpointing(), ConsoleLog(bar, quiet), *(handlers or [])]
            for epoch in range(state.start, cfg.epochs + 1):
                if state.stopped:
                    break
                row = run_epoch(loop, state, epoch, bar)
                for h in every:
                    h.epoch_end(loop, state, row)
                state.train_seconds = time.perf_counter() - state.t0  # training and validation so far
                state.stopped = early_stop(state.history, cfg.select_metric, cfg.patience, cfg.epochs)
                if on_epoch is not None and on_epoch({**row, "best_epoch": state.best_epoch, "is_best": state.is_best,
                                                      "model": loop.chosen, "train_seconds": state.train_seconds}):
                    state.stopped = state.stopped or caller_stop(state.history, cfg.epochs)
                state.t0 = time.perf_counter() - state.train_seconds  # the hook's own time is not the run's
    finally:
        tb.close()
    if state.stopped and dist.is_main:
        record_stop(out, cfg, state.stopped)
        if not quiet:
            console.print(f"stopped early after epoch {state.stopped['epoch']} of {cfg.epochs}: "
                          f"{state.stopped['reason']}")
    state.warnings = selection_warnings(state.history, cfg.select_metric, ds["val"].labels.numpy(), loop.task.name,
                                        loop.class_names) + ([state.best_collapse] if state.best_collapse else [])
    if dist.is_main:
        emit(state.warnings)
    return loop.task, state


def caller_stop(history: list[dict], epochs: int) -> dict | None:
    """The record of a stop asked for by ``on_epoch`` (a pruner, a caller's own rule); None after the last epoch."""
    last = int(history[-1]["epoch"])
    if last >= epochs:
        return None
    return {"epoch": last, "of": epochs, "reason": "the on_epoch callback asked to stop (e.g. a tuner's pruning)"}


def record_stop(out: Path, cfg: RunConfig, stopped: dict) -> None:
    """config.yaml's provenance gains ``stopped_early`` (the report, the card and tracking read it there)."""
    provenance = read_provenance(out)
    if provenance.get("stopped_early") != stopped:
        write_text(out / CONFIG, dump_config(cfg, {**provenance, "stopped_early": stopped}))


def run_epoch(loop: Loop, state: State, epoch: int, bar) -> dict:
    """One epoch of training and validation; the history row, with the selection recorded in ``state``."""
    cfg, partial = loop.cfg, state.partial
    lr = loop.opt.param_groups[0]["lr"] if partial is None else partial["lr"]
    at_start = loop.gen.get_state()  # the batch order of this epoch is drawn from it

    def within(part):  # the mid-epoch resume state
        save_resume(loop.out, loop.model, loop.opt, loop.sched, loop.precision, loop.gen, loop.device,
                    {**state.resume_info(loop, epoch - 1), "train_seconds": time.perf_counter() - state.t0},
                    ema=loop.ema, partial={**part, "epoch": epoch, "lr": lr}, batches_state=at_start)

    mid_epoch = loop.dist.world == 1 and cfg.checkpoint_minutes > 0  # ranks' partial sums are their own
    try:
        tr = train_one_epoch(loop.net, loop.task, loop.splits["train"], loop.opt, loop.sched, loop.prep,
                             loop.precision, cfg.batch_size, loop.gen, bar, loop.dist, augment=loop.augment,
                             mix=loop.mix, ema=loop.ema, partial=partial, checkpoint=within if mid_epoch else None,
                             checkpoint_s=cfg.checkpoint_minutes * 60, sampler=loop.sampler)
        state.partial = None
    except RuntimeError as e:
        if not cfg.detect_anomaly:
            raise
        raise MedbenchError(f"epoch {epoch}: autograd anomaly: {' '.join(str(e).split())[:400]} "
                            f"Last good state: {last_good_state(loop.out, epoch)}") from None
    if not math.isfinite(tr["loss"]):
        step = f", first at step {tr['first_bad_step']}" if tr.get("first_bad_step", -1) > 0 else ""
        raise MedbenchError(f"training loss is {tr['loss']} in epoch {epoch}{step}; lower --lr or check the data "
                            f"(--detect-anomaly finds the operation). Last good state: "
                            f"{last_good_state(loop.out, epoch)}")
    val = validate(loop)
    train_m = epoch_metrics(loop.task, tr["labels"], tr["scores"])
    row = {"epoch": epoch, "lr": lr, "train_loss": tr["loss"], "train_acc": train_m["acc"],
           "train_auc": train_m["auc"], "val_loss": val["loss"], "val_acc": val["acc"], "val_auc": val["auc"],
           "seconds": round(tr["seconds"], 3), "images_per_s": round(tr["images_per_s"], 1)}
    # ties on the selection metric go to the lower validation loss (metrics.diagnostics.prefer), not the first
    # epoch; every rank has the same metrics, so every rank selects the same epoch
    state.is_best = prefer(row, state.best_row(), cfg.select_metric)
    state.history.append(row)
    state.score = selection_value(val, cfg.select_metric)
    if state.is_best:
        state.best, state.best_epoch, state.best_collapse = state.score, epoch, val["collapse"]
    return row


def validate(loop: Loop) -> dict:
    val_split = loop.splits["val"]
    logits = predict_logits(loop.evaluated, val_split, loop.prep, loop.cfg.eval_batch_size, dist=loop.dist)
    labels = val_split.labels.cpu()
    scores = loop.task.scores(logits).double().numpy()
    rec = epoch_metrics(loop.task, labels.numpy(), scores)
    rec["loss"] = float(loop.task.loss(logits, labels, smoothing=0.0))
    rec["collapse"] = collapse_warning("val (selected epoch)", labels.numpy(), scores, loop.task.name,
                                       loop.class_names)  # at the training-time rule: 0.5, or the argmax
    return rec


def fit_baseline(cfg: RunConfig, out: Path, ds: ImageDataset, quiet: bool):
    """A scikit-learn model fitted on the training split: (the estimator, seconds). Evaluation follows."""
    if cfg.ensemble > 1 or cfg.tta or cfg.keep_checkpoints or cfg.members > 1:
        raise MedbenchError(f"{cfg.model} is a classical model: it has no checkpoints to ensemble or keep, no "
                            f"members and no flipped-view averaging (drop --ensemble/--keep-checkpoints/--members/"
                            f"--tta)")
    if cfg.class_weights != "none" or cfg.loss != "ce" or cfg.sampler != "shuffle" or cfg.patience:
        raise MedbenchError(f"{cfg.model} is a classical model fitted in one step: --class-weights, --loss, --sampler "
                            f"and --patience apply to networks only (drop them)")
    task = build_task(cfg, ds)
    baselines.make_estimator(cfg.model, cfg.seed, task.name)  # a bad name fails before anything is written
    check_evaluation_settings(cfg, ds, task)
    record = provenance(ds, device="cpu", **({"data_cache_key": ds.meta["cache"]["key"]} if "cache" in ds.meta
                                             else {}))
    start_run_dir(out, cfg, ds, record, quiet)
    t0 = time.perf_counter()
    est = baselines.fit(cfg.model, cfg.seed, task.name, cfg.features, ds["train"])
    return est, time.perf_counter() - t0
