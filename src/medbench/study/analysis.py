"""Every number of the study report: per arm the seed statistics and the bootstrap of its test predictions on
resamples shared within a dataset, per dataset the ranking, the comparisons of arms (two-level bootstrap over seeds
and test images) and the published MedMNIST v2 comparison, then the across-dataset tests and the CheXtransfer
analyses."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medbench.build import build_dataset
from medbench.config import resolve_config
from medbench.errors import MedbenchError
from medbench.metrics import bootstrap_replicates, resample_counts
from medbench.rundir import predictions_path, read_predictions
from medbench.study import published as P
from medbench.study.architecture import config_params, imagenet_top1
from medbench.study.chextransfer import chextransfer
from medbench.study.grouping import Arm, Section, group_runs, label_text
from medbench.study.records import SEED_KEY, RunRecord, gap, metric
from medbench.study.stats import LEVEL, arm_difference, mean_replicates, mean_std, percentile_ci, wilcoxon_pairs

NOT_DONE_ORDER = ("failed", "missing", "running", "pending")


def analyse(records: Sequence[RunRecord], axes: Sequence[str], *, data_dir=None, replicates: int = 1000,
            seed: int = 0, level: float = LEVEL) -> tuple[dict, list[Section]]:
    """Every number of the report as a JSON-ready dict, and the sections (with replicates) for the figures."""
    if replicates < 1:
        raise MedbenchError(f"replicates must be >= 1 (got {replicates})")
    sections = group_runs(records, axes)
    out_sections = []
    for sec in sections:
        if any(a.done for a in sec.arms.values()):
            _load_section_data(sec, data_dir)
        y, counts = _test_resamples(sec, replicates, seed)
        for arm in sec.arms.values():
            _analyse_arm(arm, sec, y, counts, level)
        out_sections.append(_section_summary(sec, level, seed))
    summary = {"sections": out_sections}
    summary["cross_dataset"] = _cross_dataset(sections)
    summary["chextransfer"] = chextransfer(sections, axes, level, seed)
    return summary, sections


def _load_section_data(sec: Section, data_dir) -> None:
    first = next(iter(sec.arms.values())).runs[0]
    try:
        cfg = resolve_config(dict(first.config))
        sec.ds = build_dataset(cfg, data_dir)
        sec.task = sec.ds.task
        sec.n_test = len(sec.ds["test"])
    except Exception as e:  # noqa: BLE001 - without labels the report still shows metrics.json means
        sec.note = f"test labels could not be loaded ({type(e).__name__}: {e}); no bootstrap CIs or p-values"
        sec.ds = None


def _test_resamples(sec: Section, replicates: int, seed: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The test labels and one resample count matrix shared by every run on the section (None without labels)."""
    if sec.ds is None:
        return None, None
    y = sec.ds["test"].labels.cpu().numpy()
    y = y.reshape(len(y), -1)
    return y, resample_counts(len(y), replicates, seed)


def _analyse_arm(arm: Arm, sec: Section, y: np.ndarray | None, counts: np.ndarray | None, level: float) -> None:
    """Seed statistics, the bootstrap of the mean over seeds, parameters and ImageNet top-1 of one arm."""
    arm.stats = _arm_stats(arm)
    per_run: dict[str, list[np.ndarray]] = {"auc": [], "acc": []}
    notes = []
    if counts is not None:
        for rec in arm.done:
            reps, why = _run_replicates(rec, y, sec.task, counts)
            if reps is None:
                notes.append(f"{rec.id}: {why}")
                continue
            per_run["auc"].append(reps["auc"])
            per_run["acc"].append(reps["acc"])
    arm.reps = {k: mean_replicates(v) for k, v in per_run.items()}
    arm.run_reps = {k: np.stack(v) if v else None for k, v in per_run.items()}
    arm.reps_runs = len(per_run["auc"])
    arm.stats["test_auc"]["ci"] = percentile_ci(arm.reps["auc"], level)
    arm.stats["test_acc"]["ci"] = percentile_ci(arm.reps["acc"], level)
    arm.stats["ci_runs"] = arm.reps_runs
    arm.stats["ci_notes"] = notes
    arm.params = None if sec.ds is None else config_params(arm.config, sec.ds)
    arm.top1 = imagenet_top1(str(arm.config.get("model")))


def _arm_stats(arm: Arm) -> dict:
    done = arm.done
    st: dict[str, Any] = {}
    for split in ("train", "val", "test"):
        for name in ("auc", "acc"):
            st[f"{split}_{name}"] = {**mean_std(metric(r, split, name) for r in done),
                                     "values": [metric(r, split, name) for r in done]}
    for name in ("auc", "acc"):
        st[f"gap_{name}"] = mean_std(gap(r, name) for r in done)
    return st


def _run_replicates(rec: RunRecord, y: np.ndarray, task: str, counts: np.ndarray) -> tuple[dict | None, str | None]:
    if rec.run_dir is None:
        return None, "no run directory"
    path = predictions_path(rec.run_dir, "test")
    try:
        scores = read_predictions(path)
    except (MedbenchError, OSError, ValueError) as e:
        return None, str(e)
    if len(scores) != len(y):
        return None, f"{path} has {len(scores)} rows, the test split {len(y)}"
    try:
        reps = bootstrap_replicates(y, scores, task, counts=counts, metrics=["auc", "acc"])
    except (ValueError, TypeError) as e:
        return None, f"{path}: {e}"
    return reps, None


