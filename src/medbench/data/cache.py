"""On-disk cache of decoded datasets: one store folder per entry (:mod:`medbench.data.store`). Never pickle.

Key: SHA-256 over the JSON of the decode settings (``key_parts``) and, for every source file in sorted order,
its path, size, ``mtime_ns`` and a BLAKE2b hash of its bytes. Hashing reads every file once per load (about
20 MB, a few tens of milliseconds, for the 168-image chest X-ray subset; roughly 1 s per GB), which is what
makes an edited file that kept its size and time invalidate the entry; it is still far cheaper than decoding.

Layout in the cache folder (``$MEDBENCH_CACHE`` or ``~/.cache/medbench`` when not given):

* ``<key>.store/``: a complete store (its ``store.json`` is written last; a folder without it is rebuilt);
* ``<pkey>.store.partial/``: the decoded chunks of an unfinished ingest (:mod:`medbench.data.ingest`), reused by
  the next load. ``pkey`` leaves out settings that do not change the decoded pixels (``skip_bad``, ``channels``),
  so a run stopped by unreadable files and repeated with ``--skip-bad`` decodes nothing again;
* ``<pkey>.store.lock``: held while an entry is built, so that processes loading the same data build it once.

MedMNIST files too large for the memory budget are converted into ``<key>.store/`` folders here as well
(:func:`medbench.data.medmnist.load_npz`); ``cache info`` and ``cache clear`` cover them.

Entries of earlier formats (``<key>.safetensors`` + ``<key>.json``) are never read; ``medbench cache clear``
removes them.
"""
from __future__ import annotations

import atexit
import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from medbench.data.dataset import ImageDataset
from medbench.errors import MedbenchError

CACHE_ENV = "MEDBENCH_CACHE"
FORMAT = 3  # 2: pad mode resizes before padding (issue 18); 3: store folders, JPEG draft decoding (issue 19)
_HEX = r"[0-9a-f]{64}"
_STORE = re.compile(rf"^({_HEX})\.store$")
_PARTIAL = re.compile(rf"^({_HEX})\.store\.partial$")
_LOCK = re.compile(rf"^({_HEX})\.store\.lock$")
_OLD = re.compile(rf"^({_HEX})\.(json|safetensors)$")
_TMP = re.compile(rf"^\.({_HEX})\..*\.tmp$")
ROWS_PER_WRITE = 1024  # images per block when a whole dataset is written into a store


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "medbench").expanduser()


def _file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files_part(files: Sequence[str | os.PathLike]) -> bytes:
    """Each file's path, size, mtime and content digest, in sorted order (missing or unreadable: as such; the
    build then reports or skips it)."""
    h = hashlib.sha256()
    for p in sorted(str(f) for f in files):
        try:
            st = os.stat(p)
            digest = _file_digest(Path(p))
        except OSError as e:
            h.update(f"\0{p}\0unreadable:{type(e).__name__}".encode())
            continue
        h.update(f"\0{p}\0{st.st_size}\0{st.st_mtime_ns}\0{digest}".encode())
    return h.digest()


def _key(key_parts: dict, files_part: bytes) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"format": FORMAT, **key_parts}, sort_keys=True, default=str).encode())
    h.update(files_part)
    return h.hexdigest()


def cache_key(key_parts: dict, files: Sequence[str | os.PathLike] = ()) -> str:
    """SHA-256 hex digest of the settings and of each file's path, size, mtime and content."""
    return _key(key_parts, _files_part(files))


def _folder(cache_dir) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def _cannot_write(folder: Path, e: OSError) -> MedbenchError:
    return MedbenchError(f"cannot write the data cache in {folder} ({e.strerror or e}); set {CACHE_ENV} to a "
                         f"writable folder or turn the cache off")


def store_nbytes(store: str | os.PathLike) -> int:
    """Bytes of the images of a complete store (from its ``store.json``)."""
    from medbench.data.store import META

    info = json.loads((Path(store) / META).read_text(encoding="utf-8"))
    return sum(int(np.prod(shape, dtype=np.int64)) for shape in info["shapes"].values())


