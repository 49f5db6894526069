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
* **Significance.** Two-level bootstrap between the best arm (highest mean test AUC) and every other arm
  (:func:`~medbench.study.stats.arm_difference`): every replicate resamples each arm's seeds with replacement and
  the test images (one resample shared by both arms), and takes the difference of mean-over-seeds test AUC; its
  95 % CI and the two-sided bootstrap p ``min(1, 2 min(P(d <= 0), P(d >= 0)))`` stand beside what was resampled.
  With fewer than 3 seeds in either arm there is no CI or p, only the difference and that limitation. The
  CheXtransfer pretraining boost and truncation comparisons use the same bootstrap. Across datasets, a Wilcoxon
  signed-rank test of every pair of arms run on at least two datasets (their per-dataset mean test AUC); with n
  datasets and no ties the smallest attainable exact two-sided p is ``2 / 2**n``, so with n <= 5 no p can fall
  below 0.05 (0.0625 at n = 5).
* **CheXtransfer analyses** (Ke et al., "CheXtransfer", CHIL 2021), when the study has several architectures:
  parameters vs test AUC (pretrained and scratch marked apart), the pretraining boost (pretrained - scratch) vs
  parameters when there is a ``pretrained`` axis, the parameter efficiency of truncation when there is a
  ``truncate`` axis, and Spearman's rho of ImageNet top-1 accuracy and of log-parameters against test AUC over
  architectures (separately for each remaining setting, e.g. pretrained and scratch).

Sections (and datasets within them) with nothing to show are left out. The HTML is self-contained (inline PNG
figures, no script); ``results.md`` has the same tables in Markdown; ``summary.json`` every number shown.

Where the pieces live (this module only strings them together): :mod:`~medbench.study.records` (the runs, from
the store and their run directories), :mod:`~medbench.study.grouping` (sections and arms),
:mod:`~medbench.study.analysis` (every number), :mod:`~medbench.study.stats` (seed and bootstrap statistics,
Spearman, Wilcoxon), :mod:`~medbench.study.chextransfer` and :mod:`~medbench.study.architecture` (parameter
counts, ImageNet top-1), :mod:`~medbench.study.tables` (the document model), :mod:`~medbench.study.blocks` and
:mod:`~medbench.study.chex_blocks` (the sections), :mod:`~medbench.study.figures` and
:mod:`~medbench.study.render` (HTML and Markdown).
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from medbench.fileio import write_json, write_text
from medbench.study import blocks as B
from medbench.study import published as P
from medbench.study.analysis import analyse, not_done
from medbench.study.architecture import count_params, imagenet_top1
from medbench.study.chex_blocks import chextransfer_section
from medbench.study.chextransfer import pretraining_boost, truncation_efficiency
from medbench.study.records import RunRecord, load_records
from medbench.study.render import render_html, render_markdown
from medbench.study.stats import (
    LEVEL,
    bootstrap_p,
    mean_replicates,
    mean_std,
    min_wilcoxon_p,
    paired_difference,
    percentile_ci,
    spearman,
    wilcoxon_pairs,
)
from medbench.study.tables import Block

REPORT = "report.html"
MARKDOWN = "results.md"
SUMMARY = "summary.json"

# the report's public names, importable from here as before the split
__all__ = ["write_study_report", "build_report", "analyse", "load_records", "count_params", "imagenet_top1",
           "pretraining_boost", "truncation_efficiency", "bootstrap_p", "mean_replicates", "mean_std",
           "min_wilcoxon_p", "paired_difference", "percentile_ci", "spearman", "wilcoxon_pairs", "REPORT",
           "MARKDOWN", "SUMMARY", "LEVEL"]


def write_study_report(out_dir: str | os.PathLike, *, study=None, db_url: str | None = None, data_dir=None,
                       replicates: int = 1000, seed: int = 0) -> dict[str, Path]:
    """Write ``OUT/report.html``, ``OUT/results.md`` and ``OUT/summary.json`` (atomically) for the study in
    ``out_dir``; returns their paths ({"html", "markdown", "summary"}).

    ``study``: a :class:`~medbench.study.grid.Study` (its runs, in its order; runs absent from the store are listed
    as missing), or None for every row of the store. ``db_url``: the results store (default
    ``sqlite:///OUT/study.db``). ``data_dir``: the data root for the test labels. ``replicates`` / ``seed``: the
    test-set bootstrap.
    """
    out_dir = Path(out_dir)
    summary, sections = build_report(out_dir, study=study, db_url=db_url, data_dir=data_dir, replicates=replicates,
                                     seed=seed)
    paths = {"html": out_dir / REPORT, "markdown": out_dir / MARKDOWN, "summary": out_dir / SUMMARY}
    write_text(paths["html"], render_html(summary, sections))
    write_text(paths["markdown"], render_markdown(summary, sections))
    write_json(paths["summary"], summary)
    return paths


def build_report(out_dir: str | os.PathLike, *, study=None, db_url: str | None = None, data_dir=None,
                 replicates: int = 1000, seed: int = 0) -> tuple[dict, list[tuple[str, str, list[Block]]]]:
    """The summary (every number) and the sections of blocks both outputs are rendered from."""
    records, axes, name, shown_url = load_records(out_dir, study=study, db_url=db_url)
    numbers, sections = analyse(records, axes, data_dir=data_dir, replicates=replicates, seed=seed)
    summary = {"study": name, "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "database": shown_url, "axes": list(axes), "replicates": replicates, "seed": seed, "level": LEVEL,
               "counts": _status_counts(records), "not_done": not_done(records, sections), **numbers,
               **_sources()}
    summary = _json_ready(summary)
    sections = [B.leaderboard(summary), B.train_vs_test(summary), B.published(summary), B.significance(summary),
                chextransfer_section(summary["chextransfer"])]
    return summary, [s for s in sections if s is not None]  # a section with nothing to show is left out


def _status_counts(records: Sequence[RunRecord]) -> dict:
    counts = {s: 0 for s in ("done", "failed", "running", "pending", "missing")}
    for r in records:
        counts[r.status] = counts.get(r.status, 0) + 1
    return {"total": len(records), **counts}


def _sources() -> dict:
    """Where the published numbers and the ImageNet accuracies come from."""
    return {"published_source": {**P.MEDMNIST_V2_SOURCE, "discrepancies": P.MEDMNIST_V2_DISCREPANCIES},
            "imagenet_top1_source": {"timm": P.TIMM_TOP1_SOURCE,
                                     "torchvision": "Weights.meta['_metrics']['ImageNet-1K']['acc@1']"}}


def _json_ready(obj: Any) -> Any:
    """Plain JSON types: numpy values as Python numbers, non-finite floats as null."""
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
