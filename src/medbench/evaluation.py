"""Evaluate a run: reload its weights, score every split, write metrics.json and predictions/ (the record of
record; ``medbench evaluate`` re-runs it with other settings)."""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medbench import baselines, distributed
from medbench.build import build_preprocess, build_task, dataset_or_build, load_run_model
from medbench.config import RunConfig, load_config
from medbench.data import SPLITS, ImageDataset
from medbench.engine import predict_logits, resolve_device
from medbench.errors import MedbenchError
from medbench.metrics import bootstrap_metrics, compute_metrics, youden_threshold
from medbench.rundir import (
    CONFIG,
    METRICS,
    locked,
    model_weights,
    predictions_path,
    read_metrics,
    recorded_md5,
    require_run_dir,
    unfinished,
    write_metrics,
    write_predictions,
)

# metrics also reported at the validation-chosen (Youden) threshold of binary tasks
YOUDEN_KEYS = ("threshold", "acc", "balanced_acc", "sensitivity", "specificity", "precision_macro", "recall_macro",
               "f1_macro", "f1_weighted", "confusion_matrix")


@dataclass
class Settings:
    """How a run is evaluated: the config's ensemble / TTA / bootstrap unless ``evaluate`` overrides them."""
    ensemble: int
    tta: bool
    bootstrap: int
    seed: int = 0

    @classmethod
    def of(cls, cfg: RunConfig, ensemble: int | None, tta: bool | None, bootstrap: int | None, seed: int):
        s = cls(cfg.ensemble if ensemble is None else ensemble, cfg.tta if tta is None else tta,
                cfg.bootstrap if bootstrap is None else bootstrap, seed)
        if s.ensemble < 1 or s.bootstrap < 0:
            raise MedbenchError(f"--ensemble must be >= 1 and --bootstrap >= 0 (got {s.ensemble}, {s.bootstrap})")
        return s


def evaluate(run_dir: str | Path, splits: Iterable[str] | None = None, *, data_dir=None, quiet: bool = False,
             dataset: ImageDataset | None = None, ensemble: int | None = None, tta: bool | None = None,
             bootstrap: int | None = None, seed: int = 0, estimator=None) -> dict:
    """Reload a run's best weights, recompute metrics and predictions for ``splits`` and update metrics.json.

    ``ensemble`` (K best kept checkpoints, probabilities averaged), ``tta`` (with horizontal flips) and
    ``bootstrap`` (resamples for CIs, seeded by ``seed``) default to the run's config. Binary tasks also get
    metrics at the Youden threshold chosen on validation (``at_youden``); train-minus-test gaps go to ``gap``.
    """
    run_dir = require_run_dir(run_dir, "evaluate")
    stopped = unfinished(run_dir)
    with locked(run_dir, "medbench evaluate") if distributed.is_main_process() else contextlib.nullcontext():
        metrics = evaluate_locked(run_dir, splits, data_dir=data_dir, quiet=quiet, dataset=dataset,
                                  ensemble=ensemble, tta=tta, bootstrap=bootstrap, seed=seed, estimator=estimator,
                                  unfinished_note=stopped)
    if stopped and distributed.is_main_process():
        warnings.warn(f"{run_dir} is an unfinished run ({stopped}): these are the metrics of its best epoch so far, "
                      f"recorded as 'unfinished' in {METRICS}; finish it with medbench train --resume {run_dir}",
                      stacklevel=2)
    return metrics


def evaluate_locked(run_dir: Path, splits: Iterable[str] | None = None, *, data_dir=None, quiet: bool = False,
                    dataset: ImageDataset | None = None, ensemble: int | None = None, tta: bool | None = None,
                    bootstrap: int | None = None, seed: int = 0, estimator=None,
                    unfinished_note: str | None = None) -> dict:
    """``evaluate`` once the run directory is checked and locked (training calls it under its own lock)."""
    cfg = load_config(run_dir / CONFIG)
    settings = Settings.of(cfg, ensemble, tta, bootstrap, seed)
    splits = _check_request(cfg, run_dir, settings, list(splits or SPLITS))
    members = model_weights(run_dir, cfg, settings.ensemble)
    ds = dataset_or_build(cfg, dataset, data_dir, quiet)
    recorded = recorded_md5(run_dir)
    if recorded and ds.md5 and recorded != ds.md5:
        raise MedbenchError(f"{ds.source} has md5 {ds.md5} but the run was trained on data with md5 {recorded}")
    dist, device = distributed.setup(resolve_device(cfg.device))
    task = build_task(cfg, ds)
    binary = task.name == "binary"
    needed = [s for s in SPLITS if s in splits or (binary and s == "val")]  # the threshold is chosen on val
    if baselines.is_baseline(cfg.model):  # no weights file: refit (deterministic for the seed) unless passed in
        estimator = estimator or baselines.fit(cfg.model, cfg.seed, task.name, cfg.features, ds["train"])
        members, scores, single_logits = [], _baseline_scores(estimator, cfg, ds, task, needed), {}
    else:
        scores, single_logits = _network_scores(run_dir, cfg, ds, task, device, dist, members, needed, settings.tta)
    labels = {s: ds[s].labels.numpy() for s in needed}
    threshold = youden_threshold(labels["val"], scores["val"]) if binary else None
    decide = threshold if cfg.decision == "youden" and threshold is not None else 0.5
    setting = {"ensemble": max(len(members), 1), "tta": settings.tta, "bootstrap": settings.bootstrap,
               **({"members": [str(p.relative_to(run_dir)) for p in members]} if len(members) > 1 else {})}
    old = read_metrics(run_dir, missing_ok=True)
    metrics = {s: old[s] for s in SPLITS if s in old}
    for s in splits:
        metrics[s] = _split_record(task, ds, s, labels[s], scores[s], single_logits.get(s), decide, threshold,
                                   settings)
        metrics[s]["evaluation"] = setting
    metrics.update(_summary(metrics, binary, threshold, decide, setting, unfinished_note))
    if dist.is_main:  # written once everything is computed: a failure above leaves the old files together
        for s in splits:
            write_predictions(predictions_path(run_dir, s), scores[s])
        write_metrics(run_dir, metrics)
    dist.barrier()
    return metrics


