"""One evaluation's record: each split's metrics, the top-level entries, and the files written."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medbench import __version__
from medbench.config import RunConfig
from medbench.config.sources import parse_dataset
from medbench.data import ImageDataset, item_ids
from medbench.errors import MedbenchError
from medbench.metrics import bootstrap_metrics, compute_metrics
from medbench.metrics.calibration import write_calibration
from medbench.metrics.subgroups import subgroup_metrics
from medbench.rundir import (
    CALIBRATION,
    PREDICTIONS,
    predictions_path,
    publish,
    staging_dir,
    write_medmnist_export,
    write_metrics,
    write_prediction_table,
    write_settings,
)

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


def split_record(task, ds: ImageDataset, split: str, labels: np.ndarray, scores: np.ndarray, logits, decide: float,
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


def summary(metrics: dict, binary: bool, threshold: float | None, decide: float, setting: dict,
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


def write_record(out: Path, scored: Scored, run_tag: str) -> None:
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


def publish_evaluation(run_dir: Path, name: str, scored: Scored, settings: Settings) -> Path:
    """Write evaluation ``name`` beside its place, then move it in whole."""
    staging = staging_dir(run_dir, name)
    try:
        write_record(staging, scored, f"{run_dir.name}-{name}")
        write_settings(staging, name, scored.splits, scored.metrics["evaluation"], settings.seed, scored.ds.md5,
                       __version__)
        return publish(staging, run_dir, name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
