"""The study comparison report: ``OUT/report.html``, ``OUT/results.md`` and ``OUT/summary.json``.

``write_study_report(out_dir)`` reads a study's runs from its results store (``sqlite:///OUT/study.db`` unless
``db_url`` says otherwise) and compares them. ``OUT/results.csv`` (one row per run) stays as the runner wrote it.

What the report holds, per dataset (a dataset at one image size and one way of splitting it):

* **Leaderboard.** Runs are grouped into *arms*: every setting except ``seed`` (e.g. model=resnet18,
  augment=basic, pretrained=true). Per arm: the seeds that finished, test AUC and ACC as mean ± standard deviation
  over seeds (``ddof=1``), and a 95 % bootstrap CI of that mean. The bootstrap resamples the test images with one
  count matrix per dataset (:func:`medbench.metrics.resample_counts`) shared by every run scored on it, averages
  each replicate's metric over the arm's seeds and takes percentiles; it measures test-set sampling uncertainty of
  the mean over the seeds that were run, not the spread of training over other seeds (that is the ± std). Runs
  that failed, are missing or not finished are listed, never dropped silently.
* **Train vs test.** Train and test AUC / ACC and their gap (train - test), means over seeds.
* **Published MedMNIST v2 comparison** (:mod:`medbench.study.published`). Our best arm, chosen by mean
  *validation* AUC, beside the published methods.
* **Significance.** Paired bootstrap between the best arm (highest mean test AUC) and every other arm: the
  difference of mean-over-seeds test AUC on the same resamples, its 95 % CI, and the two-sided bootstrap p
  ``min(1, 2 min(P(d <= 0), P(d >= 0)))``. Across datasets, a Wilcoxon signed-rank test of every pair of arms
  run on at least two datasets (their per-dataset mean test AUC); with n datasets and no ties the smallest
  attainable exact two-sided p is ``2 / 2**n``, so with n <= 5 no p can fall below 0.05 (0.0625 at n = 5).
* **CheXtransfer analyses** (Ke et al., "CheXtransfer", CHIL 2021), when the study has several architectures:
  parameters vs test AUC (pretrained and scratch marked apart), the pretraining boost (pretrained - scratch) vs
  parameters when there is a ``pretrained`` axis, the parameter efficiency of truncation when there is a
  ``truncate`` axis, and Spearman's rho of ImageNet top-1 accuracy and of log-parameters against test AUC over
  architectures (separately for each remaining setting, e.g. pretrained and scratch).

The HTML is self-contained (inline PNG figures, no script); ``results.md`` has the same tables in Markdown;
``summary.json`` every number shown.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from medbench import metrics
from medbench.errors import MedbenchError
from medbench.study import published as P

REPORT = "report.html"
MARKDOWN = "results.md"
SUMMARY = "summary.json"
LEVEL = 0.95
SEED_KEY = "seed"
SECTION_KEYS = ("dataset", "size")  # constant within a dataset section: left out of the arm labels there
NOT_DONE_ORDER = ("failed", "missing", "running", "pending")
STUDY_CSS = "table.study th{text-align:center;vertical-align:bottom}table.study td.t{text-align:left}"


# ---- small numeric helpers (pure) ------------------------------------------------------------------------------

def _finite(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def mean_std(values: Iterable[Any]) -> dict:
    """{"n", "mean", "std"} of the finite values: the sample standard deviation (``ddof=1``), None below 2 values."""
    vals = [float(v) for v in values if _finite(v)]
    n = len(vals)
    if not n:
        return {"n": 0, "mean": None, "std": None}
    return {"n": n, "mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)) if n > 1 else None}


def percentile_ci(replicates: np.ndarray | None, level: float = LEVEL) -> list[float] | None:
    """:func:`medbench.metrics.percentile_ci`, None for a missing replicate set."""
    return None if replicates is None else metrics.percentile_ci(replicates, level)


def bootstrap_p(diffs: np.ndarray | None) -> float | None:
    """:func:`medbench.metrics.bootstrap_p` (as in ``compare_predictions``), None for missing replicates."""
    return None if diffs is None else metrics.bootstrap_p(diffs)


def mean_replicates(per_run: Sequence[np.ndarray]) -> np.ndarray | None:
    """Per replicate, the mean over runs ([runs, B] -> [B]); None without runs."""
    if not per_run:
        return None
    return np.mean(np.stack([np.asarray(r, dtype=np.float64) for r in per_run]), axis=0)


def paired_difference(reps_a: np.ndarray | None, reps_b: np.ndarray | None, level: float = LEVEL) -> dict:
    """CI and p of A - B from replicates computed on the same resamples."""
    if reps_a is None or reps_b is None:
        return {"ci": None, "p": None}
    d = np.asarray(reps_a, dtype=np.float64) - np.asarray(reps_b, dtype=np.float64)
    return {"ci": percentile_ci(d, level), "p": bootstrap_p(d)}


def min_wilcoxon_p(n: int) -> float:
    """The smallest exact two-sided Wilcoxon signed-rank p with ``n`` non-zero, untied differences: 2 / 2**n."""
    return min(1.0, 2.0 / 2 ** n) if n > 0 else 1.0


def spearman(x: Sequence[Any], y: Sequence[Any]) -> dict:
    """Spearman's rho and its p-value (:func:`scipy.stats.spearmanr`) over the pairs where both are finite.

    {"n", "rho", "p", "note"}: rho and p are None with fewer than 3 pairs or a constant side.
    """
    from scipy.stats import spearmanr

    pairs = [(float(a), float(b)) for a, b in zip(x, y) if _finite(a) and _finite(b)]
    n = len(pairs)
    if n < 3:
        return {"n": n, "rho": None, "p": None, "note": f"needs at least 3 architectures with values (has {n})"}
    xs, ys = zip(*pairs)
    if len(set(xs)) < 2 or len(set(ys)) < 2:
        return {"n": n, "rho": None, "p": None, "note": "one side is constant"}
    res = spearmanr(xs, ys)
    note = "p from scipy's t approximation; rough for fewer than 10 architectures" if n < 10 else None
    return {"n": n, "rho": float(res.statistic), "p": float(res.pvalue), "note": note}


def pretraining_boost(rows: Sequence[dict], level: float = LEVEL) -> list[dict]:
    """Pretrained - scratch mean test AUC for every group that has both.

    ``rows``: dicts with ``group`` (what is equal between the two, e.g. the config without ``pretrained``),
    ``pretrained`` (bool), ``auc`` (mean test AUC), and optionally ``model``, ``params`` and ``reps`` (per-replicate
    mean AUC on shared resamples, for a paired CI / p). Returns one dict per group, in first-seen order.
    """
    groups: dict[Any, dict[bool, dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], {})[bool(r["pretrained"])] = r
    out = []
    for g, pair in groups.items():
        if True not in pair or False not in pair:
            continue
        pt, sc = pair[True], pair[False]
        boost = pt["auc"] - sc["auc"] if _finite(pt.get("auc")) and _finite(sc.get("auc")) else None
        diff = paired_difference(pt.get("reps"), sc.get("reps"), level)
        out.append({"group": g, "model": pt.get("model", sc.get("model")),
                    "params": pt.get("params") if pt.get("params") is not None else sc.get("params"),
                    "auc_pretrained": pt.get("auc"), "auc_scratch": sc.get("auc"), "boost": boost,
                    "boost_ci": diff["ci"], "p": diff["p"]})
    return out


def truncation_efficiency(rows: Sequence[dict], level: float = LEVEL) -> list[dict]:
    """Truncated vs full model, per group: AUC and parameters, and what the removed parameters cost.

    ``rows``: dicts with ``group`` (equal between full and truncated), ``truncate`` (0 = full), ``auc``,
    ``params`` and optionally ``model`` and ``reps``. For every truncated row of a group with a full row:
    ``delta_auc`` (truncated - full), ``auc_retained`` (truncated / full), ``params_removed``, the share of
    parameters removed, and ``delta_auc_per_mparam`` (delta AUC per million parameters removed).
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
        delta = auc_t - auc_f if _finite(auc_t) and _finite(auc_f) else None
        removed = p_f - p_t if p_f is not None and p_t is not None else None
        diff = paired_difference(r.get("reps"), f.get("reps"), level)
        out.append({"group": r["group"], "model": r.get("model", f.get("model")), "truncate": k,
                    "params_full": p_f, "params_truncated": p_t, "params_removed": removed,
                    "share_removed": removed / p_f if removed is not None and p_f else None,
                    "auc_full": auc_f, "auc_truncated": auc_t, "delta_auc": delta,
                    "auc_retained": auc_t / auc_f if delta is not None and auc_f else None,
                    "delta_auc_per_mparam": delta / (removed / 1e6) if delta is not None and removed else None,
                    "delta_ci": diff["ci"], "p": diff["p"]})
    return out


