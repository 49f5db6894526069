"""Which subgroup each image of a split belongs to: CSV columns (``--subgroup-cols sex,site``) and a regex on the
image path (``--subgroup-regex site=^(\\w+)/``, folders and CSVs).

* Columns are read from the dataset's CSV again and joined to the split's images by path, normalised exactly as
  the loader normalised them (:func:`medbench.data.tables._image_paths`: relative to the root, the CSV's folder).
  A missing column is an error naming the CSV and the columns it has; one path listed on several lines with
  different values is an error naming the lines. A blank cell is the subgroup ``"(none)"``.
* The regex is searched in each image's path relative to the data root; its first capture group is the
  subgroup. A path it does not match (or whose group captured nothing) goes to the explicit subgroup
  ``"(none)"`` rather than stopping the run: subgroup metrics are shown beside the headline ones, and the report
  counts the ``"(none)"`` images so they are never hidden. A regex that matches no path at all is an error (it is
  certainly wrong).

Values are strings, one per image of the split, in the split's image order (``ds.meta["files"][split]``).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from medbench.data.dataset import ImageDataset
from medbench.data.folders import name_some
from medbench.data.tables import _image_paths, _read_rows
from medbench.errors import MedbenchError

NONE = "(none)"  # the subgroup of an image without a value (blank cell, path the regex does not match)


def parse_subgroup_regex(spec: str) -> tuple[str, re.Pattern]:
    """``"NAME=REGEX"`` -> (name, compiled regex with at least one capture group)."""
    name, eq, pattern = spec.partition("=")
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise MedbenchError(f"--subgroup-regex {spec!r}: not a valid regex ({e}); write NAME=REGEX") from None
    if not eq or not name.strip() or not pattern or rx.groups < 1:
        raise MedbenchError(f"--subgroup-regex {spec!r}: write NAME=REGEX with a capture group, e.g. "
                            f"'site=^(\\w+)/'")
    return name.strip(), rx


def split_files(ds: ImageDataset, split: str) -> list[str]:
    """The split's image paths relative to the data root, in image order (folder and CSV datasets only)."""
    files = ds.meta.get("files") if ds.meta.get("kind") in ("folder", "csv") else None
    if not isinstance(files, dict):
        raise MedbenchError(f"{ds.name}: subgroups need a folder: or csv: dataset (image paths); MedMNIST images "
                            f"have no path or attributes to group by")
    paths = list(files.get(split, []))
    if len(paths) != len(ds[split]):
        raise MedbenchError(f"{ds.name}: the {split} split has {len(ds[split])} images but its file list "
                            f"{len(paths)}; clear the decoded cache (medbench cache clear) and run again")
    return paths


def subgroup_values(ds: ImageDataset, split: str, cols: list[str] | None = None, regex: str | None = None, *,
                    root: str | Path | None = None) -> dict[str, np.ndarray]:
    """{subgroup name: str array [N] of each image's subgroup} for the split (see the module docstring).

    ``cols``: CSV columns (csv: datasets only); ``regex``: ``"NAME=REGEX"`` on the relative path. ``root``: the
    CSV's image root when it was not the CSV's folder (Python API only). Nothing asked: ``{}``.
    """
    if not cols and not regex:
        return {}
    paths = split_files(ds, split)
    out: dict[str, np.ndarray] = {}
    if cols:
        out.update(_column_values(ds, paths, list(cols), root))
    if regex:
        name, rx = parse_subgroup_regex(regex)
        if name in out:
            raise MedbenchError(f"--subgroup-regex names its subgroup {name!r}, as a --subgroup-cols column does; "
                                f"rename one")
        out[name] = _regex_values(ds, split, paths, regex, rx)
    return out


def subgroup_values_for(ds: ImageDataset, split: str, cfg) -> dict[str, np.ndarray]:
    """:func:`subgroup_values` with a run's settings (``cfg.subgroup_cols``, ``cfg.subgroup_regex``)."""
    return subgroup_values(ds, split, cfg.subgroup_cols, cfg.subgroup_regex)


def _regex_values(ds: ImageDataset, split: str, paths: list[str], spec: str, rx: re.Pattern) -> np.ndarray:
    found = [rx.search(p) for p in paths]
    values = [m.group(1) if m and m.group(1) else NONE for m in found]
    if paths and all(v == NONE for v in values):
        raise MedbenchError(f"--subgroup-regex {spec!r} matches none of the {len(paths)} {split} paths of "
                            f"{ds.name} (e.g. {paths[0]!r}); the regex is searched in the path relative to the "
                            f"data root and its first group is the subgroup")
    return np.array(values, dtype=object).astype(str)


def _column_values(ds: ImageDataset, paths: list[str], cols: list[str], root) -> dict[str, np.ndarray]:
    if ds.meta.get("kind") != "csv":
        raise MedbenchError(f"--subgroup-cols {','.join(cols)}: {ds.name} is not a csv: dataset; for a folder use "
                            f"--subgroup-regex NAME=REGEX on the image paths")
    csv_path = Path(ds.meta["csv"])
    settings = ds.meta.get("settings", {})
    image_col = settings.get("image_col")
    if not image_col:
        raise MedbenchError(f"{ds.name}: the decoded data does not record its image column; clear the decoded "
                            f"cache (medbench cache clear) and run again")
    root = Path(root).expanduser().resolve() if root is not None else csv_path.parent
    rows = _read_rows(csv_path, [image_col, *cols])  # a missing column: one line naming the CSV and its header
    row_paths = _image_paths(csv_path, root, rows, image_col, bool(settings.get("allow_outside_root")))
    out = {}
    for col in cols:
        by_path: dict[str, tuple[str, int]] = {}
        for (line, row), p in zip(rows, row_paths):
            v = (row[col] or "").strip() or NONE
            seen = by_path.setdefault(p, (v, line))
            if seen[0] != v:
                raise MedbenchError(f"{csv_path}: {p!r} has {col!r} = {seen[0]!r} on line {seen[1]} but {v!r} on "
                                    f"line {line}; give each image one value")
        missing = [p for p in paths if p not in by_path]
        if missing:
            raise MedbenchError(f"{csv_path}: {len(missing)} image(s) of the run are not listed in it "
                                f"({name_some(missing, 3)}); was the CSV changed since the data was decoded?")
        out[col] = np.array([by_path[p][0] for p in paths], dtype=object).astype(str)
    return out
