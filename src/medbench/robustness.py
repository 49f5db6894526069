"""Corruption robustness: a run's test split scored clean and under each corruption of a preset at each severity
(:mod:`medbench.corruptions`), into ``evaluations/NAME/robustness.json`` (``medbench evaluate RUN --corruptions``).

The run's network(s) score exactly as in evaluation (its kept members averaged, no TTA); binary tasks decide at
the run's recorded headline threshold (metrics.json), so ACC moves only because the images changed.

Relative drop of a corruption: the mean over the scored severities of ``(clean - corrupted) / clean``, for AUC and
ACC; the overall figure is the mean of the corruptions' drops (every corruption weighs the same). 0 = unaffected,
0.1 = 10 % of the clean value lost on average; negative = better than clean.
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from medbench import baselines
from medbench.build import build_preprocess, build_task, dataset_or_build, load_run_model
from medbench.config import RunConfig, load_config
from medbench.corruptions import CORRUPTIONS, PRESETS, SEVERITIES, corrupt, resolve_preset
from medbench.data import ImageDataset, Split
from medbench.data.loader import iterate_batches
from medbench.engine import predict_logits, resolve_device
from medbench.errors import MedbenchError
from medbench.fileio import write_json
from medbench.metrics import compute_metrics
from medbench.metrics.calibration import apply_temperature, read_temperature
from medbench.rundir import (
    CALIBRATION,
    CONFIG,
    EVALUATION_JSON,
    ROBUSTNESS,
    check_name,
    free_name,
    locked,
    model_weights,
    publish,
    read_metrics,
    recorded_md5,
    require_run_dir,
    staging_dir,
)

CHUNK = 256  # test images read (and corrupted) at a time: every cell is scored from one read of the split
DEFINITION = ("relative drop = mean over severities of (clean - corrupted) / clean; overall = mean over "
              "corruptions")


def score_corruptions(run_dir: str | Path, preset: str = "auto", severities: Iterable[int] = SEVERITIES, *,
                      data_dir=None, dataset: ImageDataset | None = None, name: str | None = None, seed: int = 0,
                      quiet: bool = True) -> dict:
    """Score ``run_dir``'s test split clean and under every corruption of ``preset`` (``auto``: from the MedMNIST
    dataset; own data: ``default``) at ``severities``; write ``evaluations/NAME/robustness.json`` (``NAME``
    default ``corruptions-PRESET``, ``-2``... when taken; a given name that is taken is refused) and return it."""
    run_dir = require_run_dir(run_dir, "evaluate --corruptions")
    cfg = load_config(run_dir / CONFIG)
    severities = _check_severities(severities)
    if name is not None:
        check_name(name)
    preset_name = resolve_preset(preset, cfg.dataset)
    ds = dataset_or_build(cfg, dataset, data_dir, quiet)
    recorded = recorded_md5(run_dir)
    if recorded and ds.md5 and recorded != ds.md5:
        raise MedbenchError(f"{ds.source} has md5 {ds.md5} but the run was trained on data with md5 {recorded}")
    if len(ds["test"]) == 0:
        raise MedbenchError(f"{cfg.dataset} has no test images: nothing to score under corruptions")
    task = build_task(cfg, ds)
    start = time.perf_counter()
    cells = [(None, 0)] + [(c, s) for c in PRESETS[preset_name] for s in severities]
    probs, psnr, members = _score_cells(run_dir, cfg, ds, task, cells, seed)
    temperature = read_temperature(run_dir / CALIBRATION)  # the headline threshold is on calibrated scores
    if temperature is not None:
        probs = {cell: apply_temperature(p, task.name, temperature) for cell, p in probs.items()}
    threshold = _headline_threshold(run_dir) if task.name == "binary" else 0.5
    labels = ds["test"].labels.numpy()
    scored = {cell: _cell_metrics(labels, p, task.name, threshold, ds.class_names) for cell, p in probs.items()}
    record = _record(cfg, ds, preset, preset_name, severities, seed, threshold, members, scored, psnr)
    record["seconds"] = round(time.perf_counter() - start, 2)
    with locked(run_dir, "medbench evaluate --corruptions"):
        record["evaluation"] = free_name(run_dir, name or f"corruptions-{preset_name}", given=name is not None)
        stage = staging_dir(run_dir, record["evaluation"])
        write_json(stage / ROBUSTNESS, record)
        write_json(stage / EVALUATION_JSON, _settings(record))
        publish(stage, run_dir, record["evaluation"])
    return record


def _check_severities(severities: Iterable[int]) -> list[int]:
    out = sorted({int(s) for s in severities})
    if not out or not set(out) <= set(SEVERITIES):
        raise MedbenchError(f"corruption severities must be among {list(SEVERITIES)}, got {list(severities)}")
    return out


def _score_cells(run_dir: Path, cfg: RunConfig, ds: ImageDataset, task, cells: list, seed: int):
    """Probabilities ``[N, C]`` per cell (members averaged) and the mean PSNR of each cell's images (dB, vs clean)."""
    test = ds["test"]
    device = resolve_device(cfg.device)
    if baselines.is_baseline(cfg.model):  # no weights file: refit (deterministic for the seed)
        est = baselines.fit(cfg.model, cfg.seed, task.name, cfg.features, ds["train"])
        models, members = [lambda s: baselines.scores(est, s.images, task.name, task.num_classes, cfg.features)], []
    else:
        members = model_weights(run_dir, cfg)
        prep = build_preprocess(cfg, ds)
        models = [_network(load_run_model(run_dir, cfg, ds, task, device, weights=p), prep, task, cfg)
                  for p in members]
    sums = {cell: [] for cell in cells}
    sq_err = dict.fromkeys(cells, 0.0)
    offset = 0
    for x, y in iterate_batches(test, CHUNK, device=torch.device("cpu")):
        for cell in cells:
            xc = x if cell[0] is None else corrupt(x, cell[0], cell[1], seed=seed, offset=offset)
            sq_err[cell] += ((xc.float() - x.float()) ** 2).mean(dim=(1, 2, 3)).sum().item()
            sums[cell].append(np.mean([np.asarray(m(Split(xc, y)), np.float64) for m in models], axis=0))
        offset += len(x)
    probs = {cell: np.concatenate(parts) for cell, parts in sums.items()}
    psnr = {cell: _psnr(sq_err[cell] / len(test)) for cell in cells}
    return probs, psnr, [str(p.relative_to(run_dir)) for p in members]


