"""A training run and its directory: config.yaml, model.safetensors, history.csv, metrics.json, predictions/, tb/."""
from __future__ import annotations

import contextlib
import io
import json
import math
import platform
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from medbench import baselines
from medbench.augment import BatchMix, build_augment
from medbench.baselines import is_baseline
from medbench.config import PROVENANCE_KEY, RunConfig, dump_config, load_config, resolve_config
from medbench.data import OWN_DATA, SPLITS, ImageDataset, load_dataset
from medbench.data.memory import fits_on_device
from medbench.data.store import cat_images, on_disk
from medbench.data.loader import Preprocess
from medbench.engine import (Precision, WeightEMA, build_optimizer, build_scheduler, predict_logits, resolve_device,
                             seed_everything, steps_per_epoch, train_one_epoch)
from medbench import distributed
from medbench.errors import MedbenchError
from medbench.fileio import atomic_path, read_json, write_csv, write_json, write_text
from medbench.metrics import acc, auc, bootstrap_metrics, compute_metrics, youden_threshold
from medbench.models import create_model
from medbench.models.weights import check_fits
from medbench.card import write_model_card
from medbench.predict import write_data_spec
from medbench.progress import console, progress_bar
from medbench.rundir import claim_new, locked
from medbench.tasks import Task, make_task

CONFIG, WEIGHTS, METRICS, HISTORY = "config.yaml", "model.safetensors", "metrics.json", "history.csv"
CHECKPOINTS, CHECKPOINT_INDEX, MEMBERS = "checkpoints", "index.json", "members"
RESUME = "resume.safetensors"  # the last complete epoch's full training state; removed when the run finishes
# metrics also reported at the validation-chosen (Youden) threshold of binary tasks
YOUDEN_KEYS = ("threshold", "acc", "balanced_acc", "sensitivity", "specificity", "precision_macro", "recall_macro",
               "f1_macro", "f1_weighted", "confusion_matrix")


def _versions() -> dict[str, str]:
    import torchvision

    from medbench import __version__

    return {"medbench": __version__, "torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "python": platform.python_version()}


def build_task(cfg: RunConfig, ds: ImageDataset) -> Task:
    return make_task(ds.task, ds.num_classes, ordinal_loss=cfg.ordinal_loss, label_smoothing=cfg.label_smoothing)


def input_channels(cfg: RunConfig, ds: ImageDataset) -> int:
    return 3 if cfg.as_rgb else ds.in_chans


def normalization(cfg: RunConfig, in_chans: int) -> tuple[list[float], list[float]]:
    """Per-channel mean/std: the config's, else the pretrained weights' ImageNet statistics (averaged for grey
    input, whose first convolution sums the RGB filters), else 0.5 / 0.5."""
    from medbench.models import model_entry
    from medbench.models.weights import imagenet_stats

    stats = imagenet_stats(model_entry(cfg.model)) if cfg.pretrained or cfg.weights else None
    mean, std = stats or ([0.5], [0.5])
    mean = mean if cfg.norm_mean is None else cfg.norm_mean
    std = std if cfg.norm_std is None else cfg.norm_std
    out = []
    for name, v in (("norm_mean", mean), ("norm_std", std)):
        v = [float(v)] if isinstance(v, (int, float)) else [float(x) for x in v]
        if len(v) == 3 and in_chans == 1:
            v = [sum(v) / 3]
        if len(v) not in (1, in_chans):
            raise MedbenchError(f"{name} has {len(v)} values; the model takes {in_chans} channels (give 1 or "
                                f"{in_chans})")
        out.append(v * in_chans if len(v) == 1 else v)
    return out[0], out[1]


def build_model(cfg: RunConfig, ds: ImageDataset, task: Task, load_weights: bool = True) -> torch.nn.Module:
    """The run's network; ``load_weights=False`` skips pretrained loading (the run's own weights follow)."""
    kwargs = {} if cfg.stem == "auto" else {"stem": cfg.stem}
    kwargs.update({k: v for k in ("drop_rate", "drop_path_rate") if (v := getattr(cfg, k)) is not None})
    in_chans = input_channels(cfg, ds)
    mean, std = normalization(cfg, in_chans)
    return create_model(cfg.model, num_classes=task.num_outputs, in_chans=in_chans, img_size=cfg.size,
                        pretrained=cfg.pretrained, weights=cfg.weights, truncate=cfg.truncate,
                        input_adapt=cfg.input_adapt, input_size=cfg.input_size, resize_mode=cfg.resize_mode,
                        pad_value=[-m / s for m, s in zip(mean, std)], load_weights=load_weights, **kwargs)


def source_options(cfg: RunConfig) -> dict:
    """The config's settings for a folder: or csv: dataset, as loader keyword arguments."""
    if cfg.dataset.startswith("folder:"):
        return dict(label_regex=cfg.label_regex, resize=cfg.fit, val_from_train=cfg.val_from_train,
                    test_from_train=cfg.test_from_train, group_regex=cfg.group_regex, seed=cfg.split_seed,
                    skip_bad=cfg.skip_bad)
    if cfg.dataset.startswith("csv:"):
        if not cfg.image_col or not cfg.label_cols:
            raise MedbenchError(f"{cfg.dataset}: a CSV dataset needs --image-col and --label-cols")
        return dict(image_col=cfg.image_col, label_cols=cfg.label_cols, split_col=cfg.split_col,
                    uncertain=cfg.uncertain, resize=cfg.fit, val_from_train=cfg.val_from_train,
                    test_from_train=cfg.test_from_train, group_regex=cfg.group_regex, seed=cfg.split_seed,
                    skip_bad=cfg.skip_bad, allow_outside_root=cfg.allow_outside_root)
    return {}


def dataset_for(cfg: RunConfig, data_dir=None, quiet: bool = True) -> ImageDataset:
    """The run's dataset, loaded (MedMNIST) or decoded / read from the cache (own data)."""
    return load_dataset(cfg.dataset, cfg.size, data_dir=data_dir, progress=not quiet,
                        memory_budget=cfg.memory_budget, **source_options(cfg))


def _dataset(cfg: RunConfig, dataset: ImageDataset | None, data_dir, quiet: bool) -> ImageDataset:
    return dataset if dataset is not None else dataset_for(cfg, data_dir, quiet)


def _on_device(ds: ImageDataset, device: torch.device) -> dict:
    """Splits held in memory move to the device whole when they fit there (batches are then one index); splits read
    from disk, or too large for the GPU, stay where they are and are copied a batch at a time."""
    out = {}
    for s, sp in ds.splits.items():
        whole = not on_disk(sp.images) and fits_on_device(sp.images.nbytes, device)
        out[s] = type(sp)(sp.images.to(device), sp.labels.to(device)) if whole else sp
    return out


def _epoch_metrics(task: Task, labels, scores: np.ndarray) -> dict:
    """The per-epoch ``acc`` and ``auc`` only: the full record (per class, ECE, ...) is for the final evaluation."""
    return {"acc": acc(labels, scores, task.name), "auc": auc(labels, scores, task.name)}


def _val_record(task: Task, val_labels: torch.Tensor, logits: torch.Tensor) -> dict:
    labels = val_labels.cpu()
    rec = _epoch_metrics(task, labels.numpy(), task.scores(logits).double().numpy())
    rec["loss"] = float(task.loss(logits, labels, smoothing=0.0))
    return rec


def _select_value(rec: dict, metric: str) -> float:
    v = rec.get(metric)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return -math.inf
    return -v if metric == "loss" else v


def write_predictions(path: Path, scores: np.ndarray) -> None:
    """MedMNIST standard evaluation format: no header; index, then one score per class (exact float64)."""
    buf = io.StringIO()
    table = np.column_stack([np.arange(len(scores)), scores])
    np.savetxt(buf, table, delimiter=",", fmt=["%d"] + ["%.17g"] * scores.shape[1])
    write_text(path, buf.getvalue())


def _save_weights(model: torch.nn.Module, path: Path, cfg: RunConfig, epoch: int) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp),
                  metadata={"model": cfg.model, "epoch": str(epoch)})