def wilcoxon_pairs(table: dict[str, dict[str, float]], min_datasets: int = 2) -> list[dict]:
    """Wilcoxon signed-rank tests (:func:`scipy.stats.wilcoxon`, two-sided) of every pair of arms over the
    datasets both ran on. ``table``: arm -> {dataset: mean test AUC}. Pairs with fewer than ``min_datasets``
    shared datasets are left out. Each result says the smallest p its n could reach."""
    from scipy.stats import wilcoxon

    names = list(table)
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            common = [d for d in table[a] if d in table[b] and _finite(table[a][d]) and _finite(table[b][d])]
            if len(common) < min_datasets:
                continue
            va = np.array([table[a][d] for d in common], dtype=np.float64)
            vb = np.array([table[b][d] for d in common], dtype=np.float64)
            diff = va - vb
            n = len(common)
            stat = p = None
            note = None
            if np.all(diff == 0):
                note = "identical AUC on every dataset"
            else:
                try:
                    res = wilcoxon(va, vb)
                    stat, p = float(res.statistic), float(res.pvalue)
                except ValueError as e:
                    note = str(e)
            floor = min_wilcoxon_p(n)
            out.append({"a": a, "b": b, "datasets": common, "n": n, "a_wins": int(np.sum(diff > 0)),
                        "b_wins": int(np.sum(diff < 0)), "median_diff": float(np.median(diff)),
                        "statistic": stat, "p": p, "min_p": floor, "can_reach_005": floor < 0.05,
                        "too_few": None if floor < 0.05 else
                        f"n = {n} datasets: the exact two-sided p cannot go below {floor:.4g} (2/2^n), so p < 0.05 "
                        f"is impossible whatever the data", "note": note})
    return out


# ---- architecture facts ------------------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _count_params_cached(model: str, num_classes: int, in_chans: int, img_size: int, pretrained: bool,
                         truncate: int, extra: tuple) -> int | None:
    import torch

    from medbench.models import create_model
    from medbench.models.registry import num_params

    kwargs = dict(extra)
    for device in ("meta", "cpu"):  # meta: no memory, no initialisation; cpu if a builder cannot run on meta
        try:
            with torch.device(device), torch.no_grad():
                net = create_model(model, num_classes=num_classes, in_chans=in_chans, img_size=img_size,
                                   pretrained=pretrained, truncate=truncate, load_weights=False, **kwargs)
            return int(num_params(net))
        except Exception:  # noqa: BLE001 - an unbuildable model has no count; the report says n/a
            continue
    return None


def count_params(model: str, *, num_classes: int = 2, in_chans: int = 3, img_size: int = 28,
                 pretrained: bool = False, truncate: int = 0, **kwargs) -> int | None:
    """Trainable-parameter count of a registry model as a run builds it (built once per distinct setting, on the
    meta device, without weights). None for models the registry cannot build (e.g. scikit-learn baselines)."""
    return _count_params_cached(model, int(num_classes), int(in_chans), int(img_size), bool(pretrained),
                                int(truncate), tuple(sorted(kwargs.items())))


def imagenet_top1(model: str) -> dict:
    """ImageNet-1k top-1 accuracy (%) of the weights ``--pretrained`` loads for ``model``: {"top1", "source"}.

    torchvision weights: their metadata (``meta["_metrics"]["ImageNet-1K"]["acc@1"]``). timm weights: the table in
    :mod:`medbench.study.published` (timm's results-imagenet.csv) for timm's default pretrained tag. None (with
    the reason in ``source``) for architectures without ImageNet weights or without a published value.
    """
    from medbench.models import model_entry

    try:
        spec = model_entry(model).pretrained
    except MedbenchError:
        return {"top1": None, "source": f"'{model}' is not a registry model"}
    if not spec:
        return {"top1": None, "source": "no ImageNet weights for this architecture"}
    kind, ref = spec.split(":", 1)
    if kind == "torchvision":
        import torchvision.models as tvm

        enum_name, member = ref.split(".", 1)
        try:
            weights = getattr(getattr(tvm, enum_name), member)
            value = weights.meta["_metrics"]["ImageNet-1K"]["acc@1"]
        except (AttributeError, KeyError) as e:
            return {"top1": None, "source": f"torchvision {ref}: no accuracy metadata ({e})"}
        return {"top1": float(value), "source": f"torchvision {ref} metadata (acc@1)"}
    if kind == "timm":
        try:
            import timm

            cfg = timm.models.get_pretrained_cfg(ref)
            tag = getattr(cfg, "tag", None) if cfg is not None else None
        except Exception:  # noqa: BLE001 - an old timm without the name: look up the bare name
            tag = None
        key = f"{ref}.{tag}" if tag else ref
        hit = P.TIMM_IMAGENET_TOP1.get(key)
        if hit is None:
            return {"top1": None, "source": f"timm {key}: not in timm's results-imagenet.csv as shipped"}
        return {"top1": float(hit[0]), "source": f"timm results-imagenet.csv, {key} at {hit[1]} px"}
    return {"top1": None, "source": f"unknown weights source '{spec}'"}


# ---- loading the runs --------------------------------------------------------------------------------------------

@dataclass
class RunRecord:
    id: str
    status: str  # done, failed, running, pending, or missing (in the study, not in the store)
    config: dict  # the resolved RunConfig as JSON
    axes: dict
    metrics: dict | None = None
    run_dir: Path | None = None
    error: str | None = None
    seconds: float | None = None
    study: str | None = None


def _read_metrics(row: dict) -> dict | None:
    """metrics.json of the run directory when readable (it is what the predictions belong to), else the store's."""
    run_dir = row.get("run_dir")
    if run_dir:
        path = Path(run_dir) / "metrics.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass
    if row.get("metrics"):
        try:
            return json.loads(row["metrics"])
        except ValueError:
            return None
    return None


