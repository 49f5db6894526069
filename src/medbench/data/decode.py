"""One image file -> a uint8 ``[H, W, C]`` array, and square resizing.

Decoding rules (the same for every source that reads image files):

* PNG, JPEG, BMP, TIFF and GIF through Pillow (no other Pillow format is opened); DICOM (``.dcm``/``.dicom`` or
  the ``DICM`` magic) through :mod:`medbench.data.dicom`.
* Every file is bounded before it is decoded: its header's width, height and frame count are read first
  (:func:`header_info`; limits and header parsing in :mod:`medbench.data.headers`), and a file declaring more
  than :data:`MAX_PIXELS` pixels (or a caller's ``max_pixels``), a side over :data:`MAX_SIDE`, or more than one
  frame is refused. PNG and JPEG headers are
  parsed here (so a 10^10-pixel bomb is named with its size), the others by Pillow's or pydicom's header reader.
* Multi-frame files (multi-page TIFF, animated GIF or PNG, multi-frame DICOM) are refused with the frame count:
  medbench reads single 2D images. (A JPEG's MPO side images, e.g. a phone's depth map, are not frames: the
  primary image is used.)
* EXIF orientation is applied (``PIL.ImageOps.exif_transpose``), so a phone photo shows upright.
* Palette images become RGB (or grey when the palette is grey); alpha channels are dropped (LA -> L, RGBA -> RGB).
* 16-bit, 32-bit and float images (PNG ``I;16``, TIFF ``I``/``F``) are scaled to 8 bits by the image's **own
  min/max** (a linear stretch; a constant image becomes all zeros). This suits medical 16-bit PNGs that hold 10-
  or 12-bit data, which ``>> 8`` would turn almost black (:mod:`medbench.data.pixels`); the price is that absolute
  intensities are not kept across images. NaN or infinite values are an error, never a black image.
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

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from medbench.data.dicom import dicom_header, read_dicom

# the limits, header checks, errors and pixel mapping live below DICOM (so that it needs nothing from here); they
# are re-exported because callers import them from this module
from medbench.data.headers import (
    DICOM_SUFFIXES,
    MAX_PIXELS,
    MAX_SIDE,
    PIL_FORMATS,
    ImageHeader,
    NonFinitePixels,
    cannot_decode,
    check_header,
    decode_errors,
    is_dicom,
    multi_frame,
    pil_header,
    png_jpeg_size,
    too_large,
)
from medbench.data.pixels import (
    CHUNK,
    check_channels,
    convert_channels,
    finite_range,
    is_grey,
    map_blocks,
    stretch,
    to_uint8,
    wide_to_l,
)
from medbench.errors import MedbenchError

__all__ = [
    "decode_image", "decode_fitted", "resize_square", "header_info", "header_size", "check_pixels", "DRAFT_FACTOR",
    # re-exported from medbench.data.headers and medbench.data.pixels
    "DICOM_SUFFIXES", "MAX_PIXELS", "MAX_SIDE", "PIL_FORMATS", "ImageHeader", "NonFinitePixels", "cannot_decode",
    "check_header", "decode_errors", "is_dicom", "multi_frame", "too_large", "CHUNK", "convert_channels",
    "finite_range", "is_grey", "map_blocks", "stretch", "to_uint8",
]

DRAFT_FACTOR = 2  # a JPEG draft keeps both sides >= this x the output size (see decode_fitted)


# ---- headers ----------------------------------------------------------------------------------------------------

def header_info(path: str | os.PathLike) -> ImageHeader:
    """Width, height and frame count declared by any accepted format, read without decoding pixels.

    Raises :class:`MedbenchError` naming the file when it cannot be read or is not an accepted image.
    """
    from PIL import Image

    path = Path(path)
    with decode_errors(path):
        if is_dicom(path):
            return dicom_header(path)
        declared = png_jpeg_size(path)
        try:
            with Image.open(path, formats=PIL_FORMATS) as im:
                return pil_header(im)
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
        return wide_to_l(im)
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
    declared = png_jpeg_size(path)
    if declared is not None:  # before Pillow sees it: our message names the size
        check_header(path, ImageHeader(*declared), max_pixels)
    with Image.open(path, formats=PIL_FORMATS) as im:  # reads the header only
        check_header(path, pil_header(im), max_pixels)
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
    check_channels(channels)
    with decode_errors(path):
        if is_dicom(path):
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
    check_channels(channels)
    _check_fit(size, mode)
    with decode_errors(path):
        if is_dicom(path):
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
