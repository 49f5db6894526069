"""Hostile image files (issue 18): every decoder is bounded before it allocates, and every failure is one line.

The files are written here, each small on disk: header-only files that declare a huge size, multi-frame TIFF /
GIF / PNG / DICOM, NaN and infinite pixel values, DICOMs with damaged headers, a link out of a folder dataset.
Each goes through the real command line (``predict RUN_DIR FILE`` and ``train --dataset folder:...``): exit 2
and one ``medbench: error:`` line naming the file and the fix, or with ``--skip-bad`` a recorded skip. Peak
memory of decoding a 7000x7000 PNG and a 100000x1 PNG is measured in a subprocess.
"""
from __future__ import annotations

import csv
import json
import struct
import subprocess
import sys
import textwrap
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medbench.cli import main
from medbench.data.decode import MAX_PIXELS, check_pixels, decode_fitted, header_size
from medbench.errors import MedbenchError

from conftest import write_dicom

FRAMES = [np.full((16, 16), v, np.uint8) for v in (10, 200, 90)]


# ---- writers (each file is at most a few KB) ------------------------------------------------------------------

def _png_header_only(path: Path, width: int, height: int) -> Path:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def _tiff_header_only(path: Path, width: int, height: int) -> Path:
    """An uncompressed 8-bit grey TIFF whose first IFD declares the size; no pixel data follows."""
    longs = {256: width, 257: height, 273: 8, 278: height, 279: width * height}
    shorts = {258: 8, 259: 1, 262: 1, 277: 1}
    tags = sorted([(t, struct.pack("<HHII", t, 4, 1, v)) for t, v in longs.items()]
                  + [(t, struct.pack("<HHIHH", t, 3, 1, v, 0)) for t, v in shorts.items()])
    ifd = struct.pack("<H", len(tags)) + b"".join(e for _, e in tags) + struct.pack("<I", 0)
    path.write_bytes(b"II*\0" + struct.pack("<I", 8) + ifd)
    return path


