"""Decoded datasets on disk, read a batch of rows at a time: for data larger than the memory budget.

Layout of a store folder (one per dataset and decode settings; the key is the caller's):

* ``{split}.images.npy``: uint8 ``[N, C, H, W]``, C order, uncompressed (plain ``.npy``: numpy, safetensors-free
  tools and ``np.load(mmap_mode="r")`` can all read it);
* ``{split}.labels.npy``: int64 ``[N, L]``;  ``{split}.hashes.npy``: ``S32``, BLAKE2b-128 of each image
  (:func:`medbench.data.splits.array_hash`), computed while writing, for the leakage check;
* ``store.json``: name, task, classes, size, md5, source, meta and the shapes; written last, so a folder without
  it is unfinished and never read.

Rows are read with ``os.preadv`` into a fresh (optionally pinned) tensor, not through ``mmap``: pages of a mapped
file count in the process's RSS once touched (a 9 GB split shows as 9 GB), pages read with ``pread`` stay in the
kernel's page cache, which the kernel reclaims (``benchmarks/results/storage-choice.json``). ``pread`` drops the
GIL, so a background thread gathers the next batch while the model computes.
"""
from __future__ import annotations

import json
import mmap
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from numpy.lib import format as npy

from medbench.data.dataset import ImageDataset, Split
from medbench.errors import MedbenchError
from medbench.fileio import write_json

FORMAT = 1
META = "store.json"
_REBUILD = "delete the folder to rebuild it (it is a cache)"


def _pread_into(fd: int, buf: memoryview, offset: int, path) -> None:
    done = 0
    while done < len(buf):  # preadv may return fewer bytes than asked (signals, > 2 GB reads)
        n = os.preadv(fd, [buf[done:]], offset + done)
        if n <= 0:
            raise MedbenchError(f"{path}: ends early (truncated store); {_REBUILD}")
        done += n


MMAP_FROM = 1 << 20  # bytes: batch buffers this large get their own anonymous mapping


def batch_buffer(shape: tuple[int, ...], pin: bool = False) -> torch.Tensor:
    """An uninitialised uint8 tensor for one batch read from disk. Pinned (CUDA copies) from torch's caching host
    allocator; otherwise, when large, in its own anonymous ``mmap``, returned to the kernel as soon as the tensor is
    freed: from malloc, buffers filled in the reading thread and freed in the training thread fragmented the
    thread's arena, and memory grew with every batch (9.9 GB after 60,000 images at 224 px, 4.2 GB after 20,000)."""
    n = int(np.prod(shape))
    if pin or n < MMAP_FROM:
        return torch.empty(shape, dtype=torch.uint8, pin_memory=pin)
    return torch.frombuffer(mmap.mmap(-1, n), dtype=torch.uint8).view(shape)


