"""Prediction files: ``predictions/SPLIT.csv`` (one headered row per image: what it is, its true and decided
label(s), its scores) and the MedMNIST evaluator's own file (``predictions/medmnist/``).

``SPLIT.csv`` columns, in index order::

    index,item,true,decided,p:<class>...                       single-label (true / decided: class names)
    index,item,true:<label>...,decided:<label>...,p:<label>...  multi-label (0/1; true -1 where masked)

``item`` is the MedMNIST index as text, or the image's path relative to the data root (folder / CSV data). A
cross-validation's ``oof.csv`` has a ``fold`` column after ``item`` (the fold whose model scored the image; items
of pooled MedMNIST splits read ``train/INDEX`` / ``val/INDEX``). Runs
made before the header existed wrote ``index,score...`` rows without one: they still load (scores only).
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medbench.errors import MedbenchError
from medbench.fileio import write_text
from medbench.rundir.layout import EVALUATIONS, MEDMNIST_EXPORT

FIRST = ("index", "item")
FOLD = "fold"


@dataclass
class PredictionTable:
    """One split's predictions in index order. A header-less file of an older run has ``index`` and ``scores``
    only (``items``, ``labels``, ``decided`` and ``class_names`` are None)."""
    index: np.ndarray  # [N] int: 0 .. N-1
    items: list[str] | None  # what each row is (MedMNIST index, or path under the data root)
    labels: np.ndarray | None  # [N, L] int: class indices (L = 1), or 0/1/-1 per label
    decided: np.ndarray | None  # [N] class indices, or [N, L] 0/1
    scores: np.ndarray  # [N, C] float64
    class_names: list[str] | None
    folds: np.ndarray | None = None  # [N] the fold of each row (a cross-validation's oof.csv), else None

    @property
    def multilabel(self) -> bool:
        return self.decided is not None and self.decided.ndim == 2


def write_prediction_table(path: Path, items: list[str], labels: np.ndarray, decided: np.ndarray,
                           scores: np.ndarray, class_names: list[str], multilabel: bool,
                           folds: np.ndarray | None = None) -> None:
    """Write one split's table (the csv module quotes paths holding commas or quotes; scores exact, %.17g);
    ``folds``: a ``fold`` column after ``item`` (out-of-fold predictions)."""
    names = [str(c) for c in class_names]
    labels = np.asarray(labels).reshape(len(scores), -1)
    decided = np.asarray(decided).reshape(len(scores), -1)
    if len(items) != len(scores):
        raise ValueError(f"{len(items)} items for {len(scores)} rows of scores")
    first = [*FIRST, FOLD] if folds is not None else list(FIRST)
    if multilabel:
        header = [*first, *(f"true:{n}" for n in names), *(f"decided:{n}" for n in names)]
    else:
        header = [*first, "true", "decided"]
    header += [f"p:{n}" for n in names]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for i, (item, y, d, s) in enumerate(zip(items, labels.tolist(), decided.tolist(), scores.tolist())):
        marks = [*y, *d] if multilabel else [names[y[0]], names[d[0]]]
        fold = [int(folds[i])] if folds is not None else []
        w.writerow([i, item, *fold, *marks, *(f"{v:.17g}" for v in s)])
    write_text(path, buf.getvalue())


def write_predictions(path: Path, scores: np.ndarray) -> None:
    """MedMNIST's standard evaluation format: no header; index, then one score per class (exact float64)."""
    buf = io.StringIO()
    table = np.column_stack([np.arange(len(scores)), scores])
    np.savetxt(buf, table, delimiter=",", fmt=["%d"] + ["%.17g"] * scores.shape[1])
    write_text(path, buf.getvalue())


def _fix(path: Path) -> tuple[str, str]:
    """The run a predictions file belongs to, and how to get fresh predictions (evaluate never rewrites the
    training record: it writes RUN/evaluations/NAME/)."""
    record = path.parent.parent
    run = record.parent.parent if record.parent.name == EVALUATIONS else record
    return str(run), (f"restore it from a backup, or run `medbench evaluate {run}` for fresh predictions in "
                      f"{run}/{EVALUATIONS}/")


def read_prediction_table(path: Path) -> PredictionTable:
    """A predictions file (headered, or an older run's header-less one) in index order; a damaged file is one
    :class:`MedbenchError` naming it and the fix."""
    path = Path(path)
    run, fix = _fix(path)
    if not path.is_file():
        raise MedbenchError(f"{path} not found: run `medbench evaluate {run}` (it writes "
                            f"{EVALUATIONS}/NAME/predictions/)")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            first = f.readline()
            if not first.startswith(",".join(FIRST) + ","):
                return _read_headerless(path, fix)
            f.seek(0)
            rows = list(csv.reader(f))
    except UnicodeDecodeError as e:
        raise MedbenchError(f"{path}: damaged predictions (not UTF-8: {e.reason}); {fix}") from None
    return _parse_table(path, rows, fix)


def read_predictions(path: Path) -> np.ndarray:
    """The scores ``[N, C]`` of a predictions file (either format), in index order."""
    return read_prediction_table(path).scores


