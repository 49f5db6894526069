"""What the run report reads: the run directory's records (training's, or one later evaluation's:
``evaluations/NAME``), the run's dataset and task, its model, the test scores and what each test image is.

A missing or damaged piece is not an error here: it becomes ``None`` plus a note that the report shows in its
place (only a folder that is not a run directory at all fails the report).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medbench.build import build_preprocess, build_task, dataset_or_build, load_run_model
from medbench.config import RunConfig, load_config
from medbench.data import ImageDataset, item_ids
from medbench.data.loader import Preprocess
from medbench.engine import model_device
from medbench.errors import MedbenchError
from medbench.rundir import (
    CONFIG,
    EVALUATIONS,
    HISTORY,
    METRICS,
    PREDICTIONS,
    WEIGHTS,
    evaluation_dir,
    predictions_path,
    read_evaluation,
    read_metrics,
    read_prediction_table,
    read_provenance,
)
from medbench.tasks import Task


@dataclass
class RunInputs:
    """Everything the report is made from, read once."""
    run_dir: Path
    config_text: str
    provenance: dict
    cfg: RunConfig
    ds: ImageDataset
    task: Task
    prep: Preprocess
    metrics: dict
    history: list[dict]
    model: torch.nn.Module | None
    model_error: str | None  # why there is no model
    scores: np.ndarray | None  # [N_test, C] in image order, from predictions/test.csv or the weights
    scores_note: str | None  # where the scores came from when not from an up-to-date predictions/test.csv
    best_epoch: str | None
    notes: list[str] = field(default_factory=list)  # warnings for the top of the page
    items: list[str] = field(default_factory=list)  # what each test image is (MedMNIST index, or path)
    shown: str = ""  # which record the page shows: training's, or evaluations/NAME with its settings

    @property
    def test(self):
        return self.ds["test"]

    @property
    def y_test(self) -> np.ndarray:
        """The test labels as ``[N, 1]`` class indices or ``[N, L]`` 0/1/-1."""
        return self.test.labels.cpu().numpy().reshape(len(self.test), -1)

    @property
    def names(self) -> list:
        return list(self.ds.class_names)


def read_run_inputs(run_dir: Path, *, data_dir=None, dataset: ImageDataset | None = None,
                    quiet: bool = True, evaluation: str | None = None) -> RunInputs:
    """The report's inputs; ``evaluation``: show ``evaluations/NAME`` (its metrics and test predictions) instead
    of what training recorded."""
    config_path = run_dir / CONFIG
    cfg = load_config(config_path)
    settings = read_evaluation(run_dir, evaluation) if evaluation else None  # an unknown name fails first
    record = evaluation_dir(run_dir, evaluation) if evaluation else run_dir
    ds = dataset_or_build(cfg, dataset, data_dir, quiet)
    task = build_task(cfg, ds)
    provenance = read_provenance(run_dir)
    model, model_error = _load_model(run_dir, cfg, ds, task)
    prep = build_preprocess(cfg, ds)
    if settings is not None and "test" not in settings.get("splits", []):  # its own scores, or none: not others'
        scores, scores_note, items = None, f"{EVALUATIONS}/{evaluation} did not score the test split", None
    else:
        scores, scores_note, items = _test_scores(record, ds["test"], task, model, model_error, prep)
    history_path = run_dir / HISTORY
    return RunInputs(
        run_dir=run_dir, config_text=config_path.read_text(encoding="utf-8"), provenance=provenance, cfg=cfg,
        ds=ds, task=task, prep=prep, metrics=read_metrics(record, missing_ok=True),
        history=read_history(history_path) if history_path.is_file() else [], model=model,
        model_error=model_error, scores=scores, scores_note=scores_note, best_epoch=_best_epoch(run_dir / WEIGHTS),
        notes=_data_notes(provenance, ds), items=items or item_ids(ds, "test"),
        shown=_shown(evaluation, settings))


def _shown(evaluation: str | None, settings: dict | None) -> str:
    """One line saying which record the page shows."""
    if settings is None:
        return (f"Shows the training record ({METRICS}, {PREDICTIONS}/): the selected epoch evaluated when training "
                f"ended.")
    boot = settings.get("bootstrap") or 0
    on = (f"ensemble {settings.get('ensemble', 1)}, TTA {'on' if settings.get('tta') else 'off'}, bootstrap "
          + (f"{boot} (seed {settings.get('seed', 0)})" if boot else "off"))
    md5 = f"; data md5 {settings['data_md5']}" if settings.get("data_md5") else ""
    return (f"Shows evaluation {EVALUATIONS}/{evaluation} (splits {', '.join(settings.get('splits', []))}; {on}"
            f"{md5}; {settings.get('time')}), not the training record.")


def read_history(path: Path) -> list[dict]:
    """history.csv as one dict of strings per epoch."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _data_notes(provenance: dict, ds: ImageDataset) -> list[str]:
    if provenance.get("data_md5") and ds.md5 and provenance["data_md5"] != ds.md5:
        return [f"The dataset loaded now (md5 {ds.md5}) differs from the run's training data "
                f"(md5 {provenance['data_md5']}): test-set figures may not match metrics.json."]
    return []


def _load_model(run_dir: Path, cfg: RunConfig, ds, task: Task) -> tuple[torch.nn.Module | None, str | None]:
    """The run's model on the CPU (for Grad-CAM, and for scores when predictions/test.csv is missing or stale)."""
    try:
        return load_run_model(run_dir, cfg, ds, task, torch.device("cpu")).eval(), None
    except MedbenchError as e:
        return None, str(e)


def _test_scores(record: Path, test, task: Task, model, model_error: str | None,
                 prep: Preprocess) -> tuple[np.ndarray | None, str | None, list[str] | None]:
    """The record's predictions/test.csv when it fits the test split, else the saved weights' scores; a note
    saying why; and the items the file names (None for older files without them)."""
    scores, note, items = None, None, None
    path = predictions_path(record, "test")
    if path.is_file():
        try:
            table = read_prediction_table(path)
            scores, items = table.scores, table.items
        except MedbenchError as e:  # damaged: says which file and how to rewrite it
            note = str(e)
        if scores is not None and scores.shape != (len(test), task.num_classes):
            note = (f"predictions/test.csv holds {scores.shape[0]}×{scores.shape[1]} scores, the test split "
                    f"{len(test)} images × {task.num_classes} classes")
            scores, items = None, None
    else:
        note = "predictions/test.csv not found"
    if scores is None and model is not None:
        return (model_scores(model, task, prep, test.images), f"{note}; test scores recomputed from the saved weights",
                None)
    if scores is None:
        return None, f"{note}; and no model to score with ({model_error})", None
    return scores, note, items


def model_scores(model, task: Task, prep: Preprocess, images: torch.Tensor, batch: int = 256) -> np.ndarray:
    """The task's scores (probabilities) of ``model`` on uint8 ``images``, as float64 ``[N, C]``."""
    out = []
    model.eval()
    device = model_device(model)
    with torch.no_grad():
        for i in range(0, len(images), batch):
            out.append(task.scores(model(prep(images[i:i + batch].to(device)))).double().cpu())
    return torch.cat(out).numpy()


def _best_epoch(weights: Path) -> str | None:
    """The epoch recorded in the weights' metadata (the selected one), or None."""
    try:
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            return (f.metadata() or {}).get("epoch")
    except Exception:  # noqa: BLE001 - an unreadable weights file is reported where the model is needed
        return None
