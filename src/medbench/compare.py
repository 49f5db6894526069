"""Paired comparison of two runs on the same split: their saved predictions, the same resamples for both.

Which runs can be paired: those that scored the same images with the same labels.

* Both prediction tables name their images (``item``: the MedMNIST index, or the path under the data root):
  the runs must draw on the same data (the same MedMNIST dataset, at any size; the same data root for folder /
  CSV data: a folder and a CSV in that folder name images alike) and their items must be the same images, in any
  order (B is reordered to A's order), with the same true labels and classes. Run type, image size, split options
  and model may differ. What differs is one line: the counts, the first item only one run scored, the first
  image whose label differs.
* An older run's header-less file has no items: then the rule is the old one (same dataset, size, split and
  decode settings, and data md5), with the labels from the dataset.

When both runs recorded subgroup metrics (``metrics.json[split]["subgroups"]``), they are shown side by side
per subgroup (``subgroups`` in the result: :func:`subgroups_side_by_side`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medbench.build import build_dataset, source_options
from medbench.config import RunConfig, load_config
from medbench.errors import MedbenchError
from medbench.metrics import compare_predictions
from medbench.rundir import (
    CONFIG,
    PREDICTIONS,
    PredictionTable,
    predictions_path,
    read_data_spec,
    read_metrics,
    read_prediction_table,
    read_provenance,
    recorded_md5,
)

SIDE_BY_SIDE = ("auc", "acc", "sensitivity", "specificity")


def compare_runs(run_a: str | Path, run_b: str | Path, *, split: str = "test", replicates: int = 1000, seed: int = 0,
                 data_dir=None) -> dict:
    """AUC and ACC differences (A - B) with paired-bootstrap CIs and p-values, plus DeLong's test for binary
    tasks, on the images both runs scored (see the module docstring for when runs pair)."""
    runs = [Path(run_a), Path(run_b)]
    for r in runs:
        if not (r / CONFIG).is_file():
            raise MedbenchError(f"{r} is not a run directory ({CONFIG} missing)")
    cfgs = [load_config(r / CONFIG) for r in runs]
    tables = [read_prediction_table(predictions_path(r, split)) for r in runs]
    if all(t.items is not None for t in tables):
        labels, scores, name, task = _paired_by_items(runs, cfgs, tables, split)
        matched = "items"
    else:
        labels, scores, name, task = _paired_by_settings(runs, cfgs, tables, split, data_dir)
        matched = "settings"
    res = compare_predictions(labels, scores[0], scores[1], task, replicates=replicates, seed=seed)
    out = {"run_a": str(runs[0]), "run_b": str(runs[1]), "dataset": name, "split": split, "n": len(labels),
           "task": task, "matched_by": matched, "replicates": replicates, "seed": seed, **res}
    sub = subgroups_side_by_side(*(read_metrics(r, missing_ok=True) for r in runs), split=split)
    if sub:
        out["subgroups"] = sub
    return out


def _data_identity(run: Path, cfg: RunConfig) -> tuple[str, str]:
    """What the items of a run are relative to: ("medmnist", flag) or ("root", the resolved data root)."""
    src = cfg.source
    if src.kind == "medmnist":
        return "medmnist", src.name.lower()
    where = Path(read_provenance(run).get("data_source") or src.path).expanduser().resolve()
    return "root", str(where.parent if src.kind == "csv" else where)


def _paired_by_items(runs: list[Path], cfgs: list[RunConfig], tables: list[PredictionTable], split: str):
    """(labels, [scores A, scores B in A's order], dataset name, task) when both tables hold the same images."""
    ids = [_data_identity(r, c) for r, c in zip(runs, cfgs)]
    if ids[0] != ids[1]:
        raise MedbenchError(f"{runs[0]} is on {ids[0][1]}, {runs[1]} on {ids[1][1]}: a paired comparison needs "
                            f"the same test images")
    if ids[0][0] == "medmnist" and cfgs[0].size == cfgs[1].size:
        md5 = [recorded_md5(r) for r in runs]
        if md5[0] and md5[1] and md5[0] != md5[1]:
            raise MedbenchError(f"{runs[0]} and {runs[1]} were trained on different data files (md5 {md5[0]} vs "
                                f"{md5[1]})")
    specs = [read_data_spec(r) for r in runs]
    ta, tb = tables
    what = [(s.task if s else None, t.class_names) for s, t in zip(specs, tables)]
    if what[0] != what[1]:
        raise MedbenchError(f"{runs[0]} predicts {what[0][1]} ({what[0][0]}), {runs[1]} {what[1][1]} ({what[1][0]}): "
                            f"not the same classes")
    files = [f"{r}/{PREDICTIONS}/{split}.csv" for r in runs]
    order = _align(ta.items, tb.items, files)
    lb = tb.labels[order]
    differ = np.flatnonzero((ta.labels != lb).any(axis=1))
    if len(differ):
        i = int(differ[0])
        raise MedbenchError(f"{files[0]} and {files[1]} label {len(differ)} image(s) differently (first "
                            f"{ta.items[i]!r}: {_label(ta, ta.labels[i])} vs {_label(ta, lb[i])}): not the same "
                            f"labels")
    task = specs[0].task if specs[0] else ("multilabel" if ta.multilabel else
                                           "binary" if len(ta.class_names) == 2 else "multiclass")
    return ta.labels, [ta.scores, tb.scores[order]], specs[0].name if specs[0] else ids[0][1], task


def _label(table: PredictionTable, y: np.ndarray) -> str:
    return str(y.tolist()) if table.multilabel else repr(table.class_names[int(y[0])])


def _align(items_a: list[str], items_b: list[str], files: list[str]) -> np.ndarray:
    """Indices that put B's rows in A's item order; one line naming what differs when the items do."""
    if items_a == items_b:
        return np.arange(len(items_b))
    set_a, set_b = set(items_a), set(items_b)
    if set_a == set_b and len(set_a) == len(items_a) == len(items_b):
        where = {it: i for i, it in enumerate(items_b)}
        return np.array([where[it] for it in items_a])
    only_a = next((it for it in items_a if it not in set_b), None)
    only_b = next((it for it in items_b if it not in set_a), None)
    first = (f"first only in A: {only_a!r}" if only_a is not None else
             f"first only in B: {only_b!r}" if only_b is not None else "the same items, some listed twice")
    raise MedbenchError(f"{files[0]} scores {len(items_a)} images, {files[1]} {len(items_b)} ({first}): a paired "
                        f"comparison needs the same test images")


def _paired_by_settings(runs: list[Path], cfgs: list[RunConfig], tables: list[PredictionTable], split: str,
                        data_dir):
    """Older runs (predictions without items): the same dataset, size, split settings and data file."""
    if (cfgs[0].dataset, cfgs[0].size) != (cfgs[1].dataset, cfgs[1].size):
        raise MedbenchError(f"{runs[0]} is on {cfgs[0].dataset} at {cfgs[0].size} px, {runs[1]} on {cfgs[1].dataset} "
                            f"at {cfgs[1].size} px: a paired comparison needs the same test images")
    if source_options(cfgs[0]) != source_options(cfgs[1]):
        raise MedbenchError(f"{runs[0]} and {runs[1]} split or decode {cfgs[0].dataset} differently "
                            f"({source_options(cfgs[0])} vs {source_options(cfgs[1])}): not the same test images")
    md5 = [recorded_md5(r) for r in runs]
    if md5[0] and md5[1] and md5[0] != md5[1]:
        raise MedbenchError(f"{runs[0]} and {runs[1]} were trained on different data files (md5 {md5[0]} vs {md5[1]})")
    ds = build_dataset(cfgs[0], data_dir)
    labels = ds[split].labels.numpy()
    for r, t in zip(runs, tables):
        if len(t.scores) != len(labels):
            raise MedbenchError(f"{r}/{PREDICTIONS}/{split}.csv has {len(t.scores)} rows, the {split} split has "
                                f"{len(labels)}")
    return labels, [t.scores for t in tables], ds.name, ds.task


# ---- subgroups ----

def subgroups_side_by_side(metrics_a: dict, metrics_b: dict, split: str = "test") -> dict:
    """Both runs' subgroup metrics per attribute and subgroup: {attribute: {"groups": {subgroup: {"n_a", "n_b",
    metric: {"a", "a_ci", "b", "b_ci", "diff"}}}, "gaps": {metric: {"a", "b"}}}} over the attributes both runs
    recorded; ``{}`` when one has none. ``diff`` is A - B (None where either is undefined)."""
    recs = [((m or {}).get(split) or {}).get("subgroups") for m in (metrics_a, metrics_b)]
    if not all(isinstance(r, dict) and r.get("columns") for r in recs):
        return {}
    out = {}
    for col in [c for c in recs[0]["columns"] if c in recs[1]["columns"]]:
        ga, gb = (r["columns"][col].get("groups") or {} for r in recs)
        groups = {}
        for g in list(ga) + [g for g in gb if g not in ga]:
            a, b = ga.get(g) or {}, gb.get(g) or {}
            row: dict = {"n_a": a.get("n"), "n_b": b.get("n")}
            for key in SIDE_BY_SIDE:
                if key in a or key in b:
                    va, vb = a.get(key), b.get(key)
                    row[key] = {"a": va, "a_ci": a.get(f"{key}_ci"), "b": vb, "b_ci": b.get(f"{key}_ci"),
                                "diff": None if va is None or vb is None else va - vb}
            groups[g] = row
        gaps_a, gaps_b = (r["columns"][col].get("gaps") or {} for r in recs)
        gaps = {k: {"a": (gaps_a.get(k) or {}).get("gap"), "b": (gaps_b.get(k) or {}).get("gap")}
                for k in SIDE_BY_SIDE if k in gaps_a or k in gaps_b}
        out[col] = {"groups": groups, "gaps": gaps}
    return out


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def subgroup_lines(sub: dict) -> list[str]:
    """The side-by-side subgroup metrics as text lines (A | B | A - B per metric)."""
    lines = []
    for col, c in sub.items():
        lines.append(f"subgroups by {col} (A | B | A - B):")
        for g, row in c["groups"].items():
            n = f"n {row['n_a']}" if row["n_a"] == row["n_b"] else f"n {row['n_a']} | {row['n_b']}"
            cells = [f"{k} {_num(row[k]['a'])} | {_num(row[k]['b'])} | "
                     f"{'n/a' if row[k]['diff'] is None else format(row[k]['diff'], '+.4f')}"
                     for k in SIDE_BY_SIDE if k in row]
            lines.append(f"  {g:<12} {n:<10} " + "   ".join(cells))
        gaps = "   ".join(f"{k} {_num(v['a'])} | {_num(v['b'])}" for k, v in c["gaps"].items())
        lines.append(f"  largest gap  {gaps}")
    return lines