class KeptCheckpoints:
    """The K best epochs' weights by validation score in ``checkpoints/``, listed best first in index.json.

    A new file is written and the index updated before a displaced file is deleted, so the index never names
    a missing file."""

    def __init__(self, run_dir: Path, k: int):
        self.folder, self.k, self.entries = Path(run_dir) / CHECKPOINTS, k, []

    def offer(self, model: torch.nn.Module, cfg: RunConfig, epoch: int, score: float) -> None:
        if self.k == 0 or (len(self.entries) == self.k and score <= self.entries[-1]["_score"]):
            return
        name = f"epoch_{epoch:04d}.safetensors"
        _save_weights(model, self.folder / name, cfg, epoch)
        self.entries.append({"epoch": epoch, "file": name, "_score": score,
                             f"val_{cfg.select_metric}": None if not math.isfinite(score) else
                             (-score if cfg.select_metric == "loss" else score)})
        self.entries.sort(key=lambda e: (-e["_score"], e["epoch"]))
        dropped = self.entries[self.k:]
        self.entries = self.entries[:self.k]
        write_json(self.folder / CHECKPOINT_INDEX, [{k: v for k, v in e.items() if k != "_score"}
                                                    for e in self.entries])
        for e in dropped:
            (self.folder / e["file"]).unlink(missing_ok=True)


