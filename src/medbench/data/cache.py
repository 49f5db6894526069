"""On-disk cache of decoded datasets: safetensors (uint8 images, int64 labels) + a JSON sidecar. Never pickle.

Key: SHA-256 over the JSON of the decode settings (``key_parts``) and, for every source file in sorted order,
its path, size, ``mtime_ns`` and a BLAKE2b hash of its bytes. Hashing reads every file once per load (about
20 MB, a few tens of milliseconds, for the 168-image chest X-ray subset; roughly 1 s per GB), which is what
makes an edited file that kept its size and time invalidate the entry; it is still far cheaper than decoding.

Layout in the cache folder: ``<key>.safetensors`` (tensors ``<split>.images`` / ``<split>.labels``) and
``<key>.json`` (name, task, classes, size, md5, source, meta, key parts). Both are written atomically, the JSON
last, so an entry without its JSON is incomplete and ignored. The folder is ``$MEDBENCH_CACHE`` or
``~/.cache/medbench`` when not given.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from medbench.data.dataset import ImageDataset, Split
from medbench.errors import MedbenchError
from medbench.fileio import atomic_path, write_json

CACHE_ENV = "MEDBENCH_CACHE"
FORMAT = 2  # 2: pad mode resizes before padding (issue 18)
_KEY = re.compile(r"^[0-9a-f]{64}$")


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "medbench").expanduser()


def _file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_key(key_parts: dict, files: Sequence[str | os.PathLike] = ()) -> str:
    """SHA-256 hex digest of the settings and of each file's path, size, mtime and content.

    A missing or unreadable file enters the key as such (the build then reports or skips it).
    """
    h = hashlib.sha256()
    h.update(json.dumps({"format": FORMAT, **key_parts}, sort_keys=True, default=str).encode())
    for p in sorted(str(f) for f in files):
        try:
            st = os.stat(p)
            digest = _file_digest(Path(p))
        except OSError as e:  # missing or unreadable: part of the key; building reports (or skips) it
            h.update(f"\0{p}\0unreadable:{type(e).__name__}".encode())
            continue
        h.update(f"\0{p}\0{st.st_size}\0{st.st_mtime_ns}\0{digest}".encode())
    return h.hexdigest()


def _save(path: Path, ds: ImageDataset, key: str, key_parts: dict) -> None:
    from safetensors.torch import save_file

    tensors = {}
    for s, split in ds.splits.items():
        tensors[f"{s}.images"] = split.images.contiguous()
        tensors[f"{s}.labels"] = split.labels.contiguous()
    with atomic_path(path.with_suffix(".safetensors")) as tmp:
        save_file(tensors, str(tmp))
    write_json(path.with_suffix(".json"), {
        "format": FORMAT, "key": key, "created": time.time(), "key_parts": json.loads(json.dumps(key_parts, default=str)),
        "name": ds.name, "task": ds.task, "class_names": ds.class_names, "size": ds.size, "md5": ds.md5,
        "source": ds.source, "splits": list(ds.splits), "meta": ds.meta,
    })


def _load(path: Path) -> ImageDataset | None:
    from safetensors.torch import load_file

    js, st = path.with_suffix(".json"), path.with_suffix(".safetensors")
    if not (js.is_file() and st.is_file()):
        return None
    try:
        info = json.loads(js.read_text(encoding="utf-8"))
        tensors = load_file(str(st))
        splits = {s: Split(images=tensors[f"{s}.images"], labels=tensors[f"{s}.labels"]) for s in info["splits"]}
    except Exception:  # noqa: BLE001 - a damaged entry is rebuilt, not fatal
        return None
    if info.get("format") != FORMAT:
        return None
    return ImageDataset(name=info["name"], task=info["task"], class_names=info["class_names"], splits=splits,
                        size=info["size"], md5=info.get("md5"), source=info.get("source"), meta=info.get("meta", {}))


def cached(key_parts: dict, build: Callable[[], ImageDataset], cache_dir: str | os.PathLike | None = None, *,
           files: Sequence[str | os.PathLike] = ()) -> ImageDataset:
    """Return the cached dataset for ``key_parts`` + ``files``, or ``build()`` it and store it.

    ``key_parts``: JSON-able decode settings (size, channels, resize mode, regexes, split settings, seed...).
    ``files``: the source files whose size, mtime and content are part of the key.
    The returned dataset's ``meta["cache"]`` says ``{"key", "hit", "path"}``.
    """
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    key = cache_key(key_parts, files)
    base = folder / f"{key}.x"
    ds = _load(base)
    hit = ds is not None
    if ds is None:
        ds = build()
        try:
            _save(base, ds, key, key_parts)
        except OSError as e:
            raise MedbenchError(f"cannot write the data cache in {folder} ({e.strerror or e}); set {CACHE_ENV} "
                                f"to a writable folder or turn the cache off") from e
    return dataclasses.replace(ds, meta={**ds.meta, "cache": {"key": key, "hit": hit,
                                                              "path": str(base.with_suffix(".safetensors"))}})


def cache_info(cache_dir: str | os.PathLike | None = None) -> list[dict]:
    """One record per complete entry: key, name, source, size, task, images per split, bytes, created (epoch s)."""
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    out = []
    if not folder.is_dir():
        return out
    for js in sorted(folder.glob("*.json")):
        if not _KEY.match(js.stem) or not js.with_suffix(".safetensors").is_file():
            continue
        try:
            info = json.loads(js.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        files = info.get("meta", {}).get("files", {})
        out.append({"key": js.stem, "name": info.get("name"), "source": info.get("source"), "size": info.get("size"),
                    "task": info.get("task"), "images": {s: len(v) for s, v in files.items()},
                    "bytes": js.stat().st_size + js.with_suffix(".safetensors").stat().st_size,
                    "created": info.get("created")})
    return out


def cache_clear(cache_dir: str | os.PathLike | None = None) -> int:
    """Delete medbench's entries (and leftover temp files) from the cache folder; returns the files removed."""
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if not folder.is_dir():
        return 0
    n = 0
    for p in folder.iterdir():
        ours = (p.suffix in (".json", ".safetensors") and _KEY.match(p.stem)) or (
            p.name.startswith(".") and p.name.endswith(".tmp") and _KEY.match(p.name[1:65] or ""))
        if ours and p.is_file():
            p.unlink()
            n += 1
    return n