def _network(model, prep, task, cfg: RunConfig):
    def score(split: Split) -> np.ndarray:
        return task.scores(predict_logits(model, split, prep, cfg.eval_batch_size)).double().numpy()
    return score


def _psnr(mse: float) -> float | None:
    return None if mse <= 0 else round(float(10 * np.log10(255.0 ** 2 / mse)), 3)


def _headline_threshold(run_dir: Path) -> float:
    """The decision threshold the run's own test metrics used (metrics.json), else 0.5."""
    th = (read_metrics(run_dir, missing_ok=True).get("threshold") or {}).get("headline")
    return float(th) if isinstance(th, (int, float)) else 0.5


def _cell_metrics(labels, probs, task: str, threshold: float, class_names) -> dict:
    m = compute_metrics(labels, probs, task, threshold=threshold, class_names=class_names)
    return {k: m.get(k) for k in ("auc", "acc", "balanced_acc")}


def _drop(clean: float | None, values: list) -> float | None:
    if clean is None or clean == 0 or any(v is None for v in values):
        return None
    return float(np.mean([(clean - v) / clean for v in values]))


def _record(cfg: RunConfig, ds: ImageDataset, asked: str, preset: str, severities: list[int], seed: int,
            threshold: float, members: list[str], scored: dict, psnr: dict) -> dict:
    clean = scored[(None, 0)]
    table = {}
    for c in PRESETS[preset]:
        cells = {str(s): {**scored[(c, s)], "psnr": psnr[(c, s)]} for s in severities}
        table[c] = {"parameter": CORRUPTIONS[c].parameter,
                    "levels": {str(s): CORRUPTIONS[c].levels[s - 1] for s in severities},
                    "severities": cells,
                    **{f"relative_{k}_drop": _drop(clean[k], [v[k] for v in cells.values()]) for k in ("auc", "acc")}}
    overall = {f"mean_relative_{k}_drop": _mean([t[f"relative_{k}_drop"] for t in table.values()])
               for k in ("auc", "acc")}
    return {"kind": "corruptions", "dataset": cfg.dataset, "model": cfg.model, "split": "test",
            "n": len(ds["test"]), "preset": preset, "preset_asked": asked, "severities": severities, "seed": seed,
            "task": ds.task, "threshold": threshold, "members": members, "tta": False, "definition": DEFINITION,
            "clean": clean, "corruptions": table, **overall}


def _mean(values: list) -> float | None:
    return None if not values or any(v is None for v in values) else float(np.mean(values))


def _settings(record: dict) -> dict:
    """evaluation.json: how this evaluation was made (the results are in robustness.json)."""
    keys = ("kind", "split", "preset", "preset_asked", "severities", "seed", "threshold", "members", "tta",
            "seconds")
    return {"splits": ["test"], "results": ROBUSTNESS, **{k: record[k] for k in keys}}


def format_table(record: dict, key: str = "auc") -> str:
    """robustness.json as a text table: one row per corruption, ``key`` (auc / acc) at each severity."""
    sev = [str(s) for s in record["severities"]]
    head = f"{'corruption':<16}{'clean':>8}" + "".join(f"{'s' + s:>8}" for s in sev) + f"{'rel.drop':>10}"

    def num(v, width=8):
        return f"{'n/a':>{width}}" if v is None else f"{v:>{width}.3f}"

    rows = [f"{c:<16}{num(record['clean'][key])}" + "".join(num(t["severities"][s][key]) for s in sev)
            + num(t[f"relative_{key}_drop"], 10) for c, t in record["corruptions"].items()]
    tail = f"{'mean':<16}{'':>8}{'':>{8 * len(sev)}}" + num(record[f"mean_relative_{key}_drop"], 10)
    return "\n".join([f"{key.upper()} under corruptions ({record['preset']}, n={record['n']})", head, *rows, tail])
