"""A folder of image files -> an :class:`ImageDataset`.

Layout (``scan_folder``):

* ``root/train/`` (and optionally ``root/val/``, ``root/test/``) are the splits when ``root/train`` exists;
  otherwise the whole of ``root`` is one pool (reported as the ``"train"`` split of the listing,
  ``has_splits=False``).
* The class of a file is the first folder under its split folder (``train/PNEUMONIA/x.jpeg`` -> PNEUMONIA),
  or, with ``label_regex``, the first capture group (or the whole match) of ``re.search(label_regex, path)``
  with ``path`` the file's POSIX path relative to its split folder. Files the regex does not match are an
  error, never silently dropped.
* Hidden files and folders (a name starting with ``.``) and files whose suffix is not in ``extensions`` are
  ignored and listed in ``FolderListing.ignored``.
* An image that is a symbolic link (or lies in a linked class folder) resolving outside ``root`` is an error,
  as a CSV path outside its root is (:func:`inside_root`).

Splitting (``load_folder``):

* A split folder that is missing is drawn from train: ``val`` with ``val_from_train`` (default
  :data:`DEFAULT_VAL_FRACTION` when 0), ``test`` with ``test_from_train`` (default :data:`DEFAULT_TEST_FRACTION`).
* ``val_from_train > 0`` (or ``test_from_train > 0``) *replaces* an existing val (test) folder: its images are
  added to train, and the split is a fresh stratified draw from that enlarged train pool (useful for the public
  pneumonia set whose val folder holds 16 images). Fractions are of the train pool; test is drawn first,
  val from the rest with fraction ``val / (1 - test)`` so both stay fractions of the pool.
* ``group_regex`` (e.g. ``(person\\d+)_``) keeps every file of a group (patient) in one split; files it
  does not match are each their own group.
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medbench.data.dataset import SPLITS, ImageDataset
from medbench.data.splits import stratified_split
from medbench.errors import MedbenchError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")
DEFAULT_VAL_FRACTION = 0.1
DEFAULT_TEST_FRACTION = 0.2
MAX_NAMED = 10  # files named in an error message; the rest are counted


@dataclass
class FolderListing:
    root: Path
    class_names: list[str]
    files: dict[str, list[str]]  # split -> POSIX paths relative to root
    labels: dict[str, list[int]]  # split -> class index per file
    has_splits: bool  # True: train/val/test folders were used; False: one pool, listed as "train"
    ignored: list[str] = field(default_factory=list)  # hidden files/folders and non-image files, relative to root

    def all_files(self) -> list[str]:
        return [f for s in self.files for f in self.files[s]]


def name_some(items: list[str], n: int = MAX_NAMED) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def inside_root(root: Path, path: Path) -> Path | None:
    """``path`` with symlinks resolved, relative to ``root`` (resolved), or None when it points outside."""
    full, base = Path(path).resolve(), Path(root).resolve()
    return full.relative_to(base) if full.is_relative_to(base) else None


def _walk(folder: Path, root: Path, extensions: tuple[str, ...], ignored: list[str]) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        d = Path(dirpath)
        for name in sorted(dirnames):
            if name.startswith("."):
                ignored.append((d / name).relative_to(root).as_posix() + "/")
        dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
        for name in sorted(filenames):
            p = d / name
            if name.startswith(".") or p.suffix.lower() not in extensions:
                ignored.append(p.relative_to(root).as_posix())
            else:
                out.append(p)
    return out


def scan_folder(root: str | os.PathLike, *, label_regex: str | None = None,
                extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> FolderListing:
    """List the image files of ``root`` by split and class (see the module docstring for the layout)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MedbenchError(f"{root}: not a folder; give a folder of images (class sub-folders, or train/val/test "
                            f"folders holding class sub-folders)")
    extensions = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    rx = None
    if label_regex is not None:
        try:
            rx = re.compile(label_regex)
        except re.error as e:
            raise MedbenchError(f"label regex {label_regex!r} is invalid ({e}); fix the pattern") from e
    has_splits = (root / "train").is_dir()
    split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()} if has_splits else {"train": root}
    ignored: list[str] = []
    if has_splits:  # anything beside the split folders is not used
        ignored += [p.name + ("/" if p.is_dir() else "") for p in sorted(root.iterdir()) if p.name not in split_dirs]
    raw: dict[str, list[tuple[str, str]]] = {}
    unmatched: list[str] = []
    loose: list[str] = []
    empty_classes: list[str] = []
    for split, folder in split_dirs.items():
        entries = []
        if rx is None:
            for sub in sorted(folder.iterdir()):
                if sub.name.startswith("."):
                    ignored.append(sub.relative_to(root).as_posix() + ("/" if sub.is_dir() else ""))
                elif sub.is_dir():
                    files = _walk(sub, root, extensions, ignored)
                    if not files:
                        empty_classes.append(sub.relative_to(root).as_posix() + "/")
                    entries += [(p.relative_to(root).as_posix(), sub.name) for p in files]
                elif sub.suffix.lower() in extensions:
                    loose.append(sub.relative_to(root).as_posix())
                else:
                    ignored.append(sub.relative_to(root).as_posix())
        else:
            for p in _walk(folder, root, extensions, ignored):
                m = rx.search(p.relative_to(folder).as_posix())
                if m is None:
                    unmatched.append(p.relative_to(root).as_posix())
                    continue
                label = m.group(1) if rx.groups else m.group(0)
                if not label:
                    unmatched.append(p.relative_to(root).as_posix())
                    continue
                entries.append((p.relative_to(root).as_posix(), label))
        raw[split] = entries
    outside = [f for entries in raw.values() for f, _ in entries if inside_root(root, root / f) is None]
    if outside:
        raise MedbenchError(f"{root}: {len(outside)} image(s) are links that point outside the folder: "
                            f"{name_some(outside, 5)}; copy those images into the folder or remove the links")
    if unmatched:
        raise MedbenchError(f"{root}: {len(unmatched)} image(s) do not match the label regex {label_regex!r}: "
                            f"{name_some(unmatched, 5)}; fix the regex or move those files out of the folder")
    if loose:
        raise MedbenchError(f"{root}: {len(loose)} image(s) are not inside a class folder: {name_some(loose, 5)}; "
                            f"put each image in a sub-folder named after its class, or give a label regex")
    if empty_classes:
        raise MedbenchError(f"{root}: class folder(s) with no images: {name_some(empty_classes, 5)}; "
                            f"add images or remove the folder(s)")
    if not any(raw.values()):
        raise MedbenchError(f"{root}: no image files found (looked for {', '.join(extensions)}); "
                            f"point at a folder of images with one sub-folder per class")
    class_names = sorted({c for entries in raw.values() for _, c in entries})
    if len(class_names) < 2:
        raise MedbenchError(f"{root}: only one class found ({class_names[0]}); a classifier needs at least two "
                            f"class folders (or label-regex values)")
    index = {c: i for i, c in enumerate(class_names)}
    files = {s: [f for f, _ in e] for s, e in raw.items()}
    labels = {s: [index[c] for _, c in e] for s, e in raw.items()}
    return FolderListing(root=root, class_names=class_names, files=files, labels=labels,
                         has_splits=has_splits, ignored=ignored)


