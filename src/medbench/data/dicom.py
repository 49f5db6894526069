"""One DICOM file -> a uint8 ``[H, W, C]`` array (C = 1 for greyscale, 3 for colour).

Before any pixel is decoded, the header's Rows x Columns, NumberOfFrames and SamplesPerPixel are checked
(:func:`medbench.data.headers.check_header`): too large, multi-frame or not 1/3 samples is refused.

Greyscale pipeline, in this order:

1. stored values from ``pixel_array`` (pydicom handles bit depth, sign and byte order);
2. modality rescale: ``value = stored * RescaleSlope + RescaleIntercept`` (defaults 1 and 0);
3. to 8 bits:
   * with ``WindowCenter``/``WindowWidth`` (the first value when several are given): the linear VOI
     window of DICOM PS3.3 C.11.2.1.2.1 onto 0..255;
   * else 8-bit unsigned data with no rescale (slope 1, intercept 0) are used as stored;
   * else a linear stretch from the image's own min/max onto 0..255;
4. ``MONOCHROME1`` (high value = dark) is inverted, so that in the result high = bright.

Steps 2-3 run in float64 blocks of :data:`medbench.data.pixels.CHUNK` values, never on a full-size float copy.
A value that is NaN or infinite after the rescale is an error, as is a header value that should be a number and
is not (RescaleSlope, RescaleIntercept, WindowCenter, WindowWidth, Rows, Columns, NumberOfFrames...). Any
pydicom failure (unknown VR, unsupported transfer syntax, damaged pixel data) is one error naming the file;
pydicom's own warnings are silenced (the error says what matters).

A VOI LUT Sequence is not applied (only the window is). Colour images (RGB, YBR converted to RGB by
pydicom, palette colour through its LUT) are passed through, 16-bit colour scaled by min/max.
Multi-frame files are refused: medbench reads single 2D images.
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np

from medbench.data import headers
from medbench.data.headers import ImageHeader, NonFinitePixels, cannot_decode, check_header, decode_errors
from medbench.data.pixels import finite_range, map_blocks, to_uint8
from medbench.errors import MedbenchError

DEFER_BYTES = 1 << 16  # elements larger than this (the pixel data) are read only when used


def _number(path, ds, keyword: str) -> float | None:
    """The first value of a numeric element, None when absent or blank; a value that is not a finite number is
    an error naming the element."""
    value = ds.get(keyword, None)
    if value is not None and not isinstance(value, (str, bytes)) and hasattr(value, "__len__"):
        value = value[0] if len(value) else None
    if value is None or (isinstance(value, (str, bytes)) and not value.strip()):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise cannot_decode(path, f"{keyword} {str(value)[:40]!r} is not a number") from None
    if not math.isfinite(x):
        raise cannot_decode(path, f"{keyword} is {x}, not a finite number")
    return x


def _count(path, ds, keyword: str, default: int) -> int:
    x = _number(path, ds, keyword)
    if x is None:
        return default
    if not x.is_integer():
        raise cannot_decode(path, f"{keyword} {x} is not a whole number")
    return int(x)


def _header(path, ds) -> ImageHeader:
    rows, cols = _count(path, ds, "Rows", 0), _count(path, ds, "Columns", 0)
    return ImageHeader(cols, rows, max(1, _count(path, ds, "NumberOfFrames", 1)))


def check_inflated_size(path: str | os.PathLike, cap: int) -> None:
    """Refuse a deflated DICOM that inflates past ``cap`` bytes. pydicom inflates such a file whole before it
    reads even its size (10 MB of zeros inflate to 10 GB), so it is inflated here first, in 1 MiB steps, and
    the output dropped. Files of other transfer syntaxes, or unreadable ones, pass (decoding judges them)."""
    import zlib

    import pydicom

    try:
        meta = pydicom.filereader.read_file_meta_info(path)
        if meta.get("TransferSyntaxUID") != pydicom.uid.DeflatedExplicitVRLittleEndian:
            return
        start = 132 + 12 + int(meta.get("FileMetaInformationGroupLength", 0))  # preamble, DICM, group length
        inflater, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
        with open(path, "rb") as f:
            f.seek(start)
            while (block := f.read(2 ** 16)) and total <= cap and not inflater.eof:
                while block and total <= cap and not inflater.eof:
                    total += len(inflater.decompress(block, 2 ** 20))
                    block = inflater.unconsumed_tail
    except Exception:  # noqa: BLE001 - not a readable deflated DICOM: decoding says what is wrong with it
        return
    if total > cap:
        raise MedbenchError(f"{path}: the deflated DICOM inflates to more than {cap} bytes, which exceeds the limit "
                            f"the pixel limit sets (a decompression bomb or a damaged file); use a smaller image")


def _dcmread(path: Path, **kwargs):
    try:
        import pydicom
    except ImportError as e:
        raise MedbenchError(f"{path}: reading DICOM needs pydicom; install it with `pip install pydicom`") from e
    check_inflated_size(path, 4 * headers.MAX_PIXELS + 2 ** 20)  # 16-bit RGB at the pixel limit, and its header
    try:
        return pydicom.dcmread(path, **kwargs)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - pydicom raises InvalidDicomError, OSError, EOFError, struct.error...
        raise cannot_decode(path, f"not a readable DICOM file: {type(e).__name__}: {e}") from e


def dicom_header(path: str | os.PathLike) -> ImageHeader:
    """Rows, Columns and NumberOfFrames of a DICOM file, read without its pixel data."""
    path = Path(path)
    with decode_errors(path), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _header(path, _dcmread(path, stop_before_pixels=True))


def _pixels(path: Path, ds) -> np.ndarray:
    try:
        return ds.pixel_array
    except Exception as e:  # noqa: BLE001 - missing decoder plugins, truncated pixel data, bad tags
        raise cannot_decode(path, f"pixel data: {type(e).__name__}: {e}{_syntax_hint(ds)}") from e


def _syntax_hint(ds) -> str:
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        compressed = ts is not None and ts.is_compressed
    except ValueError:  # not a transfer syntax pydicom knows: its message says so
        return ""
    if compressed:
        return f", compressed transfer syntax {ts.name}: `pip install pylibjpeg pylibjpeg-libjpeg` may help"
    return ""


def window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM linear VOI window (PS3.3 C.11.2.1.2.1) onto 0..255, float result."""
    if width < 1:
        width = 1.0
    lo = center - 0.5 - (width - 1) / 2
    hi = center - 0.5 + (width - 1) / 2
    if width == 1:
        return np.where(values <= lo, 0.0, 255.0)
    out = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255.0
    out = np.where(values <= lo, 0.0, out)
    return np.where(values > hi, 255.0, out)


