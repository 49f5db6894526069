"""Metrics of a split's predictions, their bootstrap confidence intervals, and paired comparisons of two models.

``acc`` and ``auc`` follow ``medmnist.evaluator.getACC/getAUC`` exactly (:mod:`.classification`, :mod:`.ranking`);
every other metric of :func:`compute_metrics` comes from weighted sufficient statistics (:mod:`.sufficient`), so
the bootstrap (:mod:`.resampling`) scores every replicate with one matrix product; :mod:`.comparison` pairs two
models on the same resamples; :mod:`.thresholds` chooses the binary threshold; :mod:`.validation` holds the
input checks. Labels are decided by :func:`medbench.tasks.decide`.

A metric that is undefined (an AUC with a class or label absent from the split, a sensitivity without positives)
is ``None`` with a warning, never NaN and never a crash: every result is plain JSON.
"""
from medbench.metrics.classification import acc, compute_metrics, scalar_names
from medbench.metrics.comparison import bootstrap_p, compare_predictions, delong_test
from medbench.metrics.ranking import AUC_BLOCK, auc, rank_auc, weighted_auc
from medbench.metrics.resampling import (
    RESAMPLE_BLOCK,
    bootstrap,
    bootstrap_metrics,
    bootstrap_replicates,
    percentile_ci,
    resample_counts,
)
from medbench.metrics.sufficient import ECE_BINS, LOG_LOSS_EPS
from medbench.metrics.thresholds import youden_threshold
from medbench.metrics.validation import SHOWN_NAMES, TASK_NAMES, UndefinedMetricWarning, check_finite

__all__ = ["AUC_BLOCK", "ECE_BINS", "LOG_LOSS_EPS", "RESAMPLE_BLOCK", "SHOWN_NAMES", "TASK_NAMES",
           "UndefinedMetricWarning", "acc", "auc", "bootstrap", "bootstrap_metrics", "bootstrap_p",
           "bootstrap_replicates", "check_finite", "compare_predictions", "compute_metrics", "delong_test",
           "percentile_ci", "rank_auc", "resample_counts", "scalar_names", "weighted_auc", "youden_threshold"]