def group_ids(paths: list[str], group_regex: str | None) -> list[str]:
    """Group id per path: the first capture group (or whole match) of ``group_regex``; no match = own group."""
    if group_regex is None:
        return list(paths)
    try:
        rx = re.compile(group_regex)
    except re.error as e:
        raise MedbenchError(f"group regex {group_regex!r} is invalid ({e}); fix the pattern") from e
    out = []
    for p in paths:
        m = rx.search(p)
        out.append(("group:" + (m.group(1) if rx.groups else m.group(0))) if m else "file:" + p)
    return out


def assign_splits(listing: FolderListing, *, val_from_train: float = 0.0, test_from_train: float = 0.0,
                  group_regex: str | None = None, seed: int = 0,
                  group_of: dict[str, str] | None = None, source=None) -> dict[str, list[tuple[str, int]]]:
    """``{split: [(relative path, label), ...]}`` for train/val/test, drawing missing splits from train.

    ``group_of`` (path -> group id) replaces ``group_regex`` when given (used for a CSV group column). Errors
    start with ``source`` (the folder or CSV file; default the listing's root).
    """
    where = f"{source if source is not None else listing.root}: "
    for name, frac in (("val_from_train", val_from_train), ("test_from_train", test_from_train)):
        if not 0 <= frac < 1:
            raise MedbenchError(f"{where}{name} must be in [0, 1), not {frac}")
    present = {s: list(zip(listing.files.get(s, []), listing.labels.get(s, []))) for s in SPLITS}
    fractions = {"val": val_from_train, "test": test_from_train}
    if not listing.has_splits or not present["val"]:
        fractions["val"] = fractions["val"] or DEFAULT_VAL_FRACTION
    if not listing.has_splits or not present["test"]:
        fractions["test"] = fractions["test"] or DEFAULT_TEST_FRACTION
    if fractions["val"] + fractions["test"] >= 1:
        raise MedbenchError(f"{where}val_from_train + test_from_train = {fractions['val'] + fractions['test']} leaves "
                            f"no training images; use smaller fractions")
    pool = list(present["train"])
    out = {s: [] if fractions.get(s, 0) > 0 else present[s] for s in SPLITS}
    for s in ("val", "test"):
        if fractions[s] > 0:
            pool += present[s]  # a replaced val/test folder goes to train
    remaining = 1.0
    for s in ("test", "val"):
        if fractions[s] <= 0 or not pool:
            continue
        labels = np.array([c for _, c in pool], dtype=np.int64)  # [N], or [N, L] for multi-label tuples
        groups = ([group_of.get(f, "file:" + f) for f, _ in pool] if group_of is not None
                  else group_ids([f for f, _ in pool], group_regex))
        if len(set(groups)) < 2:
            raise MedbenchError(f"{where}cannot draw a {s} split from {len(pool)} training image(s) in "
                                f"{len(set(groups))} group(s); add images, or provide {s} images of your own")
        keep, take = stratified_split(labels, fractions[s] / remaining, seed=seed + (1 if s == "val" else 0),
                                      groups=groups)
        out[s] = [pool[i] for i in take]
        pool = [pool[i] for i in keep]
        remaining -= fractions[s]
    out["train"] = pool
    return out