def _grey_to_uint8(path, ds, arr: np.ndarray) -> np.ndarray:
    """Rescale, then window or stretch (module docstring, steps 2-3), in bounded float64 blocks."""
    slope = _number(path, ds, "RescaleSlope")
    intercept = _number(path, ds, "RescaleIntercept")
    slope = 1.0 if slope is None else slope
    intercept = 0.0 if intercept is None else intercept
    center, width = _number(path, ds, "WindowCenter"), _number(path, ds, "WindowWidth")

    def rescaled(v: np.ndarray) -> np.ndarray:
        v = v * slope + intercept
        if not np.isfinite(v).all():
            raise NonFinitePixels("pixel values include NaN or infinity after RescaleSlope/RescaleIntercept")
        return v

    if center is not None and width is not None and width > 0:
        return map_blocks(arr, lambda v: np.rint(window(rescaled(v), center, width)).clip(0, 255))
    if arr.dtype == np.uint8 and slope == 1.0 and intercept == 0.0:
        return arr
    # the rescale is monotonic, so the rescaled range comes from the stored one (no full-size copy)
    lo, hi = sorted(float(e) for e in rescaled(np.array(finite_range(arr), np.float64)))
    if not hi > lo:
        return np.zeros(arr.shape, np.uint8)
    k = 255.0 / (hi - lo)
    return map_blocks(arr, lambda v: np.rint((rescaled(v) - lo) * k).clip(0, 255))


def read_dicom(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """Read a single-frame DICOM image -> uint8 ``[H, W, 1|3]`` (see the module docstring for the pipeline)."""
    path = Path(path)
    with decode_errors(path), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = _dcmread(path, defer_size=DEFER_BYTES)
        if "PixelData" not in ds:
            raise cannot_decode(path, "the DICOM file holds no pixel data")
        check_header(path, _header(path, ds), max_pixels)
        samples = _count(path, ds, "SamplesPerPixel", 1)
        if samples not in (1, 3):
            raise cannot_decode(path, f"SamplesPerPixel {samples}, expected 1 (grey) or 3 (colour)")
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
        if samples == 1 and photometric not in ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR"):
            raise cannot_decode(path, f"unsupported PhotometricInterpretation {photometric!r}")
        arr = _pixels(path, ds)
        if photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            return np.ascontiguousarray(to_uint8(apply_color_lut(arr, ds)))
        if samples == 3 or arr.ndim == 3:
            if arr.ndim != 3 or arr.shape[-1] != 3:
                raise cannot_decode(path, f"colour pixel data of shape {arr.shape}, expected (rows, columns, 3)")
            return np.ascontiguousarray(to_uint8(arr))
        if arr.ndim != 2:
            raise cannot_decode(path, f"pixel data of shape {arr.shape}, expected (rows, columns)")
        out = _grey_to_uint8(path, ds, arr)
        if photometric == "MONOCHROME1":
            out = 255 - out
        return np.ascontiguousarray(out)[..., None]