def load_records(out_dir: str | os.PathLike, *, study=None, db_url: str | None = None
                 ) -> tuple[list[RunRecord], list[str], str, str]:
    """The runs to report (records, axis names, study name, database URL for display)."""
    from sqlalchemy.engine import make_url

    from medbench.study.grid import canonical_json
    from medbench.study.store import Store, default_url

    url = db_url or default_url(out_dir)
    with Store(url, create=False) as store:
        rows = store.rows() if study is None else store.rows(study.ids)
    shown_url = make_url(url).render_as_string(hide_password=True)
    records: list[RunRecord] = []
    by_id = {r["id"]: r for r in rows}

    def record(row: dict, axes: dict, config: dict) -> RunRecord:
        status = row.get("status") or "missing"
        return RunRecord(id=row["id"], status=status, config=config, axes=axes,
                         metrics=_read_metrics(row) if status == "done" else None,
                         run_dir=Path(row["run_dir"]) if row.get("run_dir") else None,
                         error=row.get("error"), seconds=row.get("seconds"), study=row.get("study"))

    if study is not None:
        for run in study.runs:
            row = by_id.get(run.id, {"id": run.id, "status": "missing"})
            records.append(record(row, dict(run.axes), json.loads(canonical_json(run.config))))
        return records, [a for a in study.axes], study.name, shown_url
    axes: list[str] = []
    for row in rows:
        try:
            row_axes = json.loads(row["axes"]) if row.get("axes") else {}
        except ValueError:
            row_axes = {}
        for k in row_axes:
            if k not in axes:
                axes.append(k)
        records.append(record(row, row_axes, json.loads(row["config"])))
    # readable order: dataset first, seed last (the store keeps axes as sorted JSON)
    axes.sort(key=lambda k: (k != "dataset", k == SEED_KEY))
    names = sorted({r.study for r in records if r.study})
    return records, axes, ", ".join(names) or "study", shown_url


# ---- grouping ------------------------------------------------------------------------------------------------

def _json_key(d: dict) -> str:
    return json.dumps(d, sort_keys=True, separators=(",", ":"), default=str)


def _value_text(v: Any) -> str:
    if isinstance(v, str):
        return v
    return json.dumps(v, default=str)


def _label_text(label: dict) -> str:
    return ", ".join(f"{k}={_value_text(v)}" for k, v in label.items()) or "(all runs)"


def _source_opts(config: dict) -> dict:
    from medbench.config import resolve_config
    from medbench.run import source_options

    try:
        return source_options(resolve_config(dict(config)))
    except Exception:  # noqa: BLE001 - an unresolvable config still has its own section
        return {}


@dataclass
class Arm:
    key: str
    config: dict  # the arm's config without seed
    label: dict  # the axes that set it apart, without seed and section keys
    identity_label: dict  # the same with the section keys, except dataset
    identity: str  # config without seed, dataset and source options: the arm across datasets
    runs: list[RunRecord] = field(default_factory=list)
    reps: dict[str, np.ndarray | None] = field(default_factory=dict)
    reps_runs: int = 0
    stats: dict = field(default_factory=dict)
    params: int | None = None
    top1: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        return _label_text(self.label)

    @property
    def done(self) -> list[RunRecord]:
        return [r for r in self.runs if r.status == "done" and r.metrics]


@dataclass
class Section:
    key: tuple
    dataset: str
    size: Any
    title: str
    arms: dict[str, Arm] = field(default_factory=dict)
    task: str | None = None
    n_test: int | None = None
    note: str | None = None
    ds: Any = None


def _metric(rec: RunRecord, split: str, name: str) -> float | None:
    v = ((rec.metrics or {}).get(split) or {}).get(name)
    return float(v) if _finite(v) else None


def _gap(rec: RunRecord, name: str) -> float | None:
    gap = (rec.metrics or {}).get("gap")
    if isinstance(gap, dict) and _finite(gap.get(name)):
        return float(gap[name])
    tr, te = _metric(rec, "train", name), _metric(rec, "test", name)
    return tr - te if tr is not None and te is not None else None


def group_runs(records: Sequence[RunRecord], axes: Sequence[str]) -> list[Section]:
    """Sections (dataset, size, split options) holding arms (config without seed), in first-seen order."""
    sections: dict[tuple, Section] = {}
    label_axes = [a for a in axes if a != SEED_KEY]
    for rec in records:
        cfg = rec.config
        opts = _source_opts(cfg)
        skey = (cfg.get("dataset"), cfg.get("size"), _json_key(opts))
        if skey not in sections:
            sections[skey] = Section(key=skey, dataset=str(cfg.get("dataset")), size=cfg.get("size"), title="")
        sec = sections[skey]
        arm_cfg = {k: v for k, v in cfg.items() if k != SEED_KEY}
        akey = _json_key(arm_cfg)
        if akey not in sec.arms:
            full_label = {a: rec.axes[a] for a in label_axes if a in rec.axes}
            if not full_label:
                full_label = {"model": cfg.get("model")}
            label = {k: v for k, v in full_label.items() if k not in SECTION_KEYS} or {"model": cfg.get("model")}
            ident_label = {k: v for k, v in full_label.items() if k != "dataset"} or {"model": cfg.get("model")}
            ident_cfg = {k: v for k, v in arm_cfg.items() if k != "dataset" and k not in opts}
            sec.arms[akey] = Arm(key=akey, config=arm_cfg, label=label, identity_label=ident_label,
                                 identity=_json_key(ident_cfg))
        sec.arms[akey].runs.append(rec)
    out = sorted(sections.values(), key=lambda s: (s.dataset, str(s.size), s.key[2]))
    # titles: the dataset, with the size when it is not MedMNIST's 28 px or the dataset comes at several sizes
    per_dataset: dict[str, int] = {}
    for sec in out:
        per_dataset[sec.dataset] = per_dataset.get(sec.dataset, 0) + 1
    seen: dict[str, int] = {}
    for sec in out:
        title = sec.dataset
        if sec.size not in (None, 28) or per_dataset[sec.dataset] > 1:
            title = f"{sec.dataset} ({sec.size} px)"
        seen[title] = seen.get(title, 0) + 1
        sec.title = title if seen[title] == 1 else f"{title} #{seen[title]}"
        _disambiguate(sec)
    return out


def _disambiguate(sec: Section) -> None:
    """Arms whose axes labels coincide (several studies in one store) get the config keys that differ added."""
    by_text: dict[str, list[Arm]] = {}
    for arm in sec.arms.values():
        by_text.setdefault(arm.text, []).append(arm)
    for arms in by_text.values():
        if len(arms) < 2:
            continue
        keys = sorted({k for a in arms for k in a.config if len({_json_key({"v": b.config.get(k)})
                                                                 for b in arms}) > 1})
        for a in arms:
            extra = {k: a.config.get(k) for k in keys if k not in a.label}
            a.label = {**a.label, **extra}
            a.identity_label = {**a.identity_label, **extra}


# ---- the analysis --------------------------------------------------------------------------------------------

def _load_section_data(sec: Section, data_dir) -> None:
    from medbench.config import resolve_config
    from medbench.run import dataset_for

    first = next(iter(sec.arms.values())).runs[0]
    try:
        cfg = resolve_config(dict(first.config))
        sec.ds = dataset_for(cfg, data_dir)
        sec.task = sec.ds.task
        sec.n_test = len(sec.ds["test"])
    except Exception as e:  # noqa: BLE001 - without labels the report still shows metrics.json means
        sec.note = f"test labels could not be loaded ({type(e).__name__}: {e}); no bootstrap CIs or p-values"
        sec.ds = None


def _run_replicates(rec: RunRecord, y: np.ndarray, task: str, counts: np.ndarray) -> tuple[dict | None, str | None]:
    from medbench.compare import read_predictions
    from medbench.metrics import bootstrap_replicates

    if rec.run_dir is None:
        return None, "no run directory"
    path = rec.run_dir / "predictions" / "test.csv"
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


