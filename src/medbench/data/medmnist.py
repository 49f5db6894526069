"""MedMNIST 2D: npz files -> validated uint8 tensors (or a store on disk), and loading by catalogue name.

The catalogue lives in :mod:`medbench.data.medmnist_info`, downloads and their MD5 check in
:mod:`medbench.data.medmnist_download`; their public names are re-exported here, where callers import them.
"""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from medbench.data import npz as npzlib
from medbench.data.cache import default_cache_dir
from medbench.data.dataset import SPLITS, ImageDataset, Split
from medbench.data.medmnist_download import (
    DEADLINE_MIN_S,
    DEADLINE_S,
    READ_TIMEOUT_S,
    SLOWEST_RATE,
    by_hand,
    default_deadline,
    download,
    max_download_bytes,
    md5sum,
)
from medbench.data.medmnist_info import (
    CATALOGUE,
    MIRROR_ENV,
    SIZES,
    class_names,
    data_root,
    entry,
    expected_bytes,
    expected_md5,
    file_name,
    list_datasets,
    task_of,
    url_for,
)
from medbench.data.memory import fits_in_memory
from medbench.data.store import SplitWriter, finish_store, is_complete, open_store, store_lock
from medbench.errors import MedbenchError

__all__ = [
    "NPZ_FIX", "ARRAYS_FIX", "BLOCK_BYTES", "npz_budget", "read_npz", "check_shapes", "arrays_to_split",
    "pixel_bytes", "load_npz", "load_medmnist",
    # re-exported from medbench.data.medmnist_info and medbench.data.medmnist_download
    "CATALOGUE", "MIRROR_ENV", "SIZES", "data_root", "expected_bytes", "expected_md5", "file_name",
    "list_datasets", "url_for", "DEADLINE_MIN_S", "DEADLINE_S", "READ_TIMEOUT_S", "SLOWEST_RATE",
    "default_deadline", "download", "max_download_bytes", "md5sum",
]


def _fail(path, msg: str) -> MedbenchError:
    return MedbenchError(f"{path}: {msg}")


NPZ_FIX = "delete it and run again to re-download, or replace it with the official file"
ARRAYS_FIX = "write it again with uint8 images [N, H, W] or [N, H, W, 3] and integer labels [N, 1] (or [N, L])"


def npz_budget(name: str, size: int | None) -> int:
    """Bytes a ``name`` npz may declare: twice the catalogue's arrays at ``size`` (any size: the largest), at
    least :data:`medbench.data.npz.FLOOR_BYTES` so small own files under a catalogue name still load."""
    return max(npzlib.FLOOR_BYTES, 2 * expected_bytes(name, size or max(SIZES)))


def read_npz(path: str | os.PathLike, name: str, size: int | None = None, *, fix: str = NPZ_FIX,
             budget: int | None = None, store: str | os.PathLike | None = None,
             progress: bool = False) -> ImageDataset:
    """Read a MedMNIST-layout npz (``{split}_images``, ``{split}_labels``) into uint8 tensors, validating it.

    ``name`` picks the catalogue entry that gives the task, channels and class names. Every split must hold
    images (one common square size: ``size`` when given). Shapes and dtypes are checked from the .npy headers
    before any data is decompressed, and together may not declare more than ``budget`` bytes (default
    :func:`npz_budget`). Any problem is a :class:`MedbenchError` naming the file, the problem and then ``fix``.

    Images are streamed from the zip members a block at a time: in memory they take their own size once (no
    NHWC copy beside the NCHW one); with ``store`` (a folder) they are written there as a store
    (:mod:`medbench.data.store`) and read back from disk as indexed, whatever their size.
    """
    return _read_npz(path, name, size, fix, budget, images=True, store=store, progress=progress)


BLOCK_BYTES = 64 << 20  # images decompressed and converted at a time


