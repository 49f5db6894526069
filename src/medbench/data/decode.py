"""One image file -> a uint8 ``[H, W, C]`` array, and square resizing.

Decoding rules (the same for every source that reads image files):

* PNG, JPEG, BMP, TIFF through Pillow; DICOM (``.dcm``/``.dicom`` or the ``DICM`` magic) through
  :mod:`medbench.data.dicom`.
* EXIF orientation is applied (``PIL.ImageOps.exif_transpose``), so a phone photo shows upright.
* Palette images become RGB (or grey when the palette is grey); alpha channels are dropped (LA -> L, RGBA -> RGB).
* 16-bit and 32-bit images (PNG ``I;16``, TIFF ``I``/``F``) are scaled to 8 bits by the image's **own min/max**
  (a linear stretch; a constant image becomes all zeros). This suits medical 16-bit PNGs that hold 10- or
  12-bit data, which ``>> 8`` would turn almost black; the price is that absolute intensities are not kept
  across images.
* ``channels=None`` keeps the file's own channels, except that an RGB image whose three channels are equal
  everywhere is returned as grey (one channel). ``channels=1`` converts RGB with the ITU-R 601 luma weights
  (0.299 R + 0.587 G + 0.114 B, as Pillow's ``convert("L")``); ``channels=3`` repeats a grey channel.
* A file whose header declares more than :data:`MAX_PIXELS` pixels is refused before it is decoded
  (decompression bombs): PNG and JPEG headers are parsed here, other formats use the size Pillow reads from
  the header; Pillow's own ``DecompressionBombError`` becomes the same kind of clear error. (Pillow only *warns*
  between its ``MAX_IMAGE_PIXELS`` and twice that; keep ``MAX_PIXELS`` below it, as the default is.)
* A truncated or damaged file is an error, never a partial image: pixels are loaded with
  ``ImageFile.LOAD_TRUNCATED_IMAGES`` left False (decoding refuses to run if some other code set it True), and a
  JPEG must end with its end-of-image marker (Pillow accepts a JPEG cut just after its last scan).
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from medbench.errors import MedbenchError

MAX_PIXELS = 8192 * 8192  # per image (frame); larger declared sizes are refused before decoding
DICOM_SUFFIXES = (".dcm", ".dicom")
_FIX = "check that the file is a complete PNG, JPEG or DICOM image, re-export or remove it"


def cannot_decode(path, reason: str) -> MedbenchError:
    return MedbenchError(f"{path}: cannot decode ({reason}); {_FIX}")


def too_large(path, width: int, height: int) -> MedbenchError:
    return MedbenchError(f"{path}: declared size {width}x{height} ({width * height} pixels) exceeds the limit of "
                         f"{MAX_PIXELS} pixels (medbench.data.decode.MAX_PIXELS); downscale the image first")


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


def to_uint8(a: np.ndarray) -> np.ndarray:
    """Linear min/max stretch of any numeric array to 0..255 (uint8 input is returned as is)."""
    if a.dtype == np.uint8:
        return a
    a = a.astype(np.float64)
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    if not hi > lo:
        return np.zeros(a.shape, np.uint8)
    return np.rint((a - lo) * (255.0 / (hi - lo))).clip(0, 255).astype(np.uint8)


def is_grey(img: np.ndarray) -> bool:
    """One channel, or three equal channels."""
    if img.shape[-1] == 1:
        return True
    return bool((img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all())


def convert_channels(img: np.ndarray, channels: int | None) -> np.ndarray:
    """uint8 ``[H, W, 1|3]`` -> ``[H, W, channels]`` (None: grey-looking RGB collapses to one channel)."""
    c = img.shape[-1]
    if channels is None:
        return img[..., :1].copy() if c == 3 and is_grey(img) else img
    if channels not in (1, 3):
        raise MedbenchError(f"channels must be 1, 3 or None (the file's own), not {channels}")
    if c == channels:
        return img
    if channels == 3:
        return np.repeat(img, 3, axis=-1)
    # ITU-R 601-2 luma, rounded like Pillow's convert("L")
    rgb = img.astype(np.float64)
    y = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    return np.rint(y).clip(0, 255).astype(np.uint8)[..., None]


def _pil_to_array(im) -> np.ndarray:
    mode = im.mode
    if mode == "1":
        im = im.convert("L")
    elif mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
    mode = im.mode
    if mode in ("L", "RGB"):
        a = np.asarray(im)
    elif mode == "LA":
        a = np.asarray(im)[..., 0]
    elif mode in ("RGBA", "RGBX", "RGBa"):
        a = np.asarray(im.convert("RGB"))
    elif mode.startswith("I") or mode == "F":  # I;16, I;16B, I;16L, I, F: stretch by the image's min/max
        a = to_uint8(np.asarray(im))
    else:
        a = np.asarray(im.convert("RGB"))
    if a.ndim == 2:
        a = a[..., None]
    return np.ascontiguousarray(a)


def header_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) declared in a PNG or JPEG header, read without decoding; None for other formats."""
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