def report_bad(source, bad: list[tuple[str, str]], skip_bad: bool, lines: dict[str, int] | None = None) -> None:
    """Unreadable files ``[(path, reason)]``: one error naming them (``source`` first; with ``lines``, path -> line
    of a listing file, each with its line), or with ``skip_bad`` a warning; the caller records them."""
    if bad and not skip_bad:
        where = (lambda f: f"line {lines[f]}: ") if lines else (lambda f: "")
        named = "; ".join(f"{f} ({where(f)}{r})" for f, r in bad[:MAX_NAMED])
        more = f"; and {len(bad) - MAX_NAMED} more" if len(bad) > MAX_NAMED else ""
        raise MedbenchError(f"{source}: {len(bad)} image(s) cannot be decoded: {named}{more}. Fix or remove them, "
                            f"or pass skip_bad=True (--skip-bad) to leave them out")
    if bad:
        warnings.warn(f"{source}: skipped {len(bad)} unreadable image(s): {name_some([f for f, _ in bad])}",
                      stacklevel=2)


def _ingest_folder(store: Path, partial: Path, root: Path, listing: FolderListing, *, size, channels, resize,
                   label_regex, val_from_train, test_from_train, group_regex, seed, skip_bad, progress,
                   workers) -> None:
    from medbench.data.ingest import ingest

    assigned = assign_splits(listing, val_from_train=val_from_train, test_from_train=test_from_train,
                             group_regex=group_regex, seed=seed)
    order = [(s, f, c) for s in SPLITS for f, c in assigned[s]]

    def describe(files: dict[str, list[str]], bad: list[tuple[str, str]], c: int) -> dict:
        if not files["train"]:
            raise MedbenchError(f"{root}: no training images left after splitting; add images or lower the "
                                f"fractions")
        groups = {s: [g.split(":", 1)[1] if g.startswith("group:") else None
                      for g in group_ids(files[s], group_regex)] if group_regex else [] for s in SPLITS}
        meta = {
            "kind": "folder",
            "files": files,
            "groups": groups,
            "skipped": [{"path": f, "reason": r} for f, r in bad],
            "ignored": listing.ignored,
            "class_names": listing.class_names,
            "settings": {"size": size, "channels": c, "resize": resize, "label_regex": label_regex,
                         "val_from_train": val_from_train, "test_from_train": test_from_train,
                         "group_regex": group_regex, "seed": seed, "skip_bad": skip_bad},
        }
        return {"name": f"folder:{root.name}", "task": "binary" if len(listing.class_names) == 2 else "multiclass",
                "class_names": list(listing.class_names), "source": str(root), "meta": meta}

    ingest(store, partial, root, order, size=size, resize=resize, channels=channels, describe=describe,
           on_bad=lambda bad: report_bad(root, bad, skip_bad), workers=workers, progress=progress, label=root.name)


