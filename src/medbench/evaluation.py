"""Evaluate a run: reload its weights, score every split, and record metrics.json and predictions/.

Training's own evaluation (:func:`evaluate_locked`) writes the run's record (``RUN/metrics.json``,
``RUN/predictions/``); a later :func:`evaluate` (``medbench evaluate``) writes ``RUN/evaluations/NAME/`` with its
settings and never rewrites what training recorded.

Where the issue-21 features plug in: :func:`_score` (scores of every split, before any record: calibration),
:func:`_split_record` (one split's record: the positive class, subgroups) and :func:`_summary` (the record's
top-level entries: selection warnings).
"""
from __future__ import annotations

import contextlib
import shutil
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medbench import __version__, baselines, distributed
from medbench.build import build_preprocess, build_task, dataset_or_build, load_run_model
from medbench.config import RunConfig, load_config
from medbench.config.sources import parse_dataset
from medbench.data import SPLITS, ImageDataset, item_ids
from medbench.data.subgroups import subgroup_values_for
from medbench.engine import predict_logits, resolve_device
from medbench.errors import MedbenchError
from medbench.metrics import bootstrap_metrics, compute_metrics, youden_threshold
from medbench.metrics.calibration import calibrate_splits, calibration_summary, write_calibration
from medbench.metrics.diagnostics import emit, read_history, selection_warnings, split_warnings
from medbench.metrics.positive import positive_index
from medbench.metrics.subgroups import subgroup_metrics
from medbench.rundir import (
    CALIBRATION,
    CONFIG,
    HISTORY,
    METRICS,
    PREDICTIONS,
    check_name,
    derived_name,
    free_name,
    locked,
    model_weights,
    predictions_path,
    publish,
    recorded_md5,
    require_run_dir,
    staging_dir,
    unfinished,
    write_medmnist_export,
    write_metrics,
    write_prediction_table,
    write_settings,
)
from medbench.tasks import decide as decide_labels

# metrics also reported at the validation-chosen (Youden) threshold of binary tasks
YOUDEN_KEYS = ("threshold", "acc", "balanced_acc", "sensitivity", "specificity", "precision_macro", "recall_macro",
               "f1_macro", "f1_weighted", "confusion_matrix", "class_of")
SUBGROUP_BOOTSTRAP = 1000  # per-subgroup CIs matter most (small groups) and cost ~0.5 s: always computed


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


class Evaluation(dict):
    """What :func:`evaluate` returns: the metrics (the dict its metrics.json holds), plus ``name`` and ``path``
    of the ``evaluations/NAME`` folder it wrote (None on the ranks of a distributed run that do not write)."""

    def __init__(self, metrics: dict, name: str | None, path: Path | None):
        super().__init__(metrics)
        self.name, self.path = name, path


@dataclass
class Scored:
    """One evaluation, computed: nothing written yet."""
    cfg: RunConfig
    ds: ImageDataset
    task: object
    splits: list[str]
    scores: dict  # split -> [N, C] float64
    decided: dict  # split -> decided labels (the headline decision)
    decide: float  # its threshold
    metrics: dict
    dist: object
    calibration: dict | None = None  # calibration.json's record (--calibrate temperature)
    warnings: list | None = None  # selection and collapse warnings (also in metrics["warnings"])
    selection: list | None = None  # the selection ones among them (training logs those itself)


def evaluate(run_dir: str | Path, splits: Iterable[str] | None = None, *, data_dir=None, quiet: bool = False,
             dataset: ImageDataset | None = None, ensemble: int | None = None, tta: bool | None = None,
             bootstrap: int | None = None, seed: int = 0, estimator=None, name: str | None = None) -> Evaluation:
    """Reload a run's best weights, recompute metrics and predictions for ``splits`` (default: all) and write them
    to ``RUN/evaluations/NAME/`` (metrics.json, predictions/, evaluation.json with the settings).

    ``name``: the folder's name (refused when taken); default derived from the settings (``plain``,
    ``tta-bootstrap1000``, ``test-ensemble3``, ...; ``-2``, ``-3`` ... when taken). The training record
    (RUN/metrics.json, RUN/predictions/) is never rewritten. ``ensemble`` (K best kept checkpoints, probabilities
    averaged), ``tta`` (with horizontal flips) and ``bootstrap`` (resamples for CIs, seeded by ``seed``) default to
    the run's config. Binary tasks also get metrics at the Youden threshold chosen on validation (``at_youden``);
    train-minus-test gaps go to ``gap`` when both splits are evaluated.
    """
    run_dir = require_run_dir(run_dir, "evaluate")
    if name is not None:
        check_name(name)
    stopped = unfinished(run_dir)
    main = distributed.is_main_process()
    with locked(run_dir, "medbench evaluate") if main else contextlib.nullcontext():
        cfg = load_config(run_dir / CONFIG)
        settings = Settings.of(cfg, ensemble, tta, bootstrap, seed)
        splits = _check_request(cfg, run_dir, settings, list(splits or SPLITS))
        folder = None
        if main:  # a given name that is taken is refused before any work
            folder = free_name(run_dir, name or derived_name(splits, SPLITS, _members(run_dir, cfg, settings),
                                                              settings.tta, settings.bootstrap, settings.seed),
                               given=name is not None)
        scored = _score(run_dir, cfg, settings, splits, data_dir=data_dir, quiet=quiet, dataset=dataset,
                        estimator=estimator, unfinished_note=stopped)
        where = _publish(run_dir, folder, scored, settings) if scored.dist.is_main else None
        scored.dist.barrier()
    if main:
        emit(scored.warnings or [])
    if stopped and main:
        warnings.warn(f"{run_dir} is an unfinished run ({stopped}): these are the metrics of its best epoch so far, "
                      f"recorded as 'unfinished' in {where / METRICS}; finish it with medbench train --resume "
                      f"{run_dir}", stacklevel=2)
    return Evaluation(scored.metrics, folder, where)