def _save_resume(out: Path, model, opt, sched, precision, gen: torch.Generator, device: torch.device,
                 info: dict, ema: WeightEMA | None = None, partial: dict | None = None,
                 batches_state: torch.Tensor | None = None) -> None:
    """Everything needed to continue after epoch ``info["epoch"]`` exactly: weights, optimizer, scheduler,
    gradient scaler, every RNG, history and best-so-far. One safetensors file (tensors; the rest as JSON in its
    metadata), written atomically: a crash leaves the previous file.

    Within an epoch, ``partial`` (:func:`medbench.engine.epoch_state`, plus the ``epoch`` in progress) is the
    loader's position and the epoch's sums so far, and ``batches_state`` the batch-order generator at the epoch's
    start, from which the same order is drawn again."""
    import random

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.module.state_dict().items()})
    osd = opt.state_dict()
    plain: dict = {}
    for pid, st in osd["state"].items():
        for name, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{pid}.{name}"] = v.detach().cpu().contiguous()
            else:
                plain.setdefault(str(pid), {})[name] = v
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.batches"] = gen.get_state() if batches_state is None else batches_state
    if partial is not None:
        tensors["partial.scores"] = partial["scores"].contiguous()
        tensors["partial.labels"] = partial["labels"].contiguous()
        info = {**info, "partial": {k: v for k, v in partial.items() if k not in ("scores", "labels")}}
    if device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    np_state = np.random.get_state()
    state = {**info, "optimizer": {"param_groups": osd["param_groups"], "state": plain, "entries": len(osd["state"])},
             "scheduler": sched.state_dict(),
             "scaler": precision.scaler.state_dict() if precision.scaler is not None else None,
             "rng_numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]], "rng_python": random.getstate()}
    with atomic_path(out / RESUME) as tmp:
        save_file(tensors, str(tmp), metadata={"medbench_resume": json.dumps(state)})


def _load_resume(out: Path, cfg: RunConfig) -> tuple[dict, dict]:
    """(tensors, state) of ``out/resume.safetensors``; a clear error when missing, damaged or from other settings."""
    from safetensors import safe_open

    path = out / RESUME
    if not path.is_file():
        done = (out / METRICS).is_file()
        raise MedbenchError(f"{out}: nothing to resume ({RESUME} missing): "
                            + ("the run already finished" if done else
                               "it was killed before its first epoch ended; delete the folder and train again"))
    try:
        with safe_open(str(path), framework="pt") as f:
            state = json.loads(f.metadata()["medbench_resume"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors' own error types for truncated or corrupt files
        raise MedbenchError(f"{path}: damaged resume state ({type(e).__name__}: {e}); delete it and retrain") from None
    if state.get("config") != cfg.model_dump(mode="json"):
        raise MedbenchError(f"{path} was saved with other settings than {out / CONFIG}; refusing to mix them")
    missing = [k for k in ("epoch", "best", "best_epoch", "history", "kept", "train_seconds", "optimizer",
                           "scheduler", "rng_numpy", "rng_python") if k not in state]
    missing += [k for k in ("rng.torch", "rng.batches") if k not in tensors]
    if state.get("partial"):
        missing += [k for k in ("partial.scores", "partial.labels") if k not in tensors]
        missing += [f"partial.{k}" for k in ("epoch", "step", "lr", "loss_sum", "seen", "first_bad", "seconds")
                    if k not in state["partial"]]
    opt = state.get("optimizer") or {}
    saved = len({k.split(".")[1] for k in tensors if k.startswith("optim.")} | set(opt.get("state") or {}))
    if not missing and saved != opt.get("entries", saved):
        missing.append(f"optimizer state of {opt['entries'] - saved} of {opt['entries']} parameters")
    if missing:
        raise MedbenchError(f"{path} is incomplete (missing {', '.join(missing[:4])}): resuming would not continue "
                            f"the same training; delete {RESUME} and the run, and train again")
    return tensors, state


def _restore(tensors: dict, state: dict, model, opt, sched, precision, gen: torch.Generator,
             device: torch.device) -> None:
    import random

    try:
        model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    except RuntimeError as e:  # missing or mis-shaped weights in the resume file
        raise MedbenchError(f"{RESUME}: its model weights do not fit the run's model "
                            f"({' '.join(str(e).split())[:200]}); delete it and the run, and train again") from None
    groups = state["optimizer"]["param_groups"]
    for g in groups:
        for key, v in g.items():
            if isinstance(v, list) and key != "params":
                g[key] = tuple(v)  # JSON turned tuples (betas) into lists
    ostate: dict = {int(pid): dict(v) for pid, v in state["optimizer"]["state"].items()}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, name = k.split(".", 2)
            ostate.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": ostate, "param_groups": groups})
    for group in opt.param_groups:  # moments in the parameter's memory layout (channels_last), as Adam made them
        for param in group["params"]:
            st = opt.state.get(param, {})
            for name, v in st.items():
                if torch.is_tensor(v) and v.shape == param.shape and v.stride() != param.stride():
                    st[name] = torch.empty_like(param).copy_(v)
    sched.load_state_dict(state["scheduler"])
    if precision.scaler is not None and state.get("scaler"):
        precision.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(tensors["rng.torch"])
    gen.set_state(tensors["rng.batches"])
    if device.type == "cuda" and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)
    name, keys, *rest = state["rng_numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    version, internal, gauss = state["rng_python"]
    random.setstate((version, tuple(internal), gauss))


def kept_checkpoints(run_dir: Path, k: int) -> list[Path]:
    """The files of the ``k`` best kept checkpoints, best first; a clear error when fewer were kept."""
    index = Path(run_dir) / CHECKPOINTS / CHECKPOINT_INDEX
    entries = read_json(index, CHECKPOINT_INDEX, "restore it from a backup, or evaluate without --ensemble",
                        kind=list) if index.is_file() else []
    if len(entries) < k:
        raise MedbenchError(f"{run_dir} kept {len(entries)} checkpoint(s) but --ensemble {k} needs {k}: retrain with "
                            f"--keep-checkpoints {k}")
    return [index.parent / e["file"] for e in entries[:k]]


def member_dirs(run_dir: str | Path, cfg: RunConfig) -> list[Path]:
    """The run directories of a deep ensemble's members (``members/00`` ...); empty for one network."""
    return [Path(run_dir) / MEMBERS / f"{i:02d}" for i in range(cfg.members)] if cfg.members > 1 else []


def model_weights(run_dir: str | Path, cfg: RunConfig, ensemble: int | None = None) -> list[Path]:
    """The weights files whose probabilities make the run's predictions: a deep ensemble's members, else the
    ``ensemble`` (default: the config's) best kept checkpoints, else the best epoch."""
    ensemble = cfg.ensemble if ensemble is None else ensemble
    if cfg.members > 1:
        return [d / WEIGHTS for d in member_dirs(run_dir, cfg)]
    return kept_checkpoints(Path(run_dir), ensemble) if ensemble > 1 else [Path(run_dir) / WEIGHTS]


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def train(config: RunConfig | dict[str, Any], out: str | Path, *, data_dir=None, quiet: bool = False,
          dataset: ImageDataset | None = None, on_epoch: Callable[[dict], bool] | None = None,
          report: bool = True, resume: bool = False) -> Path:
    """Train one run into ``out`` and evaluate its best epoch on every split. Returns the run directory.

    ``dataset`` lets library users pass an :class:`ImageDataset` they built; otherwise ``config.dataset``
    is loaded from the data root. ``on_epoch`` is called after every epoch with the history row plus
    ``best_epoch``, ``is_best``, ``model`` and ``train_seconds``; returning True stops training there.
    ``report`` writes report.html (and the final ROC and confusion-matrix figures to TensorBoard).

    After every epoch the full training state goes to ``out/resume.safetensors``; ``resume=True`` continues a
    killed run from it (``config`` must be the run's own config.yaml) and, with ``deterministic``, ends with
    exactly the metrics of an uninterrupted run.
    """
    cfg = config if isinstance(config, RunConfig) else resolve_config(dict(config))
    out = Path(out)
    if resume:
        if not (out / CONFIG).is_file():
            raise MedbenchError(f"{out} is not a run directory ({CONFIG} missing); nothing to resume")
        if is_baseline(cfg.model):
            raise MedbenchError(f"{cfg.model} is a classical model fitted in one step: nothing to resume, retrain")
    else:
        claim_new(out, "run", CONFIG, resumable=True)
    dist, device = distributed.setup(resolve_device(cfg.device))
    dist.barrier()  # every rank has checked ``out`` before rank 0 writes into it
    with locked(out, "medbench train") if dist.is_main else contextlib.nullcontext():
        if not resume and dist.is_main:
            claim_new(out, "run", CONFIG, resumable=True)  # again under the lock: another writer may have finished meanwhile
        return _train(cfg, out, dist, device, data_dir=data_dir, quiet=quiet or not dist.is_main, dataset=dataset,
                      on_epoch=on_epoch, report=report, resume=resume)


def _train(cfg: RunConfig, out: Path, dist, device, *, data_dir, quiet: bool, dataset: ImageDataset | None,
           on_epoch, report: bool, resume: bool) -> Path:
    """``train`` once ``out`` is checked and locked."""
    seed_everything(cfg.seed, cfg.deterministic)
    ds = _dataset(cfg, dataset, data_dir, quiet)
    if is_baseline(cfg.model):
        return _train_baseline(cfg, out, ds, data_dir=data_dir, quiet=quiet, report=report)
    if cfg.members > 1:
        return _train_members(cfg, out, ds, dist, data_dir=data_dir, quiet=quiet, report=report, resume=resume)
    precision = Precision(device, cfg.precision)
    task = build_task(cfg, ds)
    model = _place(build_model(cfg, ds, task), cfg, device)
    net = torch.compile(model) if cfg.compile else model  # same parameters; state_dict keys from ``model``
    if dist.active:
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
    prep = _preprocess(cfg, ds)
    splits = _on_device(ds, device)
    synthetic = None
    if cfg.synthetic:  # generated images join the training split only; evaluation reloads the real data
        from medbench.gan import synthetic_split

        synth_split, synthetic = synthetic_split(cfg, ds, device)
        splits["train"] = type(synth_split)(cat_images(splits["train"].images, synth_split.images),
                                            torch.cat([splits["train"].labels.to(device), synth_split.labels]))
    augment = build_augment(cfg.augment, no_flip=cfg.no_flip)
    mix = BatchMix(cfg.mixup, cfg.cutmix)
    train_split, val_split = splits["train"], splits["val"]
    spe = steps_per_epoch(len(train_split), cfg.batch_size, dist.world)
    opt = build_optimizer(cfg, model)
    sched = build_scheduler(cfg, opt, spe)
    gen = torch.Generator().manual_seed(cfg.seed)  # the same batch order on every rank
    ema = WeightEMA(model, cfg.ema) if cfg.ema > 0 else None
    chosen = ema.module if ema is not None else model  # the weights that are validated, selected and saved
    evaluated = chosen if ema is not None else net

    own = cfg.dataset.startswith(OWN_DATA)
    provenance = {**_versions(), "data_md5": ds.md5, "data_source": ds.source, "device": str(device),
                  **({"data_cache_key": ds.meta["cache"]["key"]} if own and "cache" in ds.meta else {}),
                  "precision": precision.name, "world_size": dist.world,
                  **({"weights_source": model.weights_source} if getattr(model, "weights_source", None) else {}),
                  **({"synthetic": synthetic} if synthetic else {}),
                  "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    history: list[dict] = []
    kept = KeptCheckpoints(out, cfg.keep_checkpoints)
    best, best_epoch = -math.inf, 0
    train_seconds = 0.0
    start = 1
    partial = None
    if resume:
        tensors, state = _load_resume(out, cfg)
        _restore(tensors, state, model, opt, sched, precision, gen, device)
        if ema is not None:
            ema.module.load_state_dict({k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")})
            ema.updates = state["ema_updates"]
        history, best, best_epoch = state["history"], state["best"], state["best_epoch"]
        kept.entries, train_seconds, start = state["kept"], state["train_seconds"], state["epoch"] + 1
        if state.get("partial"):  # killed within an epoch: continue after its last saved step
            partial = {**state["partial"], "scores": tensors["partial.scores"], "labels": tensors["partial.labels"]}
        del tensors
        if not quiet:
            within = f", step {partial['step']} of epoch {partial['epoch']}" if partial else ""
            console.print(f"resuming {out} after epoch {state['epoch']}{within} of {cfg.epochs}")
    elif dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / CONFIG, dump_config(cfg, provenance))
        write_data_spec(out, ds)
        _data_checks(out, ds, quiet)
    tb = _tensorboard(out / "tb", enabled=dist.is_main)
    t0 = time.perf_counter() - train_seconds

    def resume_info(epoch: int) -> dict:  # the state after ``epoch`` ended
        return {"epoch": epoch, "best": best, "best_epoch": best_epoch, "history": history, "kept": kept.entries,
                **({"ema_updates": ema.updates} if ema is not None else {}), "config": cfg.model_dump(mode="json")}

    try:
        with progress_bar(f"{cfg.model} on {ds.name}", total=(cfg.epochs - start + 1) * spe,
                          enabled=not quiet) as bar, torch.autograd.set_detect_anomaly(cfg.detect_anomaly):
            for epoch in range(start, cfg.epochs + 1):
                lr = opt.param_groups[0]["lr"] if partial is None else partial["lr"]
                last = f"{out / RESUME} (epoch {epoch - 1})" if epoch > 1 else "none (first epoch)"
                at_start = gen.get_state()  # the batch order of this epoch is drawn from it

                def within(part, epoch=epoch, lr=lr, at_start=at_start):
                    _save_resume(out, model, opt, sched, precision, gen, device, {
                        **resume_info(epoch - 1), "train_seconds": time.perf_counter() - t0},
                        ema=ema, partial={**part, "epoch": epoch, "lr": lr}, batches_state=at_start)

                mid_epoch = dist.world == 1 and cfg.checkpoint_minutes > 0  # ranks' partial sums are their own
                try:
                    tr = train_one_epoch(net, task, train_split, opt, sched, prep, precision, cfg.batch_size, gen,
                                         bar, dist, augment=augment, mix=mix, ema=ema, partial=partial,
                                         checkpoint=within if mid_epoch else None,
                                         checkpoint_s=cfg.checkpoint_minutes * 60)
                    partial = None
                except RuntimeError as e:
                    if not cfg.detect_anomaly:
                        raise
                    raise MedbenchError(f"epoch {epoch}: autograd anomaly: {' '.join(str(e).split())[:400]} "
                                        f"Last good state: {last}") from None
                if not math.isfinite(tr["loss"]):
                    step = f", first at step {tr['first_bad_step']}" if tr.get("first_bad_step", -1) > 0 else ""
                    raise MedbenchError(f"training loss is {tr['loss']} in epoch {epoch}{step}; lower --lr or check "
                                        f"the data (--detect-anomaly finds the operation). Last good state: {last}")
                val_logits = predict_logits(evaluated, val_split, prep, cfg.eval_batch_size, dist=dist)
                val = _val_record(task, val_split.labels, val_logits)
                train_m = _epoch_metrics(task, tr["labels"], tr["scores"])
                row = {"epoch": epoch, "lr": lr, "train_loss": tr["loss"], "train_acc": train_m["acc"],
                       "train_auc": train_m["auc"], "val_loss": val["loss"], "val_acc": val["acc"],
                       "val_auc": val["auc"], "seconds": round(tr["seconds"], 3),
                       "images_per_s": round(tr["images_per_s"], 1)}
                history.append(row)
                for k, v in row.items():
                    if k != "epoch" and v is not None:
                        tb.add_scalar(k.replace("_", "/", 1), v, epoch)
                score = _select_value(val, cfg.select_metric)
                if score > best or best_epoch == 0:  # every rank has the same gathered metrics: same choice
                    best, best_epoch = score, epoch
                    if dist.is_main:
                        _save_weights(chosen, out / WEIGHTS, cfg, epoch)
                if dist.is_main:
                    kept.offer(chosen, cfg, epoch, score)
                    write_csv(out / HISTORY, history)
                    _save_resume(out, model, opt, sched, precision, gen, device, {
                        **resume_info(epoch), "train_seconds": time.perf_counter() - t0}, ema=ema)
                bar.set(f"loss {tr['loss']:.4f} val auc {_fmt(val['auc'])} acc {_fmt(val['acc'])}")
                if not quiet:
                    console.print(f"epoch {epoch}/{cfg.epochs}  loss {tr['loss']:.4f}  val auc {_fmt(val['auc'])}"
                                  f"  acc {_fmt(val['acc'])}  {tr['images_per_s']:.0f} img/s"
                                  + ("  *" if best_epoch == epoch else ""))
                train_seconds = time.perf_counter() - t0  # training and validation so far, nothing else
                if on_epoch is not None and on_epoch({**row, "best_epoch": best_epoch, "is_best": best_epoch == epoch,
                                                      "model": chosen, "train_seconds": train_seconds}):
                    break
                t0 = time.perf_counter() - train_seconds  # the hook's own time is not the run's
    finally:
        tb.close()
    dist.barrier()  # rank 0 has written the best weights
    metrics = _evaluate(out, data_dir=data_dir, quiet=quiet, dataset=ds)
    if dist.is_main:
        write_model_card(out, test_labels=ds["test"].labels.numpy(), data_dir=data_dir)
    if report and dist.is_main:
        from medbench.report import write_run_report

        _final_figures(out, ds, task)
        write_run_report(out, dataset=ds, data_dir=data_dir, quiet=quiet)
    if dist.is_main:
        (out / RESUME).unlink(missing_ok=True)  # finished: the metrics and weights are final
    if not quiet:
        console.print(f"best epoch {best_epoch} by val {cfg.select_metric}; "
                      f"test auc {_fmt(metrics['test']['auc'])} acc {_fmt(metrics['test']['acc'])}; "
                      f"{train_seconds:.0f} s training")
    return out


def _train_members(cfg: RunConfig, out: Path, ds: ImageDataset, dist, *, data_dir, quiet: bool, report: bool,
                   resume: bool) -> Path:
    """A deep ensemble: ``cfg.members`` ordinary runs (seeds seed*K + i) in ``members/NN``, then one evaluation of
    their averaged probabilities at the top. Resuming skips finished members and resumes a killed one."""
    if resume and (out / METRICS).is_file():
        raise MedbenchError(f"{out}: nothing to resume: the ensemble already finished ({METRICS} written)")
    if dist.is_main and not resume:
        out.mkdir(parents=True, exist_ok=True)
        provenance = {**_versions(), "data_md5": ds.md5, "data_source": ds.source,
                      "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        write_text(out / CONFIG, dump_config(cfg, provenance))
        write_data_spec(out, ds)
        _data_checks(out, ds, quiet)
    t0 = time.perf_counter()
    for i, member_dir in enumerate(member_dirs(out, cfg)):
        if (member_dir / METRICS).is_file():
            continue
        member = cfg.model_copy(update={"members": 1, "seed": cfg.seed * cfg.members + i})
        if not quiet:
            console.print(f"member {i + 1}/{cfg.members} (seed {member.seed}) -> {member_dir}")
        train(member, member_dir, data_dir=data_dir, quiet=quiet, dataset=ds, report=False,
              resume=(member_dir / RESUME).is_file())
    dist.barrier()
    metrics = _evaluate(out, data_dir=data_dir, quiet=quiet, dataset=ds)
    if dist.is_main:
        _card_and_report(out, ds, data_dir=data_dir, quiet=quiet, report=report)
    if not quiet:
        console.print(f"ensemble of {cfg.members}: test auc {_fmt(metrics['test']['auc'])} acc "
                      f"{_fmt(metrics['test']['acc'])}; {time.perf_counter() - t0:.0f} s")
    return out


def _card_and_report(out: Path, ds: ImageDataset, *, data_dir, quiet: bool, report: bool) -> None:
    write_model_card(out, test_labels=ds["test"].labels.numpy(), data_dir=data_dir)
    if report:
        from medbench.report import write_run_report

        write_run_report(out, dataset=ds, data_dir=data_dir, quiet=quiet)


class _NoWriter:
    def add_scalar(self, *args, **kwargs):
        pass

    def add_figure(self, *args, **kwargs):
        pass

    def close(self):
        pass


def _tensorboard(path: Path, enabled: bool):
    if not enabled:
        return _NoWriter()
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(path))


def _train_baseline(cfg: RunConfig, out: Path, ds: ImageDataset, *, data_dir, quiet: bool, report: bool) -> Path:
    """A scikit-learn model: fit on the training split, then the same evaluation, files and report."""
    if cfg.ensemble > 1 or cfg.tta or cfg.keep_checkpoints or cfg.members > 1:
        raise MedbenchError(f"{cfg.model} is a classical model: it has no checkpoints to ensemble or keep, no "
                            f"members and no flipped-view averaging (drop --ensemble/--keep-checkpoints/--members/"
                            f"--tta)")
    task = build_task(cfg, ds)
    baselines.make_estimator(cfg.model, cfg.seed, task.name)  # a bad name fails before anything is written
    provenance = {**_versions(), "data_md5": ds.md5, "data_source": ds.source, "device": "cpu",
                  **({"data_cache_key": ds.meta["cache"]["key"]} if "cache" in ds.meta else {}),
                  "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / CONFIG, dump_config(cfg, provenance))
    write_data_spec(out, ds)
    _data_checks(out, ds, quiet)
    t0 = time.perf_counter()
    est = baselines.fit(cfg.model, cfg.seed, task.name, cfg.features, ds["train"])
    seconds = time.perf_counter() - t0
    metrics = _evaluate(out, data_dir=data_dir, quiet=quiet, dataset=ds, estimator=est)
    tr, va = metrics["train"], metrics["val"]
    write_csv(out / HISTORY, [{"epoch": 1, "lr": "", "train_loss": tr["loss"], "train_acc": tr["acc"],
                               "train_auc": tr["auc"], "val_loss": va["loss"], "val_acc": va["acc"],
                               "val_auc": va["auc"], "seconds": round(seconds, 3),
                               "images_per_s": round(len(ds["train"]) / max(seconds, 1e-9), 1)}])
    _card_and_report(out, ds, data_dir=data_dir, quiet=quiet, report=report)
    if not quiet:
        console.print(f"{cfg.model} ({cfg.features}) fitted in {seconds:.1f} s; test auc "
                      f"{_fmt(metrics['test']['auc'])} acc {_fmt(metrics['test']['acc'])}")
    return out


def _data_checks(out: Path, ds: ImageDataset, quiet: bool) -> None:
    """Record skipped files (own data with skip_bad) and exact-duplicate images across splits (leakage)."""
    from medbench.data.splits import leakage_report

    if ds.meta.get("skipped"):
        write_json(out / "skipped.json", ds.meta["skipped"])
        if not quiet:
            console.print(f"[yellow]{len(ds.meta['skipped'])} unreadable file(s) skipped: listed in "
                          f"{out / 'skipped.json'}[/]")
    files = ds.meta.get("files")
    dups = leakage_report(ds.splits, files if isinstance(files, dict) else None)
    write_json(out / "leakage.json", {"duplicates_across_splits": len(dups), "duplicates": dups})
    if dups and not quiet:
        console.print(f"[yellow]leakage check: {len(dups)} image(s) appear in more than one split (exact "
                      f"duplicates; see {out / 'leakage.json'})[/]")


def _final_figures(out: Path, ds: ImageDataset, task: Task) -> None:
    """The test split's ROC curves and confusion matrix as TensorBoard figures."""
    from medbench.compare import read_predictions
    from medbench.report.figures import confusion_figure, roc_figure

    scores = read_predictions(out / "predictions" / "test.csv")
    labels = ds["test"].labels.numpy()
    metrics = read_json(out / METRICS, METRICS, f"run `medbench evaluate {out}` to recompute it")["test"]
    tb = _tensorboard(out / "tb", enabled=True)
    try:
        tb.add_figure("test/roc", roc_figure(labels, scores, task.name, ds.class_names))
        if task.name != "multilabel":
            tb.add_figure("test/confusion_matrix", confusion_figure(metrics["confusion_matrix"], ds.class_names,
                                                                    normalize=True))
    finally:
        tb.close()


def load_run_model(run_dir: str | Path, cfg: RunConfig, ds: ImageDataset, task: Task, device,
                   weights: Path | None = None) -> torch.nn.Module:
    """The run's network with its best weights (a deep ensemble: its first member's; or the given file)."""
    path = weights or model_weights(run_dir, cfg, 1)[0]
    if not path.is_file():
        raise MedbenchError(f"{path} not found: the run has no saved weights (did training finish an epoch?)")
    model = build_model(cfg, ds, task, load_weights=False)
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise MedbenchError(f"{path}: cannot read weights ({e}); the file is damaged, retrain the run") from None
    check_fits(state, model.state_dict(), str(path), cfg.model)
    model.load_state_dict(state)
    return _place(model, cfg, device)


def _place(model: torch.nn.Module, cfg: RunConfig, device) -> torch.nn.Module:
    return model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)


def _preprocess(cfg: RunConfig, ds: ImageDataset) -> Preprocess:
    mean, std = normalization(cfg, input_channels(cfg, ds))
    return Preprocess(mean, std, to_rgb=cfg.as_rgb, channels_last=cfg.channels_last)


def evaluate(run_dir: str | Path, splits: Iterable[str] | None = None, *, data_dir=None, quiet: bool = False,
             dataset: ImageDataset | None = None, ensemble: int | None = None, tta: bool | None = None,
             bootstrap: int | None = None, seed: int = 0, estimator=None) -> dict:
    """Reload a run's best weights, recompute metrics and predictions for ``splits`` and update metrics.json.

    ``ensemble`` (K best kept checkpoints, probabilities averaged), ``tta`` (with horizontal flips) and
    ``bootstrap`` (resamples for CIs, seeded by ``seed``) default to the run's config. Binary tasks also get
    metrics at the Youden threshold chosen on validation (``at_youden``); train-minus-test gaps go to ``gap``.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MedbenchError(f"{run_dir} is not a folder; give evaluate a run directory (made by medbench train)")
    if not (run_dir / CONFIG).is_file():
        raise MedbenchError(f"{run_dir} is not a run directory ({CONFIG} missing)")
    stopped = unfinished(run_dir)
    with locked(run_dir, "medbench evaluate") if distributed.is_main_process() else contextlib.nullcontext():
        metrics = _evaluate(run_dir, splits, data_dir=data_dir, quiet=quiet, dataset=dataset, ensemble=ensemble,
                            tta=tta, bootstrap=bootstrap, seed=seed, estimator=estimator, unfinished_note=stopped)
    if stopped and distributed.is_main_process():
        warnings.warn(f"{run_dir} is an unfinished run ({stopped}): these are the metrics of its best epoch so far, "
                      f"recorded as 'unfinished' in {METRICS}; finish it with medbench train --resume {run_dir}",
                      stacklevel=2)
    return metrics


def unfinished(run_dir: Path) -> str | None:
    """How far a killed run got ("stopped after epoch 3 of 10"), or None for a finished run."""
    from safetensors import safe_open

    path = Path(run_dir) / RESUME
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            state = json.loads(f.metadata()["medbench_resume"])
        return f"stopped after epoch {int(state['epoch'])} of {int(state['config']['epochs'])}"
    except Exception:  # a damaged resume file still says the run did not finish
        return f"killed during training ({RESUME} left behind)"


def _evaluate(run_dir: Path, splits: Iterable[str] | None = None, *, data_dir=None, quiet: bool = False,
              dataset: ImageDataset | None = None, ensemble: int | None = None, tta: bool | None = None,
              bootstrap: int | None = None, seed: int = 0, estimator=None, unfinished_note: str | None = None) -> dict:
    """``evaluate`` once the run directory is checked and locked (``train`` calls it while its own lock is held)."""
    cfg = load_config(run_dir / CONFIG)
    ensemble = cfg.ensemble if ensemble is None else ensemble
    tta = cfg.tta if tta is None else tta
    bootstrap = cfg.bootstrap if bootstrap is None else bootstrap
    if ensemble < 1 or bootstrap < 0:
        raise MedbenchError(f"--ensemble must be >= 1 and --bootstrap >= 0 (got {ensemble}, {bootstrap})")
    if tta and cfg.no_flip:
        raise MedbenchError(f"{run_dir} was trained with no_flip: flipped views (--tta) are not valid for it")
    splits = list(splits or SPLITS)
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise MedbenchError(f"unknown split {bad[0]!r}; valid: {', '.join(SPLITS)}")
    baseline = is_baseline(cfg.model)
    if baseline and (ensemble > 1 or tta):
        raise MedbenchError(f"{cfg.model} is a classical model: --ensemble and --tta do not apply")
    if cfg.members > 1 and ensemble > 1:
        raise MedbenchError(f"{run_dir} is a deep ensemble of {cfg.members} networks: --ensemble (checkpoints of "
                            f"one network) does not apply")
    members = model_weights(run_dir, cfg, ensemble)
    ds = _dataset(cfg, dataset, data_dir, quiet)
    recorded = _recorded_md5(run_dir)
    if recorded and ds.md5 and recorded != ds.md5:
        raise MedbenchError(f"{ds.source} has md5 {ds.md5} but the run was trained on data with md5 {recorded}")
    dist, device = distributed.setup(resolve_device(cfg.device))
    task = build_task(cfg, ds)
    prep = _preprocess(cfg, ds)
    binary = task.name == "binary"
    needed = [s for s in SPLITS if s in splits or (binary and s == "val")]  # the threshold is chosen on val
    probs: dict[str, torch.Tensor] = {}
    single_logits: dict[str, torch.Tensor] = {}
    views = 2 if tta else 1
    if baseline:  # no weights file: refit (deterministic for the seed) unless the fitted model is passed in
        estimator = estimator or baselines.fit(cfg.model, cfg.seed, task.name, cfg.features, ds["train"])
        members = []
        for s in needed:
            probs[s] = torch.from_numpy(baselines.scores(estimator, ds[s].images, task.name, task.num_classes,
                                                         cfg.features))
    for path in members:  # one network in memory at a time
        model = load_run_model(run_dir, cfg, ds, task, device, weights=path)
        for s in needed:
            for flip in range(views):
                logits = predict_logits(model, ds[s], prep, cfg.eval_batch_size, dist=dist, flip=bool(flip))
                p = task.scores(logits).double()
                probs[s] = p if s not in probs else probs[s] + p
                if len(members) == 1 and views == 1:
                    single_logits[s] = logits
        del model
    scores = {s: (p / max(len(members) * views, 1)).numpy() for s, p in probs.items()}
    labels = {s: ds[s].labels.numpy() for s in needed}
    threshold = youden_threshold(labels["val"], scores["val"]) if binary else None
    setting = {"ensemble": max(len(members), 1), "tta": tta, "bootstrap": bootstrap,
               **({"members": [str(p.relative_to(run_dir)) for p in members]} if len(members) > 1 else {})}
    path = run_dir / METRICS
    old = read_json(path, METRICS, f"delete it and run `medbench evaluate {run_dir}` to recompute it") \
        if path.is_file() else {}
    metrics = {s: old[s] for s in SPLITS if s in old}
    decide = threshold if cfg.decision == "youden" and threshold is not None else 0.5
    for s in splits:
        rec = compute_metrics(labels[s], scores[s], task.name, threshold=decide, class_names=ds.class_names)
        # the task's own loss for one network; with averaged probabilities, their log-loss
        rec["loss"] = float(task.loss(single_logits[s], ds[s].labels, smoothing=0.0)) if s in single_logits \
            else rec["log_loss"]
        if binary and threshold is not None:  # undefined when val holds one class
            at = compute_metrics(labels[s], scores[s], task.name, threshold=threshold, class_names=ds.class_names)
            rec["at_youden"] = {k: at[k] for k in YOUDEN_KEYS if k in at}
        if bootstrap:
            rec.update(bootstrap_metrics(labels[s], scores[s], task.name, replicates=bootstrap, seed=seed))
        rec["evaluation"] = setting
        metrics[s] = rec
    if dist.is_main:  # written once everything is computed: a failure above leaves the old files together
        for s in splits:
            write_predictions(run_dir / "predictions" / f"{s}.csv", scores[s])
    tr, te = metrics.get("train"), metrics.get("test")

    def models_of(rec):  # bootstrap CIs do not change the point estimates a gap compares
        return {k: v for k, v in (rec.get("evaluation") or {}).items() if k != "bootstrap"}

    if tr and te and models_of(tr) == models_of(te):
        metrics["gap"] = {k: None if tr[k] is None or te[k] is None else tr[k] - te[k] for k in ("acc", "auc")}
    elif tr and te:
        metrics["gap"] = None  # train and test were evaluated with different settings: no honest gap
    if binary:
        metrics["threshold"] = {"youden": threshold, "chosen_on": "val", "default": 0.5, "headline": decide}
    metrics["evaluation"] = setting
    if unfinished_note:
        metrics["unfinished"] = unfinished_note
    else:
        metrics.pop("unfinished", None)
    if dist.is_main:
        write_json(path, metrics)
    dist.barrier()
    return metrics


def _recorded_md5(run_dir: Path) -> str | None:
    import yaml

    data = yaml.safe_load((run_dir / CONFIG).read_text(encoding="utf-8")) or {}
    provenance = data.get(PROVENANCE_KEY) if isinstance(data, dict) else None
    return provenance.get("data_md5") if isinstance(provenance, dict) else None
