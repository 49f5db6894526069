"""The names in a run directory, and the paths built from them: the one place they are spelled out.

A run directory (made by ``medbench train``)::

    config.yaml            the RunConfig, then its provenance block (versions, data md5, device, start time)
    dataset.json           DataSpec: task, class names, channels, size (what inference needs, without the data)
    model.safetensors      the selected epoch's weights
    history.csv            one row per epoch
    metrics.json           every split's metrics (+ threshold, gap, evaluation settings)
    predictions/SPLIT.csv  one row per image: index, item (MedMNIST index / path under the data root), true and
                           decided label(s), one score per class (read it with rundir.read_prediction_table)
    predictions/medmnist/  MedMNIST runs: the same scores in the official evaluator's file naming and format
    calibration.json       --calibrate temperature: the temperature fitted on val, ECE before and after
    evaluations/NAME/      each later `medbench evaluate`: its own metrics.json, predictions/, evaluation.json
                           (its settings), report.html (`medbench report RUN --evaluation NAME`) and
                           robustness.json (--corruptions); what training recorded is never rewritten
    MODEL_CARD.md, model_card.json, report.html, tb/, leakage.json, skipped.json
    checkpoints/           --keep-checkpoints: the K best epochs and index.json
    members/NN/            --members: one ordinary run directory per network
    folds/NN/              --folds K: one ordinary run directory per fold (its val split = that fold)
    cv.json                --folds K: per-fold and mean +- sd metrics, the pooled out-of-fold metrics with CIs
                           (out-of-fold scores: predictions/oof.csv); metrics.json holds the fold ensemble's
    resume.safetensors     while training: the state to continue from (removed when the run finishes)
"""
from __future__ import annotations

import os
from pathlib import Path

from medbench.errors import MedbenchError

CONFIG, WEIGHTS, METRICS, HISTORY = "config.yaml", "model.safetensors", "metrics.json", "history.csv"
DATA_SPEC = "dataset.json"
PREDICTIONS = "predictions"
CHECKPOINTS, CHECKPOINT_INDEX, MEMBERS = "checkpoints", "index.json", "members"
FOLDS, CV_SUMMARY, OOF_SPLIT = "folds", "cv.json", "oof"  # OOF_SPLIT: predictions/oof.csv
RESUME = "resume.safetensors"  # the last saved training state; removed when the run finishes
CARD_MD, CARD_JSON = "MODEL_CARD.md", "model_card.json"
REPORT = "report.html"
TENSORBOARD = "tb"
SKIPPED, LEAKAGE = "skipped.json", "leakage.json"
MEDMNIST_EXPORT = "medmnist"  # under predictions/
CALIBRATION = "calibration.json"
EVALUATIONS = "evaluations"
EVALUATION_JSON = "evaluation.json"  # in evaluations/NAME/: the settings it ran with
ROBUSTNESS = "robustness.json"
# what a finished run shows a user, in the order the CLI lists it
SHOWN_FILES = (METRICS, REPORT, CARD_MD, PREDICTIONS + "/", HISTORY, TENSORBOARD + "/")


def predictions_path(run_dir: str | os.PathLike, split: str) -> Path:
    return Path(run_dir) / PREDICTIONS / f"{split}.csv"


def evaluation_dir(run_dir: str | os.PathLike, name: str) -> Path:
    """Where a later ``medbench evaluate`` named ``name`` writes (its own metrics.json, predictions/, ...)."""
    return Path(run_dir) / EVALUATIONS / name


def require_run_dir(run_dir: str | os.PathLike, command: str = "this command") -> Path:
    """``run_dir`` as a Path when it is a run directory; else one clear error."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MedbenchError(f"{run_dir} is not a folder; give {command} a run directory (made by medbench train)")
    if not (run_dir / CONFIG).is_file():
        raise MedbenchError(f"{run_dir} is not a run directory ({CONFIG} missing)")
    return run_dir


def member_dirs(run_dir: str | os.PathLike, members: int) -> list[Path]:
    """The run directories of a deep ensemble's members (``members/00`` ...); empty for one network."""
    return [Path(run_dir) / MEMBERS / f"{i:02d}" for i in range(members)] if members > 1 else []


def fold_dirs(run_dir: str | os.PathLike, folds: int) -> list[Path]:
    """The run directories of a cross-validation's folds (``folds/00`` ...); empty without --folds."""
    return [Path(run_dir) / FOLDS / f"{i:02d}" for i in range(folds)] if folds > 1 else []