def _read_npz(path, name, size, fix, budget, *, images: bool, store=None, progress: bool = False):
    """:func:`read_npz`; with ``images=False`` only headers and labels are read (nothing is returned)."""
    from medbench.progress import progress_bar  # rich: imported only when a file is read

    info = entry(name)
    task, classes = task_of(info), class_names(info)
    budget = npz_budget(name, size) if budget is None else budget
    with npzlib.open_npz(path, fix=fix) as npz:
        keys = set(npz.files)
        want = {f"{s}_{k}" for s in SPLITS for k in ("images", "labels")}
        if not want <= keys:
            raise _fail(path, f"missing arrays {sorted(want - keys)} (found {sorted(keys)}); {fix}")
        counts = {}
        for s in SPLITS:  # headers only: nothing is decompressed until every declared shape is as expected
            hi = npz.header(f"{s}_images")
            counts[s] = check_shapes(path, s, hi, npz.header(f"{s}_labels"), task, classes, info["n_channels"],
                                     size, fix)
            if not counts[s]:
                raise _fail(path, f"{s}_images holds no images; {fix}")
            size = hi.shape[-2] if len(hi.shape) == 4 else hi.shape[-1]  # every split at the size of the first
        declared = sum(npz.header(k).nbytes for k in sorted(want))
        if declared > budget:
            raise _fail(path, f"its arrays declare {declared:,} bytes, more than the {budget:,} a {name} file "
                              f"at {size} px can hold; {fix}")
        splits = {}
        with progress_bar(f"read {Path(path).name}", total=sum(counts.values()) if images else 0,
                          enabled=progress and images, unit="images") as bar:
            for s in SPLITS:
                labels = npz.read(f"{s}_labels")
                _check_values(path, s, labels, task, classes, fix)
                if images:
                    labels = labels.reshape(len(labels), -1).astype(np.int64)
                    splits[s] = _stream_images(npz, s, labels, info["n_channels"], size, store, bar)
    if not images:
        return None
    if store is not None:
        finish_store(Path(store), name=name, task=task, class_names=classes, size=size, source=str(path))
        return open_store(store)
    return ImageDataset(name=name, task=task, class_names=classes, splits=splits, size=size, source=str(path))


def _stream_images(npz, s: str, labels: np.ndarray, c: int, size: int, store, bar) -> Split | None:
    """One split's images, a block at a time, into an NCHW tensor or (``store``) a store's split file."""
    n = len(labels)
    rows = max(1, BLOCK_BYTES // (c * size * size))
    if store is None:
        x = torch.empty((n, c, size, size), dtype=torch.uint8)
        start = 0
        for block in npz.blocks(f"{s}_images", rows):
            k = len(block)
            x[start:start + k] = torch.from_numpy(block.reshape(k, size, size, c)).permute(0, 3, 1, 2)
            start += k
            bar.advance(k)
        return Split(images=x, labels=torch.from_numpy(labels))
    w = SplitWriter(Path(store), s, n, (c, size, size))
    try:
        for block in npz.blocks(f"{s}_images", rows):
            w.write(block.reshape(len(block), size, size, c), channels_last=True)
            bar.advance(len(block))
        w.close(labels)
    except BaseException:
        w.abort()
        raise
    return None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def check_shapes(path, s, images, labels, task, classes, n_channels, size, fix) -> int:
    """Dtype and shape checks on ``images`` / ``labels`` (arrays or .npy headers) -> the number of images."""
    def fail(msg: str) -> MedbenchError:
        return _fail(path, f"{msg}; {fix}")

    if images.dtype != np.uint8:
        raise fail(f"{s}_images has dtype {images.dtype}, expected uint8")
    shape = tuple(images.shape) + ((1,) if len(images.shape) == 3 else ())
    if len(shape) != 4 or shape[-1] not in (1, 3):
        raise fail(f"{s}_images has shape {tuple(images.shape)}, expected (N, H, W) or (N, H, W, 3)")
    n, h, w, c = shape
    if c != n_channels:
        raise fail(f"{s}_images has {c} channel(s), the catalogue says {n_channels}")
    if h != w or h < 1 or (size is not None and h != size):
        raise fail(f"{s}_images are {h}x{w}, expected {size or max(h, 1)}x{size or max(h, 1)}")
    if labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
        raise fail(f"{s}_labels has dtype {labels.dtype}, expected integers")
    width = len(classes) if task == "multilabel" else 1
    lshape = tuple(labels.shape) + ((1,) if len(labels.shape) == 1 and width == 1 else ())
    if lshape != (n, width):
        raise fail(f"{s}_labels has shape {lshape}, expected ({n}, {width})")
    return n


def _check_values(path, s, labels, task, classes, fix) -> None:
    hi = 1 if task == "multilabel" else len(classes) - 1
    if labels.size and (labels.min() < 0 or labels.max() > hi):
        raise _fail(path, f"{s}_labels has values in [{labels.min()}, {labels.max()}], expected [0, {hi}]; {fix}")


def arrays_to_split(path, s, images, labels, task, classes, n_channels, size, *, fix: str = ARRAYS_FIX) -> Split:
    """Validate one split's arrays from ``path`` -> a :class:`Split`; any problem names the file, then ``fix``."""
    check_shapes(path, s, images, labels, task, classes, n_channels, size, fix)
    if images.ndim == 3:
        images = images[..., None]
    if labels.ndim == 1:
        labels = labels[:, None]
    _check_values(path, s, labels, task, classes, fix)
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    return Split(images=x, labels=torch.from_numpy(labels.astype(np.int64)))


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, name: str, size: int, _mtime_ns: int, _nbytes: int) -> ImageDataset:
    ds = read_npz(path, name, size)
    ds.md5 = md5sum(path)
    return ds


