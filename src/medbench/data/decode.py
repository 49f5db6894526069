"""One image file -> a uint8 ``[H, W, C]`` array, and square resizing.

Decoding rules (the same for every source that reads image files):

* PNG, JPEG, BMP, TIFF and GIF through Pillow (no other Pillow format is opened); DICOM (``.dcm``/``.dicom`` or
  the ``DICM`` magic) through :mod:`medbench.data.dicom`.
* Every file is bounded before it is decoded: its header's width, height and frame count are read first
  (:func:`header_info`), and a file declaring more than :data:`MAX_PIXELS` pixels (or a caller's
  ``max_pixels``), a side over :data:`MAX_SIDE`, or more than one frame is refused. PNG and JPEG headers are
  parsed here (so a 10^10-pixel bomb is named with its size), the others by Pillow's or pydicom's header reader.
* Multi-frame files (multi-page TIFF, animated GIF or PNG, multi-frame DICOM) are refused with the frame count:
  medbench reads single 2D images. (A JPEG's MPO side images, e.g. a phone's depth map, are not frames: the
  primary image is used.)
* EXIF orientation is applied (``PIL.ImageOps.exif_transpose``), so a phone photo shows upright.
* Palette images become RGB (or grey when the palette is grey); alpha channels are dropped (LA -> L, RGBA -> RGB).
* 16-bit, 32-bit and float images (PNG ``I;16``, TIFF ``I``/``F``) are scaled to 8 bits by the image's **own
  min/max** (a linear stretch; a constant image becomes all zeros). This suits medical 16-bit PNGs that hold 10-
  or 12-bit data, which ``>> 8`` would turn almost black; the price is that absolute intensities are not kept
  across images. NaN or infinite values are an error, never a black image.
* ``channels=None`` keeps the file's own channels, except that an RGB image whose three channels are equal
  everywhere is returned as grey (one channel). ``channels=1`` converts RGB with the ITU-R 601 luma weights
  (0.299 R + 0.587 G + 0.114 B, as Pillow's ``convert("L")``); ``channels=3`` repeats a grey channel.
* A truncated or damaged file is an error, never a partial image: pixels are loaded with
  ``ImageFile.LOAD_TRUNCATED_IMAGES`` left False (decoding refuses to run if some other code set it True), and a
  JPEG must end with its end-of-image marker (Pillow accepts a JPEG cut just after its last scan).
* Every failure, including ``MemoryError`` and any exception of Pillow, pydicom or numpy, is one
  :class:`MedbenchError` line naming the file.

Speed: :func:`decode_fitted` lets libjpeg decode a large JPEG at a reduced scale (a "draft") that still keeps
both sides at least twice the output size, then resizes as usual; ``draft=False`` decodes every pixel.

Memory: :func:`decode_fitted` (what training, ``predict`` and ``serve`` use) stays in uint8 at full size, resizes
before padding and converts channels at the output size, so its peak is about one or two copies of the decoded
file (one byte per pixel and channel; 16-bit and float data are stretched to 8 bits in bounded chunks).
"""
from __future__ import annotations

import math
import os
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from medbench.errors import MedbenchError