def evaluate_locked(run_dir: Path, splits: Iterable[str] | None = None, *, data_dir=None, quiet: bool = False,
                    dataset: ImageDataset | None = None, ensemble: int | None = None, tta: bool | None = None,
                    bootstrap: int | None = None, seed: int = 0, estimator=None,
                    unfinished_note: str | None = None) -> dict:
    """Training's own evaluation, under its lock: the run's record (RUN/metrics.json, RUN/predictions/)."""
    cfg = load_config(run_dir / CONFIG)
    settings = Settings.of(cfg, ensemble, tta, bootstrap, seed)
    splits = _check_request(cfg, run_dir, settings, list(splits or SPLITS))
    scored = _score(run_dir, cfg, settings, splits, data_dir=data_dir, quiet=quiet, dataset=dataset,
                    estimator=estimator, unfinished_note=unfinished_note)
    if scored.dist.is_main:  # written once everything is computed: a failure above leaves the old files together
        _write_record(run_dir, scored, run_dir.name)
        # training has logged its selection warnings already; the collapse of an evaluated split is news
        emit([w for w in scored.warnings or [] if w not in scored.selection])
    scored.dist.barrier()
    return scored.metrics


def _members(run_dir: Path, cfg: RunConfig, settings: Settings) -> int:
    """How many networks' probabilities are averaged (1 for a classical model)."""
    return 1 if baselines.is_baseline(cfg.model) else len(model_weights(run_dir, cfg, settings.ensemble))


def _score(run_dir: Path, cfg: RunConfig, settings: Settings, splits: list[str], *, data_dir, quiet: bool,
           dataset: ImageDataset | None, estimator, unfinished_note: str | None) -> Scored:
    """Score every split needed and build the metrics record (nothing written)."""
    members = model_weights(run_dir, cfg, settings.ensemble)
    ds = dataset_or_build(cfg, dataset, data_dir, quiet)
    recorded = recorded_md5(run_dir)
    if recorded and ds.md5 and recorded != ds.md5:
        raise MedbenchError(f"{ds.source} has md5 {ds.md5} but the run was trained on data with md5 {recorded}")
    dist, device = distributed.setup(resolve_device(cfg.device))
    task = build_task(cfg, ds)
    binary, calibrating = task.name == "binary", cfg.calibrate == "temperature"
    positive = positive_index(cfg.positive_class, ds.class_names, ds["train"].labels.numpy(), task.name)
    # the threshold and the temperature are chosen on val
    needed = [s for s in SPLITS if s in splits or ((binary or calibrating) and s == "val")]
    if baselines.is_baseline(cfg.model):  # no weights file: refit (deterministic for the seed) unless passed in
        estimator = estimator or baselines.fit(cfg.model, cfg.seed, task.name, cfg.features, ds["train"])
        members, scores, single_logits = [], _baseline_scores(estimator, cfg, ds, task, needed), {}
    else:
        scores, single_logits = _network_scores(run_dir, cfg, ds, task, device, dist, members, needed, settings.tta)
    labels = {s: ds[s].labels.numpy() for s in needed}
    calibration = None
    if calibrating:  # before the threshold: Youden is chosen on the calibrated val scores Predictor sees
        scores, calibration = calibrate_splits(task.name, scores, labels, decision=cfg.decision)
        single_logits = {}  # the recorded loss becomes the calibrated log-loss
    threshold = youden_threshold(labels["val"], scores["val"]) if binary else None
    decide = threshold if cfg.decision == "youden" and threshold is not None else 0.5
    setting = {"ensemble": max(len(members), 1), "tta": settings.tta, "bootstrap": settings.bootstrap,
               **({"members": [str(p.relative_to(run_dir)) for p in members]} if len(members) > 1 else {})}
    metrics = {}
    for s in splits:
        groups = subgroup_values_for(ds, s, cfg) if s == "test" else {}
        metrics[s] = _split_record(task, ds, s, labels[s], scores[s], single_logits.get(s), decide, threshold,
                                   settings, positive, groups)
        metrics[s]["evaluation"] = setting
    metrics.update(_summary(metrics, binary, threshold, decide, setting, unfinished_note))
    if calibration:
        metrics["calibration"] = calibration_summary(calibration)
    selection = selection_warnings(read_history(run_dir / HISTORY), cfg.select_metric, labels.get("val"),
                                   task.name, ds.class_names) if "val" in labels else []
    found = selection + split_warnings({s: labels[s] for s in splits}, {s: scores[s] for s in splits}, task.name,
                                       ds.class_names, threshold=decide)
    if found:
        metrics["warnings"] = found
    decided = {s: np.asarray(decide_labels(scores[s], task.name, decide)) for s in splits}
    return Scored(cfg, ds, task, splits, {s: scores[s] for s in splits}, decided, decide, metrics, dist,
                  calibration, found, selection)