def _read_headerless(path: Path, fix: str) -> PredictionTable:
    try:
        table = np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float64)
    except (ValueError, UnicodeDecodeError) as e:  # text, a ragged row, not UTF-8
        why = " ".join(str(e).split())[:200]
        raise MedbenchError(f"{path}: damaged predictions ({why}); {fix}") from None
    if table.shape[1] < 2 or not np.isfinite(table).all():
        raise MedbenchError(f"{path}: damaged predictions (expected an index and finite scores per row); {fix}")
    order = _order(path, table[:, 0], fix)
    return PredictionTable(np.arange(len(table)), None, None, None, table[order, 1:], None)


def _order(path: Path, index: np.ndarray, fix: str) -> np.ndarray:
    order = np.argsort(index, kind="stable")
    if not np.array_equal(index[order], np.arange(len(index))):
        raise MedbenchError(f"{path}: damaged predictions (the indices are not 0..{len(index) - 1}, each once); "
                            f"{fix}")
    return order


def _parse_table(path: Path, rows: list[list[str]], fix: str) -> PredictionTable:
    def damaged(why: str) -> MedbenchError:
        return MedbenchError(f"{path}: damaged predictions ({why}); {fix}")

    header, body = rows[0], [r for r in rows[1:] if r]
    names = [h[2:] for h in header if h.startswith("p:")]
    multilabel = "true" not in header
    has_fold = len(header) > 2 and header[2] == FOLD
    if has_fold:  # read as an ordinary table, the fold column kept aside
        header, folds_col = [*header[:2], *header[3:]], [r[2] if len(r) > 2 else "" for r in body]
        body = [[*r[:2], *r[3:]] for r in body]
    expect = [*FIRST, *([f"true:{n}" for n in names] + [f"decided:{n}" for n in names] if multilabel
                        else ["true", "decided"]), *(f"p:{n}" for n in names)]
    if not names or header != expect:
        raise damaged(f"unexpected header {','.join(header)[:120]!r}")
    ragged = next((i for i, r in enumerate(body, 2) if len(r) != len(header)), None)
    if ragged is not None:
        raise damaged(f"line {ragged} has {len(body[ragged - 2])} cells, the header {len(header)}")
    cells = np.array(body, dtype=object).reshape(len(body), len(header))
    k = len(names)
    try:
        index = cells[:, 0].astype(np.int64)
        scores = cells[:, -k:].astype(str).astype(np.float64)
        if multilabel:
            labels = cells[:, 2:2 + k].astype(np.int64)
            decided = cells[:, 2 + k:2 + 2 * k].astype(np.int64)
        else:
            of = {n: i for i, n in enumerate(names)}
            labels = np.array([[of[v]] for v in cells[:, 2]], dtype=np.int64).reshape(-1, 1)
            decided = np.array([of[v] for v in cells[:, 3]], dtype=np.int64)
    except (ValueError, KeyError) as e:
        raise damaged(f"a cell that is not a number or a class name: {e}") from None
    if not np.isfinite(scores).all():
        raise damaged("expected finite scores")
    folds = None
    if has_fold:
        try:
            folds = np.array(folds_col, dtype=np.int64)
        except ValueError as e:
            raise damaged(f"a fold that is not a number: {e}") from None
    order = _order(path, index, fix)
    items = [str(cells[i, 1]) for i in order]
    return PredictionTable(np.arange(len(order)), items, labels[order], decided[order], scores[order], names,
                           None if folds is None else folds[order])


# ---- the MedMNIST evaluator's file ----

def safe_run_name(name: str) -> str:
    """``name`` as the run tag of a MedMNIST file name: its parser splits on "_", "@" and ".", so only letters,
    digits and "-" are kept (anything else becomes "-")."""
    return re.sub(r"[^A-Za-z0-9-]", "-", name).strip("-") or "run"


def medmnist_file_name(flag: str, size: int, split: str, auc: float | None, acc: float | None, run: str) -> str:
    """``{flag}[_{size}]_{split}_[AUC]{auc:.3f}_[ACC]{acc:.3f}@{run}.csv``, as medmnist's Evaluator names it."""
    size_flag = "" if size == 28 else f"_{size}"
    auc_text, acc_text = (f"{float('nan') if v is None else v:.3f}" for v in (auc, acc))
    return f"{flag}{size_flag}_{split}_[AUC]{auc_text}_[ACC]{acc_text}@{safe_run_name(run)}.csv"


def write_medmnist_export(predictions_dir: Path, flag: str, size: int, split: str, scores: np.ndarray,
                          auc: float | None, acc: float | None, run: str) -> Path:
    """The split's scores as ``python -m medmnist evaluate`` reads them, in ``predictions_dir/medmnist/``; an
    earlier file of the same split is removed (its name holds other metrics)."""
    folder = Path(predictions_dir) / MEDMNIST_EXPORT
    size_flag = "" if size == 28 else f"_{size}"
    stale = [p for p in folder.glob("*.csv") if p.name.startswith(f"{flag}{size_flag}_{split}_[AUC]")] \
        if folder.is_dir() else []
    path = folder / medmnist_file_name(flag, size, split, auc, acc, run)
    write_predictions(path, scores)
    for p in stale:
        if p != path:
            p.unlink(missing_ok=True)
    return path
