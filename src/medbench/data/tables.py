"""A CSV of image paths and labels -> an :class:`ImageDataset`.

* ``image_col``: the image path, relative to ``root`` (default: the CSV's folder) or absolute. Every path must
  resolve inside ``root`` unless ``allow_outside_root=True``; a path outside is an error naming its line.
* One label column -> "binary" (2 classes) or "multiclass". Values are either all integers (class ids
  0..K-1, class names "0".."K-1") or class names (sorted). A blank label is an error naming the line.
* Several label columns -> "multilabel", one label per column, CheXpert-style values: ``1`` positive,
  ``0`` negative, blank = not mentioned = 0, ``-1`` uncertain, mapped by ``uncertain``:
  ``"u-ones"`` -1 -> 1, ``"u-zeros"`` -1 -> 0, ``"u-ignore"`` keeps -1 in the label tensor as a mask value.
  **With u-ignore the caller must mask -1 entries out of the loss and out of the metrics.**
* ``split_col`` (optional): ``train`` / ``val`` (or ``valid``, ``validation``) / ``test`` per row. Splits that
  are missing (or the whole table without a split column) are drawn from train exactly as for folders
  (:func:`medbench.data.folders.assign_splits`: ``val_from_train``, ``test_from_train``, groups).
* ``group_col`` (e.g. a patient id) or ``group_regex`` on the path keep a group in one split.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from medbench.data.cache import cached_store
from medbench.data.dataset import SPLITS, ImageDataset
from medbench.data.folders import FolderListing, assign_splits, name_some, report_bad
from medbench.data.ingest import ingest
from medbench.errors import MedbenchError

UNCERTAIN = ("u-ones", "u-zeros", "u-ignore")
_SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
MAX_UNUSED_SHOWN = 5
_MULTI = {"1": 1, "1.0": 1, "0": 0, "0.0": 0, "": 0, "-1": -1, "-1.0": -1}


def _read_rows(csv_path: Path, needed: list[str]) -> list[tuple[int, dict]]:
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in needed if c not in header]
            if missing:
                raise MedbenchError(f"{csv_path}: column(s) {', '.join(map(repr, missing))} not found; the header "
                                    f"has {', '.join(map(repr, header)) or 'no columns'}")
            rows = [(reader.line_num, row) for row in reader]
    except FileNotFoundError as e:
        raise MedbenchError(f"{csv_path}: file not found; check the path of the CSV") from e
    except (UnicodeDecodeError, csv.Error) as e:
        raise MedbenchError(f"{csv_path}: not a readable UTF-8 CSV file ({e}); save it as UTF-8 CSV") from e
    if not rows:
        raise MedbenchError(f"{csv_path}: no data rows; add one row per image")
    return rows


def _single_labels(csv_path, rows, col) -> tuple[list[int], list[str]]:
    values = [(line, (row[col] or "").strip()) for line, row in rows]
    blank = [line for line, v in values if not v]
    if blank:
        raise MedbenchError(f"{csv_path}: line(s) {name_some([str(b) for b in blank], 5)} have no value in label "
                            f"column {col!r}; fill them in or remove those rows")
    try:
        ints = [int(float(v)) if float(v).is_integer() else None for _, v in values]
    except ValueError:
        ints = None
    if ints is not None and None not in ints:
        neg = [line for (line, _), i in zip(values, ints) if i < 0]
        if neg:
            raise MedbenchError(f"{csv_path}: line {neg[0]}: negative class id in {col!r}; class ids are 0, 1, ...")
        k = max(ints) + 1
        used = set(ints)
        if len(used) < k:  # ids with no row at all: classes nothing can be learnt or scored for (1-based ids?)
            unused = [str(i) for i in range(min(k, len(used) + MAX_UNUSED_SHOWN)) if i not in used]
            top = next(line for (line, _), i in zip(values, ints) if i == k - 1)
            raise MedbenchError(f"{csv_path}: line {top}: class id {k - 1} in {col!r}, but {k - len(used)} smaller "
                                f"id(s) never occur (e.g. {', '.join(unused[:MAX_UNUSED_SHOWN])}); integer labels are "
                                f"class ids 0..K-1 with every id used: renumber them (1-based ids: subtract 1), or "
                                f"write class names instead")
        return ints, [str(i) for i in range(k)]
    names = sorted({v for _, v in values})
    index = {n: i for i, n in enumerate(names)}
    return [index[v] for _, v in values], names


def _multi_labels(csv_path, rows, cols, uncertain) -> list[tuple[int, ...]]:
    out = []
    for line, row in rows:
        vals = []
        for c in cols:
            v = (row[c] or "").strip()
            if v not in _MULTI:
                raise MedbenchError(f"{csv_path}: line {line}: value {v!r} in label column {c!r}; multi-label "
                                    f"columns hold 1, 0, -1 (uncertain) or blank (not mentioned)")
            x = _MULTI[v]
            if x == -1:
                x = {"u-ones": 1, "u-zeros": 0, "u-ignore": -1}[uncertain]
            vals.append(x)
        out.append(tuple(vals))
    return out


@dataclass
class _Table:
    """What the CSV says, checked: image paths (relative to the root unless outside it), labels and splits."""
    csv_path: Path
    root: Path
    paths: list[str]  # one per row
    class_names: list[str]
    task: str
    listing: FolderListing
    group_of: dict[str, str] | None  # path -> group id, from group_col
    line_of: dict[str, int]  # path -> its first line in the CSV (for error messages)


def load_csv(csv_path: str | os.PathLike, *, image_col: str, label_cols: list[str], size: int,
             root: str | os.PathLike | None = None, uncertain: str = "u-ones", split_col: str | None = None,
             channels: int | None = None, resize: str = "pad", val_from_train: float = 0.0,
             test_from_train: float = 0.0, group_col: str | None = None, group_regex: str | None = None,
             seed: int = 0, skip_bad: bool = False, allow_outside_root: bool = False,
             cache_dir: str | os.PathLike | None = None, progress: bool = False,
             memory_budget: float | None = None, workers: int | None = None) -> ImageDataset:
    """Decode the images a CSV lists, with their labels (see the module docstring for the rules).

    ``cache_dir``, ``memory_budget``, ``workers``: as for :func:`medbench.data.folders.load_folder` (a decoded
    store, resumable; tensors when the images fit the memory budget, else read from disk as indexed).
    """
    csv_path = Path(csv_path).expanduser().resolve()
    root = Path(root).expanduser().resolve() if root is not None else csv_path.parent
    label_cols = _check_options(label_cols, uncertain, channels, resize)
    rows = _read_rows(csv_path, [image_col, *label_cols] + [c for c in (split_col, group_col) if c])
    table = _read_table(csv_path, root, rows, image_col, label_cols, uncertain, split_col, group_col,
                        allow_outside_root)
    settings = dict(size=size, channels=channels, resize=resize, uncertain=uncertain, split_col=split_col,
                    val_from_train=val_from_train, test_from_train=test_from_train, group_col=group_col,
                    group_regex=group_regex, seed=seed, skip_bad=skip_bad, image_col=image_col,
                    label_cols=list(label_cols), allow_outside_root=allow_outside_root)

    def build(store: Path, partial: Path) -> None:
        _build(table, settings, store, partial, workers=workers, progress=progress)

    key = {"source": "csv", "csv": str(csv_path), "root": str(root), **settings}
    files_for_key = [csv_path] + sorted({str(root / p) for p in table.paths})
    return cached_store(key, build, cache_dir, files=files_for_key,
                        decode_parts={k: v for k, v in key.items() if k not in ("skip_bad", "channels")},
                        memory_budget=memory_budget, use_cache=cache_dir is not None)


def _check_options(label_cols, uncertain: str, channels, resize: str) -> list[str]:
    """The label columns as a list, once the options are known to be valid."""
    if isinstance(label_cols, str):
        label_cols = [label_cols]
    if not label_cols:
        raise MedbenchError("give at least one label column")
    if uncertain not in UNCERTAIN:
        raise MedbenchError(f"uncertain must be one of {', '.join(UNCERTAIN)}, not {uncertain!r}")
    if channels not in (None, 1, 3):
        raise MedbenchError(f"channels must be 1, 3 or None (automatic), not {channels}")
    if resize not in ("pad", "crop"):
        raise MedbenchError(f"resize mode must be 'pad' or 'crop', not {resize!r}")
    return label_cols


def _read_table(csv_path: Path, root: Path, rows, image_col: str, label_cols: list[str], uncertain: str,
                split_col: str | None, group_col: str | None, allow_outside_root: bool) -> _Table:
    paths = _image_paths(csv_path, root, rows, image_col, allow_outside_root)
    labels, class_names, task = _labels(csv_path, rows, label_cols, uncertain)
    group_of = None
    if group_col:
        group_of = {p: "group:" + (row[group_col] or "").strip() if (row[group_col] or "").strip() else "file:" + p
                    for (_, row), p in zip(rows, paths)}
    line_of: dict[str, int] = {}
    for (line, _), p in zip(rows, paths):
        line_of.setdefault(p, line)
    return _Table(csv_path=csv_path, root=root, paths=paths, class_names=class_names, task=task,
                  listing=_listing(csv_path, root, rows, paths, labels, class_names, split_col),
                  group_of=group_of, line_of=line_of)


def _image_paths(csv_path: Path, root: Path, rows, image_col: str, allow_outside_root: bool) -> list[str]:
    """Each row's image path, relative to ``root`` (absolute when outside it and that is allowed)."""
    paths: list[str] = []
    outside: list[str] = []
    for line, row in rows:
        value = (row[image_col] or "").strip()
        if not value:
            raise MedbenchError(f"{csv_path}: line {line}: empty image path in column {image_col!r}; fill it in or "
                                f"remove the row")
        if "\x00" in value:
            raise MedbenchError(f"{csv_path}: line {line}: image path {value!r} in column {image_col!r} holds a NUL "
                                f"character; fix the path")
        full = (root / value).resolve()
        if full.is_relative_to(root):
            paths.append(full.relative_to(root).as_posix())
        elif allow_outside_root:
            paths.append(str(full))
        else:
            outside.append(f"line {line} ({value})")
    if outside:
        raise MedbenchError(f"{csv_path}: {len(outside)} image path(s) point outside {root}: "
                            f"{name_some(outside, 5)}; fix the paths, pass the right root, or allow paths "
                            f"outside the root explicitly (allow_outside_root=True)")
    return paths


