"""One DICOM file -> a uint8 ``[H, W, C]`` array (C = 1 for greyscale, 3 for colour).

Greyscale pipeline, in this order:

1. stored values from ``pixel_array`` (pydicom handles bit depth, sign and byte order);
2. modality rescale: ``value = stored * RescaleSlope + RescaleIntercept`` (defaults 1 and 0);
3. to 8 bits:
   * with ``WindowCenter``/``WindowWidth`` (the first value when several are given): the linear VOI
     window of DICOM PS3.3 C.11.2.1.2.1 onto 0..255;
   * else 8-bit unsigned data with no rescale (slope 1, intercept 0) are used as stored;
   * else a linear stretch from the image's own min/max onto 0..255;
4. ``MONOCHROME1`` (high value = dark) is inverted, so that in the result high = bright.

A VOI LUT Sequence is not applied (only the window is). Colour images (RGB, YBR converted to RGB by
pydicom, palette colour through its LUT) are passed through, 16-bit colour scaled by min/max.
Multi-frame files are refused: medbench reads single 2D images.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medbench.errors import MedbenchError


def _first(value) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value[0]) if hasattr(value, "__len__") and not isinstance(value, (str, bytes)) else float(value)
    except (TypeError, ValueError, IndexError):
        return None


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


def read_dicom(path: str | os.PathLike) -> np.ndarray:
    """Read a single-frame DICOM image -> uint8 ``[H, W, 1|3]`` (see the module docstring for the pipeline)."""
    from medbench.data.decode import MAX_PIXELS, cannot_decode, to_uint8, too_large

    path = Path(path)
    try:
        import pydicom
    except ImportError as e:
        raise MedbenchError(f"{path}: reading DICOM needs pydicom; install it with `pip install pydicom`") from e
    try:
        ds = pydicom.dcmread(path)
    except FileNotFoundError as e:
        raise MedbenchError(f"{path}: file not found; check the path") from e
    except Exception as e:  # noqa: BLE001 - pydicom raises InvalidDicomError, OSError, EOFError, struct.error...
        raise cannot_decode(path, f"not a readable DICOM file: {type(e).__name__}: {e}") from e
    if "PixelData" not in ds:
        raise cannot_decode(path, "the DICOM file holds no pixel data")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows * cols > MAX_PIXELS:
        raise too_large(path, cols, rows)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise MedbenchError(f"{path}: a multi-frame DICOM ({frames} frames); medbench reads single 2D images, "
                            f"so export the frame you want as its own file")
    try:
        arr = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - missing decoder plugins, truncated pixel data, bad tags
        hint = ""
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if ts is not None and getattr(ts, "is_compressed", False):
            hint = f", compressed transfer syntax {ts.name}: `pip install pylibjpeg pylibjpeg-libjpeg` may help"
        raise cannot_decode(path, f"pixel data: {type(e).__name__}: {e}{hint}") from e
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = apply_color_lut(arr, ds)
        return np.ascontiguousarray(rgb if rgb.dtype == np.uint8 else to_uint8(rgb))
    if samples == 3 or arr.ndim == 3:
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise cannot_decode(path, f"colour pixel data of shape {arr.shape}, expected (rows, columns, 3)")
        return np.ascontiguousarray(arr if arr.dtype == np.uint8 else to_uint8(arr))
    if arr.ndim != 2:
        raise cannot_decode(path, f"pixel data of shape {arr.shape}, expected (rows, columns)")
    slope = _first(ds.get("RescaleSlope", None))
    intercept = _first(ds.get("RescaleIntercept", None))
    slope = 1.0 if slope is None else slope
    intercept = 0.0 if intercept is None else intercept
    center, width = _first(ds.get("WindowCenter", None)), _first(ds.get("WindowWidth", None))
    if center is not None and width is not None and width > 0:
        out = np.rint(window(arr.astype(np.float64) * slope + intercept, center, width)).clip(0, 255)
        out = out.astype(np.uint8)
    elif arr.dtype == np.uint8 and slope == 1.0 and intercept == 0.0:
        out = arr
    else:
        out = to_uint8(arr.astype(np.float64) * slope + intercept)
    if photometric == "MONOCHROME1":
        out = 255 - out
    elif photometric != "MONOCHROME2":
        raise cannot_decode(path, f"unsupported PhotometricInterpretation {photometric!r}")
    return np.ascontiguousarray(out)[..., None]