def _bmp_header_only(path: Path, width: int, height: int) -> Path:
    """An 8-bit palette BMP header (and its grey palette) declaring the size; no pixel data follows."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 0, 0, 2835, 2835, 256, 0)
    palette = b"".join(bytes((i, i, i, 0)) for i in range(256))
    path.write_bytes(b"BM" + struct.pack("<IHHI", 14 + 40 + 1024 + width * height, 0, 0, 14 + 40 + 1024)
                     + info + palette)
    return path


def _dicom(path: Path, **kw) -> Path:
    return write_dicom(path, (np.arange(256, dtype=np.uint16).reshape(16, 16) * 10), **kw)


def _dicom_edit(path: Path, **attrs) -> Path:
    import pydicom

    ds = pydicom.dcmread(_dicom(path, slope=1, intercept=0, center=1000, width=2000))
    for name, value in attrs.items():
        if name == "TransferSyntaxUID":
            ds.file_meta.TransferSyntaxUID = value
        else:
            setattr(ds, name, value)
    ds.save_as(path, enforce_file_format=False)
    return path


def _dicom_patch(path: Path, tag: tuple[int, int], offset: int, new: bytes) -> Path:
    """Overwrite bytes of one element (explicit VR little endian: +4 is the VR, +8 the value)."""
    data = bytearray(_dicom(path, slope=1, intercept=0, center=1000, width=2000).read_bytes())
    at = data.index(struct.pack("<HH", *tag)) + offset
    data[at:at + len(new)] = new
    path.write_bytes(bytes(data))
    return path


def _frames(path: Path, fmt: str) -> Path:
    first, *rest = [Image.fromarray(f) for f in FRAMES]
    first.save(path, format=fmt, save_all=True, append_images=rest)
    return path


def _float_tiff(path: Path, bad: float) -> Path:
    a = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    a[3, 5] = bad
    Image.fromarray(a, mode="F").save(path)
    return path


_FIX = "re-export or remove it"
_FRAME_FIX = "export the frame you want as its own file"
_SIZE_FIX = "downscale the image first"

# name -> (writer, fragments of the one error line after the file's path)
HOSTILE = {
    "bomb-100000x100000.png": (lambda p: _png_header_only(p, 100_000, 100_000),
                               ["declared size 100000x100000", "exceeds the limit", _SIZE_FIX]),
    "over-limit-9000x9000.tif": (lambda p: _tiff_header_only(p, 9000, 9000),
                                 ["declared size 9000x9000", f"exceeds the limit of {MAX_PIXELS} pixels", _SIZE_FIX]),
    "over-limit-9000x9000.bmp": (lambda p: _bmp_header_only(p, 9000, 9000),
                                 ["declared size 9000x9000", "exceeds the limit", _SIZE_FIX]),
    "over-limit-9000x9000.dcm": (lambda p: _dicom_edit(p, Rows=9000, Columns=9000),
                                 ["declared size 9000x9000", "exceeds the limit", _SIZE_FIX]),
    "side-300000x1.png": (lambda p: _png_header_only(p, 300_000, 1),
                          ["declared size 300000x1", "pixels per side", "crop or downscale"]),
    "three-pages.tif": (lambda p: _frames(p, "TIFF"), ["a multi-frame image (3 frames)", _FRAME_FIX]),
    "animated.gif": (lambda p: _frames(p, "GIF"), ["a multi-frame image (3 frames)", _FRAME_FIX]),
    "animated.png": (lambda p: _frames(p, "PNG"), ["a multi-frame image (3 frames)", _FRAME_FIX]),
    "two-frames.dcm": (lambda p: _dicom_edit(p, NumberOfFrames=2, Rows=8),
                       ["a multi-frame image (2 frames)", _FRAME_FIX]),
    "nan.tif": (lambda p: _float_tiff(p, np.nan), ["cannot decode (pixel values include NaN or infinity)", _FIX]),
    "inf.tif": (lambda p: _float_tiff(p, np.inf), ["cannot decode (pixel values include NaN or infinity)", _FIX]),
    "inf-after-rescale.dcm": (lambda p: _dicom(p, slope="1e308", intercept=0),
                              ["pixel values include NaN or infinity after RescaleSlope/RescaleIntercept", _FIX]),
    "bad-transfer-syntax.dcm": (lambda p: _dicom_edit(p, TransferSyntaxUID="1.2.3.4"),
                                ["cannot decode (pixel data: NotImplementedError", "'1.2.3.4'", _FIX]),
    "unknown-vr.dcm": (lambda p: _dicom_patch(p, (0x0028, 0x1050), 4, b"ZZ"),
                       ["Unknown Value Representation 'ZZ' in tag (0028,1050)", _FIX]),
    "non-numeric-window.dcm": (lambda p: _dicom_patch(p, (0x0028, 0x1050), 8, b"zz"),
                               ["cannot decode (WindowCenter 'zz00.0' is not a number)", _FIX]),
    "non-numeric-slope.dcm": (lambda p: _dicom_patch(p, (0x0028, 0x1053), 8, b"x"),
                              ["cannot decode (RescaleSlope 'x.0' is not a number)", _FIX]),
}


def _write_hostile(folder: Path, names=None) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return {n: HOSTILE[n][0](folder / n) for n in (names or HOSTILE)}


def _run(argv: list[str], capsys) -> tuple[int, list[str], str]:
    """``medbench`` in-process: exit code, stderr lines (warnings counted as lines, as a real run prints them),
    stdout."""
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(argv)
    out, err = capsys.readouterr()
    return code, err.splitlines() + [f"{w.category.__name__}: {w.message}" for w in caught], out


# ---- the decoder itself -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(HOSTILE))
def test_each_hostile_file_is_one_error_naming_it(tmp_path, name):
    path = _write_hostile(tmp_path, [name])[name]
    for decode in (lambda: decode_fitted(path, 28), lambda: decode_fitted(path, 64, "crop", channels=3)):
        with pytest.raises(MedbenchError) as e:
            decode()
        message = str(e.value)
        assert "\n" not in message and message.startswith(f"{path}: ")
        for fragment in HOSTILE[name][1]:
            assert fragment in message, f"{fragment!r} missing from: {message}"


def test_header_is_read_for_every_format_and_checked_against_a_callers_limit(tmp_path):
    """What `serve --max-pixels` relies on: 64 Mpx TIFF, BMP and DICOM are refused from their headers."""
    files = {"tif": _tiff_header_only(tmp_path / "a.tif", 8000, 8000),
             "bmp": _bmp_header_only(tmp_path / "a.bmp", 8000, 8000),
             "png": _png_header_only(tmp_path / "a.png", 8000, 8000),
             "dcm": _dicom_edit(tmp_path / "a.dcm", Rows=8000, Columns=8000)}
    Image.new("L", (8000, 8000)).save(tmp_path / "a.jpg", quality=10)
    Image.new("L", (800, 800)).save(tmp_path / "a.gif")
    files["jpg"], files["gif"] = tmp_path / "a.jpg", tmp_path / "a.gif"
    for kind, path in files.items():
        want = (800, 800) if kind == "gif" else (8000, 8000)
        assert header_size(path) == want, kind
        if kind != "gif":
            with pytest.raises(MedbenchError, match=rf"{path.name}: declared size 8000x8000 \(64000000 pixels\) "
                                                    rf"exceeds the limit of 50000000 pixels"):
                check_pixels(path, 50_000_000)
            with pytest.raises(MedbenchError, match="exceeds the limit of 50000000 pixels"):
                decode_fitted(path, 28, max_pixels=50_000_000)
    assert check_pixels(files["gif"], 50_000_000).frames == 1
    assert header_size(tmp_path / "missing.png") is None
    (tmp_path / "junk.png").write_bytes(b"not an image")
    assert header_size(tmp_path / "junk.png") is None
    with pytest.raises(MedbenchError, match="junk.png: cannot decode"):
        check_pixels(tmp_path / "junk.png")


def test_extreme_aspect_ratio_is_resized_before_padding(tmp_path):
    Image.new("L", (100_000, 1), 255).save(tmp_path / "wide.png")
    assert (tmp_path / "wide.png").stat().st_size < 1000
    for mode, lit in (("pad", 1), ("crop", 28)):
        out = decode_fitted(tmp_path / "wide.png", 28, mode)
        assert out.shape == (28, 28, 1) and out.dtype == np.uint8
        assert int((out[..., 0] > 128).any(axis=1).sum()) == lit  # pad: one bright row on black; crop: all


def test_out_of_memory_is_a_one_line_error(tmp_path):
    """A real MemoryError (address space capped below what the image needs) becomes the usual error."""
    Image.new("RGB", (4000, 4000), (9, 99, 199)).save(tmp_path / "big.png")
    script = textwrap.dedent(f"""
        import resource, sys
        from medbench.data.decode import decode_image
        from medbench.errors import MedbenchError
        def vm():
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize"))
        cap = vm() + 20 * 2 ** 20  # the image needs 48 MB
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        try:
            decode_image({str(tmp_path / 'big.png')!r})
        except MedbenchError as e:
            print(e)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == (f"{tmp_path / 'big.png'}: cannot decode (out of memory while decoding); check that "
                                f"the file is a complete PNG, JPEG, BMP, TIFF, GIF or DICOM image, re-export or "
                                f"remove it")


