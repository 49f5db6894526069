"""MedMNIST 2D: catalogue (from the ``medmnist`` package's INFO), download with MD5 check, npz -> tensors."""
from __future__ import annotations

import functools
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import torch
from medmnist.info import INFO

from medmnist.info import DEFAULT_ROOT as _MEDMNIST_ROOT

from medbench.data.dataset import SPLITS, ImageDataset, Split
from medbench.errors import MedbenchError
from medbench.fileio import no_room, no_room_error
from medbench.tasks import from_medmnist_task

SIZES = (28, 64, 128, 224)
# 2D sets only: the 3D volumes ("...mnist3d") need another pipeline.
CATALOGUE: dict[str, dict] = {k: v for k, v in INFO.items() if not k.endswith("3d")}
MIRROR_ENV = "MEDBENCH_MIRROR"  # base URL that replaces Zenodo's, e.g. an institutional mirror


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir`` > ``$MEDBENCH_DATA`` > ``~/.medmnist`` (the medmnist package's own default)."""
    root = data_dir or os.environ.get("MEDBENCH_DATA") or _MEDMNIST_ROOT
    return Path(root).expanduser()


def _info(name: str) -> dict:
    if name not in CATALOGUE:
        import difflib

        close = difflib.get_close_matches(name, CATALOGUE, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise MedbenchError(f"unknown dataset '{name}'.{hint} Valid: {', '.join(CATALOGUE)}")
    return CATALOGUE[name]


def _check_size(size: int) -> None:
    if size not in SIZES:
        raise MedbenchError(f"MedMNIST size must be one of {', '.join(map(str, SIZES))}, not {size}; pass --size "
                            f"with one of them (folder: and csv: datasets take any size)")


def file_name(name: str, size: int = 28) -> str:
    return f"{name}.npz" if size == 28 else f"{name}_{size}.npz"


def expected_md5(name: str, size: int = 28) -> str:
    _check_size(size)
    return _info(name)["MD5" if size == 28 else f"MD5_{size}"]


def url_for(name: str, size: int = 28) -> str:
    _check_size(size)
    url = _info(name)["url" if size == 28 else f"url_{size}"]
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        url = mirror.rstrip("/") + "/" + file_name(name, size)
    return url


def list_datasets(data_dir=None) -> list[dict]:
    """One record per 2D dataset: task, channels, classes, split sizes and which sizes are on disk."""
    root = data_root(data_dir)
    out = []
    for name, info in CATALOGUE.items():
        out.append({
            "name": name,
            "task": from_medmnist_task(info["task"]),
            "n_channels": info["n_channels"],
            "classes": [info["label"][str(i)] for i in range(len(info["label"]))],
            "n_samples": dict(info["n_samples"]),
            "sizes": list(SIZES),
            "cached_sizes": [s for s in SIZES if (root / file_name(name, s)).is_file()],
            "license": info.get("license"),
        })
    return out


@functools.lru_cache(maxsize=64)
def _md5_cached(path: str, _size: int, _mtime_ns: int) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def md5sum(path: str | os.PathLike) -> str:
    st = os.stat(path)
    return _md5_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def _by_hand(name: str, size: int, dest: Path) -> str:
    return (f"Download {url_for(name, size)} by hand and save it as {dest} "
            f"(md5 {expected_md5(name, size)}), or point --data-dir / MEDBENCH_DATA at a folder that has it.")


def download(name: str, size: int = 28, data_dir=None, *, progress: bool = True, timeout: float = 60.0) -> Path:
    """Fetch ``name`` at ``size`` into the data root: temp file, MD5 check, atomic rename."""
    md5 = expected_md5(name, size)
    root = data_root(data_dir)
    dest = root / file_name(name, size)
    url = url_for(name, size)
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=root)
    except OSError as e:
        raise MedbenchError(f"cannot write to data folder {root} ({e.strerror}); use --data-dir or MEDBENCH_DATA "
                            f"to choose a writable one") from e
    tmp = Path(tmp_name)
    h = hashlib.md5()
    got = 0
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                resp = urllib.request.urlopen(url, timeout=timeout)
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
                reason = f"HTTP {e.code} {e.reason}" if isinstance(e, urllib.error.HTTPError) else (
                    f"not an HTTP reply: {e!r}" if not isinstance(e, (OSError, ValueError)) else
                    getattr(e, "reason", None) or e)
                raise MedbenchError(f"download of {url} failed ({reason}). {_by_hand(name, size, dest)}") from e
            with resp:
                total = int(resp.headers.get("Content-Length") or 0) or None
                from medbench.progress import progress_bar

                with progress_bar(f"download {dest.name}", total=total, enabled=progress, unit="bytes") as bar:
                    try:
                        for chunk in iter(lambda: resp.read(1 << 20), b""):
                            out.write(chunk)
                            h.update(chunk)
                            got += len(chunk)
                            bar.advance(len(chunk))
                    except (OSError, urllib.error.URLError, http.client.HTTPException) as e:
                        if no_room(e) is not None:
                            raise
                        raise MedbenchError(f"download of {url} broke off after {got} bytes ({e}). "
                                            f"{_by_hand(name, size, dest)}") from e
            out.flush()
            os.fsync(out.fileno())
        if total is not None and got != total:
            raise MedbenchError(f"download of {url} is truncated: {got} of {total} bytes. {_by_hand(name, size, dest)}")
        if h.hexdigest() != md5:
            raise MedbenchError(f"download of {url} is corrupted: md5 {h.hexdigest()}, expected {md5}. "
                                f"{_by_hand(name, size, dest)}")
        os.replace(tmp, dest)
    except OSError as e:
        code = no_room(e)
        if code is None:
            raise
        raise no_room_error(dest, code) from e
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _fail(path, msg: str) -> MedbenchError:
    return MedbenchError(f"{path}: {msg}")


NPZ_FIX = "delete it and run again to re-download, or replace it with the official file"
ARRAYS_FIX = "write it again with uint8 images [N, H, W] or [N, H, W, 3] and integer labels [N, 1] (or [N, L])"


def read_npz(path: str | os.PathLike, name: str, size: int | None = None, *, fix: str = NPZ_FIX) -> ImageDataset:
    """Read a MedMNIST-layout npz (``{split}_images``, ``{split}_labels``) into uint8 tensors, validating it.

    ``name`` picks the catalogue entry that gives the task, channels and class names. Every split must hold
    images (one common square size: ``size`` when given). Any problem is a :class:`MedbenchError` naming the
    file, the problem and then ``fix``.
    """
    info = _info(name)
    task = from_medmnist_task(info["task"])
    classes = [info["label"][str(i)] for i in range(len(info["label"]))]
    try:
        npz = np.load(path, allow_pickle=False)
    except FileNotFoundError as e:
        raise _fail(path, "file not found; check the path") from e
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise _fail(path, f"not a readable .npz file ({_one_line(e)}); {fix}") from e
    if not isinstance(npz, np.lib.npyio.NpzFile):  # a bare .npy array saved under an .npz name
        raise _fail(path, f"not a readable .npz file (it holds a single .npy array, not named arrays); {fix}")
    with npz:
        keys = set(npz.files)
        want = {f"{s}_{k}" for s in SPLITS for k in ("images", "labels")}
        if not want <= keys:
            raise _fail(path, f"missing arrays {sorted(want - keys)} (found {sorted(keys)}); {fix}")
        splits = {}
        for s in SPLITS:
            try:
                images, labels = npz[f"{s}_images"], npz[f"{s}_labels"]
            except Exception as e:  # noqa: BLE001 - a damaged member fails in zlib, zipfile or numpy's header parser
                raise _fail(path, f"array {s}_images/{s}_labels cannot be read ({type(e).__name__}: "
                                  f"{_one_line(e)}); {fix}") from e
            split = arrays_to_split(path, s, images, labels, task, classes, info["n_channels"], size, fix=fix)
            if not len(split):
                raise _fail(path, f"{s}_images holds no images; {fix}")
            size = split.images.shape[-1]  # every split at the size of the first
            splits[s] = split
    return ImageDataset(name=name, task=task, class_names=classes, splits=splits,
                        size=splits["train"].images.shape[-1], source=str(path))


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def arrays_to_split(path, s, images, labels, task, classes, n_channels, size, *, fix: str = ARRAYS_FIX) -> Split:
    """Validate one split's arrays from ``path`` -> a :class:`Split`; any problem names the file, then ``fix``."""
    def fail(msg: str) -> MedbenchError:
        return _fail(path, f"{msg}; {fix}")

    if images.dtype != np.uint8:
        raise fail(f"{s}_images has dtype {images.dtype}, expected uint8")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise fail(f"{s}_images has shape {images.shape}, expected (N, H, W) or (N, H, W, 3)")
    n, h, w, c = images.shape
    if c != n_channels:
        raise fail(f"{s}_images has {c} channel(s), the catalogue says {n_channels}")
    if h != w or h < 1 or (size is not None and h != size):
        raise fail(f"{s}_images are {h}x{w}, expected {size or max(h, 1)}x{size or max(h, 1)}")
    if labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
        raise fail(f"{s}_labels has dtype {labels.dtype}, expected integers")
    width = len(classes) if task == "multilabel" else 1
    if labels.ndim == 1 and width == 1:
        labels = labels[:, None]
    if labels.shape != (n, width):
        raise fail(f"{s}_labels has shape {labels.shape}, expected ({n}, {width})")
    hi = 1 if task == "multilabel" else len(classes) - 1
    if n and (labels.min() < 0 or labels.max() > hi):
        raise fail(f"{s}_labels has values in [{labels.min()}, {labels.max()}], expected [0, {hi}]")
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    return Split(images=x, labels=torch.from_numpy(labels.astype(np.int64)))


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, name: str, size: int, _mtime_ns: int, _nbytes: int) -> ImageDataset:
    ds = read_npz(path, name, size)
    ds.md5 = md5sum(path)
    return ds


def load_medmnist(name: str, size: int = 28, data_dir=None, *, download_missing: bool = True,
                  progress: bool = True) -> ImageDataset:
    """Load a MedMNIST 2D dataset, downloading it if missing; decoded once per process."""
    md5 = expected_md5(name, size)
    root = data_root(data_dir)
    path = root / file_name(name, size)
    if not path.is_file():
        if not download_missing:
            raise MedbenchError(f"{path} not found. {_by_hand(name, size, path)}")
        download(name, size, data_dir, progress=progress)
    got = md5sum(path)
    if got != md5:
        by_hand = _by_hand(name, size, path)
        by_hand = by_hand[0].lower() + by_hand[1:]
        # name what is wrong inside the file when something is; the MD5 alone says only that it is not the official one
        read_npz(path, name, size, fix=f"it is not the official file either (md5 {got}, MedMNIST lists {md5}), so "
                                       f"it is not used: delete it to re-download, or {by_hand}")
        raise MedbenchError(f"{path} has md5 {got}, but MedMNIST lists {md5} for it: the file is corrupted or "
                            f"from another release, so it is not used. Delete it to re-download, or {by_hand}")
    st = path.stat()
    return _load_cached(str(path.resolve()), name, size, st.st_mtime_ns, st.st_size)