MAX_PIXELS = 8192 * 8192  # per image; larger declared sizes are refused before decoding
MAX_SIDE = 1 << 17  # Lanczos weight tables grow with the longest side (about 48 bytes per pixel of it)
DICOM_SUFFIXES = (".dcm", ".dicom")
PIL_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "GIF")  # Pillow opens nothing else (a smaller attack surface)
CHUNK = 1 << 20  # elements per float64 block when mapping wide data to 8 bits (8 MB)
_FIX = "check that the file is a complete PNG, JPEG, BMP, TIFF, GIF or DICOM image, re-export or remove it"
_MAX_REASON = 300  # characters of a library's message kept in ours
DRAFT_FACTOR = 2  # a JPEG draft keeps both sides >= this x the output size (see decode_fitted)


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header declares: read without decoding pixels."""
    width: int
    height: int
    frames: int = 1


class NonFinitePixels(ValueError):
    """NaN or infinity among the pixel values (float TIFF, DICOM after rescale)."""


def cannot_decode(path, reason: str) -> MedbenchError:
    reason = " ".join(str(reason).split())  # library messages may span lines; ours is one
    if len(reason) > _MAX_REASON:
        reason = reason[:_MAX_REASON - 3] + "..."
    return MedbenchError(f"{path}: cannot decode ({reason}); {_FIX}")


def too_large(path, width: int, height: int, limit: int | None = None) -> MedbenchError:
    limit = MAX_PIXELS if limit is None else limit
    name = " (medbench.data.decode.MAX_PIXELS)" if limit == MAX_PIXELS else ""
    return MedbenchError(f"{path}: declared size {width}x{height} ({width * height} pixels) exceeds the limit of "
                         f"{limit} pixels{name}; downscale the image first")


def multi_frame(path, frames: int) -> MedbenchError:
    return MedbenchError(f"{path}: a multi-frame image ({frames} frames); medbench reads single 2D images, so "
                         f"export the frame you want as its own file")


def check_header(path, head: ImageHeader, max_pixels: int | None = None) -> ImageHeader:
    """Refuse an empty or too large declared size (pixels, or one side over MAX_SIDE) and multi-frame files."""
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    w, h = head.width, head.height
    if w < 1 or h < 1:
        raise cannot_decode(path, f"declared size {w}x{h} is empty")
    if w * h > limit:
        raise too_large(path, w, h, limit)
    if max(w, h) > MAX_SIDE:
        raise MedbenchError(f"{path}: declared size {w}x{h} exceeds the limit of {MAX_SIDE} pixels per side "
                            f"(medbench.data.decode.MAX_SIDE); crop or downscale the image first")
    if head.frames > 1:
        raise multi_frame(path, head.frames)
    return head


@contextmanager
def decode_errors(path):
    """Any failure while reading ``path`` becomes one MedbenchError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        yield
    except MedbenchError:
        raise
    except FileNotFoundError:
        raise MedbenchError(f"{path}: file not found; check the path") from None
    except (PermissionError, IsADirectoryError) as e:
        raise MedbenchError(f"{path}: cannot be read ({e.strerror or e}); check the path and its permissions") from None
    except MemoryError:
        raise cannot_decode(path, "out of memory while decoding") from None
    except Image.DecompressionBombError as e:
        raise MedbenchError(f"{path}: refused as a possible decompression bomb ({e}); downscale the image "
                            f"first") from None
    except UnidentifiedImageError:
        raise cannot_decode(path, "not a recognised image format") from None
    except NonFinitePixels as e:
        raise cannot_decode(path, str(e)) from None
    except Exception as e:  # noqa: BLE001 - Pillow, pydicom and numpy raise many types; each means a bad file
        raise cannot_decode(path, f"{type(e).__name__}: {e}") from e


