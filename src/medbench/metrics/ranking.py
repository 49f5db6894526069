"""AUCs: MedMNIST's task AUC (``auc``), every column's AUC from average ranks (``rank_auc``), and the AUC of
every bootstrap replicate at once with per-sample weights (``weighted_auc``)."""
from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.stats import rankdata

from medbench.metrics.validation import SHOWN_NAMES, _as_arrays, _undefined

AUC_BLOCK = 2 ** 23  # samples x replicates handled at once by weighted_auc (bounds its float temporaries)


def rank_auc(y_true, scores) -> np.ndarray:
    """AUC of every column at once from average ranks (Mann-Whitney U; a tie counts one half).

    ``y_true`` and ``scores`` are [N, M]; columns with one class only give NaN.
    """
    y = np.asarray(y_true, dtype=np.float64).reshape(len(y_true), -1)
    s = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
    ranks = rankdata(s, axis=0)
    pos = y.sum(0)
    neg = y.shape[0] - pos
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * y).sum(0) - pos * (pos + 1) / 2) / (pos * neg)


def _binary_auc(y, s) -> float | None:
    """The AUC of one class (label) against the rest; None when the split holds only one of the two values."""
    return float(rank_auc(y, s)[0]) if np.unique(y).size == 2 else None


def _warn_undefined_auc(kind: str, undefined: list[int], total: int) -> None:
    """One warning for all the classes (labels) whose AUC is undefined: hundreds of classes, one line."""
    if not undefined:
        return
    shown = ", ".join(map(str, undefined[:SHOWN_NAMES])) + (", ..." if len(undefined) > SHOWN_NAMES else "")
    what = f"{kind} {shown}" if total == 1 or len(undefined) == 1 else \
        f"{len(undefined)} of {total} {'classes' if kind == 'class' else 'labels'} ({shown})"
    _undefined(f"AUC undefined for {what}: only one class present; reported as null", stacklevel=3)


def auc(y_true, scores, task: str) -> float | None:
    y, s = _as_arrays(y_true, scores)
    if task == "binary":
        value = _binary_auc(y[:, 0], s[:, -1])
        if value is None:
            _undefined("AUC undefined for the positive class: only one class present; reported as null")
        return value
    if task == "multilabel":  # -1 entries (unknown, --uncertain u-ignore) are left out of their label's AUC
        per = [_binary_auc(y[y[:, i] >= 0, i], s[y[:, i] >= 0, i]) for i in range(s.shape[1])]
    else:
        per = [_binary_auc((y[:, 0] == i).astype(float), s[:, i]) for i in range(s.shape[1])]
    _warn_undefined_auc("label" if task == "multilabel" else "class", [i for i, a in enumerate(per) if a is None],
                        len(per))
    return None if any(a is None for a in per) else sum(per) / s.shape[1]


def _running_sum_rows(a: np.ndarray, block: int = 64) -> np.ndarray:
    """Inclusive running sum down the rows of a C-contiguous [rows, B] array, in place (exact for integers).

    ``np.cumsum(axis=0)`` walks each column with a stride of a whole row; here rows are added as whole vectors,
    ``block`` row-blocks at a time, then each block is shifted by the running total of the blocks before it.
    """
    rows = len(a)
    nb = rows // block
    if nb:
        v = a[:nb * block].reshape(nb, block, -1)
        for i in range(1, block):
            np.add(v[:, i - 1], v[:, i], out=v[:, i])
        if nb > 1:
            v[1:] += np.cumsum(v[:-1, -1], axis=0)[:, None, :]
    for i in range(max(nb * block, 1), rows):
        np.add(a[i - 1], a[i], out=a[i])
    return a


def weighted_auc(y, s, counts: np.ndarray) -> np.ndarray:
    """AUC of one binary column for every replicate, each sample weighted by its count: [replicates].

    Sort once. Each positive's score cuts the sorted negatives twice (below and above its ties), and the cuts
    split them into segments: per replicate, the segments' weights are one sparse 0/1 matrix times the count
    matrix, and their running sums give, for every positive, the weight of the negatives below it and up to
    it. AUC = sum over positives of ``w * (below + tied / 2)`` / (positive weight * negative weight), exactly
    Mann-Whitney's with ties counted one half. Integer counts with totals below 2**23 run in float32 (every
    value is then an integer float32 holds exactly); the final sum over positives is float64.
    """
    y = np.asarray(y).ravel()  # 1 positive, 0 negative; anything else (-1: unknown) is left out
    s = np.asarray(s, dtype=np.float64).ravel()
    counts = np.asarray(counts)
    neg, pos = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    if not len(neg) or not len(pos) or not counts.shape[1]:
        return np.full(counts.shape[1], np.nan)
    neg, pos = neg[np.argsort(s[neg], kind="stable")], pos[np.argsort(s[pos], kind="stable")]
    lo = np.searchsorted(s[neg], s[pos], "left")
    hi = np.searchsorted(s[neg], s[pos], "right")
    cuts, where = np.unique(np.concatenate([lo, hi]), return_inverse=True)
    # negative i (in sorted order) lies in segment g when cuts[g-1] <= i < cuts[g]; segment len(cuts) is the rest
    segment = np.searchsorted(cuts, np.arange(len(neg)), side="right")
    small = np.issubdtype(counts.dtype, np.integer) and int(counts.sum(0, dtype=np.int64).max()) < 2 ** 23
    dtype = np.float32 if small else np.float64
    onto = sparse.csr_matrix((np.ones(len(neg), dtype), (segment, np.arange(len(neg)))),
                             shape=(len(cuts) + 1, len(neg)))
    out = np.empty(counts.shape[1])
    block = max(1, AUC_BLOCK // max(len(y), 1))  # replicates at a time: temporaries stay ~AUC_BLOCK values each
    for j in range(0, counts.shape[1], block):
        c = counts[:, j:j + block]
        below_cut = _running_sum_rows(np.ascontiguousarray(onto @ c[neg].astype(dtype)))  # [cut g + 1, b]
        below, upto = below_cut[where[:len(pos)]], below_cut[where[len(pos):]]
        w_pos = c[pos]
        num = np.einsum("pb,pb->b", w_pos.astype(np.float64), (below + upto).astype(np.float64)) * 0.5
        total_pos = w_pos.sum(0, dtype=np.int64 if np.issubdtype(counts.dtype, np.integer) else np.float64)
        total_neg = below_cut[-1].astype(np.int64) if small else below_cut[-1]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[j:j + block] = num / (total_pos * total_neg.astype(np.float64))
    return out


def _columns(y, s, task):
    """(labels, scores) of the binary problems whose mean is the task's AUC."""
    if task == "binary":
        return [(y[:, 0], s[:, -1])]
    if task == "multilabel":
        return [(y[:, i], s[:, i]) for i in range(s.shape[1])]
    return [((y[:, 0] == i).astype(int), s[:, i]) for i in range(s.shape[1])]


def _auc_replicates(y, s, task, counts) -> np.ndarray:
    return np.mean([weighted_auc(yc, sc, counts) for yc, sc in _columns(y, s, task)], axis=0)