def _arm_stats(arm: Arm) -> dict:
    done = arm.done
    st: dict[str, Any] = {}
    for split in ("train", "val", "test"):
        for name in ("auc", "acc"):
            st[f"{split}_{name}"] = {**mean_std(_metric(r, split, name) for r in done),
                                     "values": [_metric(r, split, name) for r in done]}
    for name in ("auc", "acc"):
        st[f"gap_{name}"] = mean_std(_gap(r, name) for r in done)
    return st


def _arm_params(arm: Arm, sec: Section) -> int | None:
    if sec.ds is None:
        return None
    from medbench.config import resolve_config
    from medbench.run import build_task, input_channels

    try:
        cfg = resolve_config({**arm.config, SEED_KEY: 0})
        task = build_task(cfg, sec.ds)
        extra = {"input_adapt": cfg.input_adapt, "input_size": cfg.input_size}
        if cfg.stem != "auto":
            extra["stem"] = cfg.stem
        return count_params(cfg.model, num_classes=task.num_outputs, in_chans=input_channels(cfg, sec.ds),
                            img_size=cfg.size, pretrained=bool(cfg.pretrained or cfg.weights),
                            truncate=cfg.truncate, **extra)
    except Exception:  # noqa: BLE001 - n/a in the report
        return None


def _stat(st: dict, name: str) -> float | None:
    return (st.get(name) or {}).get("mean")


def _sorted_arms(sec: Section) -> list[Arm]:
    def key(a: Arm):
        m = _stat(a.stats, "test_auc")
        return (m is None, -(m or 0.0), a.text)

    return sorted(sec.arms.values(), key=key)


def analyse(records: Sequence[RunRecord], axes: Sequence[str], *, data_dir=None, replicates: int = 1000,
            seed: int = 0, level: float = LEVEL) -> tuple[dict, list[Section]]:
    """Every number of the report as a JSON-ready dict, and the sections (with replicates) for the figures."""
    from medbench.metrics import resample_counts

    if replicates < 1:
        raise MedbenchError(f"replicates must be >= 1 (got {replicates})")
    sections = group_runs(records, axes)
    out_sections = []
    for sec in sections:
        if any(a.done for a in sec.arms.values()):
            _load_section_data(sec, data_dir)
        counts = y = None
        if sec.ds is not None:
            y = sec.ds["test"].labels.cpu().numpy()
            y = y.reshape(len(y), -1)
            counts = resample_counts(len(y), replicates, seed)
        for arm in sec.arms.values():
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
            arm.reps_runs = len(per_run["auc"])
            arm.stats["test_auc"]["ci"] = percentile_ci(arm.reps["auc"], level)
            arm.stats["test_acc"]["ci"] = percentile_ci(arm.reps["acc"], level)
            arm.stats["ci_runs"] = arm.reps_runs
            arm.stats["ci_notes"] = notes
            arm.params = _arm_params(arm, sec)
            arm.top1 = imagenet_top1(str(arm.config.get("model")))
        out_sections.append(_section_summary(sec, level))
    summary = {"sections": out_sections}
    summary["cross_dataset"] = _cross_dataset(sections)
    summary["chextransfer"] = _chextransfer(sections, axes, level)
    return summary, sections


def _section_summary(sec: Section, level: float) -> dict:
    arms = _sorted_arms(sec)
    ranked = [a for a in arms if _stat(a.stats, "test_auc") is not None]
    best = ranked[0] if ranked else None
    by_val = [a for a in arms if _stat(a.stats, "val_auc") is not None]
    best_val = max(by_val, key=lambda a: _stat(a.stats, "val_auc")) if by_val else None
    arm_rows = []
    for rank, arm in enumerate(arms, 1):
        arm_rows.append({
            "arm": arm.text, "label": arm.label, "identity": _label_text(arm.identity_label),
            "rank": rank if arm in ranked else None, "best": arm is best, "best_by_val": arm is best_val,
            "model": arm.config.get("model"), "pretrained": arm.config.get("pretrained"),
            "truncate": arm.config.get("truncate"),
            "n_seeds": len(arm.done), "n_runs": len(arm.runs),
            "seeds": [r.config.get(SEED_KEY) for r in arm.done],
            "runs": [{"id": r.id, "seed": r.config.get(SEED_KEY), "status": r.status} for r in arm.runs],
            **{k: v for k, v in arm.stats.items()},
            "params": arm.params, "imagenet_top1": arm.top1.get("top1"), "imagenet_top1_source": arm.top1.get("source"),
        })
    significance = []
    if best is not None:
        for arm in arms:
            if arm is best:
                continue
            m_best, m_arm = _stat(best.stats, "test_auc"), _stat(arm.stats, "test_auc")
            diff = paired_difference(best.reps.get("auc"), arm.reps.get("auc"), level)
            significance.append({"best": best.text, "arm": arm.text,
                                 "diff": m_best - m_arm if m_best is not None and m_arm is not None else None,
                                 "ci": diff["ci"], "p": diff["p"], "n_seeds_best": len(best.done),
                                 "n_seeds_arm": len(arm.done)})
    published = None
    rows = P.published_rows(sec.dataset)
    if rows:
        published = {"rows": rows, "best": P.published_best(sec.dataset),
                     "ours": None if best_val is None else {
                         "arm": best_val.text, "n_seeds": len(best_val.done),
                         "val_auc": _stat(best_val.stats, "val_auc"),
                         "test_auc": best_val.stats["test_auc"], "test_acc": best_val.stats["test_acc"]},
                     "size": sec.size}
        if best_val is not None and _stat(best_val.stats, "test_auc") is not None:
            ours = _stat(best_val.stats, "test_auc")
            published["ours"]["auc_rank"] = 1 + sum(r["auc"] > ours for r in rows)
            ours_acc = _stat(best_val.stats, "test_acc")
            published["ours"]["acc_rank"] = (1 + sum(r["acc"] > ours_acc for r in rows)
                                             if ours_acc is not None else None)
    return {"title": sec.title, "dataset": sec.dataset, "size": sec.size, "task": sec.task, "n_test": sec.n_test,
            "note": sec.note, "arms": arm_rows, "best_arm": best.text if best else None,
            "best_by_val": best_val.text if best_val else None, "significance": significance,
            "published": published}


def _cross_dataset(sections: Sequence[Section]) -> dict:
    table: dict[str, dict[str, float]] = {}
    for sec in sections:
        for arm in sec.arms.values():
            m = _stat(arm.stats, "test_auc")
            if m is not None:
                table.setdefault(_label_text(arm.identity_label), {})[sec.title] = m
    multi = {k: v for k, v in table.items() if len(v) >= 2}
    return {"datasets": [s.title for s in sections], "table": table, "wilcoxon": wilcoxon_pairs(multi)}