def is_dicom(path: str | os.PathLike) -> bool:
    """By suffix, or by the ``DICM`` magic at byte 128 of the file."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


# ---- 8-bit mapping in bounded blocks --------------------------------------------------------------------------

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


def is_grey(img: np.ndarray) -> bool:
    """One channel, or three equal channels."""
    if img.shape[-1] == 1:
        return True
    return bool((img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all())


def _check_channels(channels) -> None:
    if channels not in (None, 1, 3):
        raise MedbenchError(f"channels must be 1, 3 or None (the file's own), not {channels}")


def convert_channels(img: np.ndarray, channels: int | None) -> np.ndarray:
    """uint8 ``[H, W, 1|3]`` -> ``[H, W, channels]`` (None: grey-looking RGB collapses to one channel)."""
    _check_channels(channels)
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


# ---- headers ----------------------------------------------------------------------------------------------------

def _png_jpeg_size(path) -> tuple[int, int] | None:
    """(width, height) declared in a PNG or JPEG header, parsed here; None for other formats."""
    with open(path, "rb") as f:
        head = f.read(32)
        if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
            return struct.unpack(">II", head[16:24])
        if head[:2] != b"\xff\xd8":
            return None
        f.seek(2)
        while True:  # walk the JPEG marker segments up to the first start-of-frame
            b = f.read(1)
            while b and b != b"\xff":
                b = f.read(1)
            while b == b"\xff":
                b = f.read(1)
            if not b:
                return None
            marker = b[0]
            if marker in (0x01, *range(0xD0, 0xD9)):  # TEM, RSTn, SOI: no length
                continue
            seg = f.read(2)
            if len(seg) < 2:
                return None
            length = struct.unpack(">H", seg)[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                sof = f.read(5)
                if len(sof) < 5:
                    return None
                height, width = struct.unpack(">HH", sof[1:5])
                return width, height
            if marker == 0xD9 or length < 2:
                return None
            f.seek(length - 2, os.SEEK_CUR)


def _pil_header(im) -> ImageHeader:
    # MPO side images (a phone's preview or depth map) are not frames of the picture
    frames = 1 if im.format == "MPO" else int(getattr(im, "n_frames", 1) or 1)
    return ImageHeader(im.width, im.height, frames)


def header_info(path: str | os.PathLike) -> ImageHeader:
    """Width, height and frame count declared by any accepted format, read without decoding pixels.

    Raises :class:`MedbenchError` naming the file when it cannot be read or is not an accepted image.
    """
    from PIL import Image

    path = Path(path)
    with decode_errors(path):
        if is_dicom(path):
            from medbench.data.dicom import dicom_header

            return dicom_header(path)
        declared = _png_jpeg_size(path)
        try:
            with Image.open(path, formats=PIL_FORMATS) as im:
                return _pil_header(im)
        except Image.DecompressionBombError:
            if declared is None:
                raise
            return ImageHeader(*declared)


def header_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) declared by any accepted format (PNG, JPEG, BMP, TIFF, GIF, DICOM) without decoding;
    None when the file is not a readable image (decoding it then says why)."""
    try:
        head = header_info(path)
    except MedbenchError:
        return None
    return head.width, head.height


def check_pixels(path: str | os.PathLike, max_pixels: int | None = None) -> ImageHeader:
    """The header of ``path`` if decoding it is allowed, read without decoding pixels.

    Raises :class:`MedbenchError` naming the file when the declared width x height exceeds ``max_pixels``
    (default :data:`MAX_PIXELS`; the message says "exceeds the limit"), a side exceeds :data:`MAX_SIDE`, the file
    holds several frames, or it is not a readable PNG, JPEG, BMP, TIFF, GIF or DICOM image.
    """
    return check_header(path, header_info(path), max_pixels)


# ---- Pillow decoding ----------------------------------------------------------------------------------------------

def _jpeg_has_eoi(path: Path, tail: int = 4096) -> bool:
    """A complete JPEG ends with the EOI marker FF D9 (allowing some trailing bytes after it).

    Pillow decodes a JPEG cut right after its last scan without complaint; this catches that case.
    Entropy-coded data never holds FF D9 (FF is byte-stuffed), so the marker in the tail is the real end.
    """
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        n = f.tell()
        f.seek(max(0, n - tail))
        return b"\xff\xd9" in f.read()


def _wide_to_l(im):
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


def _to_8bit(im):
    """Any Pillow mode -> "L" or "RGB" (palettes to RGB, alpha dropped, wide data stretched)."""
    mode = im.mode
    if mode in ("L", "RGB"):
        return im
    if mode == "1":
        return im.convert("L")
    if mode in ("LA", "La"):
        return im.getchannel(0)
    if mode == "PA":
        return im.convert("RGBA").convert("RGB")
    if mode.startswith("I") or mode == "F":  # I;16, I;16B, I;16L, I, F
        return _wide_to_l(im)
    return im.convert("RGB")  # P, RGBA, RGBX, RGBa, CMYK, YCbCr, LAB, HSV