def pixel_bytes(path: str | os.PathLike, fix: str = NPZ_FIX) -> int:
    """Bytes the images of an npz take decoded, from its .npy headers (nothing is decompressed)."""
    with npzlib.open_npz(path, fix=fix) as npz:
        return sum(npz.header(k).nbytes for k in npz.files if k.endswith("_images"))


def load_npz(path: str | os.PathLike, name: str, size: int | None = None, *, memory_budget: float | None = None,
             cache_dir=None, progress: bool = False, md5: str | None = None) -> ImageDataset:
    """A MedMNIST-layout npz as a dataset of catalogue entry ``name``: whole in memory when its images fit the
    memory budget (:mod:`medbench.data.memory`), else converted once (streaming) into a store in the cache folder,
    keyed by the file's MD5, and read from disk as indexed. A second call reuses the store."""
    path = Path(path)
    md5 = md5 or md5sum(path)
    if fits_in_memory(pixel_bytes(path), memory_budget):
        st = path.stat()
        ds = _load_cached(str(path.resolve()), name, size or 0, st.st_mtime_ns, st.st_size) if size else \
            read_npz(path, name)
    else:
        key = hashlib.sha256(f"medmnist-store\0{name}\0{size}\0{md5}".encode()).hexdigest()
        folder = Path(cache_dir or default_cache_dir()).expanduser() / f"{key}.store"
        with store_lock(folder):  # torchrun ranks, or two runs, convert once
            if not is_complete(folder):
                read_npz(path, name, size, store=folder, progress=progress)
        ds = open_store(folder)
    ds.md5 = md5
    return ds


def load_medmnist(name: str, size: int = 28, data_dir=None, *, download_missing: bool = True,
                  progress: bool = True, memory_budget: float | None = None) -> ImageDataset:
    """Load a MedMNIST 2D dataset, downloading it if missing; held in memory (decoded once per process) when it
    fits the memory budget, else read from a store converted once (:func:`load_npz`)."""
    md5 = expected_md5(name, size)
    root = data_root(data_dir)
    path = root / file_name(name, size)
    if not path.is_file():
        if not download_missing:
            raise MedbenchError(f"{path} not found. {by_hand(name, size, path)}")
        download(name, size, data_dir, progress=progress)
    got = md5sum(path)
    if got != md5:
        _refuse_unofficial(path, name, size, got, md5)
    return load_npz(path, name, size, memory_budget=memory_budget, progress=progress, md5=got)


def _refuse_unofficial(path: Path, name: str, size: int, got: str, md5: str) -> None:
    """A file whose MD5 is not the catalogue's is never used: the error says why, and what is wrong inside it when
    something is (the MD5 alone says only that it is not the official one). Headers and labels only are read: its
    images are never decompressed, so a bomb costs nothing."""
    instead = by_hand(name, size, path)
    instead = instead[0].lower() + instead[1:]
    _read_npz(path, name, size, f"it is not the official file either (md5 {got}, MedMNIST lists {md5}), so it "
                                f"is not used: delete it to re-download, or {instead}", None, images=False)
    raise MedbenchError(f"{path} has md5 {got}, but MedMNIST lists {md5} for it: the file is corrupted or "
                        f"from another release, so it is not used. Delete it to re-download, or {instead}")
