"""The binary decision threshold chosen on a validation split (Youden's J)."""
from __future__ import annotations

import numpy as np

from medbench.metrics.validation import _as_arrays, _undefined


def youden_threshold(y_true, scores) -> float | None:
    """The binary threshold on the positive-class score that maximises Youden's J = sensitivity + specificity - 1.

    ``scores``: [N, 2] (the last column is used) or [N]. The rule is the one ``acc`` uses: positive when
    ``score > threshold``. Only the cut points between observed scores give different predictions, so every
    cut is tried (exact integer arithmetic for J): between two consecutive distinct scores the midpoint is
    returned (or the lower score, should the midpoint round onto the upper one); calling everything positive
    returns the largest float below the lowest score, everything negative the highest score. Ties in J go to
    the lowest threshold (the highest sensitivity). ``None`` with a warning when one class is absent.
    """
    y, s = _as_arrays(y_true, scores)
    true, p1 = y[:, 0] == 1, s[:, -1]
    n_pos = int(true.sum())
    n_neg = len(true) - n_pos
    if not n_pos or not n_neg:
        _undefined("Youden threshold undefined: only one class present; reported as null", stacklevel=2)
        return None
    u = np.unique(p1)  # cut i (0..len(u)) calls the scores >= u[i] positive (none for i = len(u))
    tp = n_pos - np.searchsorted(np.sort(p1[true]), u, side="left")
    fp = n_neg - np.searchsorted(np.sort(p1[~true]), u, side="left")
    j = np.append(tp * np.int64(n_neg) - fp * np.int64(n_pos), 0)  # J * n_pos * n_neg, exactly
    i = int(np.argmax(j))
    if i == 0:
        return float(np.nextafter(u[0], -np.inf))
    if i == len(u):
        return float(u[-1])
    mid = u[i - 1] + (u[i] - u[i - 1]) / 2
    return float(mid if u[i - 1] <= mid < u[i] else u[i - 1])