def open_budgeted(store: str | os.PathLike, memory_budget: float | None = None) -> ImageDataset:
    """A complete store, its images in memory when they fit the memory budget (:mod:`medbench.data.memory`;
    ``memory_budget`` in GB, None = automatic), else read from disk as indexed."""
    from medbench.data.memory import fits_in_memory
    from medbench.data.store import open_store

    try:
        nbytes = store_nbytes(store)
    except (OSError, ValueError, KeyError, TypeError):
        nbytes = 0  # open_store names the problem
    return open_store(store, in_memory=fits_in_memory(nbytes, memory_budget))


def _try_open(store: Path, memory_budget) -> ImageDataset | None:
    from medbench.data.store import is_complete

    if not is_complete(store):
        return None
    try:
        return open_budgeted(store, memory_budget)
    except MedbenchError:  # a damaged entry is rebuilt, not fatal
        return None


def _temporary(build: Callable[[Path, Path], None], memory_budget) -> ImageDataset:
    """No cache: build in a temporary folder; removed at once when the images are loaded into memory, else when
    this process exits (the images are read from it)."""
    tmp = Path(tempfile.mkdtemp(prefix="medbench-data-"))
    try:
        build(tmp / "data.store", tmp / "data.store.partial")
        ds = open_budgeted(tmp / "data.store", memory_budget)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    from medbench.data.store import on_disk

    if not any(on_disk(s.images) for s in ds.splits.values()):
        shutil.rmtree(tmp, ignore_errors=True)
        return dataclasses.replace(ds, meta={k: v for k, v in ds.meta.items() if k != "store"})
    atexit.register(shutil.rmtree, tmp, True)
    return ds


def cached_store(key_parts: dict, build: Callable[[Path, Path], None], cache_dir: str | os.PathLike | None = None,
                 *, files: Sequence[str | os.PathLike] = (), decode_parts: dict | None = None,
                 memory_budget: float | None = None, use_cache: bool = True) -> ImageDataset:
    """The cached store for ``key_parts`` + ``files``, or ``build(store, partial)`` it first.

    ``build`` writes a complete store into ``store`` (its chunks in ``partial``, kept there until it is done, so
    an interrupted build resumes). ``decode_parts``: the settings the decoded chunks depend on (default
    ``key_parts``). ``use_cache=False``: build in a temporary folder (no entry, no ``meta["cache"]``).
    The images are in memory when they fit ``memory_budget`` (GB, None = automatic), else read from disk.
    The returned dataset's ``meta["cache"]`` says ``{"key", "hit", "path"}`` (path: the store folder).
    """
    if not use_cache:
        return _temporary(build, memory_budget)
    folder = _folder(cache_dir)
    part = _files_part(files)
    key = _key(key_parts, part)
    pkey = _key(decode_parts, part) if decode_parts is not None else key
    store, partial = folder / f"{key}.store", folder / f"{pkey}.store.partial"
    ds = _try_open(store, memory_budget)
    hit = ds is not None
    if ds is None:
        from medbench.data.store import remove_store, store_lock

        try:
            folder.mkdir(parents=True, exist_ok=True)
            with store_lock(folder / f"{pkey}.store"):  # processes loading the same data build it once
                ds = _try_open(store, memory_budget)  # another process may have built it while we waited
                hit = ds is not None
                if ds is None:
                    remove_store(store)  # unfinished or damaged
                    build(store, partial)
        except OSError as e:
            raise _cannot_write(folder, e) from e
        if ds is None:
            ds = _try_open(store, memory_budget)
        if ds is None:  # names what is wrong with the store just written
            from medbench.data.store import open_store

            ds = open_store(store)
    return dataclasses.replace(ds, meta={**ds.meta, "cache": {"key": key, "hit": hit, "path": str(store)}})


