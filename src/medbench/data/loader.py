"""Batches of uint8 images from memory or from a store on disk: no DataLoader workers, no per-sample Python.

Held in memory (small data), a batch is one index into a tensor already on the device. Read from disk (a
:class:`medbench.data.store.DiskImages`), a background thread gathers the next batches (``os.preadv`` drops the
GIL) into pinned memory when the model is on CUDA and copies them without blocking, while the model computes. Both
draw the same permutation from the same generator: identical batches for one seed, whichever the storage.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence

import torch

from medbench.data.dataset import Split
from medbench.data.store import gather, on_disk
from medbench.data.store import rows as read_rows

PREFETCH = 3  # batches read ahead of the model


def iterate_batches(split: Split, batch_size: int, *, shuffle: bool = False,
                    generator: torch.Generator | None = None, device: torch.device | None = None,
                    shard: tuple[int, int] = (0, 1), rows: slice | None = None, skip: int = 0,
                    prefetch: int | None = None, order: torch.Tensor | None = None,
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(images uint8 [B,C,H,W], labels int64 [B,L])`` on ``device`` (default: where the split is).

    When shuffling (training), a last batch of a single sample is skipped: batch-norm cannot train on it,
    and it is a different random sample each epoch. ``shard=(rank, world)`` keeps every world-th sample of
    each batch for data-parallel training; all ranks draw the same order from equally seeded generators and
    each reads only its own samples. ``rows`` limits the pass to a block of the split (in order). ``skip``
    leaves out the first batches without reading them (a run resumed mid-epoch: the same order, after them).
    ``prefetch`` batches are read ahead in a thread (default :data:`PREFETCH` when the images are on disk or
    must be copied to another device, else none). ``order``: the rows of the pass (relative to ``rows``), e.g. a
    class-balanced draw with replacement (:mod:`medbench.data.sampling`), instead of a shuffle; batches are then
    formed, sharded and skipped as for a shuffle.
    """
    lo, hi = (0, len(split)) if rows is None else (rows.start or 0, min(rows.stop, len(split)))
    images = split.images
    pin = device is not None and device.type == "cuda" and images.device.type == "cpu"
    if prefetch is None:
        prefetch = PREFETCH if on_disk(images) or pin else 0
    batches = _images(split.images, batch_size, lo, hi, shuffle, generator, device, shard, pin, skip, order)
    return _with_labels(_ahead(batches, prefetch) if prefetch > 0 else batches, split.labels, device)


def _images(images, batch_size: int, lo: int, hi: int, shuffle: bool, generator, device, shard, pin: bool,
            skip: int, order: torch.Tensor | None = None):
    """(image batch on ``device``, its rows: a slice or an index tensor) per batch."""
    rank, world = shard
    if order is not None:
        shuffle = True
        n = len(order)
    else:
        n = hi - lo
        order = torch.randperm(n, generator=generator) if shuffle else None
    for start in range(skip * batch_size, n, batch_size):
        stop = min(start + batch_size, n)
        if shuffle and stop - start < 2 * world:
            break
        if order is None:
            sel = slice(lo + start, lo + stop)
            x = read_rows(images, sel.start, sel.stop, pin=pin)
        else:
            sel = order[start:stop][rank::world] + lo
            x = gather(images, sel, pin=pin)
        yield (x.to(device, non_blocking=True) if device is not None else x), sel


def _with_labels(batches, labels: torch.Tensor, device):
    # labels are taken here, in the consumer's thread: callers keep them for the epoch's metrics, and small tensors
    # kept from the reading thread's malloc arena would pin the freed batch buffers between them (RSS grew by one
    # batch per step, 18 MB at 224 px)
    for x, sel in batches:
        y = labels[sel.to(labels.device) if torch.is_tensor(sel) else sel]
        yield x, (y.to(device, non_blocking=True) if device is not None else y)


class _ahead:
    """Run an iterator ``depth`` items ahead in a daemon thread; errors reach the consumer; closing stops it."""

    def __init__(self, it, depth: int):
        self._q: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(it,), daemon=True, name="medbench-prefetch")
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, it) -> None:
        try:
            for item in it:
                if not self._put(("item", item)):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(("error", e))
            return
        self._put(("end", None))

    def __iter__(self):
        return self

    def __next__(self):
        kind, item = self._q.get()
        if kind == "item":
            return item
        self._stop.set()
        if kind == "error":
            raise item
        raise StopIteration

    def close(self) -> None:
        self._stop.set()

    def __del__(self) -> None:
        self._stop.set()


class Preprocess:
    """uint8 batch -> float, normalised as ``(x/255 - mean) / std`` (one value, or one per channel), grey
    repeated to RGB when asked."""

    def __init__(self, mean: float | Sequence[float] = 0.5, std: float | Sequence[float] = 0.5,
                 to_rgb: bool = False, channels_last: bool = False):
        self.mean, self.std, self.to_rgb, self.channels_last = mean, std, to_rgb, channels_last
        m = torch.tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
        self._scale, self._shift = 1.0 / (255.0 * s), m / s  # one fused multiply-subtract
        self._on: dict = {}

    def _consts(self, device: torch.device):
        if device not in self._on:
            self._on[device] = (self._scale.to(device), self._shift.to(device))
        return self._on[device]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.to_rgb and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        scale, shift = self._consts(x.device)
        x = x.float().mul_(scale).sub_(shift)  # [C,1,1] constants broadcast over the batch
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x
