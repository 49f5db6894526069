"""What an image file declares before its pixels are decoded, the limits that bound it, and decode errors.

The lowest layer of decoding: :mod:`medbench.data.dicom` and :mod:`medbench.data.decode` both build on it (and
:mod:`medbench.data.decode` re-exports its names, where callers have always imported them).

* :data:`MAX_PIXELS` per image and :data:`MAX_SIDE` per side: larger declared sizes are refused before decoding;
* :func:`check_header` applies them (and refuses multi-frame files) to an :class:`ImageHeader`;
* :func:`decode_errors` turns any failure while reading a file into one :class:`MedbenchError` line naming it.
"""
from __future__ import annotations

import os
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from medbench.errors import MedbenchError

MAX_PIXELS = 8192 * 8192  # per image; larger declared sizes are refused before decoding
MAX_SIDE = 1 << 17  # Lanczos weight tables grow with the longest side (about 48 bytes per pixel of it)
DICOM_SUFFIXES = (".dcm", ".dicom")
PIL_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "GIF")  # Pillow opens nothing else (a smaller attack surface)
_FIX = "check that the file is a complete PNG, JPEG, BMP, TIFF, GIF or DICOM image, re-export or remove it"
_MAX_REASON = 300  # characters of a library's message kept in ours


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


# the messages keep naming medbench.data.decode, which re-exports the limits: where users have always read them
def too_large(path, width: int, height: int, limit: int | None = None) -> MedbenchError:
    limit = MAX_PIXELS if limit is None else limit
    name = " (medbench.data.headers.MAX_PIXELS)" if limit == MAX_PIXELS else ""
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
                            f"(medbench.data.headers.MAX_SIDE); crop or downscale the image first")
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


def png_jpeg_size(path) -> tuple[int, int] | None:
    """(width, height) declared in a PNG or JPEG header, parsed here (so a bomb is named with its size before
    Pillow sees it); None for other formats."""
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


def pil_header(im) -> ImageHeader:
    """The header of an opened Pillow image (nothing decoded yet)."""
    # MPO side images (a phone's preview or depth map) are not frames of the picture
    frames = 1 if im.format == "MPO" else int(getattr(im, "n_frames", 1) or 1)
    return ImageHeader(im.width, im.height, frames)
