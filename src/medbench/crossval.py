"""A cross-validation's record, from its finished fold runs: ``cv.json``, ``predictions/oof.csv``,
``predictions/test.csv`` and ``metrics.json`` of the parent run directory.

* Per fold: each fold run's own train / val / test metrics (its val is its fold); mean and sample sd (ddof=1)
  over the folds of every scalar metric.
* Out of fold (OOF): every pooled image scored once, by the one fold model that did not train on it; the pooled
  record (metrics.json's ``val``) with bootstrap CIs (at least :data:`OOF_BOOTSTRAP` resamples).
* The fold ensemble: the K fold models' test probabilities averaged (each fold's predictions/test.csv, so its
  TTA / checkpoint ensemble / calibration settings apply), scored on the untouched test split (metrics.json's
  ``test``).

Binary decision threshold: each fold run decides its own labels with its own rule (0.5, or ``--decision youden``:
the Youden threshold of its own val fold). The pooled OOF and the ensemble's test labels use 0.5, or with
``--decision youden`` the Youden threshold chosen on the pooled OOF scores: in-sample for the OOF record (as an
ordinary run's val), out of sample for the test split; the ensemble's averaged probabilities are a little less
extreme than single models' OOF scores, so that threshold is an approximation for it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medbench.build import build_task
from medbench.config import RunConfig
from medbench.data import ImageDataset, item_ids
from medbench.data.folds import Pool
from medbench.data.subgroups import subgroup_values_for
from medbench.errors import MedbenchError
from medbench.evaluation.record import Settings, split_record, summary
from medbench.fileio import read_json, write_json
from medbench.metrics import youden_threshold
from medbench.metrics.diagnostics import split_warnings
from medbench.metrics.positive import positive_index
from medbench.rundir import (
    CV_SUMMARY,
    METRICS,
    OOF_SPLIT,
    PREDICTIONS,
    fold_dirs,
    predictions_path,
    read_metrics,
    read_prediction_table,
    write_medmnist_export,
    write_metrics,
    write_prediction_table,
)
from medbench.tasks import decide as decide_labels

OOF_BOOTSTRAP = 1000  # resamples for the pooled out-of-fold and ensemble CIs when the config asks for fewer
CHOSEN_ON = "oof"  # metrics.json threshold.chosen_on of a cross-validation


def scalars(rec: dict | None) -> dict:
    """The scalar metrics of a split record (numbers and nulls; not n, tables or CIs)."""
    return {k: v for k, v in (rec or {}).items()
            if k != "n" and (v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)))}


def with_cis(rec: dict) -> dict:
    """Scalars plus their ``*_ci`` intervals and n."""
    return {**scalars(rec), **{k: v for k, v in rec.items() if k.endswith("_ci")}, "n": rec.get("n")}


def mean_sd(records: list[dict]) -> tuple[dict, dict]:
    """Mean and sample sd (ddof=1; None for one value) of every scalar over ``records`` (nulls left out)."""
    keys = list(dict.fromkeys(k for r in records for k in scalars(r)))
    mean, sd = {}, {}
    for k in keys:
        vals = [float(r[k]) for r in records if r.get(k) is not None and np.isfinite(r[k])]
        mean[k] = float(np.mean(vals)) if vals else None
        sd[k] = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
    return mean, sd


def _oof_scores(out: Path, pool: Pool, num_classes: int) -> np.ndarray:
    """The pooled images' scores, each from its fold run's predictions/val.csv (checked item by item)."""
    oof = np.full((len(pool.items), num_classes), np.nan)
    for i, d in enumerate(fold_dirs(out, pool.k)):
        table = read_prediction_table(predictions_path(d, "val"))
        idx = pool.members(i)
        expected = [pool.items[j] for j in idx]
        if table.items is not None and table.items != expected or len(table.scores) != len(idx):
            raise MedbenchError(f"{predictions_path(d, 'val')}: its images are not fold {i} of {out} (the data or "
                                f"the fold split changed since it was trained); delete {d} and resume {out}")
        oof[idx] = table.scores
    return oof


def _ensemble_scores(out: Path, k: int, n_test: int) -> np.ndarray:
    tables = [read_prediction_table(predictions_path(d, "test")).scores for d in fold_dirs(out, k)]
    bad = next((i for i, t in enumerate(tables) if len(t) != n_test), None)
    if bad is not None:
        raise MedbenchError(f"{predictions_path(fold_dirs(out, k)[bad], 'test')}: {len(tables[bad])} rows, the test "
                            f"split {n_test}; delete that fold and resume {out}")
    return np.mean(np.stack(tables), axis=0)


def write_cv_record(out: str | Path, cfg: RunConfig, ds: ImageDataset, pool: Pool) -> dict:
    """Write the parent's cv.json, predictions/oof.csv, predictions/test.csv (and the MedMNIST export) and
    metrics.json from its finished fold runs; returns metrics.json's record. ``ds``: the run's whole dataset
    (its test split is the one scored); ``pool``: the pooled images and their folds."""
    out = Path(out)
    task = build_task(cfg, ds)
    binary = task.name == "binary"
    folds = fold_dirs(out, pool.k)
    fold_metrics = [read_metrics(d) for d in folds]
    oof = _oof_scores(out, pool, ds.num_classes)
    test_labels = ds["test"].labels.cpu().numpy()
    ens = _ensemble_scores(out, pool.k, len(test_labels))
    settings = Settings(ensemble=1, tta=cfg.tta, bootstrap=max(cfg.bootstrap, OOF_BOOTSTRAP), seed=0)
    positive = positive_index(cfg.positive_class, ds.class_names, pool.labels, task.name)
    threshold = youden_threshold(pool.labels, oof) if binary else None
    decide = threshold if cfg.decision == "youden" and threshold is not None else 0.5
    rel = [str(d.relative_to(out)) for d in folds]
    val = split_record(task, ds, "val", pool.labels, oof, None, decide, threshold, settings, positive, {})
    val["evaluation"] = {"out_of_fold": True, "folds": pool.k, "tta": cfg.tta, "bootstrap": settings.bootstrap}
    test = split_record(task, ds, "test", test_labels, ens, None, decide, threshold, settings, positive,
                        subgroup_values_for(ds, "test", cfg))
    setting = {"ensemble": pool.k, "tta": cfg.tta, "bootstrap": settings.bootstrap, "members": rel}
    test["evaluation"] = setting
    metrics = {"val": val, "test": test}
    metrics.update(summary(metrics, binary, threshold, decide, setting, None))
    if binary:
        metrics["threshold"]["chosen_on"] = CHOSEN_ON
    found = split_warnings({"val": pool.labels, "test": test_labels}, {"val": oof, "test": ens}, task.name,
                           ds.class_names, threshold=decide)
    found += [f"fold {i}: {w}" for i, m in enumerate(fold_metrics) for w in m.get("warnings") or []]
    if found:
        metrics["warnings"] = found
    metrics["cv"] = {"k": pool.k, "summary": CV_SUMMARY, "val": "out-of-fold (pooled val of the folds)",
                     "test": "fold ensemble (mean probabilities of the fold models)"}
    multilabel = task.name == "multilabel"
    write_prediction_table(predictions_path(out, OOF_SPLIT), pool.items, pool.labels,
                           np.asarray(decide_labels(oof, task.name, decide)), oof, ds.class_names, multilabel,
                           folds=pool.folds)
    write_prediction_table(predictions_path(out, "test"), item_ids(ds, "test"), test_labels,
                           np.asarray(decide_labels(ens, task.name, decide)), ens, ds.class_names, multilabel)
    if ds.meta.get("kind") not in ("folder", "csv") and not cfg.dataset.startswith(("folder:", "csv:")):
        write_medmnist_export(out / PREDICTIONS, cfg.dataset, ds.size, "test", ens, test["auc"],
                              test["acc"] if decide == 0.5 else None, out.name)
    write_json(out / CV_SUMMARY, cv_summary(pool, fold_metrics, rel, val, test, metrics.get("threshold"), cfg))
    write_metrics(out, metrics)
    return metrics


def cv_summary(pool: Pool, fold_metrics: list[dict], rel: list[str], oof: dict, test: dict, threshold,
               cfg: RunConfig) -> dict:
    """cv.json: per fold, mean and sd over folds, the pooled OOF record and the fold ensemble's test record."""
    rows = [{"fold": i, "run_dir": rel[i], "n_val": int(len(pool.members(i))),
             "n_train": int(len(pool.items) - len(pool.members(i))),
             **{s: scalars(m.get(s)) for s in ("train", "val", "test")}}
            for i, m in enumerate(fold_metrics)]
    mean, sd = {}, {}
    for s in ("train", "val", "test"):
        mean[s], sd[s] = mean_sd([m.get(s) or {} for m in fold_metrics])
    return {"k": pool.k, "folds": rows, "mean": mean, "sd": sd, "oof": with_cis(oof),
            "ensemble": {"test": with_cis(test)}, "threshold": threshold,
            "split": {"pooled": "train+val", "n": len(pool.items), "seed": cfg.split_seed,
                      "group_regex": cfg.group_regex, "groups": len(set(pool.groups)),
                      "stratified": True}}


def read_cv(run_dir: str | Path) -> dict | None:
    """cv.json of a cross-validation's run directory; None for any other run."""
    path = Path(run_dir) / CV_SUMMARY
    if not path.is_file():
        return None
    return read_json(path, CV_SUMMARY, f"delete it and {METRICS}, then resume the run: medbench train --resume "
                                       f"{run_dir}")
