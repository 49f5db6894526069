"""Views over image sources (a tensor in memory or a store on disk) that are themselves indexed like a tensor and
read only the rows used: two sources one after the other (training images then generated ones; a fold's pooled
train+val), and chosen rows of a source (a cross-validation fold)."""
from __future__ import annotations

import numpy as np
import torch

from medbench.data.store import batch_buffer, gather


class CatImages:
    """Two image sources one after the other (real training images, then generated ones), indexed like a tensor."""

    dtype = torch.uint8
    device = torch.device("cpu")
    ndim = 4

    def __init__(self, first, second):
        self.first, self.second = first, second
        self.shape = torch.Size((len(first) + len(second), *first.shape[1:]))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.take([int(key)])[0]
        if isinstance(key, slice):
            return self.take(range(*key.indices(len(self))))
        return self.take(key)

    def take(self, idx, pin: bool = False) -> torch.Tensor:
        idx = torch.as_tensor(np.asarray(idx.cpu() if torch.is_tensor(idx) else idx, dtype=np.int64)).reshape(-1)
        out = batch_buffer((len(idx), *self.shape[1:]), pin)
        k = len(self.first)
        a, b = idx < k, idx >= k
        if a.any():
            out[a] = gather(self.first, idx[a]).cpu()
        if b.any():
            out[b] = gather(self.second, idx[b] - k).cpu()
        return out

    def to(self, device=None, *args, **kwargs) -> torch.Tensor:
        return self.take(range(len(self))).to(device, *args, **kwargs)


def cat_images(first, second):
    """``first`` then ``second``: one tensor when both are in memory, else a :class:`CatImages`."""
    if torch.is_tensor(first) and torch.is_tensor(second):
        return torch.cat([first, second.to(first.device)])
    return CatImages(first, second)


class IndexedImages:
    """Rows ``index`` of an image source read as indexed (a store, :class:`CatImages`), itself indexed like a
    tensor: a cross-validation fold's view of pooled splits, read only where used."""

    dtype = torch.uint8
    device = torch.device("cpu")
    ndim = 4

    def __init__(self, source, index):
        self.source, self.index = source, np.asarray(index, dtype=np.int64).reshape(-1)
        self.shape = torch.Size((len(self.index), *source.shape[1:]))

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.take([int(key)])[0]
        if isinstance(key, slice):
            return self.take(range(*key.indices(len(self))))
        if torch.is_tensor(key) and key.dtype == torch.bool:
            key = key.nonzero().flatten()
        return self.take(key)

    def take(self, idx, pin: bool = False) -> torch.Tensor:
        idx = np.asarray(idx.cpu() if torch.is_tensor(idx) else idx, dtype=np.int64).reshape(-1)
        return gather(self.source, torch.as_tensor(self.index[idx]), pin=pin)

    def to(self, device=None, *args, **kwargs) -> torch.Tensor:
        return self.take(range(len(self))).to(device, *args, **kwargs)


def select_rows(images, index):
    """Rows ``index`` of ``images``: a new tensor when held in memory, else an :class:`IndexedImages` view."""
    if torch.is_tensor(images):
        return images[torch.as_tensor(np.asarray(index, dtype=np.int64), device=images.device)]
    return IndexedImages(images, index)