class DiskImages:
    """uint8 images ``[N, C, H, W]`` in a ``.npy`` file, indexed like a tensor but read only where indexed.

    ``x[i]`` (one image), ``x[a:b]`` (one contiguous read), ``x[idx]`` (a list, array or tensor of rows: one read
    per row, in file order) return CPU uint8 tensors; :meth:`take` can fill a pinned tensor for CUDA copies.
    """

    dtype = torch.uint8
    device = torch.device("cpu")
    ndim = 4

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                version = npy.read_magic(f)
                read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
                shape, fortran, dtype = read(f)
                self._offset = f.tell()
            size = os.path.getsize(self.path)
        except (OSError, ValueError) as e:
            raise MedbenchError(f"{self.path}: not a readable image store ({' '.join(str(e).split())}); "
                                f"{_REBUILD}") from e
        if dtype != np.uint8 or len(shape) != 4 or fortran:
            raise MedbenchError(f"{self.path}: holds {dtype} {tuple(shape)}, expected uint8 [N, C, H, W] in C order; "
                                f"{_REBUILD}")
        self.shape = torch.Size(shape)
        self._row = int(np.prod(shape[1:]))
        if size != self._offset + self._row * shape[0]:
            raise MedbenchError(f"{self.path}: {size:,} bytes, expected {self._offset + self._row * shape[0]:,} "
                                f"(truncated or damaged store); {_REBUILD}")
        self._fd = os.open(self.path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return self._row * self.shape[0]

    def __repr__(self) -> str:
        return f"DiskImages({str(self.path)!r}, shape={tuple(self.shape)})"

    def __getstate__(self):  # a worker process reopens the file
        return {"path": self.path}

    def __setstate__(self, state) -> None:
        self.__init__(state["path"])

    def __del__(self, _close=os.close) -> None:  # bound now: at interpreter exit ``os`` may be gone
        fd = getattr(self, "_fd", None)
        if fd is not None and fd >= 0:
            _close(fd)
            self._fd = None

    def _empty(self, k: int, pin: bool) -> torch.Tensor:
        return batch_buffer((k, *self.shape[1:]), pin)

    def read_range(self, start: int, stop: int, pin: bool = False) -> torch.Tensor:
        """Rows ``start:stop`` in one read."""
        start, stop = max(0, start), min(len(self), stop)
        out = self._empty(max(stop - start, 0), pin)
        if stop > start:
            _pread_into(self._fd, memoryview(out.numpy()).cast("B"), self._offset + start * self._row, self.path)
        return out

    def take(self, idx, pin: bool = False) -> torch.Tensor:
        """Rows ``idx`` (any integer sequence), in that order."""
        idx = np.asarray(idx.cpu() if torch.is_tensor(idx) else idx, dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"index out of range for {len(self)} images")
        idx = np.where(idx < 0, idx + n, idx)
        out = self._empty(idx.size, pin)
        if not idx.size:
            return out
        flat = memoryview(out.numpy()).cast("B")
        row = self._row
        for j in np.argsort(idx, kind="stable"):  # file order: sequential on disk where rows are close
            _pread_into(self._fd, flat[j * row:(j + 1) * row], self._offset + int(idx[j]) * row, self.path)
        return out

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.take([int(key)])[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            return self.read_range(start, stop) if step == 1 else self.take(range(start, stop, step))
        if torch.is_tensor(key) and key.dtype == torch.bool:
            key = key.nonzero().flatten()
        return self.take(key)

    def to(self, device=None, *args, **kwargs) -> torch.Tensor:
        """The whole split as a tensor (only where it fits: the GAN trainer, small tests)."""
        return self.read_range(0, len(self)).to(device, *args, **kwargs)


def on_disk(images) -> bool:
    """Whether ``images`` are read from disk as indexed (not a tensor held in memory)."""
    return not torch.is_tensor(images)


def gather(images, idx, pin: bool = False) -> torch.Tensor:
    """``images[idx]`` for a tensor or a disk source; ``pin`` fills pinned memory (for copies to CUDA)."""
    if torch.is_tensor(images):
        idx = idx.to(images.device) if torch.is_tensor(idx) else torch.as_tensor(idx, device=images.device)
        if images.device.type != "cpu" or images.dtype != torch.uint8:
            return images[idx]
        return torch.index_select(images, 0, idx, out=batch_buffer((len(idx), *images.shape[1:]), pin))
    return images.take(idx, pin=pin)


def rows(images, start: int, stop: int, pin: bool = False) -> torch.Tensor:
    """``images[start:stop]`` for a tensor or a disk source."""
    if torch.is_tensor(images):
        return images[start:stop]
    if isinstance(images, DiskImages):
        return images.read_range(start, stop, pin=pin)
    return images.take(range(start, min(stop, len(images))), pin=pin)


class ArrayWriter:
    """Write a ``.npy`` of known shape a block of rows at a time; it appears at ``path`` only when complete."""

    def __init__(self, path: str | os.PathLike, shape: tuple[int, ...], dtype):
        self.path, self.shape, self.dtype = Path(path), tuple(int(d) for d in shape), np.dtype(dtype)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.tmp, "wb")
        npy.write_array_header_1_0(self._f, {"descr": npy.dtype_to_descr(self.dtype), "fortran_order": False,
                                             "shape": self.shape})
        self.written = 0

    def write(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.shape[1:] or self.written + len(block) > self.shape[0]:
            raise ValueError(f"{self.path}: block {block.shape} does not fit {self.shape} after {self.written} rows")
        self._f.write(memoryview(block).cast("B"))
        self.written += len(block)

    def close(self) -> None:
        if self.written != self.shape[0]:
            self.abort()
            raise ValueError(f"{self.path}: {self.written} of {self.shape[0]} rows written")
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self._f.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> ArrayWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _hash_rows(block: np.ndarray) -> list[bytes]:
    from medbench.data.splits import array_hash

    return [array_hash(img).encode() for img in block]


class SplitWriter:
    """One split of a store: images ``[N, C, H, W]`` in row blocks (NCHW or NHWC), labels, image hashes."""

    def __init__(self, folder: Path, split: str, n: int, chw: tuple[int, int, int]):
        self.folder, self.split, self.n = Path(folder), split, n
        self.images = ArrayWriter(self.folder / f"{split}.images.npy", (n, *chw), np.uint8)
        self.hashes: list[bytes] = []

    def write(self, block: np.ndarray, channels_last: bool = False) -> None:
        if channels_last:
            block = block.transpose(0, 3, 1, 2)
        block = np.ascontiguousarray(block)
        self.hashes += _hash_rows(block)
        self.images.write(block)

    def close(self, labels: np.ndarray) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        labels = labels.reshape(self.n, labels.shape[-1] if labels.ndim == 2 else 1)  # also for an empty split
        self.images.close()
        with ArrayWriter(self.folder / f"{self.split}.labels.npy", labels.shape, np.int64) as w:
            w.write(labels)
        with ArrayWriter(self.folder / f"{self.split}.hashes.npy", (self.n,), "S32") as w:
            w.write(np.array(self.hashes, dtype="S32").reshape(self.n))

    def abort(self) -> None:
        self.images.abort()


def finish_store(folder: Path, *, name: str, task: str, class_names: list[str], size: int, md5: str | None = None,
                 source: str | None = None, meta: dict | None = None) -> None:
    """Write ``store.json`` once every split's arrays are in place: the store is complete from then on."""
    splits = sorted(p.name[:-len(".images.npy")] for p in folder.glob("*.images.npy"))
    shapes = {s: list(np.load(folder / f"{s}.images.npy", mmap_mode="r").shape) for s in splits}
    write_json(folder / META, {"format": FORMAT, "created": time.time(), "name": name, "task": task,
                               "class_names": list(class_names), "size": size, "md5": md5, "source": source,
                               "splits": [s for s in ("train", "val", "test") if s in splits], "shapes": shapes,
                               "meta": meta or {}})


def is_complete(folder: str | os.PathLike) -> bool:
    return (Path(folder) / META).is_file()


def open_store(folder: str | os.PathLike, *, in_memory: bool = False) -> ImageDataset:
    """A complete store as an :class:`ImageDataset`: images read from disk as indexed, or (``in_memory``) loaded
    whole; labels and hashes always in memory."""
    folder = Path(folder)
    path = folder / META
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MedbenchError(f"{path}: missing or damaged ({' '.join(str(e).split())}); {_REBUILD}") from e
    if info.get("format") != FORMAT:
        raise MedbenchError(f"{path}: store format {info.get('format')}, this medbench reads {FORMAT}; {_REBUILD}")
    splits = {}
    for s in info["splits"]:
        images = DiskImages(folder / f"{s}.images.npy")
        try:
            labels = np.load(folder / f"{s}.labels.npy", allow_pickle=False)
            hashes = np.load(folder / f"{s}.hashes.npy", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise MedbenchError(f"{folder}: {s} labels or hashes unreadable ({' '.join(str(e).split())}); "
                                f"{_REBUILD}") from e
        if list(images.shape) != info["shapes"][s] or len(labels) != len(images) or len(hashes) != len(images):
            raise MedbenchError(f"{folder}: the {s} arrays disagree with {META}; {_REBUILD}")
        splits[s] = Split(images=images.to("cpu") if in_memory else images, labels=torch.from_numpy(labels),
                          hashes=[h.decode() for h in hashes.tolist()])
    return ImageDataset(name=info["name"], task=info["task"], class_names=info["class_names"], splits=splits,
                        size=info["size"], md5=info.get("md5"), source=info.get("source"),
                        meta={**info.get("meta", {}), "store": str(folder)})


@contextmanager
def store_lock(folder: str | os.PathLike):
    """Hold ``<folder>.lock`` (flock; the kernel releases it if the holder dies): one process builds a store, the
    others wait and then find it complete."""
    import fcntl

    lock = Path(f"{folder}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def remove_store(folder: str | os.PathLike) -> None:
    shutil.rmtree(folder, ignore_errors=True)
