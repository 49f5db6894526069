"""The CheXtransfer analyses (Ke et al., "CheXtransfer", CHIL 2021) of a study with several architectures:
parameters vs test AUC, the pretraining boost (pretrained - scratch), the parameter efficiency of truncation, and
Spearman's rho of ImageNet top-1 and of log-parameters against test AUC over architectures."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from medbench.study.grouping import Arm, Section, group_text, json_key
from medbench.study.stats import LEVEL, arm_difference, finite, paired_difference, spearman

PRIVATE = ("reps", "run_reps", "n_images")  # what the analyses use and the summary leaves out


def _difference(a: dict, b: dict, level: float, seed: int) -> dict:
    """CI and p of a's AUC - b's: the two-level bootstrap over seeds and test images when both rows carry
    ``run_reps`` ([seeds, B]); else the paired bootstrap of ``reps`` (the means' replicates: test images only)."""
    if a.get("run_reps") is not None and b.get("run_reps") is not None:
        d = arm_difference(a["run_reps"], b["run_reps"], n_images=a.get("n_images"), seed=seed, level=level)
        return {"ci": d["ci"], "p": d["p"], "caveat": d["caveat"], "too_few": d["too_few"]}
    d = paired_difference(a.get("reps"), b.get("reps"), level)
    return {**d, "caveat": None if d["p"] is None else "test images resampled only (no seed level)", "too_few": None}


def pretraining_boost(rows: Sequence[dict], level: float = LEVEL, seed: int = 0) -> list[dict]:
    """Pretrained - scratch mean test AUC for every group that has both.

    ``rows``: dicts with ``group`` (what is equal between the two, e.g. the config without ``pretrained``),
    ``pretrained`` (bool), ``auc`` (mean test AUC), and optionally ``model``, ``params``, and ``run_reps`` (each
    seed's AUC on shared test resamples, for the two-level CI / p of :func:`arm_difference`) or ``reps``
    (per-replicate mean AUC, for a paired CI / p over test images only). Returns one dict per group, in first-seen
    order.
    """
    groups: dict[Any, dict[bool, dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], {})[bool(r["pretrained"])] = r
    out = []
    for g, pair in groups.items():
        if True not in pair or False not in pair:
            continue
        pt, sc = pair[True], pair[False]
        boost = pt["auc"] - sc["auc"] if finite(pt.get("auc")) and finite(sc.get("auc")) else None
        diff = _difference(pt, sc, level, seed)
        out.append({"group": g, "model": pt.get("model", sc.get("model")),
                    "params": pt.get("params") if pt.get("params") is not None else sc.get("params"),
                    "auc_pretrained": pt.get("auc"), "auc_scratch": sc.get("auc"), "boost": boost,
                    "boost_ci": diff["ci"], "p": diff["p"], "caveat": diff["caveat"], "too_few": diff["too_few"]})
    return out


def truncation_efficiency(rows: Sequence[dict], level: float = LEVEL, seed: int = 0) -> list[dict]:
    """Truncated vs full model, per group: AUC and parameters, and what the removed parameters cost.

    ``rows``: dicts with ``group`` (equal between full and truncated), ``truncate`` (0 = full), ``auc``,
    ``params`` and optionally ``model`` and ``run_reps`` or ``reps`` (as in :func:`pretraining_boost`). For every
    truncated row of a group with a full row: ``delta_auc`` (truncated - full), ``auc_retained`` (truncated /
    full), ``params_removed``, the share of parameters removed, and ``delta_auc_per_mparam`` (delta AUC per million
    parameters removed).
    """
    full: dict[Any, dict] = {}
    for r in rows:
        if int(r.get("truncate") or 0) == 0:
            full.setdefault(r["group"], r)
    out = []
    for r in rows:
        k = int(r.get("truncate") or 0)
        if k == 0 or r["group"] not in full:
            continue
        f = full[r["group"]]
        auc_f, auc_t, p_f, p_t = f.get("auc"), r.get("auc"), f.get("params"), r.get("params")
        delta = auc_t - auc_f if finite(auc_t) and finite(auc_f) else None
        removed = p_f - p_t if p_f is not None and p_t is not None else None
        diff = _difference(r, f, level, seed)
        out.append({"group": r["group"], "model": r.get("model", f.get("model")), "truncate": k,
                    "params_full": p_f, "params_truncated": p_t, "params_removed": removed,
                    "share_removed": removed / p_f if removed is not None and p_f else None,
                    "auc_full": auc_f, "auc_truncated": auc_t, "delta_auc": delta,
                    "auc_retained": auc_t / auc_f if delta is not None and auc_f else None,
                    "delta_auc_per_mparam": delta / (removed / 1e6) if delta is not None and removed else None,
                    "delta_ci": diff["ci"], "p": diff["p"], "caveat": diff["caveat"], "too_few": diff["too_few"]})
    return out


def chextransfer(sections: Sequence[Section], axes: Sequence[str], level: float = LEVEL, seed: int = 0) -> dict:
    """Every CheXtransfer number of analysed sections (arms with stats, params, top-1 and replicates)."""
    models = sorted({str(a.config.get("model")) for s in sections for a in s.arms.values()})
    out: dict[str, Any] = {"applicable": len(models) >= 2, "architectures": models,
                           "has_pretrained_axis": "pretrained" in axes, "has_truncate_axis": "truncate" in axes}
    if not out["applicable"]:
        out["note"] = "one architecture only: the CheXtransfer analyses compare architectures"
        return out
    points, boosts, truncs, spear = [], [], [], []
    for sec in sections:
        rows = _arm_rows(sec)
        points += [{k: v for k, v in r.items() if k not in PRIVATE} for _, r in rows]
        if out["has_pretrained_axis"]:
            boosts += _by_other_settings(sec, rows, "pretrained", pretraining_boost, level, seed)
        if out["has_truncate_axis"]:
            truncs += _by_other_settings(sec, rows, "truncate", truncation_efficiency, level, seed)
        spear += _spearman_rows(sec, rows)
    points.sort(key=lambda p: (p["section"], -p["auc"]))
    out.update(points=points, boost=boosts, truncation=truncs, spearman=spear)
    return out


def _arm_rows(sec: Section) -> list[tuple[Arm, dict]]:
    """(arm, its point) for every arm of the section with a mean test AUC."""
    rows = []
    for arm in sec.arms.values():
        m = arm.mean("test_auc")
        if m is None:
            continue
        rows.append((arm, {"section": sec.title, "arm": arm.text, "model": arm.config.get("model"),
                           "pretrained": bool(arm.config.get("pretrained")),
                           "truncate": int(arm.config.get("truncate") or 0), "params": arm.params, "auc": m,
                           "imagenet_top1": arm.top1.get("top1"), "reps": arm.reps.get("auc"),
                           "run_reps": arm.run_reps.get("auc"), "n_images": sec.n_test}))
    return rows


def _spearman_rows(sec: Section, rows: list[tuple[Arm, dict]]) -> list[dict]:
    """Spearman over architectures, for each setting of everything else (pretrained, scratch, ...)."""
    groups: dict[str, list[dict]] = {}
    for a, r in rows:
        groups.setdefault(json_key({k: v for k, v in a.config.items() if k != "model"}), []).append(r)
    out = []
    for g, grows in groups.items():
        if len({r["model"] for r in grows}) < 2:
            continue
        setting = group_text(sec, g, drop=("model",))
        for what, xs in (("imagenet_top1", [r["imagenet_top1"] for r in grows]),
                         ("log10_params", [math.log10(r["params"]) if r["params"] else None for r in grows])):
            res = spearman(xs, [r["auc"] for r in grows])
            out.append({"section": sec.title, "setting": setting, "x": what,
                        "models": [r["model"] for r in grows], **res})
    return out


def _by_other_settings(sec: Section, rows: list, axis: str, analysis, level: float, seed: int) -> list[dict]:
    """``analysis`` (pretraining boost, truncation efficiency) within each setting of every axis but ``axis``."""
    grouped = [{**r, "group": json_key({k: v for k, v in a.config.items() if k != axis})} for a, r in rows]
    out = analysis(grouped, level, seed)
    for item in out:
        item["section"] = sec.title
        item["group"] = group_text(sec, item["group"], drop=(axis,))
    return out
