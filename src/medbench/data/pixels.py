"""Pixel arithmetic on decoded images: wide data to 8 bits, and channel conversion, in bounded blocks.

Every mapping runs on float64 blocks of :data:`CHUNK` values (or row bands of about that many), never on a
full-size float64 copy of the image: a 16-bit 7000 x 7000 image costs a few MB beside its own pixels.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from medbench.data.headers import NonFinitePixels
from medbench.errors import MedbenchError

CHUNK = 1 << 20  # elements per float64 block when mapping wide data to 8 bits (8 MB)


def map_blocks(a: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """uint8 array shaped like ``a``: ``fn`` maps float64 blocks of CHUNK values to 0..255 (never a full-size
    float64 copy)."""
    out = np.empty(a.shape, np.uint8)
    src, dst = np.ascontiguousarray(a).reshape(-1), out.reshape(-1)
    for i in range(0, src.size, CHUNK):
        dst[i:i + CHUNK] = fn(src[i:i + CHUNK].astype(np.float64))
    return out


def finite_range(a: np.ndarray) -> tuple[float, float]:
    """(min, max) of ``a``; NaN or infinity raise :class:`NonFinitePixels` (min/max propagate NaN)."""
    lo, hi = float(a.min()), float(a.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise NonFinitePixels("pixel values include NaN or infinity")
    return lo, hi


def stretch(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linear map of [lo, hi] onto 0..255 (all zeros when hi <= lo)."""
    if not hi > lo:
        return np.zeros(a.shape, np.uint8)
    k = 255.0 / (hi - lo)
    return map_blocks(a, lambda v: np.rint((v - lo) * k).clip(0, 255))


def to_uint8(a: np.ndarray) -> np.ndarray:
    """Linear min/max stretch of any numeric array to 0..255 (uint8 input is returned as is)."""
    if a.dtype == np.uint8:
        return a
    return stretch(a, *finite_range(a))


def wide_to_l(im):
    """16-bit, 32-bit or float Pillow image -> "L" by its own min/max, in row bands (no full-size copies)."""
    from PIL import Image

    w, h = im.size
    rows = max(1, CHUNK // w)
    bands = [(y, min(y + rows, h)) for y in range(0, h, rows)]

    def band(y0, y1):
        return np.asarray(im.crop((0, y0, w, y1)))

    ranges = [finite_range(band(*b)) for b in bands]
    lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
    out = np.empty((h, w), np.uint8)
    for y0, y1 in bands:
        out[y0:y1] = stretch(band(y0, y1), lo, hi)
    return Image.fromarray(out)


def is_grey(img: np.ndarray) -> bool:
    """One channel, or three equal channels."""
    if img.shape[-1] == 1:
        return True
    return bool((img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all())


def check_channels(channels) -> None:
    if channels not in (None, 1, 3):
        raise MedbenchError(f"channels must be 1, 3 or None (the file's own), not {channels}")


def convert_channels(img: np.ndarray, channels: int | None) -> np.ndarray:
    """uint8 ``[H, W, 1|3]`` -> ``[H, W, channels]`` (None: grey-looking RGB collapses to one channel)."""
    check_channels(channels)
    c = img.shape[-1]
    if channels is None:
        return img[..., :1].copy() if c == 3 and is_grey(img) else img
    if c == channels:
        return img
    if channels == 3:
        return np.repeat(img, 3, axis=-1)
    # ITU-R 601-2 luma, rounded like Pillow's convert("L"); in row blocks (no full-size float64 copy)
    out = np.empty(img.shape[:2] + (1,), np.uint8)
    rows = max(1, CHUNK // max(1, img.shape[1]))
    for y in range(0, img.shape[0], rows):
        rgb = img[y:y + rows].astype(np.float64)
        out[y:y + rows, :, 0] = np.rint(rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114).clip(0, 255)
    return out