def _chextransfer(sections: Sequence[Section], axes: Sequence[str], level: float) -> dict:
    models = sorted({str(a.config.get("model")) for s in sections for a in s.arms.values()})
    out: dict[str, Any] = {"applicable": len(models) >= 2, "architectures": models,
                           "has_pretrained_axis": "pretrained" in axes, "has_truncate_axis": "truncate" in axes}
    if not out["applicable"]:
        out["note"] = "one architecture only: the CheXtransfer analyses compare architectures"
        return out
    points, boosts, truncs, spear = [], [], [], []
    for sec in sections:
        rows = []
        for arm in sec.arms.values():
            m = _stat(arm.stats, "test_auc")
            if m is None:
                continue
            row = {"section": sec.title, "arm": arm.text, "model": arm.config.get("model"),
                   "pretrained": bool(arm.config.get("pretrained")), "truncate": int(arm.config.get("truncate") or 0),
                   "params": arm.params, "auc": m, "imagenet_top1": arm.top1.get("top1"),
                   "reps": arm.reps.get("auc")}
            rows.append((arm, row))
            points.append({k: v for k, v in row.items() if k != "reps"})
        if out["has_pretrained_axis"]:
            boosts += _by_other_settings(sec, rows, "pretrained", pretraining_boost, level)
        if out["has_truncate_axis"]:
            truncs += _by_other_settings(sec, rows, "truncate", truncation_efficiency, level)
        # Spearman over architectures, for each setting of everything else (pretrained, scratch, ...)
        groups: dict[str, list[dict]] = {}
        for a, r in rows:
            g = _json_key({k: v for k, v in a.config.items() if k != "model"})
            groups.setdefault(g, []).append(r)
        for g, grows in groups.items():
            if len({r["model"] for r in grows}) < 2:
                continue
            setting = _group_text(sec, g, drop=("model",))
            for what, xs in (("imagenet_top1", [r["imagenet_top1"] for r in grows]),
                             ("log10_params", [math.log10(r["params"]) if r["params"] else None for r in grows])):
                res = spearman(xs, [r["auc"] for r in grows])
                spear.append({"section": sec.title, "setting": setting, "x": what,
                              "models": [r["model"] for r in grows], **res})
    points.sort(key=lambda p: (p["section"], -p["auc"]))
    out.update(points=points, boost=boosts, truncation=truncs, spearman=spear)
    return out


def _by_other_settings(sec: Section, rows: list, axis: str, analysis, level: float) -> list[dict]:
    """``analysis`` (pretraining boost, truncation efficiency) within each setting of every axis but ``axis``."""
    grouped = [{**r, "group": _json_key({k: v for k, v in a.config.items() if k != axis})} for a, r in rows]
    out = analysis(grouped, level)
    for item in out:
        item["section"] = sec.title
        item["group"] = _group_text(sec, item["group"], drop=(axis,))
    return out


def _group_text(sec: Section, gkey: str, drop: Sequence[str]) -> str:
    """A readable name for a group of arms: the axes label values its arms share, without ``drop``."""
    cfg = json.loads(gkey)
    labels = [a.label for a in sec.arms.values()
              if all(a.config.get(k) == v for k, v in cfg.items())]
    if not labels:
        return "(all)"
    shared = {k: v for k, v in labels[0].items() if k not in drop and all(lb.get(k) == v for lb in labels)}
    return _label_text(shared) if shared else "(all)"


# ---- formatting ----------------------------------------------------------------------------------------------