def _sorted_arms(sec: Section) -> list[Arm]:
    def key(a: Arm):
        m = a.mean("test_auc")
        return (m is None, -(m or 0.0), a.text)

    return sorted(sec.arms.values(), key=key)


def _section_summary(sec: Section, level: float, seed: int) -> dict:
    arms = _sorted_arms(sec)
    ranked = [a for a in arms if a.mean("test_auc") is not None]
    best = ranked[0] if ranked else None
    by_val = [a for a in arms if a.mean("val_auc") is not None]
    best_val = max(by_val, key=lambda a: a.mean("val_auc")) if by_val else None
    arm_rows = [_arm_row(arm, rank, rank_shown=arm in ranked, best=arm is best, best_val=arm is best_val)
                for rank, arm in enumerate(arms, 1)]
    significance = [] if best is None else [_versus_best(best, arm, sec, level, seed) for arm in arms
                                            if arm is not best]
    return {"title": sec.title, "dataset": sec.dataset, "size": sec.size, "task": sec.task, "n_test": sec.n_test,
            "note": sec.note, "arms": arm_rows, "best_arm": best.text if best else None,
            "best_by_val": best_val.text if best_val else None, "significance": significance,
            "published": _published_summary(sec, best_val)}


def _arm_row(arm: Arm, rank: int, *, rank_shown: bool, best: bool, best_val: bool) -> dict:
    return {
        "arm": arm.text, "label": arm.label, "identity": label_text(arm.identity_label),
        "rank": rank if rank_shown else None, "best": best, "best_by_val": best_val,
        "model": arm.config.get("model"), "pretrained": arm.config.get("pretrained"),
        "truncate": arm.config.get("truncate"),
        "n_seeds": len(arm.done), "n_runs": len(arm.runs),
        "seeds": [r.config.get(SEED_KEY) for r in arm.done],
        "runs": [{"id": r.id, "seed": r.config.get(SEED_KEY), "status": r.status} for r in arm.runs],
        **{k: v for k, v in arm.stats.items()},
        "params": arm.params, "imagenet_top1": arm.top1.get("top1"), "imagenet_top1_source": arm.top1.get("source"),
    }


def _versus_best(best: Arm, arm: Arm, sec: Section, level: float, seed: int) -> dict:
    """The best arm's mean test AUC against another arm's: two-level bootstrap over seeds and test images
    (:func:`~medbench.study.stats.arm_difference`); no CI or p with fewer than 3 seeds in either arm."""
    m_best, m_arm = best.mean("test_auc"), arm.mean("test_auc")
    diff = arm_difference(best.run_reps.get("auc"), arm.run_reps.get("auc"), n_images=sec.n_test, seed=seed,
                          level=level)
    return {"best": best.text, "arm": arm.text,
            "diff": m_best - m_arm if m_best is not None and m_arm is not None else None,
            "ci": diff["ci"], "p": diff["p"], "caveat": diff["caveat"], "too_few": diff["too_few"],
            "test_images_only": diff["test_images_only"], "n_seeds_best": len(best.done),
            "n_seeds_arm": len(arm.done), "n_seeds_compared": [diff["n_seeds_a"], diff["n_seeds_b"]]}


def _published_summary(sec: Section, best_val: Arm | None) -> dict | None:
    """The published MedMNIST v2 rows beside our arm chosen by validation AUC, with its ranks among them."""
    rows = P.published_rows(sec.dataset)
    if not rows:
        return None
    published = {"rows": rows, "best": P.published_best(sec.dataset),
                 "ours": None if best_val is None else {
                     "arm": best_val.text, "n_seeds": len(best_val.done), "val_auc": best_val.mean("val_auc"),
                     "test_auc": best_val.stats["test_auc"], "test_acc": best_val.stats["test_acc"]},
                 "size": sec.size}
    if best_val is not None and best_val.mean("test_auc") is not None:
        ours = best_val.mean("test_auc")
        published["ours"]["auc_rank"] = 1 + sum(r["auc"] > ours for r in rows)
        ours_acc = best_val.mean("test_acc")
        published["ours"]["acc_rank"] = (1 + sum(r["acc"] > ours_acc for r in rows)
                                         if ours_acc is not None else None)
    return published


def _cross_dataset(sections: Sequence[Section]) -> dict:
    table: dict[str, dict[str, float]] = {}
    for sec in sections:
        for arm in sec.arms.values():
            m = arm.mean("test_auc")
            if m is not None:
                table.setdefault(label_text(arm.identity_label), {})[sec.title] = m
    multi = {k: v for k, v in table.items() if len(v) >= 2}
    return {"datasets": [s.title for s in sections], "table": table, "wilcoxon": wilcoxon_pairs(multi)}


def not_done(records: Sequence[RunRecord], sections: Sequence[Section]) -> list[dict]:
    """The runs without metrics (failed, missing, running, pending), with their dataset and arm."""
    where = {}
    for sec in sections:
        for arm in sec.arms.values():
            for r in arm.runs:
                where[r.id] = (sec.title, arm.text)
    rows = []
    for r in records:
        if r.status == "done" and r.metrics:
            continue
        status = r.status if r.status != "done" else "done, metrics missing"
        title, arm = where.get(r.id, (str(r.config.get("dataset")), "?"))
        rows.append({"id": r.id, "status": status, "dataset": title, "arm": arm, "seed": r.config.get(SEED_KEY),
                     "error": r.error})
    order = {s: i for i, s in enumerate(NOT_DONE_ORDER)}
    rows.sort(key=lambda x: (order.get(x["status"], len(order)), x["dataset"], x["arm"], str(x["seed"])))
    return rows
