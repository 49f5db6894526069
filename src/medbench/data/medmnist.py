"""MedMNIST 2D: catalogue (from the ``medmnist`` package's INFO), download with MD5 check, npz -> tensors."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import os
import signal
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch
from medmnist.info import INFO

from medmnist.info import DEFAULT_ROOT as _MEDMNIST_ROOT

from medbench.data import npz as npzlib
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


READ_TIMEOUT_S = 30.0  # connect, and then the longest wait for the next byte
DEADLINE_S: float | None = None  # the whole download; None: derived from the size (see default_deadline)
DEADLINE_MIN_S = 120.0
SLOWEST_RATE = 256 << 10  # bytes/s: the slowest mirror the derived deadline still waits for


def max_download_bytes(name: str, size: int = 28) -> int:
    """Most bytes a download may bring: the raw arrays plus room for npz/zip headers. Compressed npz is never
    much larger than its raw arrays (deflate grows incompressible data by < 0.1 %), and INFO has no file sizes."""
    raw = expected_bytes(name, size)
    return raw + raw // 16 + (64 << 10)


def default_deadline(cap: int) -> float:
    """:data:`DEADLINE_S` when set, else enough time for ``cap`` bytes at :data:`SLOWEST_RATE` (2 min at least)."""
    return DEADLINE_S if DEADLINE_S is not None else max(DEADLINE_MIN_S, cap / SLOWEST_RATE)


class _Terminated(BaseException):  # not an Exception: no handler on the way may swallow it
    pass


@contextlib.contextmanager
def _sigterm_raises():
    """While a download runs in the main thread, SIGTERM raises so that ``finally`` blocks remove the .part file;
    afterwards the signal goes again to the handler that was there before (by default: the process ends as killed
    by SIGTERM). SIGKILL cannot be caught: its hidden ``.NAME.*.part`` file is deleted by a later download once
    stale."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous in (signal.SIG_IGN, None):  # ignored (or set outside Python): leave it so
        yield
        return
    caught = []

    def handler(signum, frame):
        caught.append(signum)
        raise _Terminated()

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if caught:
            os.kill(os.getpid(), signal.SIGTERM)


def _remove_stale_parts(root: Path, name: str, deadline: float) -> None:
    """Delete ``.NAME.*.part`` files that a SIGKILLed download left: any not written to for longer than a live
    download may run (its deadline) cannot belong to one."""
    now = time.time()
    for p in root.glob(f".{name}.*.part"):
        try:
            if now - p.stat().st_mtime > deadline + READ_TIMEOUT_S:
                p.unlink()
        except OSError:
            pass


def download(name: str, size: int = 28, data_dir=None, *, progress: bool = True, timeout: float = READ_TIMEOUT_S,
             deadline: float | None = None) -> Path:
    """Fetch ``name`` at ``size`` into the data root: temp file, MD5 check, atomic rename.

    At most :func:`max_download_bytes` are accepted (a larger Content-Length is refused before the body);
    ``timeout`` bounds the connect and every wait for data, ``deadline`` (default :func:`default_deadline`) the
    whole download. The .part file is removed on every failure, SIGTERM included.
    """
    md5 = expected_md5(name, size)
    root = data_root(data_dir)
    dest = root / file_name(name, size)
    url = url_for(name, size)
    cap = max_download_bytes(name, size)
    deadline = default_deadline(cap) if deadline is None else deadline

    def fail(what: str) -> MedbenchError:
        return MedbenchError(f"download of {url} {what}. {_by_hand(name, size, dest)}")

    with _sigterm_raises():
        try:
            root.mkdir(parents=True, exist_ok=True)
            _remove_stale_parts(root, dest.name, deadline)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=root)
        except OSError as e:
            raise MedbenchError(f"cannot write to data folder {root} ({e.strerror}); use --data-dir or MEDBENCH_DATA "
                                f"to choose a writable one") from e
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                digest = _fetch(url, out, cap, timeout, deadline, fail, progress, dest.name)
                out.flush()
                os.fsync(out.fileno())
            if digest != md5:
                raise fail(f"is corrupted: md5 {digest}, expected {md5}")
            os.replace(tmp, dest)
        except OSError as e:
            code = no_room(e)
            if code is None:
                raise
            raise no_room_error(dest, code) from e
        finally:
            tmp.unlink(missing_ok=True)
    return dest


def _set_read_timeout(resp, seconds: float) -> None:
    # urllib exposes no way to change the socket timeout after urlopen; without it a slow drip could overrun
    # the deadline by up to one read timeout
    sock = getattr(getattr(resp.fp, "raw", None), "_sock", None)
    if sock is not None:
        sock.settimeout(max(seconds, 0.01))


