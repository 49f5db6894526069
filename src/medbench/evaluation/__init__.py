"""Evaluate a run: reload its weights, score every split, and record metrics.json and predictions/.

Training's own evaluation (:func:`evaluate_locked`) writes the run's record (``RUN/metrics.json``,
``RUN/predictions/``); a later :func:`evaluate` (``medbench evaluate``) writes ``RUN/evaluations/NAME/`` with its
settings and never rewrites what training recorded.

Steps: :mod:`.scoring` gives every needed split's probabilities; :func:`_score` calibrates them (``--calibrate``),
chooses the threshold on val and builds the record (:mod:`.record`: each split's metrics with the positive class
and subgroups, the top-level entries, the selection and collapse warnings); :mod:`.record` writes it.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from medbench import baselines, distributed
from medbench.build import build_task, dataset_or_build
from medbench.config import RunConfig, load_config
from medbench.data import SPLITS, ImageDataset
from medbench.data.subgroups import subgroup_values_for
from medbench.engine import resolve_device
from medbench.errors import MedbenchError
from medbench.evaluation.record import (
    YOUDEN_KEYS,
    Scored,
    Settings,
    publish_evaluation,
    split_record,
    summary,
    write_record,
)
from medbench.evaluation.scoring import baseline_scores, fixed_conv_algorithms, network_scores
from medbench.metrics import youden_threshold
from medbench.metrics.calibration import calibrate_splits, calibration_summary
from medbench.metrics.diagnostics import emit, read_history, selection_warnings, split_warnings
from medbench.metrics.positive import positive_index
from medbench.rundir import (
    CONFIG,
    HISTORY,
    METRICS,
    check_name,
    derived_name,
    free_name,
    locked,
    model_weights,
    read_provenance,
    recorded_md5,
    require_run_dir,
    unfinished,
)
from medbench.tasks import decide as decide_labels

__all__ = ["YOUDEN_KEYS", "Evaluation", "Settings", "evaluate", "evaluate_locked", "fixed_conv_algorithms"]


class Evaluation(dict):
    """What :func:`evaluate` returns: the metrics (the dict its metrics.json holds), plus ``name`` and ``path``
    of the ``evaluations/NAME`` folder it wrote (None on the ranks of a distributed run that do not write)."""

    def __init__(self, metrics: dict, name: str | None, path: Path | None):
        super().__init__(metrics)
        self.name, self.path = name, path


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
        where = publish_evaluation(run_dir, folder, scored, settings) if scored.dist.is_main else None
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
        write_record(run_dir, scored, run_dir.name)
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
        members, scores, single_logits = [], baseline_scores(estimator, cfg, ds, task, needed), {}
    else:
        scores, single_logits = network_scores(run_dir, cfg, ds, task, device, dist, members, needed, settings.tta)
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
        metrics[s] = split_record(task, ds, s, labels[s], scores[s], single_logits.get(s), decide, threshold,
                                   settings, positive, groups)
        metrics[s]["evaluation"] = setting
    metrics.update(summary(metrics, binary, threshold, decide, setting, unfinished_note))
    stopped = read_provenance(run_dir).get("stopped_early")  # --patience (or a caller) ended training early
    if stopped:
        metrics["stopped_early"] = stopped
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


def _check_request(cfg: RunConfig, run_dir: Path, settings: Settings, splits: list[str]) -> list[str]:
    if cfg.folds > 1 and cfg.fold is None:
        raise MedbenchError(f"{run_dir} is a {cfg.folds}-fold cross-validation: its record (cv.json, metrics.json: "
                            f"out-of-fold val, fold-ensemble test) was written from its fold runs; evaluate a fold "
                            f"run instead, e.g. medbench evaluate {run_dir}/folds/00")
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
