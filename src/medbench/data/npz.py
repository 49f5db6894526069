"""Bounded .npz reading: each member's .npy header (shape, dtype) is read and checked before any of its data.

``np.load`` allocates whatever a header declares, so a 2 MB file of compressed zeros that declares a 3 GB
array fills memory before anything can look at it (a decompression bomb). Here the caller states what it
expects (dtype, number of dimensions, a byte budget) and a member that declares more is refused from its
header. Independently of the caller, a member may not declare more than :data:`MAX_RATIO` times the bytes it
occupies in the file (images do not compress that well; zeros do), above a floor of :data:`FLOOR_BYTES`.
Object arrays are refused: nothing is ever unpickled.
"""
from __future__ import annotations

import os
import zipfile
import zlib
from math import prod
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numpy.lib import format as npy

from medbench.errors import MedbenchError

MAX_RATIO = 100  # declared bytes per stored byte; deflate of real images stays far below, of zeros ~1000
FLOOR_BYTES = 64 << 20  # a member may always declare this much (small all-zero test arrays compress ~1000:1)
_CHUNK = 1 << 20


class Header(NamedTuple):
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool

    @property
    def nbytes(self) -> int:  # Python ints: a hostile shape cannot overflow
        return prod(self.shape) * self.dtype.itemsize


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


class BoundedNpz:
    """An open .npz: ``files`` (array names), ``header(key)`` and ``read(key, ...)``. Every problem is one
    :class:`MedbenchError` line: ``{path}: {what}; {fix}``."""

    def __init__(self, path: str | os.PathLike, *, fix: str):
        self.path, self.fix = path, fix
        try:
            self._zip = zipfile.ZipFile(path)
        except FileNotFoundError as e:
            raise MedbenchError(f"{path}: file not found; check the path") from e
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            raise self.error(f"not a readable .npz file ({self._why_not_zip(e)})") from e
        self._members = {(n[:-4] if n.endswith(".npy") else n): n for n in self._zip.namelist()}
        self._size = os.path.getsize(path)
        self._headers: dict[str, Header] = {}

    def _why_not_zip(self, e: BaseException) -> str:
        try:
            with open(self.path, "rb") as f:
                if f.read(6) == npy.MAGIC_PREFIX:  # np.save output under an .npz name
                    return "it holds a single .npy array, not named arrays"
        except OSError:
            pass
        return _one_line(e)

    def error(self, what: str) -> MedbenchError:
        return MedbenchError(f"{self.path}: {what}; {self.fix}")

    @property
    def files(self) -> list[str]:
        return list(self._members)

    def __enter__(self) -> BoundedNpz:
        return self

    def __exit__(self, *exc) -> None:
        self._zip.close()

    def _open(self, key: str):
        """The member's stream positioned at its data, and its checked header."""
        info = self._zip.getinfo(self._members[key])
        f = None
        try:
            f = self._zip.open(info)
            version = npy.read_magic(f)
            if version not in ((1, 0), (2, 0)):  # 3.0 only adds utf-8 field names: structured dtypes
                raise ValueError(f".npy format version {version[0]}.{version[1]} is not read here")
            read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
        except Exception as e:  # noqa: BLE001 - zipfile, zlib and numpy's header parser raise many types
            if f is not None:
                f.close()
            raise self.error(f"array {key} cannot be read ({type(e).__name__}: {_one_line(e)})") from e
        h = Header(tuple(shape), dtype, fortran)
        if dtype.hasobject:
            f.close()
            raise self.error(f"{key} holds Python objects (dtype {dtype}), which are never unpickled")
        if any(d < 0 for d in h.shape):
            f.close()
            raise self.error(f"array {key} cannot be read (negative shape {h.shape})")
        stored = min(info.compress_size, self._size)  # the directory's figure may lie; the file cannot
        if h.nbytes > max(FLOOR_BYTES, MAX_RATIO * stored):
            f.close()
            raise self.error(f"{key} declares {h.nbytes:,} bytes ({h.dtype} {h.shape}) from {stored:,} stored "
                             f"bytes, more than {MAX_RATIO}:1 (medbench.data.npz.MAX_RATIO): a decompression "
                             f"bomb or a damaged file")
        return f, h

    def header(self, key: str) -> Header:
        """Shape, dtype and order of ``key``, from its .npy header only (no data is decompressed)."""
        if key not in self._headers:
            f, self._headers[key] = self._open(key)
            f.close()
        return self._headers[key]

    def read(self, key: str, *, budget: int | None = None) -> np.ndarray:
        """The array ``key``; refused from its header when it declares more than ``budget`` bytes."""
        f, h = self._open(key)
        with f:
            if budget is not None and h.nbytes > budget:
                raise self.error(f"{key} declares {h.nbytes:,} bytes ({h.dtype} {h.shape}), more than the "
                                 f"{budget:,} expected")
            flat = np.empty(prod(h.shape), h.dtype)
            if h.nbytes:
                self._fill(f, key, flat.view(np.uint8), h.nbytes)
        return flat.reshape(h.shape, order="F" if h.fortran else "C")

    def blocks(self, key: str, rows: int):
        """The array ``key`` (C order) as consecutive blocks of up to ``rows`` rows, read from the member's stream a
        block at a time: memory stays one block whatever the array's size."""
        f, h = self._open(key)
        with f:
            if h.fortran and len(h.shape) > 1:
                raise self.error(f"{key} is stored in Fortran order; save it in C order (numpy's default)")
            n = h.shape[0] if h.shape else 1
            row = prod(h.shape[1:]) * h.dtype.itemsize
            for start in range(0, n, max(1, rows)):
                k = min(rows, n - start)
                block = np.empty((k, *h.shape[1:]), h.dtype)
                if k * row:
                    self._fill(f, key, block.reshape(-1).view(np.uint8), k * row)
                yield block

    def _fill(self, f, key: str, out: np.ndarray, n: int) -> None:
        """Exactly ``n`` bytes from the stream into ``out``, a chunk at a time (never more than declared)."""
        pos = 0
        try:
            while pos < n:
                chunk = f.read(min(_CHUNK, n - pos))
                if not chunk:
                    raise EOFError(f"data ends after {pos:,} of {n:,} bytes")
                out[pos:pos + len(chunk)] = np.frombuffer(chunk, np.uint8)
                pos += len(chunk)
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as e:
            raise self.error(f"array {key} cannot be read ({type(e).__name__}: {_one_line(e)})") from e


def open_npz(path: str | os.PathLike | Path, *, fix: str) -> BoundedNpz:
    """Open ``path`` for bounded reading (use as a context manager); errors end with ``fix``."""
    return BoundedNpz(path, fix=fix)