def _check_request(cfg: RunConfig, run_dir: Path, settings: Settings, splits: list[str]) -> list[str]:
    if settings.tta and cfg.no_flip:
        raise MedbenchError(f"{run_dir} was trained with no_flip: flipped views (--tta) are not valid for it")
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise MedbenchError(f"unknown split {bad[0]!r}; valid: {', '.join(SPLITS)}")
    if baselines.is_baseline(cfg.model) and (settings.ensemble > 1 or settings.tta):
        raise MedbenchError(f"{cfg.model} is a classical model: --ensemble and --tta do not apply")
    if cfg.members > 1 and settings.ensemble > 1:
        raise MedbenchError(f"{run_dir} is a deep ensemble of {cfg.members} networks: --ensemble (checkpoints of "
                            f"one network) does not apply")
    return splits


def _baseline_scores(estimator, cfg: RunConfig, ds: ImageDataset, task, needed: list[str]) -> dict:
    return {s: baselines.scores(estimator, ds[s].images, task.name, task.num_classes, cfg.features) for s in needed}


def _network_scores(run_dir: Path, cfg: RunConfig, ds: ImageDataset, task, device, dist, members: list[Path],
                    needed: list[str], tta: bool) -> tuple[dict, dict]:
    """Mean probabilities over networks (and flipped views) per split; the logits too when one network and one
    view make them (for the task's own loss). One network in memory at a time."""
    prep = build_preprocess(cfg, ds)
    views = 2 if tta else 1
    with fixed_conv_algorithms():
        return _mean_probabilities(run_dir, cfg, ds, task, device, dist, members, needed, prep, views)


@contextlib.contextmanager
def fixed_conv_algorithms():
    """cuDNN's heuristic convolution algorithms instead of benchmark mode's timed choice, so a run evaluated again
    (later, in another process) gets the same probabilities bit for bit on the same GPU; no effect on the CPU."""
    before = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before


def _mean_probabilities(run_dir: Path, cfg: RunConfig, ds: ImageDataset, task, device, dist, members: list[Path],
                        needed: list[str], prep, views: int) -> tuple[dict, dict]:
    probs: dict[str, torch.Tensor] = {}
    single_logits: dict[str, torch.Tensor] = {}
    for path in members:
        model = load_run_model(run_dir, cfg, ds, task, device, weights=path)
        for s in needed:
            for flip in range(views):
                logits = predict_logits(model, ds[s], prep, cfg.eval_batch_size, dist=dist, flip=bool(flip))
                p = task.scores(logits).double()
                probs[s] = p if s not in probs else probs[s] + p
                if len(members) == 1 and views == 1:
                    single_logits[s] = logits
        del model
    return {s: (p / (len(members) * views)).numpy() for s, p in probs.items()}, single_logits


def _split_record(task, ds: ImageDataset, split: str, labels: np.ndarray, scores: np.ndarray, logits, decide: float,
                  threshold: float | None, settings: Settings) -> dict:
    rec = compute_metrics(labels, scores, task.name, threshold=decide, class_names=ds.class_names)
    # the task's own loss for one network; with averaged probabilities, their log-loss
    rec["loss"] = float(task.loss(logits, ds[split].labels, smoothing=0.0)) if logits is not None \
        else rec["log_loss"]
    if task.name == "binary" and threshold is not None:  # undefined when val holds one class
        at = compute_metrics(labels, scores, task.name, threshold=threshold, class_names=ds.class_names)
        rec["at_youden"] = {k: at[k] for k in YOUDEN_KEYS if k in at}
    if settings.bootstrap:
        rec.update(bootstrap_metrics(labels, scores, task.name, replicates=settings.bootstrap, seed=settings.seed))
    return rec


def _summary(metrics: dict, binary: bool, threshold: float | None, decide: float, setting: dict,
             unfinished_note: str | None) -> dict:
    """The record's top-level entries beside the splits: gap, threshold, evaluation, unfinished."""
    out: dict = {}
    tr, te = metrics.get("train"), metrics.get("test")

    def models_of(rec):  # bootstrap CIs do not change the point estimates a gap compares
        return {k: v for k, v in (rec.get("evaluation") or {}).items() if k != "bootstrap"}

    if tr and te and models_of(tr) == models_of(te):
        out["gap"] = {k: None if tr[k] is None or te[k] is None else tr[k] - te[k] for k in ("acc", "auc")}
    elif tr and te:
        out["gap"] = None  # train and test were evaluated with different settings: no honest gap
    if binary:
        out["threshold"] = {"youden": threshold, "chosen_on": "val", "default": 0.5, "headline": decide}
    out["evaluation"] = setting
    metrics.pop("unfinished", None)
    if unfinished_note:
        out["unfinished"] = unfinished_note
    return out
