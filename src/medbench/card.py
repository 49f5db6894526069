"""The model card of a run: MODEL_CARD.md for people, model_card.json for programs (``GET /model``).

Written at the end of training (and rebuilt by ``medbench card RUN_DIR``). Metrics come from metrics.json;
95 % CIs are the run's bootstrap CIs when it has them, otherwise a 1000-resample bootstrap of the test
predictions computed here (seed 0), so every card states its uncertainty.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from medbench.build import build_dataset, run_data_spec
from medbench.config import load_config
from medbench.crossval import read_cv
from medbench.errors import MedbenchError
from medbench.fileio import write_json, write_text
from medbench.metrics import bootstrap_metrics
from medbench.rundir import (
    CARD_JSON,
    CARD_MD,
    CONFIG,
    METRICS,
    predictions_path,
    read_metrics,
    read_prediction_table,
    read_provenance,
)

CARD_REPLICATES = 1000
NOT_CLINICAL = ("Not for clinical use. This model is a research artefact: it has not been validated, cleared or "
                "approved for diagnosis, screening, triage or any decision about a patient. Do not use its "
                "outputs to make or support medical decisions.")
SHOWN = ("acc", "auc", "balanced_acc", "f1_macro", "sensitivity", "specificity", "kappa_quadratic", "ece")
CONFIG_SHOWN = ("model", "pretrained", "truncate", "size", "as_rgb", "fit", "recipe", "epochs", "batch_size",
                "optimizer", "lr", "weight_decay", "schedule", "label_smoothing", "augment", "mixup", "cutmix",
                "synthetic", "select_metric", "ensemble", "members", "ema", "decision", "tta", "seed",
                "precision", "folds", "fold")


def _test_cis(run_dir: Path, task: str, labels, cfg, data_dir) -> dict:
    """CIs from the test predictions; their true labels come from the file (older files lack them: then from
    ``labels``, or the run's dataset)."""
    table = read_prediction_table(predictions_path(run_dir, "test"))
    scores = table.scores
    if table.labels is not None:
        labels = table.labels
    elif labels is None:
        labels = build_dataset(cfg, data_dir)["test"].labels.numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an undefined resample is reported by the CI itself (None)
        return bootstrap_metrics(np.asarray(labels), scores, task, replicates=CARD_REPLICATES, seed=0,
                                 metrics=["acc", "auc"])


def model_card(run_dir: str | os.PathLike, *, test_labels=None, data_dir=None) -> dict:
    """The card as a dict. ``test_labels``: the test split's labels (to bootstrap CIs the run lacks) when its
    predictions file does not hold them (older runs); when not given and needed, the run's dataset is loaded."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file() or not (run_dir / METRICS).is_file():
        raise MedbenchError(f"{run_dir} is not a finished run ({CONFIG} or {METRICS} missing)")
    cfg = load_config(run_dir / CONFIG)
    spec = run_data_spec(run_dir, cfg, data_dir)
    metrics = read_metrics(run_dir)
    provenance = read_provenance(run_dir)
    test = metrics.get("test") or {}
    cis = {k: test[k] for k in ("acc_ci", "auc_ci") if test.get(k) is not None}
    ci_source = "the run's bootstrap" if cis else None
    if not cis and test and predictions_path(run_dir, "test").is_file():
        cis = _test_cis(run_dir, spec.task, test_labels, cfg, data_dir)
        ci_source = f"{CARD_REPLICATES} bootstrap resamples of the test predictions (seed 0)"
    splits = {}
    for s in ("train", "val", "test"):
        rec = metrics.get(s)
        if rec:
            splits[s] = {"n": rec.get("n"), **{k: rec.get(k) for k in SHOWN if k in rec}}
    splits.setdefault("test", {}).update({k: v for k, v in cis.items()})
    threshold = metrics.get("threshold") or {}
    return {
        "name": run_dir.resolve().name,
        "model": cfg.model,
        "pretrained": cfg.pretrained,
        "dataset": spec.name,
        "task": spec.task,
        "classes": spec.class_names,
        "input": {"size": cfg.size, "channels": spec.in_chans, "fit": cfg.fit,
                  "formats": ["PNG", "JPEG", "DICOM", "BMP", "TIFF"]},
        "metrics": splits,
        "ci": {"level": 0.95, "source": ci_source},
        "threshold": {"used_for_labels": threshold.get("youden") if threshold.get("youden") is not None
                      else (0.5 if spec.task == "binary" else None),
                      "chosen_on": threshold.get("chosen_on"), "default": threshold.get("default")}
        if spec.task == "binary" else None,
        "at_youden": {k: v for k, v in (test.get("at_youden") or {}).items() if k != "class_of"} or None,
        "class_of": test.get("class_of"),  # binary: whose recall sensitivity and specificity are
        "warnings": metrics.get("warnings") or [],
        "cross_validation": _cv_card(read_cv(run_dir)),
        "calibration": metrics.get("calibration"),
        "training": {k: getattr(cfg, k) for k in CONFIG_SHOWN},
        "provenance": {k: provenance.get(k) for k in ("medbench", "torch", "data_source", "data_md5", "device",
                                                       "started", "stopped_early", "class_weights")
                       if provenance.get(k) is not None},
        "intended_use": "Research and teaching: benchmarking and comparing image classifiers on the dataset above.",
        "not_for_clinical_use": NOT_CLINICAL,
    }


def _cv_card(cv: dict | None) -> dict | None:
    """What the card says about a cross-validation: K, mean ± sd of the folds' val and test AUC / ACC, the pooled
    out-of-fold record with CIs, the fold ensemble's test record."""
    if cv is None:
        return None
    pick = ("auc", "acc", "auc_ci", "acc_ci", "n")
    return {"k": cv["k"],
            "folds_mean": {s: {m: cv["mean"][s].get(m) for m in ("auc", "acc")} for s in ("val", "test")},
            "folds_sd": {s: {m: cv["sd"][s].get(m) for m in ("auc", "acc")} for s in ("val", "test")},
            "out_of_fold": {m: cv["oof"].get(m) for m in pick},
            "ensemble_test": {m: cv["ensemble"]["test"].get(m) for m in pick}}


def _pm(mean, sd) -> str:
    return _fmt(mean) + ("" if sd is None else f" ± {_fmt(sd)}")


def _cv_lines(cv: dict | None) -> list[str]:
    if not cv:
        return []
    m, sd, oof, ens = cv["folds_mean"], cv["folds_sd"], cv["out_of_fold"], cv["ensemble_test"]
    return ["## Cross-validation", "",
            f"This model is the ensemble of the {cv['k']} fold models of a {cv['k']}-fold cross-validation over "
            f"train+val (probabilities averaged); the test split was never used for training or selection.", "",
            f"- Per fold (mean ± sd over {cv['k']} folds): val AUC {_pm(m['val']['auc'], sd['val']['auc'])}, val ACC "
            f"{_pm(m['val']['acc'], sd['val']['acc'])}; test AUC {_pm(m['test']['auc'], sd['test']['auc'])}, test "
            f"ACC {_pm(m['test']['acc'], sd['test']['acc'])}",
            f"- Out-of-fold, pooled ({oof.get('n')} images): AUC {_fmt(oof.get('auc'))}{_ci(oof, 'auc')}, ACC "
            f"{_fmt(oof.get('acc'))}{_ci(oof, 'acc')} (the metrics table's val row)",
            f"- Fold ensemble on test ({ens.get('n')} images): AUC {_fmt(ens.get('auc'))}{_ci(ens, 'auc')}, ACC "
            f"{_fmt(ens.get('acc'))}{_ci(ens, 'acc')} (the metrics table's test row)", ""]


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def _ci(rec: dict, key: str) -> str:
    ci = rec.get(f"{key}_ci")
    return f" (95 % CI {ci[0]:.4f}–{ci[1]:.4f})" if ci else ""


def _training_notes(provenance: dict) -> list[str]:
    """The card's lines about an early stop (--patience) and the class weights the loss used."""
    out = []
    stopped = provenance.get("stopped_early")
    if stopped:
        out.append(f"- Training stopped early after epoch {stopped.get('epoch')} of {stopped.get('of')}: "
                   f"{stopped.get('reason')}")
    weights = provenance.get("class_weights")
    if weights:
        per = weights.get("weight_per_class") or weights.get("positive_weight_per_label")
        out.append(f"- Loss weights ({weights.get('from')}): {per}")
    return out


def card_markdown(card: dict) -> str:
    lines = [f"# Model card: {card['model']} on {card['dataset']}", "",
             f"> **{card['not_for_clinical_use']}**", "",
             "## Model", "",
             f"- Architecture: `{card['model']}`{' from ImageNet weights' if card['pretrained'] else ''}",
             f"- Input: {card['input']['channels']}-channel {card['input']['size']}×{card['input']['size']} images "
             f"({card['input']['fit']} to a square, then resized); accepts {', '.join(card['input']['formats'])}",
             f"- Trained with medbench {card['provenance'].get('medbench', '?')}, torch "
             f"{card['provenance'].get('torch', '?')} on {card['provenance'].get('device', '?')}, started "
             f"{card['provenance'].get('started', '?')}", *_training_notes(card['provenance']), "",
             "## Data", "",
             f"- Dataset: {card['dataset']} ({card['task']} task)",
             f"- Source: {card['provenance'].get('data_source', 'n/a')} "
             f"(md5 {card['provenance'].get('data_md5', 'n/a')})",
             f"- {'Labels' if card['task'] == 'multilabel' else 'Classes'} ({len(card['classes'])}): "
             + ", ".join(f"`{c}`" for c in card["classes"]), ""]
    named = card.get("class_of") or {}
    lines += ["## Metrics", "", "| split | n | " + " | ".join(f"{k} ({named[k]})" if k in named else k
                                                             for k in SHOWN) + " |",
              "|---|---|" + "---|" * len(SHOWN)]
    for s, rec in card["metrics"].items():
        lines.append(f"| {s} | {rec.get('n', 'n/a')} | " + " | ".join(_fmt(rec.get(k)) for k in SHOWN) + " |")
    test = card["metrics"].get("test", {})
    lines += ["", f"Test ACC {_fmt(test.get('acc'))}{_ci(test, 'acc')}, AUC {_fmt(test.get('auc'))}{_ci(test, 'auc')}"
              + (f"; CIs from {card['ci']['source']}." if card["ci"]["source"] else "; no CI available."), ""]
    if card.get("threshold"):
        th = card["threshold"]
        lines += [f"Predicted labels use P(positive) > {_fmt(th['used_for_labels'])}"
                  + (f" (Youden threshold chosen on {th['chosen_on']})" if th.get("chosen_on") else "")
                  + "; the metrics above use 0.5 (MedMNIST's rule).", ""]
        if card.get("at_youden"):
            y = card["at_youden"]
            lines += ["At that threshold on test: " + ", ".join(f"{k} {_fmt(v)}" for k, v in y.items()), ""]
    lines += _cv_lines(card.get("cross_validation"))
    lines += ["## Training", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in card["training"].items()]
    lines += ["", "The complete configuration is `config.yaml` in this folder (it reproduces the run).", "",
              "## Intended use", "", card["intended_use"], "",
              "Out of scope: any clinical use; data from other scanners, sites, populations or resolutions than the "
              "training data without re-validation; patients or image types absent from the training set.", "",
              "## Limitations", "",
              "- Metrics are from one held-out test split; the CIs cover test-set sampling, not other sites or "
              "shifts.",
              f"- Calibration (ECE on test): {_fmt(test.get('ece'))}"
              + (f", after temperature scaling (T = {_fmt(card['calibration'].get('temperature'))}, fitted on val)."
                 if card.get("calibration") else "."),
              *[f"- Warning: {w}" for w in card.get("warnings") or []],
              "- Low-resolution inputs drop detail a specialist would use.", "",
              "## Use", "", "```", "medbench predict RUN_DIR images/ --out predictions.csv [--cam cams/]",
              "medbench serve RUN_DIR", "medbench export RUN_DIR --format onnx", "```", ""]
    return "\n".join(lines)


def write_model_card(run_dir: str | os.PathLike, *, test_labels=None, data_dir=None) -> dict:
    card = model_card(run_dir, test_labels=test_labels, data_dir=data_dir)
    write_json(Path(run_dir) / CARD_JSON, card)
    write_text(Path(run_dir) / CARD_MD, card_markdown(card))
    return card