def _write_record(out: Path, scored: Scored, run_tag: str) -> None:
    """predictions/SPLIT.csv (and the MedMNIST evaluator's file) per split, then metrics.json."""
    ds, task = scored.ds, scored.task
    medmnist = parse_dataset(scored.cfg.dataset)[0] == "medmnist"
    for s in scored.splits:
        write_prediction_table(predictions_path(out, s), item_ids(ds, s), ds[s].labels.numpy(), scored.decided[s],
                               scored.scores[s], ds.class_names, multilabel=task.name == "multilabel")
        if medmnist:
            auc, acc = _medmnist_figures(scored.metrics[s], ds[s].labels.numpy(), scored.scores[s], task.name,
                                         scored.decide)
            write_medmnist_export(out / PREDICTIONS, scored.cfg.dataset, ds.size, s, scored.scores[s], auc, acc,
                                  run_tag)
    if scored.calibration is not None:
        write_calibration(out / CALIBRATION, scored.calibration)
    else:
        (out / CALIBRATION).unlink(missing_ok=True)  # a stale file would re-scale Predictor's output
    write_metrics(out, scored.metrics)


def _medmnist_figures(rec: dict, labels: np.ndarray, scores: np.ndarray, task: str, decide: float) -> tuple:
    """AUC and ACC as MedMNIST defines them (ACC at 0.5): the figures its file name carries."""
    acc = rec["acc"] if decide == 0.5 else compute_metrics(labels, scores, task, threshold=0.5)["acc"]
    return rec["auc"], acc


def _publish(run_dir: Path, name: str, scored: Scored, settings: Settings) -> Path:
    """Write evaluation ``name`` beside its place, then move it in whole."""
    staging = staging_dir(run_dir, name)
    try:
        _write_record(staging, scored, f"{run_dir.name}-{name}")
        write_settings(staging, name, scored.splits, scored.metrics["evaluation"], settings.seed, scored.ds.md5,
                       __version__)
        return publish(staging, run_dir, name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


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
    prep, views = build_preprocess(cfg, ds), 2 if tta else 1
    probs: dict[str, torch.Tensor] = {}
    single_logits: dict[str, torch.Tensor] = {}
    with fixed_conv_algorithms():
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


def _split_record(task, ds: ImageDataset, split: str, labels: np.ndarray, scores: np.ndarray, logits, decide: float,
                  threshold: float | None, settings: Settings, positive: int | None, groups: dict) -> dict:
    rec = compute_metrics(labels, scores, task.name, threshold=decide, class_names=ds.class_names,
                          positive=positive)
    # the task's own loss for one network; with averaged probabilities, their log-loss
    rec["loss"] = float(task.loss(logits, ds[split].labels, smoothing=0.0)) if logits is not None \
        else rec["log_loss"]
    if task.name == "binary" and threshold is not None:  # undefined when val holds one class
        at = compute_metrics(labels, scores, task.name, threshold=threshold, class_names=ds.class_names,
                             positive=positive)
        rec["at_youden"] = {k: at[k] for k in YOUDEN_KEYS if k in at}
    if settings.bootstrap:
        rec.update(bootstrap_metrics(labels, scores, task.name, replicates=settings.bootstrap, seed=settings.seed,
                                     threshold=decide, positive=positive))
    if groups:
        rec["subgroups"] = subgroup_metrics(labels, scores, task.name, groups, threshold=decide,
                                            bootstrap=settings.bootstrap or SUBGROUP_BOOTSTRAP, seed=settings.seed,
                                            class_names=ds.class_names, positive=positive)
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