def write_dataset(store: str | os.PathLike, ds: ImageDataset) -> None:
    """Write an :class:`ImageDataset` (images in memory or on disk) into a complete store folder."""
    from medbench.data.store import SplitWriter, finish_store, rows

    store = Path(store)
    for s, split in ds.splits.items():
        n = len(split)
        w = SplitWriter(store, s, n, tuple(split.images.shape[1:]))
        try:
            for a in range(0, n, ROWS_PER_WRITE):
                w.write(rows(split.images, a, a + ROWS_PER_WRITE).cpu().numpy())
            labels = split.labels.cpu().numpy()
            if n:
                w.close(labels)
            else:  # SplitWriter.close cannot reshape an empty label array
                from medbench.data.ingest import _close

                _close(w, labels.reshape(0, labels.shape[-1] if labels.ndim > 1 else 1))
        except BaseException:
            w.abort()
            raise
    meta = {k: v for k, v in ds.meta.items() if k not in ("cache", "store")}
    finish_store(store, name=ds.name, task=ds.task, class_names=ds.class_names, size=ds.size, md5=ds.md5,
                 source=ds.source, meta=json.loads(json.dumps(meta, default=str)))


def cached(key_parts: dict, build: Callable[[], ImageDataset], cache_dir: str | os.PathLike | None = None, *,
           files: Sequence[str | os.PathLike] = (), memory_budget: float | None = None) -> ImageDataset:
    """Return the cached dataset for ``key_parts`` + ``files``, or ``build()`` it and store it.

    ``key_parts``: JSON-able decode settings (size, channels, resize mode, regexes, split settings, seed...).
    ``files``: the source files whose size, mtime and content are part of the key.
    The returned dataset's ``meta["cache"]`` says ``{"key", "hit", "path"}``; its images are in memory when they
    fit ``memory_budget`` (GB, None = automatic), else read from the store on disk.
    """
    return cached_store(key_parts, lambda store, _partial: write_dataset(store, build()), cache_dir, files=files,
                        memory_budget=memory_budget)


def _size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def cache_info(cache_dir: str | os.PathLike | None = None) -> list[dict]:
    """One record per entry: ``state`` "complete" (key, name, source, size, task, images per split, bytes,
    created, path), "partial" (an unfinished ingest: chunks done so far) or "old-format" (never read)."""
    from medbench.data.store import META

    folder = _folder(cache_dir)
    out = []
    if not folder.is_dir():
        return out
    old: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if m := _STORE.match(p.name):
            try:
                info = json.loads((p / META).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # unfinished: rebuilt by the next load
            out.append({"key": m.group(1), "state": "complete", "name": info.get("name"),
                        "source": info.get("source"), "size": info.get("size"), "task": info.get("task"),
                        "images": {s: shape[0] for s, shape in info.get("shapes", {}).items()},
                        "bytes": _size_of(p), "created": info.get("created"), "path": str(p)})
        elif m := _PARTIAL.match(p.name):
            try:
                plan = json.loads((p / "plan.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                plan = {}
            out.append({"key": m.group(1), "state": "partial", "name": None, "source": plan.get("source"),
                        "size": plan.get("size"), "files": plan.get("n"),
                        "chunks_done": len(list(p.glob("chunk-*.json"))), "bytes": _size_of(p),
                        "created": p.stat().st_mtime, "path": str(p)})
        elif (m := _OLD.match(p.name)) and p.is_file():
            old.setdefault(m.group(1), []).append(p)
    for key, paths in old.items():
        out.append({"key": key, "state": "old-format", "bytes": sum(q.stat().st_size for q in paths),
                    "created": min(q.stat().st_mtime for q in paths), "path": str(paths[0].with_suffix(""))})
    return out


def cache_clear(cache_dir: str | os.PathLike | None = None) -> int:
    """Delete medbench's entries from the cache folder: store folders, partial ones, lock files, old-format files
    and leftover temp files; returns how many were removed (a folder counts once)."""
    folder = _folder(cache_dir)
    if not folder.is_dir():
        return 0
    n = 0
    for p in folder.iterdir():
        if (_STORE.match(p.name) or _PARTIAL.match(p.name)) and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
            n += 1
        elif (_LOCK.match(p.name) or _OLD.match(p.name) or _TMP.match(p.name)) and p.is_file():
            p.unlink(missing_ok=True)
            n += 1
    return n