def _upright(im) -> bool:
    """No EXIF orientation to apply (missing, 1, or a value exif_transpose ignores)."""
    if not im.info.get("exif"):
        return True
    return im.getexif().get(0x0112, 1) not in range(2, 9)


def _with_pil(path: Path, max_pixels: int | None, finish: Callable, draft: int | None = None):
    """Check the header, decode, orient upright, make 8-bit; ``finish(L or RGB image, drafted)`` runs while it is
    open. ``draft``: a JPEG may be decoded at 1/2, 1/4 or 1/8 size (libjpeg's DCT scaling) as long as both sides
    stay >= ``draft``; ``drafted`` is then ``(full width, full height, scale)``, else None."""
    from PIL import Image, ImageFile, ImageOps

    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise MedbenchError(f"{path}: PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True, which would let truncated files "
                            f"decode as partial images; set it back to False before loading data")
    declared = _png_jpeg_size(path)
    if declared is not None:  # before Pillow sees it: our message names the size
        check_header(path, ImageHeader(*declared), max_pixels)
    with Image.open(path, formats=PIL_FORMATS) as im:  # reads the header only
        check_header(path, _pil_header(im), max_pixels)
        drafted = None
        # only upright files: a flip would move libjpeg's partial edge pixel to the other side of the box
        if draft and im.format == "JPEG" and _upright(im):
            w, h = im.size
            res = im.draft(im.mode, (draft, draft))  # im.mode: no colour conversion by libjpeg
            if res is not None and im.size != (w, h):
                drafted = (w, h, round(w / res[1][2]))  # box = (0, 0, W / scale, H / scale)
        im.load()  # decodes everything now: truncation and corrupt data raise here
        if im.format in ("JPEG", "MPO") and not _jpeg_has_eoi(path):
            raise cannot_decode(path, "truncated JPEG: no end-of-image marker")
        ImageOps.exif_transpose(im, in_place=True)
        return finish(_to_8bit(im), drafted)


def _as_hwc(im) -> np.ndarray:
    a = np.asarray(im)
    return a[..., None] if a.ndim == 2 else a


def _from_hwc(img: np.ndarray):
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(img[..., 0] if img.shape[-1] == 1 else img))


# ---- entry points -------------------------------------------------------------------------------------------------

def decode_image(path: str | os.PathLike, channels: int | None = None, max_pixels: int | None = None) -> np.ndarray:
    """Read one image file at full size -> uint8 ``[H, W, C]`` (C = ``channels``, or the file's own: 1 or 3).

    Raises :class:`MedbenchError` naming the file for anything unreadable, truncated, multi-frame or too large.
    To prepare model input, :func:`decode_fitted` is cheaper.
    """
    path = Path(path)
    _check_channels(channels)
    with decode_errors(path):
        if is_dicom(path):
            from medbench.data.dicom import read_dicom

            img = read_dicom(path, max_pixels)
        else:
            img = _with_pil(path, max_pixels, lambda im, _: _as_hwc(im))
        return convert_channels(img, channels)