def _labels(csv_path: Path, rows, label_cols: list[str], uncertain: str) -> tuple[list, list[str], str]:
    """(one label per row, class names, task)."""
    if len(label_cols) > 1:
        return _multi_labels(csv_path, rows, label_cols, uncertain), list(label_cols), "multilabel"
    labels, class_names = _single_labels(csv_path, rows, label_cols[0])
    if len(class_names) < 2:
        raise MedbenchError(f"{csv_path}: label column {label_cols[0]!r} has only one class; a classifier "
                            f"needs at least two")
    return labels, class_names, "binary" if len(class_names) == 2 else "multiclass"


def _listing(csv_path: Path, root: Path, rows, paths: list[str], labels: list, class_names: list[str],
             split_col: str | None) -> FolderListing:
    """Files and labels by the split each row names (all train without a split column)."""
    files: dict[str, list[str]] = {s: [] for s in SPLITS}
    by_split: dict[str, list] = {s: [] for s in SPLITS}
    for (line, row), p, y in zip(rows, paths, labels):
        s = "train"
        if split_col:
            v = (row[split_col] or "").strip().lower()
            if v not in _SPLIT_NAMES:
                raise MedbenchError(f"{csv_path}: line {line}: split {row[split_col]!r} in column {split_col!r}; "
                                    f"use train, val or test")
            s = _SPLIT_NAMES[v]
        files[s].append(p)
        by_split[s].append(y)
    return FolderListing(root=root, class_names=class_names, files={s: v for s, v in files.items() if v},
                         labels={s: v for s, v in by_split.items() if v}, has_splits=bool(split_col))


