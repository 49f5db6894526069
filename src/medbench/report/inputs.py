"""What the run report reads: the run directory's records, the run's dataset and task, its model, the test scores.

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
from medbench.data import ImageDataset
from medbench.data.loader import Preprocess
from medbench.engine import model_device
from medbench.errors import MedbenchError
from medbench.rundir import CONFIG, HISTORY, WEIGHTS, predictions_path, read_metrics, read_predictions, read_provenance
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
                    quiet: bool = True) -> RunInputs:
    config_path = run_dir / CONFIG
    cfg = load_config(config_path)
    ds = dataset_or_build(cfg, dataset, data_dir, quiet)
    task = build_task(cfg, ds)
    provenance = read_provenance(run_dir)
    model, model_error = _load_model(run_dir, cfg, ds, task)
    prep = build_preprocess(cfg, ds)
    scores, scores_note = _test_scores(run_dir, ds["test"], task, model, model_error, prep)
    history_path = run_dir / HISTORY
    return RunInputs(
        run_dir=run_dir, config_text=config_path.read_text(encoding="utf-8"), provenance=provenance, cfg=cfg,
        ds=ds, task=task, prep=prep, metrics=read_metrics(run_dir, missing_ok=True),
        history=read_history(history_path) if history_path.is_file() else [], model=model,
        model_error=model_error, scores=scores, scores_note=scores_note, best_epoch=_best_epoch(run_dir / WEIGHTS),
        notes=_data_notes(provenance, ds))


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


def _test_scores(run_dir: Path, test, task: Task, model, model_error: str | None,
                 prep: Preprocess) -> tuple[np.ndarray | None, str | None]:
    """predictions/test.csv when it fits the test split, else the saved weights' scores; and a note saying why."""
    scores, note = None, None
    path = predictions_path(run_dir, "test")
    if path.is_file():
        try:
            scores = read_predictions(path)
        except MedbenchError as e:  # damaged: says which file and how to rewrite it
            note = str(e)
        if scores is not None and scores.shape != (len(test), task.num_classes):
            note = (f"predictions/test.csv holds {scores.shape[0]}×{scores.shape[1]} scores, the test split "
                    f"{len(test)} images × {task.num_classes} classes")
            scores = None
    else:
        note = "predictions/test.csv not found"
    if scores is None and model is not None:
        return model_scores(model, task, prep, test.images), f"{note}; test scores recomputed from the saved weights"
    if scores is None:
        return None, f"{note}; and no model to score with ({model_error})"
    return scores, note


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