def decode_fitted(path: str | os.PathLike, size: int, mode: str = "pad", channels: int | None = None,
                  max_pixels: int | None = None, draft: bool = True) -> np.ndarray:
    """Read one image file straight to uint8 ``[size, size, C]`` (:func:`resize_square` of the decoded image, then
    the channels of :func:`convert_channels`): what training, ``predict`` and ``serve`` use.

    The header is checked before any pixel is decoded, and nothing larger than the decoded file in uint8 is
    allocated (resizing comes before padding; channels are converted at the output size).

    ``draft``: a large upright JPEG is decoded by libjpeg at 1/2, 1/4 or 1/8 scale, keeping both sides at least
    :data:`DRAFT_FACTOR` x ``size``, before the same Lanczos resize (same geometry, computed on the full size).
    On 1,500 x 1,200 X-rays at 224 px a serial load runs 1.9x faster; on the real chest X-ray subset the pixels
    differ from the full decode by 0.05-0.2 grey levels on average, 99.9 % of them by at most 3, a few at sharp
    image borders by up to 25 (``benchmarks/results/ingest-speed.json``). ``draft=False`` decodes every pixel.
    """
    path = Path(path)
    _check_channels(channels)
    _check_fit(size, mode)
    with decode_errors(path):
        if is_dicom(path):
            from medbench.data.dicom import read_dicom

            img = _as_hwc(_fit(_from_hwc(read_dicom(path, max_pixels)), size, mode))
        else:
            need = DRAFT_FACTOR * size if draft else None
            img = _with_pil(path, max_pixels, lambda im, drafted: _as_hwc(_fit(im, size, mode, drafted)), need)
        return convert_channels(np.array(img), channels)  # a small writeable copy


def _check_fit(size, mode: str) -> None:
    if mode not in ("pad", "crop"):
        raise MedbenchError(f"resize mode must be 'pad' or 'crop', not {mode!r}")
    if not isinstance(size, int) or size < 1:
        raise MedbenchError(f"image size must be a positive integer, not {size!r}")


def _fit(im, size: int, mode: str, drafted: tuple[int, int, int] | None = None):
    """Pillow image -> ``size`` x ``size``: pad keeps the whole image (resized so its long side is ``size``, then
    centred on black); crop keeps the centred square of side min(H, W). Lanczos (antialiased when shrinking).

    ``drafted`` = (full width, full height, scale): ``im`` is a JPEG draft at 1/scale (libjpeg rounds its size
    up); the geometry is that of the full image, and the resize reads the matching box of the draft."""
    from PIL import Image

    lanczos = Image.Resampling.LANCZOS
    if drafted is not None:
        return _fit_draft(im, size, mode, *drafted)
    w, h = im.size
    if mode == "crop":
        s = min(w, h)
        if w != h:
            left, top = (w - s) // 2, (h - s) // 2
            im = im.crop((left, top, left + s, top + s))
        return im if s == size else im.resize((size, size), lanczos)
    scale = size / max(w, h)
    tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    if (tw, th) != (w, h):
        im = im.resize((tw, th), lanczos)
    if (tw, th) == (size, size):
        return im
    out = Image.new(im.mode, (size, size))  # black
    out.paste(im, ((size - tw) // 2, (size - th) // 2))
    return out


def _fit_draft(im, size: int, mode: str, w: int, h: int, scale: int):
    from PIL import Image

    lanczos = Image.Resampling.LANCZOS
    if mode == "crop":
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        return im.resize((size, size), lanczos, box=(left / scale, top / scale, (left + s) / scale, (top + s) / scale))
    k = size / max(w, h)
    tw, th = max(1, round(w * k)), max(1, round(h * k))
    im = im.resize((tw, th), lanczos, box=(0, 0, w / scale, h / scale))
    if (tw, th) == (size, size):
        return im
    out = Image.new(im.mode, (size, size))  # black
    out.paste(im, ((size - tw) // 2, (size - th) // 2))
    return out


def resize_square(img: np.ndarray, size: int, mode: str = "pad") -> np.ndarray:
    """uint8 ``[H, W, C]`` -> ``[size, size, C]`` keeping the aspect ratio.

    ``pad``: resized so that the long side is ``size``, then centred on a black square; ``crop``: the centred
    square of side min(H, W), resized. Pillow's Lanczos filter (antialiased when shrinking).
    """
    _check_fit(size, mode)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[0] == img.shape[1] == size:
        return np.ascontiguousarray(img)
    return _as_hwc(_fit(_from_hwc(img), size, mode))
