"""What every metric checks first: task names, finite scores, whole-number labels; and how an undefined metric
is reported (``None`` with an :class:`UndefinedMetricWarning`, never NaN and never a crash)."""
from __future__ import annotations

import warnings

import numpy as np

from medbench.errors import InvalidScoresError

TASK_NAMES = ("binary", "multiclass", "multilabel", "ordinal")
SHOWN_NAMES = 5  # classes named in an aggregated warning; the rest are counted


class UndefinedMetricWarning(UserWarning):
    """A metric reported as null (None) because the split cannot define it; the CLI prints these once when quiet."""


def _undefined(message: str, stacklevel: int = 2) -> None:
    warnings.warn(message, UndefinedMetricWarning, stacklevel=stacklevel + 1)


def check_finite(scores: np.ndarray, what: str = "scores") -> None:
    """NaN or infinite scores make every metric meaningless (a NaN compares False, so it would silently count as a
    negative): :class:`InvalidScoresError` (a ``ValueError``) naming how many and where the first one is."""
    finite = np.isfinite(scores)
    if finite.all():
        return
    bad = np.argwhere(~finite)[0]
    first = scores[tuple(bad)]
    n_nan, n_inf = int(np.isnan(scores).sum()), int(np.isinf(scores).sum())
    kinds = " and ".join(k for k in (f"{n_nan} NaN" if n_nan else "", f"{n_inf} infinite" if n_inf else "") if k)
    where = f"row {bad[0]}" + (f", column {bad[1]}" if len(bad) > 1 else "")
    raise InvalidScoresError(f"{what} hold {kinds} value(s) (the first, {first}, at {where}); metrics need finite "
                             f"probabilities: a model whose training diverged gives NaN, so retrain it (e.g. with a "
                             f"lower --lr) or fix the predictions file")


def _as_arrays(y_true, scores):
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if s.ndim == 1:
        s = s[:, None]
    if y.shape[0] != s.shape[0]:
        raise ValueError(f"{y.shape[0]} labels but {s.shape[0]} score rows")
    check_finite(s)
    if y.size and y.dtype.kind not in "biu":
        yf = y.astype(np.float64)
        if not (np.isfinite(yf).all() and (yf == np.round(yf)).all()):
            raise ValueError("labels must be whole numbers (class indices, or 0/1/-1 per label); found "
                             f"{yf[~(np.isfinite(yf) & (yf == np.round(yf)))][0]}")
    return y, s


def _check_task(task: str) -> None:
    if task not in TASK_NAMES:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASK_NAMES)}")


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")