def _decode_pil(path: Path) -> np.ndarray:
    from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise MedbenchError(f"{path}: PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True, which would let truncated files "
                            f"decode as partial images; set it back to False before loading data")
    try:
        declared = header_size(path)
    except OSError as e:
        raise MedbenchError(f"{path}: cannot be read ({e.strerror or e}); check the path and its permissions") from e
    if declared is not None and declared[0] * declared[1] > MAX_PIXELS:
        raise too_large(path, *declared)
    try:
        with Image.open(path) as im:  # reads the header only; Pillow refuses huge sizes here
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise too_large(path, w, h)
            im.load()  # decodes everything now: truncation and corrupt data raise here
            if im.format == "JPEG" and not _jpeg_has_eoi(path):
                raise cannot_decode(path, "truncated JPEG: no end-of-image marker")
            im = ImageOps.exif_transpose(im)
            return _pil_to_array(im)
    except MedbenchError:
        raise
    except Image.DecompressionBombError as e:
        raise MedbenchError(f"{path}: refused as a possible decompression bomb ({e}); downscale the image first") from e
    except FileNotFoundError as e:
        raise MedbenchError(f"{path}: file not found; check the path") from e
    except UnidentifiedImageError as e:
        raise cannot_decode(path, "not a recognised image format") from e
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError, IndexError, struct.error) as e:
        raise cannot_decode(path, f"{type(e).__name__}: {e}") from e


def decode_image(path: str | os.PathLike, channels: int | None = None) -> np.ndarray:
    """Read one image file -> uint8 ``[H, W, C]`` (C = ``channels``, or the file's own: 1 or 3).

    Raises :class:`MedbenchError` naming the file for anything unreadable, truncated or too large.
    """
    path = Path(path)
    if channels not in (None, 1, 3):
        raise MedbenchError(f"channels must be 1, 3 or None (the file's own), not {channels}")
    if is_dicom(path):
        from medbench.data.dicom import read_dicom

        img = read_dicom(path)
    else:
        img = _decode_pil(path)
    return convert_channels(img, channels)


def resize_square(img: np.ndarray, size: int, mode: str = "pad") -> np.ndarray:
    """uint8 ``[H, W, C]`` -> ``[size, size, C]`` keeping the aspect ratio.

    ``pad``: centred on a black square of side max(H, W); ``crop``: the centred square of side min(H, W).
    Then resized with Pillow's Lanczos filter (antialiased when shrinking).
    """
    from PIL import Image

    if mode not in ("pad", "crop"):
        raise MedbenchError(f"resize mode must be 'pad' or 'crop', not {mode!r}")
    if img.ndim == 2:
        img = img[..., None]
    h, w, c = img.shape
    if h != w:
        if mode == "pad":
            s = max(h, w)
            out = np.zeros((s, s, c), np.uint8)
            top, left = (s - h) // 2, (s - w) // 2
            out[top:top + h, left:left + w] = img
            img = out
        else:
            s = min(h, w)
            top, left = (h - s) // 2, (w - s) // 2
            img = img[top:top + s, left:left + s]
    if img.shape[0] == size:
        return np.ascontiguousarray(img)
    im = Image.fromarray(np.ascontiguousarray(img[..., 0] if c == 1 else img))
    im = im.resize((size, size), Image.Resampling.LANCZOS)
    out = np.asarray(im)
    return np.ascontiguousarray(out[..., None] if out.ndim == 2 else out)