def _build(table: _Table, settings: dict, store: Path, partial: Path, *, workers: int | None,
           progress: bool) -> None:
    """Draw the missing splits, then decode every image into ``store`` (chunks in ``partial``)."""
    csv_path, class_names = table.csv_path, table.class_names
    assigned = assign_splits(table.listing, val_from_train=settings["val_from_train"],
                             test_from_train=settings["test_from_train"], group_regex=settings["group_regex"],
                             seed=settings["seed"], group_of=table.group_of, source=csv_path)
    order = [(s, f, y) for s in SPLITS for f, y in assigned[s]]
    masked = table.task == "multilabel" and settings["uncertain"] == "u-ignore"

    def describe(files: dict[str, list[str]], bad: list[tuple[str, str]], c: int) -> dict:
        if not files["train"]:
            raise MedbenchError(f"{csv_path}: no training images left; add rows or lower the split fractions")
        meta = {"kind": "csv", "csv": str(csv_path), "files": files,
                "skipped": [{"path": f, "reason": r} for f, r in bad], "class_names": class_names,
                "label_mask_value": -1 if masked else None,
                "settings": {**settings, "channels": c}}
        return {"name": f"csv:{csv_path.stem}", "task": table.task, "class_names": class_names,
                "source": str(csv_path), "meta": meta}

    ingest(store, partial, table.root, order, size=settings["size"], resize=settings["resize"],
           channels=settings["channels"], describe=describe,
           on_bad=lambda bad: report_bad(csv_path, bad, settings["skip_bad"], table.line_of), workers=workers,
           progress=progress, label=csv_path.name, source=csv_path)