def _fetch(url: str, out, cap: int, timeout: float, deadline: float, fail, progress: bool, label: str) -> str:
    """Stream ``url`` into ``out`` within ``cap`` bytes and ``deadline`` seconds -> the body's MD5."""
    end = time.monotonic() + deadline
    try:
        resp = urllib.request.urlopen(url, timeout=min(timeout, deadline))
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        reason = f"HTTP {e.code} {e.reason}" if isinstance(e, urllib.error.HTTPError) else (
            f"not an HTTP reply: {e!r}" if not isinstance(e, (OSError, ValueError)) else
            getattr(e, "reason", None) or e)
        if isinstance(reason, TimeoutError) or isinstance(e, TimeoutError):
            reason = f"no reply within {min(timeout, deadline):g} s"
        raise fail(f"failed ({reason})") from e
    h, got = hashlib.md5(), 0
    with resp:
        total = resp.length  # Content-Length (None when absent or not a number)
        if total is not None and total > cap:
            raise fail(f"declares {total} bytes (Content-Length), more than the {cap} this file can take")
        from medbench.progress import progress_bar

        with progress_bar(f"download {label}", total=total, enabled=progress, unit="bytes") as bar:
            while chunk := _read_some(resp, end, timeout, deadline, got, fail):
                got += len(chunk)
                if got > cap:
                    raise fail(f"sent more than {cap} bytes, more than this file can take")
                out.write(chunk)
                h.update(chunk)
                bar.advance(len(chunk))
    if total is not None and got != total:
        raise fail(f"is truncated: {got} of {total} bytes")
    return h.hexdigest()


def _read_some(resp, end: float, timeout: float, deadline: float, got: int, fail) -> bytes:
    """The next bytes that arrive (b"" at the end), within the read timeout and the overall deadline."""
    left = end - time.monotonic()
    if left <= 0:
        raise fail(f"did not finish within {deadline:g} s ({got} bytes arrived)")
    _set_read_timeout(resp, min(timeout, left))
    try:
        return resp.read1(1 << 20)  # read() would wait for a whole chunk, past any deadline
    except TimeoutError as e:
        if time.monotonic() >= end - 0.01:
            raise fail(f"did not finish within {deadline:g} s ({got} bytes arrived)") from e
        raise fail(f"stalled: no data for {timeout:g} s after {got} bytes") from e
    except (OSError, urllib.error.URLError, http.client.HTTPException) as e:
        if no_room(e) is not None:
            raise
        raise fail(f"broke off after {got} bytes ({e})") from e


def _fail(path, msg: str) -> MedbenchError:
    return MedbenchError(f"{path}: {msg}")


NPZ_FIX = "delete it and run again to re-download, or replace it with the official file"
ARRAYS_FIX = "write it again with uint8 images [N, H, W] or [N, H, W, 3] and integer labels [N, 1] (or [N, L])"


def expected_bytes(name: str, size: int) -> int:
    """Upper bound on the raw arrays of ``name`` at ``size``: uint8 images plus int64 labels, every split."""
    info = _info(name)
    n = sum(info["n_samples"].values())
    width = len(info["label"]) if from_medmnist_task(info["task"]) == "multilabel" else 1
    return n * info["n_channels"] * size * size + n * width * 8


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
    from medbench.data.store import finish_store, open_store
    from medbench.progress import progress_bar

    info = _info(name)
    task = from_medmnist_task(info["task"])
    classes = [info["label"][str(i)] for i in range(len(info["label"]))]
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
    from medbench.data.store import SplitWriter

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
    from medbench.data.cache import default_cache_dir
    from medbench.data.memory import fits_in_memory
    from medbench.data.store import is_complete, open_store, store_lock

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
            raise MedbenchError(f"{path} not found. {_by_hand(name, size, path)}")
        download(name, size, data_dir, progress=progress)
    got = md5sum(path)
    if got != md5:
        by_hand = _by_hand(name, size, path)
        by_hand = by_hand[0].lower() + by_hand[1:]
        # name what is wrong inside the file when something is (the MD5 alone says only that it is not the official
        # one), from headers and labels only: its images are never decompressed, so a bomb costs nothing
        _read_npz(path, name, size, f"it is not the official file either (md5 {got}, MedMNIST lists {md5}), so it "
                                    f"is not used: delete it to re-download, or {by_hand}", None, images=False)
        raise MedbenchError(f"{path} has md5 {got}, but MedMNIST lists {md5} for it: the file is corrupted or "
                            f"from another release, so it is not used. Delete it to re-download, or {by_hand}")
    return load_npz(path, name, size, memory_budget=memory_budget, progress=progress, md5=got)
