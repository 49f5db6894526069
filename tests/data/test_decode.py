"""decode_image / resize_square / read_dicom on real chest X-rays and crafted edge cases."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medbench.data import headers, pixels
from medbench.data.decode import MAX_PIXELS, convert_channels, decode_fitted, decode_image, resize_square
from medbench.data.dicom import read_dicom
from medbench.errors import MedbenchError

from conftest import write_dicom


@pytest.fixture(scope="module")
def chest(shared_data) -> Path:
    return shared_data / "chest_xray_subset"


@pytest.fixture(scope="module")
def xray(chest) -> Path:
    return sorted((chest / "train" / "NORMAL").glob("*.jpeg"))[0]


def test_real_jpeg_grey_and_rgb(chest, xray):
    a = decode_image(xray)
    assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[-1] == 1
    assert np.array_equal(a[..., 0], np.asarray(Image.open(xray).convert("L")))
    rgb = decode_image(xray, channels=3)
    assert rgb.shape == a.shape[:2] + (3,) and (rgb == a).all()
    # an RGB-stored JPEG of a grey X-ray comes back as one channel when channels=None
    rgb_file = next(p for p in sorted(chest.rglob("*.jpeg")) if Image.open(p).mode == "RGB")
    assert decode_image(rgb_file).shape[-1] == 1


def test_rgb_to_grey_is_luma(tmp_path):
    img = np.zeros((4, 5, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 200, 100, 50
    Image.fromarray(img).save(tmp_path / "c.png")
    out = decode_image(tmp_path / "c.png", channels=1)
    assert out.shape == (4, 5, 1)
    assert int(out[0, 0, 0]) == round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)
    assert decode_image(tmp_path / "c.png").shape == (4, 5, 3)


def test_modes_palette_la_rgba_16bit(tmp_path):
    grey = np.arange(20, dtype=np.uint8).reshape(4, 5) * 10
    Image.fromarray(grey).convert("P").save(tmp_path / "p.png")
    Image.fromarray(grey).convert("LA").save(tmp_path / "la.png")
    Image.fromarray(np.stack([grey] * 3 + [np.full_like(grey, 7)], -1), "RGBA").save(tmp_path / "rgba.png")
    assert decode_image(tmp_path / "p.png").shape == (4, 5, 1)
    assert np.array_equal(decode_image(tmp_path / "la.png")[..., 0], grey)
    assert np.array_equal(decode_image(tmp_path / "rgba.png")[..., 0], grey)
    # 16-bit PNG: stretched by its own min/max
    v = (np.arange(20, dtype=np.uint16).reshape(4, 5) * 200 + 1000)
    Image.fromarray(v).save(tmp_path / "v16.png")
    assert Image.open(tmp_path / "v16.png").mode.startswith("I")
    out = decode_image(tmp_path / "v16.png")[..., 0]
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert np.array_equal(out, np.rint((v - 1000) * 255.0 / (19 * 200)).astype(np.uint8))


def test_exif_orientation(tmp_path):
    img = np.zeros((10, 20), np.uint8)
    img[:, :5] = 255  # bright left band
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    Image.fromarray(img).save(tmp_path / "o.jpg", exif=exif, quality=100)
    out = decode_image(tmp_path / "o.jpg")
    assert out.shape == (20, 10, 1)
    assert out[:5].mean() > 200 and out[-5:].mean() < 50  # band is now at the top


def test_truncated_and_garbage_files_fail_clearly(tmp_path, xray):
    data = xray.read_bytes()
    for name, payload in [("half.jpeg", data[: len(data) // 2]), ("noeoi.jpeg", data[:-2]),
                          ("junk.png", b"not an image at all"), ("empty.jpeg", b"")]:
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(MedbenchError, match=rf"{name}: cannot decode \("):
            decode_image(tmp_path / name)
    buf = tmp_path / "ok.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buf)
    (tmp_path / "cut.png").write_bytes(buf.read_bytes()[:40])
    with pytest.raises(MedbenchError, match="cut.png: cannot decode"):
        decode_image(tmp_path / "cut.png")


def _png_header_only(path: Path, width: int, height: int) -> None:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_decompression_bomb_refused_from_header(tmp_path, monkeypatch):
    _png_header_only(tmp_path / "bomb.png", 100_000, 100_000)  # 10^10 pixels declared in a 100-byte file
    with pytest.raises(MedbenchError, match=r"bomb.png: .*100000x100000"):
        decode_image(tmp_path / "bomb.png")
    _png_header_only(tmp_path / "big.png", 9000, 9000)  # over MAX_PIXELS, under Pillow's own limit
    assert 9000 * 9000 > MAX_PIXELS
    with pytest.raises(MedbenchError, match=r"big.png: declared size 9000x9000"):
        decode_image(tmp_path / "big.png")
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(tmp_path / "small.png")
    monkeypatch.setattr(headers, "MAX_PIXELS", 100)
    with pytest.raises(MedbenchError, match="small.png: declared size 30x30"):
        decode_image(tmp_path / "small.png")


def test_resize_square_pad_and_crop():
    img = np.full((10, 20, 1), 200, np.uint8)
    pad = resize_square(img, 20, "pad")
    assert pad.shape == (20, 20, 1)
    assert (pad[:5] == 0).all() and (pad[-5:] == 0).all() and (pad[5:15] == 200).all()
    crop = resize_square(img, 5, "crop")
    assert crop.shape == (5, 5, 1) and (crop == 200).all()
    rgb = np.random.default_rng(0).integers(0, 255, (30, 17, 3), dtype=np.uint8)
    assert resize_square(rgb, 8).shape == (8, 8, 3)
    with pytest.raises(MedbenchError, match="resize mode"):
        resize_square(img, 8, "stretch")


def test_pad_resizes_before_padding_and_fitted_decoding_matches_the_parts(tmp_path, xray):
    img = np.full((10, 40, 1), 200, np.uint8)
    pad = resize_square(img, 8, "pad")  # 40 -> 8 wide, 10 -> 2 high, centred
    assert pad.shape == (8, 8, 1) and (pad[3:5] == 200).all() and (pad[:3] == 0).all() and (pad[5:] == 0).all()
    for mode in ("pad", "crop"):
        for channels in (None, 1, 3):
            want = convert_channels(resize_square(decode_image(xray), 64, mode), channels)
            got = decode_fitted(xray, 64, mode, channels, draft=False)
            assert got.dtype == np.uint8 and got.flags.writeable and np.array_equal(got, want)
            drafted = decode_fitted(xray, 64, mode, channels)  # a JPEG decoded at reduced size first
            assert drafted.shape == want.shape and np.abs(drafted.astype(int) - want).mean() < 0.5
    rgb = np.random.default_rng(1).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    want = convert_channels(resize_square(rgb, 16, "pad"), 1)
    assert np.array_equal(decode_fitted(tmp_path / "rgb.png", 16, "pad", channels=1), want)
    with pytest.raises(MedbenchError, match="image size must be a positive integer"):
        decode_fitted(xray, 0)


def _smooth(w: int, h: int, rgb: bool = False) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    a = (128 + 100 * np.sin(xx / 97.0) * np.cos(yy / 131.0)).astype(np.uint8)
    return np.stack([a, 255 - a, a // 2], -1) if rgb else a


@pytest.mark.parametrize("w,h", [(1500, 1200), (1497, 1203), (1001, 999), (640, 1301)])
def test_jpeg_draft_keeps_the_geometry_of_the_full_decode(tmp_path, w, h):
    # odd sizes: libjpeg rounds a draft's size up; the resize reads the exact box of the full image
    path = tmp_path / "smooth.jpg"
    Image.fromarray(_smooth(w, h)).save(path, quality=98)
    for mode in ("pad", "crop"):
        for size in (28, 64, 224):
            full, drafted = decode_fitted(path, size, mode, draft=False), decode_fitted(path, size, mode)
            diff = np.abs(full.astype(int) - drafted)
            assert full.shape == drafted.shape and diff.max() <= 2 and diff.mean() < 0.3, (mode, size)


def test_jpeg_draft_is_used_only_where_it_is_exact(tmp_path, monkeypatch):
    from PIL import JpegImagePlugin

    calls = []
    real = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", lambda im, *a: calls.append(im.size) or real(im, *a))
    rgb = tmp_path / "rgb.jpg"
    Image.fromarray(_smooth(900, 700, rgb=True)).save(rgb, quality=95)
    out = decode_fitted(rgb, 64, "pad")
    assert calls and out.shape == (64, 64, 3)  # colour kept (libjpeg is not asked to convert to grey)
    assert np.abs(out.astype(int) - decode_fitted(rgb, 64, "pad", draft=False)).max() <= 2
    # an EXIF-rotated photo is decoded in full (a flipped draft would move its rounded edge)
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_smooth(900, 700)).save(rotated, quality=95, exif=exif)
    calls.clear()
    assert np.array_equal(decode_fitted(rotated, 64, "crop"), decode_fitted(rotated, 64, "crop", draft=False))
    assert calls == []
    assert decode_fitted(rotated, 64, "pad").shape == (64, 64, 1)
    # too small to reduce (a side under 2 x size): every pixel decoded, exactly as without a draft
    small = tmp_path / "small.jpg"
    Image.fromarray(_smooth(300, 200)).save(small, quality=95)
    assert np.array_equal(decode_fitted(small, 224, "pad"), decode_fitted(small, 224, "pad", draft=False))
    png = tmp_path / "big.png"
    Image.fromarray(_smooth(900, 700)).save(png)
    calls.clear()
    decode_fitted(png, 64)
    assert calls == []  # only JPEG has a draft mode


def test_wide_data_stretch_matches_float64_in_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(pixels, "CHUNK", 7)  # many blocks and bands, odd boundaries
    v = np.random.default_rng(2).normal(0, 1000, (13, 11)).astype(np.float32)
    Image.fromarray(v, mode="F").save(tmp_path / "f.tif")
    want = np.rint((v.astype(np.float64) - v.min()) * (255.0 / (float(v.max()) - float(v.min())))).astype(np.uint8)
    assert np.array_equal(decode_image(tmp_path / "f.tif")[..., 0], want)
    Image.fromarray(np.full((5, 5), 3.5, np.float32), mode="F").save(tmp_path / "flat.tif")
    assert (decode_image(tmp_path / "flat.tif") == 0).all()


# --- DICOM written with pydicom from a real X-ray ---------------------------------------------------------

def test_dicom_8bit_mono2_and_mono1_equal_source(tmp_path, xray):
    src = decode_image(xray)[..., 0]
    m2 = write_dicom(tmp_path / "m2.dcm", src)
    m1 = write_dicom(tmp_path / "m1.dcm", 255 - src, photometric="MONOCHROME1")
    assert np.array_equal(read_dicom(m2)[..., 0], src)
    assert np.array_equal(read_dicom(m1)[..., 0], src)
    assert np.array_equal(decode_image(m1), decode_image(xray))  # through the generic entry point
    # no suffix: recognised by the DICM magic
    (tmp_path / "nosuffix").write_bytes(m2.read_bytes())
    assert np.array_equal(decode_image(tmp_path / "nosuffix")[..., 0], src)


def test_dicom_16bit_rescale_and_window_map_back(tmp_path, xray):
    src = decode_image(xray)[..., 0]
    # value = stored * 0.5 - 1000 == src; window centre 128 / width 256 maps 0..255 onto itself
    stored = ((src.astype(np.int64) + 1000) * 2).astype(np.uint16)
    d2 = write_dicom(tmp_path / "r2.dcm", stored, slope=0.5, intercept=-1000, center=[128, 40], width=[256, 400])
    d1 = write_dicom(tmp_path / "r1.dcm", stored, photometric="MONOCHROME1", slope=0.5, intercept=-1000,
                     center=128, width=256)
    out2, out1 = read_dicom(d2)[..., 0].astype(int), read_dicom(d1)[..., 0].astype(int)
    assert np.abs(out2 - src).max() <= 1
    assert np.abs((255 - out1) - src).max() <= 1  # MONOCHROME1 of the same stored data is the negative
    # no window: min/max of the rescaled image
    d0 = write_dicom(tmp_path / "r0.dcm", stored, slope=0.5, intercept=-1000)
    lo, hi = int(src.min()), int(src.max())
    want = np.rint((src.astype(float) - lo) * 255.0 / (hi - lo))
    assert np.abs(read_dicom(d0)[..., 0] - want).max() <= 1


def test_dicom_damaged_fails_clearly(tmp_path, xray):
    good = write_dicom(tmp_path / "g.dcm", decode_image(xray)[..., 0])
    (tmp_path / "cut.dcm").write_bytes(good.read_bytes()[:5000])
    with pytest.raises(MedbenchError, match="cut.dcm: cannot decode"):
        decode_image(tmp_path / "cut.dcm")
    (tmp_path / "junk.dcm").write_bytes(b"hello")
    with pytest.raises(MedbenchError, match="junk.dcm: cannot decode"):
        decode_image(tmp_path / "junk.dcm")


def test_refuses_when_truncated_loading_was_enabled(monkeypatch, xray):
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(MedbenchError, match="LOAD_TRUNCATED_IMAGES is True"):
        decode_image(xray)