_PEAK = """
import resource, sys, time
from medbench.data.decode import decode_fitted


def peak_mb():
    # VmHWM: this process's own peak. ru_maxrss also counts the parent's RSS at exec (pytest's, here)
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


out = {}
for path in sys.argv[1:]:
    try:  # Linux: reset the peak to the current RSS, so that the import's transient peak does not hide ours
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    before = peak_mb()
    t = time.perf_counter()
    img = decode_fitted(path, 224, "pad", channels=3)
    out[path] = (peak_mb() - before, time.perf_counter() - t, list(img.shape))
print(repr(out))
"""


def _peaks(*paths: Path) -> dict[str, tuple[float, float, list[int]]]:
    """Peak RSS growth (MB), seconds and output shape of decoding each file in turn in a fresh
    process."""
    r = subprocess.run([sys.executable, "-c", _PEAK, *map(str, paths)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return eval(r.stdout)  # noqa: S307 - our own repr of a dict of tuples


def test_peak_memory_is_a_small_multiple_of_the_output(tmp_path):
    Image.new("L", (100_000, 1), 200).save(tmp_path / "wide.png")
    Image.new("L", (7000, 7000), 100).save(tmp_path / "big.png")  # 49 MB decoded, a few KB on disk
    peaks = _peaks(tmp_path / "wide.png", tmp_path / "big.png")
    wide, big = peaks[str(tmp_path / "wide.png")], peaks[str(tmp_path / "big.png")]
    print(f"\npeak RSS growth: 100000x1 {wide[0]:.1f} MB in {wide[1]:.2f} s; 7000x7000 {big[0]:.1f} MB in "
          f"{big[1]:.2f} s")
    assert wide[2] == big[2] == [224, 224, 3]
    assert wide[0] < 50 and wide[1] < 2  # was a 9.3 GiB square before resizing (27.9 GiB as float64)
    assert big[0] < 200  # one decoded copy (49 MB) plus small change; was 188 MB to 2.4 GB


@pytest.mark.slow
def test_peak_memory_of_wide_dicom_and_float_tiff(tmp_path):
    a = np.zeros((7000, 7000), np.uint16)
    a[::7, ::3] = 4000
    write_dicom(tmp_path / "big.dcm", a, slope=1, intercept=-1000)  # 98 MB file
    Image.fromarray(np.zeros((7000, 7000), np.float32)).save(tmp_path / "big.tif", compression="tiff_deflate")
    del a
    peaks = _peaks(tmp_path / "big.tif", tmp_path / "big.dcm")
    for path, (mb, _, shape) in peaks.items():
        assert shape == [224, 224, 3]
        assert mb < 400, f"{path}: {mb:.0f} MB"  # was about 860 (DICOM) and 940 (float TIFF)


# ---- through the command line ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(HOSTILE))
def test_predict_refuses_a_hostile_file_in_one_line(chest_run, tmp_path, capsys, name):
    path = _write_hostile(tmp_path / "in", [name])[name]
    before = path.read_bytes()
    code, lines, _ = _run(["predict", str(chest_run), str(path), "--out", str(tmp_path / "p.csv")], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"medbench: error: {path}: "), lines
    for fragment in HOSTILE[name][1]:
        assert fragment in lines[0], f"{fragment!r} missing from: {lines[0]}"
    assert not (tmp_path / "p.csv").exists() and path.read_bytes() == before


def test_predict_skip_bad_records_every_hostile_file(chest_run, shared_data, tmp_path, capsys):
    files = _write_hostile(tmp_path / "in")
    Image.new("L", (100_000, 1), 255).save(tmp_path / "in" / "wide.png")  # odd but valid: predicted
    good = sorted((shared_data / "chest_xray_subset" / "test" / "NORMAL").glob("*.jpeg"))[0]
    out = tmp_path / "p.csv"
    argv = ["predict", str(chest_run), good, tmp_path / "in" / "wide.png", *files.values(), "--out", out,
            "--skip-bad"]
    code, lines, stdout = _run([str(a) for a in argv], capsys)
    assert code == 0 and lines == [], lines
    assert f"2 images, {len(files)} unreadable (error column)" in stdout
    rows = {r["path"]: r for r in csv.DictReader(out.open(encoding="utf-8"))}
    assert rows[str(good)]["error"] == "" and rows[str(good)]["label"]
    assert rows[str(tmp_path / "in" / "wide.png")]["error"] == ""
    for name, path in files.items():
        err = rows[str(path)]["error"]
        assert err.startswith(f"{path}: ") and rows[str(path)]["label"] == ""
        assert all(f in err for f in HOSTILE[name][1]), err


def _folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("A", "B"):
        (root / "train" / cls).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(root / "train" / cls / f"{i}.png")
    return root


def test_train_folder_with_hostile_files_fails_in_one_line_or_skips_them(tmp_path, capsys):
    root = _folder(tmp_path / "images")
    files = _write_hostile(root / "train" / "A", [n for n in HOSTILE if not n.endswith(".gif")])  # not scanned
    Image.new("L", (100_000, 1), 255).save(root / "train" / "B" / "wide.png")  # valid: trained on
    train = ["train", "--dataset", f"folder:{root}", "--model", "cnn5", "--epochs", "1", "--out"]
    code, lines, _ = _run(train + [str(tmp_path / "run")], capsys)
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"medbench: error: {root}: "), lines
    assert f"{len(files)} image(s) cannot be decoded" in lines[0] and "--skip-bad" in lines[0]
    assert "train/A/animated.png (a multi-frame image (3 frames)" in lines[0]
    assert not (tmp_path / "run").exists()

    code, lines, _ = _run(train + [str(tmp_path / "run"), "--skip-bad"], capsys)
    assert code == 0, lines
    assert all("UserWarning" not in line or "skipped" in line for line in lines), lines  # no library noise
    skipped = {s["path"]: s["reason"] for s in json.loads((tmp_path / "run" / "skipped.json").read_text())}
    assert set(skipped) == {f"train/A/{n}" for n in files}
    for name in files:
        assert all(f in skipped[f"train/A/{name}"] for f in HOSTILE[name][1]), skipped[f"train/A/{name}"]


def test_train_refuses_a_folder_link_that_points_outside(tmp_path, capsys):
    root = _folder(tmp_path / "images")
    secret = tmp_path / "elsewhere" / "secret.png"
    secret.parent.mkdir()
    Image.new("L", (32, 32)).save(secret)
    (root / "train" / "A" / "linked.png").symlink_to(secret)
    code, lines, _ = _run(["train", "--dataset", f"folder:{root}", "--model", "cnn5", "--epochs", "1", "--out",
                           str(tmp_path / "run"), "--skip-bad"], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0] == (f"medbench: error: {root}: 1 image(s) are links that point outside the folder: "
                        f"train/A/linked.png; copy those images into the folder or remove the links")
    assert not (tmp_path / "run").exists()


def test_deflated_dicom_bomb_is_refused_before_pydicom_inflates_it(tmp_path, chest_run, capsys):
    """pydicom inflates a deflated DICOM whole before it reads the image size: 1 GB of zeros in 1 MB on disk
    is refused while being inflated in steps (train, predict and serve read DICOM through the same function)."""
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    small = tmp_path / "small.dcm"
    write_dicom(small, np.zeros((4, 4), np.uint8))
    ds = pydicom.dcmread(small)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(small, enforce_file_format=True)
    head = small.read_bytes()
    start = 132 + 12 + struct.unpack("<I", head[140:144])[0]  # after the file meta group
    deflater, block = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS), b"\0" * 2 ** 20
    bomb = tmp_path / "bomb.dcm"
    bomb.write_bytes(head[:start] + b"".join(deflater.compress(block) for _ in range(1024)) + deflater.flush())
    assert bomb.stat().st_size < 2 * 2 ** 20
    with pytest.raises(MedbenchError, match=r"bomb.dcm: the deflated DICOM inflates to more than \d+ bytes"):
        decode_fitted(bomb, 28)
    assert main(["predict", str(chest_run), str(bomb), "--out", str(tmp_path / "p.csv")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "inflates to more than" in line and str(bomb) in line