def load_folder(root: str | os.PathLike, *, size: int, channels: int | None = None, resize: str = "pad",
                label_regex: str | None = None, val_from_train: float = 0.0, test_from_train: float = 0.0,
                group_regex: str | None = None, seed: int = 0, skip_bad: bool = False,
                cache_dir: str | os.PathLike | None = None, progress: bool = False,
                memory_budget: float | None = None, workers: int | None = None) -> ImageDataset:
    """Decode a folder of images into an :class:`ImageDataset` (task "binary" for 2 classes, else "multiclass").

    ``channels``: 1, 3, or None = 1 when every image is grey (one channel, or three equal ones), else 3.
    ``resize``: "pad" or "crop" to square, then resize to ``size`` (:func:`resize_square`).
    ``skip_bad``: leave unreadable files out (recorded in ``meta["skipped"]`` with a warning) instead of failing.
    ``cache_dir``: keep the decoded store there and reuse it (:mod:`medbench.data.cache`); an interrupted decode
    resumes where it stopped. None = no cache (a temporary store).
    ``memory_budget`` (GB, None = automatic, :mod:`medbench.data.memory`): images that fit are returned as
    tensors, larger data as :class:`medbench.data.store.DiskImages` read from the store as indexed.
    ``workers``: decoding processes (None = one per CPU; 1 = in this process), :mod:`medbench.data.ingest`.
    ``meta`` holds per split the relative ``files`` and ``groups`` (group id or None), plus ``skipped``,
    ``ignored``, ``class_names``, the ``settings`` used and how the store was decoded (``ingest``).
    """
    from medbench.data.cache import cached_store

    root = Path(root).expanduser().resolve()
    if channels not in (None, 1, 3):
        raise MedbenchError(f"channels must be 1, 3 or None (automatic), not {channels}")
    if resize not in ("pad", "crop"):
        raise MedbenchError(f"resize mode must be 'pad' or 'crop', not {resize!r}")
    if not isinstance(size, int) or size < 1:
        raise MedbenchError(f"image size must be a positive integer, not {size!r}")
    listing = scan_folder(root, label_regex=label_regex)
    settings = dict(size=size, channels=channels, resize=resize, label_regex=label_regex,
                    val_from_train=val_from_train, test_from_train=test_from_train, group_regex=group_regex,
                    seed=seed, skip_bad=skip_bad)

    def build(store: Path, partial: Path) -> None:
        _ingest_folder(store, partial, root, listing, progress=progress, workers=workers, **settings)

    key = {"source": "folder", "root": str(root), **settings}
    return cached_store(key, build, cache_dir, files=[root / f for f in listing.all_files()],
                        decode_parts={k: v for k, v in key.items() if k not in ("skip_bad", "channels")},
                        memory_budget=memory_budget, use_cache=cache_dir is not None)