def _f(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{float(v):.{digits}f}"


def _pm(st: dict | None) -> str:
    st = st or {}
    if st.get("mean") is None:
        return "n/a"
    return _f(st["mean"]) if st.get("std") is None else f"{_f(st['mean'])} ± {_f(st['std'])}"


def _ci(ci: Sequence[float] | None) -> str:
    if not ci:
        return "n/a"
    return f"{_f(ci[0])} to {_f(ci[1])}" if min(ci) < 0 else f"{_f(ci[0])}–{_f(ci[1])}"


def _p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _signed(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.3f}"


def _params(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n / 1e3:.1f} k"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


@dataclass
class Table:
    """One table for both outputs: header and rows of plain text. ``strong``: rows in bold (the best arm);
    ``bold``: single cells (row, column) in bold; ``text_cols``: left-aligned columns (numbers align right)."""
    id: str
    header: list[str]
    rows: list[list[str]]
    strong: list[bool] = field(default_factory=list)
    first_attr: str = "arm"  # data attribute naming the first cell (for tools and tests)
    bold: set = field(default_factory=set)
    text_cols: tuple = (0,)

    def _is_bold(self, i: int, j: int) -> bool:
        return (i < len(self.strong) and self.strong[i]) or (i, j) in self.bold

    def html(self) -> str:
        from medbench.report.run_report import _e, _table

        rows = []
        for i, r in enumerate(self.rows):
            cells = []
            for j, c in enumerate(r):
                text = f"<b>{_e(c)}</b>" if self._is_bold(i, j) else _e(c)
                attrs = (f' data-{self.first_attr}="{_e(c)}"' if j == 0 else "") + \
                    (' class="t"' if j in self.text_cols else "")
                cells.append(f"<td{attrs}>{text}</td>" if attrs else text)
            rows.append(cells)
        return _table([_e(h) for h in self.header], rows, self.id, css_class="study")

    def markdown(self) -> str:
        def cell(c: str, bold: bool) -> str:
            c = str(c).replace("|", "\\|").replace("\n", " ")
            return f"**{c}**" if bold and c else c

        lines = ["| " + " | ".join(cell(h, False) for h in self.header) + " |",
                 "|" + "|".join(":--" if j in self.text_cols else "--:" for j in range(len(self.header))) + "|"]
        for i, r in enumerate(self.rows):
            lines.append("| " + " | ".join(cell(c, self._is_bold(i, j)) for j, c in enumerate(r)) + " |")
        return "\n".join(lines)


@dataclass
class Block:
    """A piece of a section: a heading, a paragraph, a note, a table or a figure (figures: HTML only)."""
    kind: str
    text: str = ""
    table: Table | None = None
    figure: Any = None
    name: str = ""


def _leaderboard_blocks(sec: dict, secobj: Section, level: float, replicates: int) -> list[Block]:
    blocks = [Block("h3", f"{sec['title']}"
                    + (f" — test n = {sec['n_test']}, {sec['task']}" if sec.get("n_test") else ""))]
    if sec.get("note"):
        blocks.append(Block("note", sec["note"]))
    rows, strong = [], []
    for a in sec["arms"]:
        rows.append([a["arm"], f"{a['n_seeds']}/{a['n_runs']}", _pm(a["test_auc"]), _ci(a["test_auc"].get("ci")),
                     _pm(a["test_acc"]), _ci(a["test_acc"].get("ci")), _pm(a["val_auc"]),
                     str(a["rank"]) if a["rank"] else "—"])
        strong.append(bool(a["best"]))
    blocks.append(Block("table", table=Table(f"leaderboard-{_slug(sec['title'])}",
                                             ["arm", "seeds done/runs", "test AUC mean ± std",
                                              f"AUC {int(level * 100)} % CI", "test ACC mean ± std",
                                              f"ACC {int(level * 100)} % CI", "val AUC", "rank"], rows, strong)))
    notes = [n for a in sec["arms"] for n in a.get("ci_notes", [])]
    if notes:
        blocks.append(Block("note", "Left out of the CIs (no usable test predictions): " + "; ".join(notes)))
    fig = _forest_figure(sec, secobj)
    if fig is not None:
        blocks.append(Block("figure", figure=fig, name=f"leaderboard-{_slug(sec['title'])}",
                            text=f"{sec['title']}: mean test AUC per arm with its {int(level * 100)} % bootstrap CI "
                                 f"(bars) and each seed's test AUC (dots)"))
    return blocks


def _forest_figure(sec: dict, secobj: Section):
    from medbench.report import figures as F

    arms = [a for a in sec["arms"] if a["test_auc"]["mean"] is not None]
    if not arms:
        return None
    fig = F.new_figure(8.0, 1.2 + 0.38 * len(arms))
    ax = fig.add_subplot()
    ys = np.arange(len(arms))[::-1]
    for y, a in zip(ys, arms):
        m = a["test_auc"]["mean"]
        ci = a["test_auc"].get("ci")
        color = "#c0392b" if a["best"] else "#2b5d9b"
        if ci:
            ax.plot(ci, [y, y], color=color, lw=2.2, solid_capstyle="butt")
        ax.plot([m], [y], "D", color=color, ms=6)
        vals = [v for v in a["test_auc"]["values"] if v is not None]
        ax.plot(vals, [y] * len(vals), "o", mfc="none", mec="#555", ms=4, alpha=0.8)
    ax.set_yticks(ys)
    ax.set_yticklabels([a["arm"] if len(a["arm"]) <= 64 else a["arm"][:63] + "…" for a in arms], fontsize=8)
    ax.set_xlabel("test AUC")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(sec["title"], fontsize=10)
    return fig


def _gap_blocks(sec: dict) -> list[Block]:
    arms = [a for a in sec["arms"] if a["n_seeds"]]
    rows = []
    for a in arms:
        rows.append([a["arm"], str(a["n_seeds"]), _f(a["train_auc"]["mean"]), _f(a["test_auc"]["mean"]),
                     _signed(a["gap_auc"]["mean"]), _f(a["train_acc"]["mean"]), _f(a["test_acc"]["mean"]),
                     _signed(a["gap_acc"]["mean"])])
    if not rows:
        return [Block("h3", sec["title"]), Block("p", "No run finished.")]
    return [Block("h3", sec["title"]),
            Block("table", table=Table(f"gap-{_slug(sec['title'])}",
                                       ["arm", "seeds", "train AUC", "test AUC", "AUC gap", "train ACC", "test ACC",
                                        "ACC gap"], rows, [a["best"] for a in arms]))]


def _published_blocks(sec: dict) -> list[Block]:
    pub = sec.get("published")
    if not pub:
        return []
    blocks = [Block("h3", sec["title"])]
    if pub.get("size") not in (None, 28):
        blocks.append(Block("note", f"This study ran at {pub['size']} px; the published numbers are on the 28 px "
                                    "images (the (224) rows resize those up)."))
    best = pub["best"]
    rows, strong = [], []
    ours = pub.get("ours")
    if ours:
        seeds = f"{ours['n_seeds']} seed{'s' if ours['n_seeds'] != 1 else ''}"
        rows.append([f"ours: {ours['arm']} (best by val AUC {_f(ours['val_auc'])}, {seeds})",
                     f"{_pm(ours['test_auc'])} [{_ci(ours['test_auc'].get('ci'))}]",
                     f"{_pm(ours['test_acc'])} [{_ci(ours['test_acc'].get('ci'))}]",
                     f"AUC rank {ours.get('auc_rank', 'n/a')} of 8, ACC rank {ours.get('acc_rank') or 'n/a'} of 8"])
        strong.append(False)
    bold = set()
    for r in pub["rows"]:
        for j, m in ((1, "auc"), (2, "acc")):
            if r[m] == best[m]["value"]:
                bold.add((len(rows), j))
        rows.append([r["method"], _f(r["auc"]), _f(r["acc"]), "MedMNIST v2 (published)"])
        strong.append(False)
    blocks.append(Block("table", table=Table(f"published-{_slug(sec['title'])}",
                                             ["method", "test AUC", "test ACC", "source / rank"], rows, strong,
                                             first_attr="method", bold=bold, text_cols=(0, 3))))
    blocks.append(Block("p", f"Best published: AUC {_f(best['auc']['value'])} ({', '.join(best['auc']['methods'])}), "
                             f"ACC {_f(best['acc']['value'])} ({', '.join(best['acc']['methods'])}); in bold."))
    return blocks


def _significance_blocks(sec: dict) -> list[Block]:
    comps = [s for s in sec["significance"] if s["n_seeds_arm"]]
    if not comps:
        return [Block("h3", sec["title"]), Block("p", "Fewer than two arms finished: nothing to compare.")]
    rows = [[s["arm"], f"{s['n_seeds_best']} vs {s['n_seeds_arm']}", _signed(s["diff"]), _ci(s["ci"]), _p(s["p"])]
            for s in comps]
    blocks = [Block("h3", sec["title"]),
              Block("p", f"Best arm (highest mean test AUC): {sec['best_arm']}. Difference = best − arm."),
              Block("table", table=Table(f"significance-{_slug(sec['title'])}",
                                         ["arm", "seeds (best vs arm)", "AUC difference", "95 % CI", "p (bootstrap)"],
                                         rows))]
    skipped = len(sec["significance"]) - len(comps)
    if skipped:
        blocks.append(Block("p", f"{skipped} arm{'s' if skipped != 1 else ''} without a finished run not compared "
                                 f"(see Runs not done)."))
    return blocks


def _cross_blocks(cross: dict) -> list[Block]:
    table = cross["table"]
    datasets = cross["datasets"]
    if len(datasets) < 2:
        return [Block("p", "The study has one dataset: no across-dataset test.")]
    blocks = [Block("h3", "Mean test AUC per dataset")]
    order = sorted(table, key=lambda k: -float(np.mean(list(table[k].values()))))
    rows = [[name] + [_f(table[name].get(d)) for d in datasets] for name in order]
    blocks.append(Block("table", table=Table("cross-dataset-auc", ["arm"] + datasets, rows)))
    blocks.append(Block("h3", "Wilcoxon signed-rank tests across datasets"))
    if not cross["wilcoxon"]:
        blocks.append(Block("p", "No pair of arms ran on two or more datasets."))
        return blocks
    small = sorted({w["n"] for w in cross["wilcoxon"] if not w["can_reach_005"]})
    if small:
        blocks.append(Block("note", f"Too few datasets for significance: with n ≤ 5 datasets the exact two-sided "
                                    f"Wilcoxon p cannot go below 2/2^n (n = 5: 0.0625). Pairs here with n = "
                                    f"{', '.join(map(str, small))} cannot reach p < 0.05 whatever their AUCs; read "
                                    f"them as win counts only."))
    rows = [[f"{w['a']} vs {w['b']}", str(w["n"]), f"{w['a_wins']}–{w['b_wins']}", _signed(w["median_diff"]),
             _f(w["statistic"], 1) if w["statistic"] is not None else "n/a", _p(w["p"]), _f(w["min_p"], 4),
             w["note"] or ""] for w in cross["wilcoxon"]]
    blocks.append(Block("table", table=Table("wilcoxon", ["pair (A vs B)", "datasets", "A wins–B wins",
                                                          "median AUC diff (A − B)", "W", "p", "smallest possible p",
                                                          "note"], rows, first_attr="pair", text_cols=(0, 7))))
    return blocks


def _chex_blocks(chex: dict, sections: Sequence[Section]) -> list[Block]:
    if not chex.get("applicable"):
        return [Block("note", chex.get("note", "not applicable"))]
    blocks = [Block("p", f"Architectures: {', '.join(chex['architectures'])}. Parameters are counted on the model "
                         "as each run builds it (input channels, classes, truncation).")]
    # (a) parameters vs AUC
    rows = [[p["arm"], p["section"], str(p["model"]), _f(p["pretrained"]), str(p["truncate"]), _params(p["params"]),
             _f(p["auc"]), _f(p["imagenet_top1"], 2)] for p in chex["points"]]
    blocks += [Block("h3", "Parameters vs test AUC"),
               Block("table", table=Table("chex-params", ["arm", "dataset", "model", "pretrained", "truncate",
                                                          "parameters", "mean test AUC", "ImageNet top-1 %"], rows,
                                                text_cols=(0, 1, 2)))]
    fig = _params_figure(chex["points"])
    if fig is not None:
        blocks.append(Block("figure", figure=fig, name="chex-params",
                            text="Parameters (log scale) vs mean test AUC per arm: circles trained from scratch, "
                                 "triangles ImageNet-pretrained"))
    # (b) pretraining boost
    if chex["has_pretrained_axis"]:
        blocks.append(Block("h3", "Pretraining boost (pretrained − scratch)"))
        if chex["boost"]:
            rows = [[b["group"], b["section"], str(b["model"]), _params(b["params"]), _f(b["auc_pretrained"]),
                     _f(b["auc_scratch"]), _signed(b["boost"]), _ci(b["boost_ci"]), _p(b["p"])]
                    for b in chex["boost"]]
            blocks.append(Block("table", table=Table("chex-boost", ["setting", "dataset", "model", "parameters",
                                                                    "AUC pretrained", "AUC scratch", "boost",
                                                                    "95 % CI", "p"], rows, first_attr="setting",
                                                                   text_cols=(0, 1, 2))))
            fig = _boost_figure(chex["boost"])
            if fig is not None:
                blocks.append(Block("figure", figure=fig, name="chex-boost",
                                    text="Pretraining boost in mean test AUC vs parameters (log scale)"))
        else:
            blocks.append(Block("p", "No arm has both a pretrained and a scratch run that finished."))
    # (c) truncation
    if chex["has_truncate_axis"]:
        blocks.append(Block("h3", "Truncation: parameter efficiency"))
        if chex["truncation"]:
            rows = [[t["group"], t["section"], str(t["truncate"]), _params(t["params_full"]),
                     _params(t["params_truncated"]), _f(t["share_removed"]), _f(t["auc_full"]), _f(t["auc_truncated"]),
                     _signed(t["delta_auc"]), _f(t["auc_retained"]), _f(t["delta_auc_per_mparam"], 4),
                     _ci(t["delta_ci"]), _p(t["p"])] for t in chex["truncation"]]
            blocks.append(Block("table", table=Table(
                "chex-truncation", ["setting", "dataset", "stages cut", "params full", "params truncated",
                                    "share removed", "AUC full", "AUC truncated", "ΔAUC", "AUC retained",
                                    "ΔAUC per M params removed", "95 % CI of ΔAUC", "p"], rows, first_attr="setting",
                text_cols=(0, 1))))
            fig = _truncation_figure(chex["points"])
            if fig is not None:
                blocks.append(Block("figure", figure=fig, name="chex-truncation",
                                    text="Truncated and full models: parameters (log scale) vs mean test AUC, one "
                                         "line per architecture"))
        else:
            blocks.append(Block("p", "No truncated arm has a finished full-model counterpart."))
    # (d) Spearman
    blocks.append(Block("h3", "Spearman's ρ over architectures"))
    if chex["spearman"]:
        rows = [[s["setting"], s["section"], "ImageNet top-1" if s["x"] == "imagenet_top1" else "log10 parameters",
                 str(s["n"]), _f(s["rho"]), _p(s["p"]), s["note"] or ""] for s in chex["spearman"]]
        blocks.append(Block("table", table=Table("chex-spearman", ["setting", "dataset", "x (vs test AUC)",
                                                                   "architectures", "ρ", "p", "note"], rows,
                                                 first_attr="setting", text_cols=(0, 1, 2, 6))))
    else:
        blocks.append(Block("p", "No setting has two or more architectures."))
    missing = sorted({p["model"] for p in chex["points"] if p["imagenet_top1"] is None})
    if missing:
        blocks.append(Block("note", f"ImageNet top-1 n/a (left out of ρ) for: {', '.join(map(str, missing))}."))
    return blocks


def _params_figure(points: Sequence[dict]):
    from medbench.report import figures as F

    pts = [p for p in points if p["params"]]
    if not pts:
        return None
    fig = F.new_figure(6.4, 4.2)
    ax = fig.add_subplot()
    sections = sorted({p["section"] for p in pts})
    colors = ["#2b5d9b", "#c0392b", "#27ae60", "#8e44ad", "#d35400", "#16a085"]
    for i, s in enumerate(sections):
        for pre, marker in ((False, "o"), (True, "^")):
            sel = [p for p in pts if p["section"] == s and bool(p["pretrained"]) == pre]
            if sel:
                ax.scatter([p["params"] for p in sel], [p["auc"] for p in sel], marker=marker, s=42,
                           color=colors[i % len(colors)], edgecolor="black", linewidths=0.4,
                           label=f"{s}, {'pretrained' if pre else 'scratch'}")
        for p in pts:
            if p["section"] == s:
                ax.annotate(str(p["model"]) + (f" −{p['truncate']}" if p["truncate"] else ""),
                            (p["params"], p["auc"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("mean test AUC")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def _boost_figure(boosts: Sequence[dict]):
    from medbench.report import figures as F

    pts = [b for b in boosts if b["params"] and b["boost"] is not None]
    if not pts:
        return None
    fig = F.new_figure(6.0, 3.8)
    ax = fig.add_subplot()
    for b in pts:
        if b["boost_ci"]:
            ax.plot([b["params"]] * 2, b["boost_ci"], color="#999", lw=1.5)
        ax.plot([b["params"]], [b["boost"]], "^", color="#c0392b", ms=7)
        ax.annotate(f"{b['model']}, {b['section']}", (b["params"], b["boost"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("AUC pretrained − scratch")
    ax.grid(alpha=0.3)
    return fig


def _truncation_figure(points: Sequence[dict]):
    from medbench.report import figures as F

    pts = [p for p in points if p["params"]]
    lines: dict[tuple, list[dict]] = {}
    for p in pts:
        lines.setdefault((p["section"], p["model"], p["pretrained"]), []).append(p)
    lines = {k: v for k, v in lines.items() if len({p["truncate"] for p in v}) > 1}
    if not lines:
        return None
    fig = F.new_figure(6.4, 4.2)
    ax = fig.add_subplot()
    for (sec, model, pre), v in lines.items():
        v = sorted(v, key=lambda p: p["truncate"])
        ax.plot([p["params"] for p in v], [p["auc"] for p in v], "-o", ms=5,
                label=f"{model} ({'pretrained' if pre else 'scratch'}), {sec}")
        for p in v:
            ax.annotate(f"−{p['truncate']}" if p["truncate"] else "full", (p["params"], p["auc"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("mean test AUC")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


# ---- the report ----------------------------------------------------------------------------------------------

def _not_done(records: Sequence[RunRecord], sections: Sequence[Section]) -> list[dict]:
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


def _json_ready(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_ready(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def build_report(out_dir: str | os.PathLike, *, study=None, db_url: str | None = None, data_dir=None,
                 replicates: int = 1000, seed: int = 0) -> tuple[dict, list[tuple[str, str, list[Block]]]]:
    """The summary (every number) and the sections of blocks both outputs are rendered from."""
    records, axes, name, shown_url = load_records(out_dir, study=study, db_url=db_url)
    summary, sections = analyse(records, axes, data_dir=data_dir, replicates=replicates, seed=seed)
    counts = {s: 0 for s in ("done", "failed", "running", "pending", "missing")}
    for r in records:
        counts[r.status] = counts.get(r.status, 0) + 1
    not_done = _not_done(records, sections)
    summary = {"study": name, "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "database": shown_url, "axes": list(axes), "replicates": replicates, "seed": seed, "level": LEVEL,
               "counts": {"total": len(records), **counts}, "not_done": not_done, **summary,
               "published_source": {**P.MEDMNIST_V2_SOURCE, "discrepancies": P.MEDMNIST_V2_DISCREPANCIES},
               "imagenet_top1_source": {"timm": P.TIMM_TOP1_SOURCE,
                                        "torchvision": "Weights.meta['_metrics']['ImageNet-1K']['acc@1']"}}
    summary = _json_ready(summary)
    by_title = {s.title: s for s in sections}
    out: list[tuple[str, str, list[Block]]] = []

    # leaderboard
    blocks = [Block("p", f"Arms group runs by every setting except seed. Mean ± standard deviation over the seeds "
                         f"that finished (ddof = 1); the {int(LEVEL * 100)} % CI is a bootstrap of that mean over "
                         f"{replicates} resamples of the test set (seed {seed}), one resample matrix per dataset "
                         f"shared by every run on it. It reflects test-set sampling, not training variability "
                         f"across other seeds. Best arm (highest mean test AUC) in bold.")]
    for sec in summary["sections"]:
        blocks += _leaderboard_blocks(sec, by_title[sec["title"]], LEVEL, replicates)
    blocks.append(Block("h3", "Runs not done"))
    if not_done:
        rows = [[r["id"], r["status"], r["dataset"], r["arm"], _value_text(r["seed"]), (r["error"] or "")[:300]]
                for r in not_done]
        blocks.append(Block("table", table=Table("not-done", ["run", "status", "dataset", "arm", "seed", "error"],
                                                 rows, first_attr="run", text_cols=(0, 1, 2, 3, 5))))
    else:
        blocks.append(Block("p", "Every run finished."))
    out.append(("leaderboard", "Leaderboard", blocks))

    blocks = [Block("p", "Means over seeds; gap = train − test (positive: better on the training images).")]
    for sec in summary["sections"]:
        blocks += _gap_blocks(sec)
    out.append(("gap", "Train vs test", blocks))

    src = P.MEDMNIST_V2_SOURCE
    blocks = [Block("p", f"Published: {src['citation']} doi:{src['doi']}; values as tabulated on {src['url']} "
                         f"(repository {src['repository']}, {src['path']} at commit {src['commit'][:12]}); "
                         f"{src['note']}. Ours: the arm with the highest mean validation AUC (chosen without "
                         f"looking at test), with its test mean ± std over seeds and bootstrap CI.")]
    any_pub = False
    for sec in summary["sections"]:
        b = _published_blocks(sec)
        any_pub = any_pub or bool(b)
        blocks += b
    if not any_pub:
        blocks.append(Block("note", "None of this study's datasets is in the published MedMNIST v2 2D table."))
    else:
        disc = "; ".join(f"{d['dataset']} {d['method']} {d['metric']}: site {d['site']}, quoted {d['quoted']}"
                         for d in P.MEDMNIST_V2_DISCREPANCIES)
        blocks.append(Block("note", f"Third-party quotes of the journal's Table 3 differ from the site in: {disc}. "
                                    "The site's values are shown."))
    out.append(("published", "Published MedMNIST v2 comparison", blocks))

    blocks = [Block("p", "Within each dataset: paired bootstrap of the best arm against every other arm. Every run "
                         "on a dataset is scored on the same test resamples, so the difference of the arms' "
                         "mean-over-seeds AUC is computed per resample; the p-value is two-sided, "
                         "min(1, 2·min(P(d ≤ 0), P(d ≥ 0))).")]
    for sec in summary["sections"]:
        blocks += _significance_blocks(sec)
    blocks += _cross_blocks(summary["cross_dataset"])
    out.append(("significance", "Significance", blocks))

    out.append(("chextransfer", "CheXtransfer analyses", _chex_blocks(summary["chextransfer"], sections)))
    return summary, out


def _render_html(summary: dict, sections: list[tuple[str, str, list[Block]]]) -> str:
    from medbench.report.run_report import CSS, _e, _note, _png_img

    parts = []
    for sid, heading, blocks in sections:
        body = []
        for b in blocks:
            if b.kind == "h3":
                body.append(f"<h3>{_e(b.text)}</h3>")
            elif b.kind == "p":
                body.append(f"<p>{_e(b.text)}</p>")
            elif b.kind == "note":
                body.append(_note(b.text))
            elif b.kind == "table":
                body.append(b.table.html())
            elif b.kind == "figure":
                body.append(_png_img(b.figure, b.name, b.text))
        parts.append(f'<section id="{sid}"><h2>{_e(heading)}</h2>{"".join(body)}</section>')
    c = summary["counts"]
    meta = (f"<p class=\"meta\">{c['total']} runs: {c['done']} done, {c['failed']} failed, {c['running']} running, "
            f"{c['pending']} pending, {c['missing']} missing from the store · axes: "
            f"{_e(', '.join(summary['axes']) or 'none')}<br>Results store <code>{_e(summary['database'])}</code> · "
            f"{summary['replicates']} bootstrap resamples, seed {summary['seed']}<br>Generated "
            f"{_e(summary['generated'])} by medbench</p>")
    nav = "<nav>" + "".join(f'<a href="#{sid}">{_e(h)}</a>' for sid, h, _ in sections) + "</nav>"
    title = f"Study report: {summary['study']}"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<link rel=\"icon\" href=\"data:,\">"
            f"<title>{_e(title)}</title><style>{CSS}{STUDY_CSS}</style></head><body><main>"
            f"<h1>{_e(title)}</h1>{meta}{nav}"
            + "".join(parts) + "</main></body></html>\n")


def _render_markdown(summary: dict, sections: list[tuple[str, str, list[Block]]]) -> str:
    c = summary["counts"]
    lines = [f"# Study report: {summary['study']}", "",
             f"{c['total']} runs: {c['done']} done, {c['failed']} failed, {c['running']} running, {c['pending']} "
             f"pending, {c['missing']} missing. Generated {summary['generated']}; {summary['replicates']} bootstrap "
             f"resamples (seed {summary['seed']}). Figures: report.html.", ""]
    for _sid, heading, blocks in sections:
        lines += [f"## {heading}", ""]
        for b in blocks:
            if b.kind == "h3":
                lines += [f"### {b.text}", ""]
            elif b.kind == "p":
                lines += [b.text, ""]
            elif b.kind == "note":
                lines += [f"> {b.text}", ""]
            elif b.kind == "table":
                lines += [b.table.markdown(), ""]
    return "\n".join(lines).rstrip() + "\n"


def write_study_report(out_dir: str | os.PathLike, *, study=None, db_url: str | None = None, data_dir=None,
                       replicates: int = 1000, seed: int = 0) -> dict[str, Path]:
    """Write ``OUT/report.html``, ``OUT/results.md`` and ``OUT/summary.json`` (atomically) for the study in
    ``out_dir``; returns their paths ({"html", "markdown", "summary"}).

    ``study``: a :class:`~medbench.study.grid.Study` (its runs, in its order; runs absent from the store are listed
    as missing), or None for every row of the store. ``db_url``: the results store (default
    ``sqlite:///OUT/study.db``). ``data_dir``: the data root for the test labels. ``replicates`` / ``seed``: the
    test-set bootstrap.
    """
    from medbench.fileio import write_json, write_text

    out_dir = Path(out_dir)
    summary, sections = build_report(out_dir, study=study, db_url=db_url, data_dir=data_dir, replicates=replicates,
                                     seed=seed)
    paths = {"html": out_dir / REPORT, "markdown": out_dir / MARKDOWN, "summary": out_dir / SUMMARY}
    write_text(paths["html"], _render_html(summary, sections))
    write_text(paths["markdown"], _render_markdown(summary, sections))
    write_json(paths["summary"], summary)
    return paths
