"""Property-based fuzzing of the input readers and the metrics (issue 10, part 5).

Every reader either returns well-formed data or raises :class:`MedbenchError` whose message names the file (and
the line, for a CSV row); never another exception type. The metrics give plain JSON (no NaN) for any finite
scores, ``None`` with a warning where a value is undefined, and a clear ``ValueError`` for NaN/inf scores.

Examples are bounded (``max_examples``, 50; ``MEDBENCH_FUZZ_EXAMPLES=2000`` for a long local run) and
derandomized, so a CI run is quick and repeatable.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import tempfile
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medbench.data import read_npz
from medbench.data.decode import decode_image
from medbench.data.medmnist import CATALOGUE
from medbench.data.tables import load_csv
from medbench.errors import MedbenchError
from medbench.metrics import acc, auc, bootstrap_metrics, compute_metrics, scalar_names

FUZZ = settings(max_examples=int(os.environ.get("MEDBENCH_FUZZ_EXAMPLES", "50")), deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _fresh(scratch: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=scratch))


# ---- npz (MedMNIST layout) ----------------------------------------------------------------------------------

# one of each task: binary, ordinal, multi-class, multi-label
NPZ_SETS = ["breastmnist", "retinamnist", "pathmnist", "chestmnist"]
DTYPES = [np.uint8, np.int8, np.int16, np.uint16, np.int64, np.uint64, np.float32, np.float64, np.bool_]
SPLITS = ("train", "val", "test")


@st.composite
def npz_case(draw):
    """A valid MedMNIST-layout array dict for a catalogue entry, then 0-3 random damages."""
    name = draw(st.sampled_from(NPZ_SETS))
    info = CATALOGUE[name]
    c, k = info["n_channels"], len(info["label"])
    multilabel = info["task"].startswith("multi-label")
    side = draw(st.sampled_from([1, 2, 5, 28]))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    arrays = {}
    for s in SPLITS:
        n = draw(st.integers(2, 6))
        shape = (n, side, side) if c == 1 else (n, side, side, 3)
        arrays[f"{s}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        if multilabel:
            arrays[f"{s}_labels"] = rng.integers(0, 2, (n, k), dtype=np.uint8)
        else:  # two classes in each split, as a usable dataset has
            labels = np.arange(n) % 2
            arrays[f"{s}_labels"] = labels.astype(np.uint8)[:, None]
    damages = draw(st.lists(st.sampled_from(
        ["drop", "dtype_images", "dtype_labels", "label_range", "count", "channels", "side", "ndim_images",
         "ndim_labels", "empty", "object", "scalar", "flat_labels", "extra_key"]), max_size=3))
    object_key = None
    for d in damages:
        key = f"{draw(st.sampled_from(SPLITS))}_{draw(st.sampled_from(['images', 'labels']))}"
        s = key.split("_")[0]
        if d == "drop":
            arrays.pop(key, None)
        elif d == "dtype_images" and f"{s}_images" in arrays:
            arrays[f"{s}_images"] = arrays[f"{s}_images"].astype(draw(st.sampled_from(DTYPES)))
        elif d == "dtype_labels" and f"{s}_labels" in arrays:
            arrays[f"{s}_labels"] = arrays[f"{s}_labels"].astype(draw(st.sampled_from(DTYPES)))
        elif d == "label_range" and f"{s}_labels" in arrays:
            lab = arrays[f"{s}_labels"].astype(np.int64)
            if lab.size:
                lab.flat[draw(st.integers(0, lab.size - 1))] = draw(st.sampled_from([-1, -128, 2, 5, 14, 255, 2 ** 40]))
            arrays[f"{s}_labels"] = lab
        elif d == "count" and key in arrays and arrays[key].ndim:
            a = arrays[key]
            arrays[key] = a[:-1] if draw(st.booleans()) else np.concatenate([a, a[:1]])
        elif d == "channels":
            n = len(arrays.get(f"{s}_labels", [0]))
            arrays[f"{s}_images"] = np.zeros((n, side, side, draw(st.sampled_from([1, 2, 3, 4]))), np.uint8)
        elif d == "side":
            n = len(arrays.get(f"{s}_labels", [0]))
            h, w = draw(st.sampled_from([(0, 0), (3, 3), (28, 27), (64, 64)]))
            arrays[f"{s}_images"] = np.zeros((n, h, w) if c == 1 else (n, h, w, 3), np.uint8)
        elif d == "ndim_images":
            arrays[f"{s}_images"] = np.zeros(draw(st.sampled_from([(), (4,), (4, 5), (1, 2, 2, 1, 1)])), np.uint8)
        elif d == "ndim_labels":
            arrays[f"{s}_labels"] = np.zeros(draw(st.sampled_from([(), (2, 2, 2), (0, 1)])), np.uint8)
        elif d == "empty":
            arrays[f"{s}_images"] = np.zeros((0, side, side) if c == 1 else (0, side, side, 3), np.uint8)
            arrays[f"{s}_labels"] = np.zeros((0, k if multilabel else 1), np.uint8)
        elif d == "object":  # applied last: no other damage can touch it
            object_key = key
        elif d == "scalar":
            arrays[key] = np.array(3)
        elif d == "flat_labels" and f"{s}_labels" in arrays:
            arrays[f"{s}_labels"] = arrays[f"{s}_labels"].reshape(-1)
        elif d == "extra_key":
            arrays["notes"] = np.array([1, 2, 3])
    if object_key is not None:
        arrays[object_key] = np.array([{"a": 1}, None], dtype=object)
    cut = draw(st.one_of(st.none(), st.floats(0.0, 0.99)))  # keep a prefix of the written file
    size = draw(st.sampled_from([None, side, 28]))
    compressed = draw(st.booleans())
    return name, arrays, damages, cut, size, compressed


@FUZZ
@given(case=npz_case())
def test_npz_reader_loads_or_names_the_file(scratch, case):
    name, arrays, damages, cut, size, compressed = case
    path = _fresh(scratch) / f"{name}.npz"
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    if cut is not None:
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * cut)])
    try:
        ds = read_npz(path, name, size)
    except MedbenchError as e:
        assert str(path) in str(e), str(e)
        assert "\n" not in str(e)
        return
    info = CATALOGUE[name]
    multilabel = info["task"].startswith("multi-label")
    k = len(info["label"])
    assert ds.class_names == [info["label"][str(i)] for i in range(k)]
    sides = set()
    for s in SPLITS:
        x, y = ds[s].images, ds[s].labels
        assert str(x.dtype) == "torch.uint8" and x.ndim == 4 and x.shape[1] == info["n_channels"]
        assert x.shape[2] == x.shape[3] >= 1 and len(x) >= 1
        sides.add(x.shape[2])
        assert str(y.dtype) == "torch.int64" and y.shape == (len(x), k if multilabel else 1)
        assert int(y.min()) >= 0 and int(y.max()) <= (1 if multilabel else k - 1)
        # the pixels are the file's, unchanged
        raw = arrays[f"{s}_images"]
        assert np.array_equal(x.permute(0, 2, 3, 1).numpy().reshape(raw.shape), raw)
    assert len(sides) == 1 and ds.size == sides.pop() and (size is None or ds.size == size)


# ---- CSV label files ----------------------------------------------------------------------------------------

CELLS = ["", " ", "0", "1", "-1", "1.0", "0.0", "-1.0", "2", "3", "7", "1e3", "1e400", "99999999999", "nan", "inf",
         "-0", "cat", "dog", "Ünïcødé", "猫", '"', '""quoted""', "a,b", "line\nbreak", "\t", "١", "1_0", "yes"]
PATHS = ["a.png", "b.png", "c.png", "d.png", "sub/e.png", "./a.png", "missing.png", "../outside.png", "/etc/passwd",
         "", " ", "sub/../b.png", "ünï.png", "broken.png", "notes.txt", "a.png\x00x", "x" * 300 + ".png", "sub"]
SPLIT_CELLS = ["train", "val", "valid", "validation", "test", "TEST", "holdout", "", "Train "]


def _images(folder: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(["a.png", "b.png", "c.png", "d.png", "sub/e.png", "ünï.png"]):
        Image.fromarray(rng.integers(0, 256, (6 + i, 8), dtype=np.uint8)).save(folder / name)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)
    (folder / "notes.txt").write_text("not an image")


@st.composite
def csv_case(draw):
    n_labels = draw(st.sampled_from([1, 1, 2, 3]))
    label_cols = [f"y{i}" for i in range(n_labels)]
    split = draw(st.booleans())
    header = ["path", *label_cols] + (["split"] if split else [])
    if draw(st.integers(0, 9)) == 0:  # a header without one of the needed columns
        header = draw(st.permutations(header))[: len(header) - 1]
    rows = []
    for _ in range(draw(st.integers(0, 12))):
        row = {"path": draw(st.sampled_from(PATHS[:5]) if draw(st.integers(0, 4)) else st.sampled_from(PATHS))}
        for c in label_cols:
            row[c] = draw(st.sampled_from(["0", "1", "0", "1", "2", "cat", "dog"]) if draw(st.integers(0, 4))
                          else st.sampled_from(CELLS))
        if split:
            row["split"] = draw(st.sampled_from(SPLIT_CELLS[:5]) if draw(st.integers(0, 4))
                                else st.sampled_from(SPLIT_CELLS))
        rows.append(row)
    raw_tail = draw(st.sampled_from([None, None, None, '"unterminated,1\n', "a.png,1,2,3,4,5\n", "\xff\xfe",
                                     "a.png\n", "\x00\n", "x" * 200_000 + "\n"]))
    uncertain = draw(st.sampled_from(["u-ones", "u-zeros", "u-ignore"]))
    fractions = draw(st.sampled_from([(0.0, 0.0), (0.2, 0.2), (0.5, 0.0)]))
    return header, label_cols, rows, raw_tail, split, uncertain, fractions, draw(st.booleans())


@FUZZ
@given(case=csv_case())
def test_csv_loader_loads_or_names_file_and_line(scratch, case):
    header, label_cols, rows, raw_tail, split, uncertain, (val_f, test_f), bom = case
    folder = _fresh(scratch)
    _images(folder)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=header, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    data = (("\ufeff" if bom else "") + buf.getvalue()).encode("utf-8", "surrogatepass")
    if raw_tail is not None:
        data += raw_tail.encode("latin-1") if raw_tail == "\xff\xfe" else raw_tail.encode("utf-8")
    table = folder / "labels.csv"
    table.write_bytes(data)
    try:
        ds = load_csv(table, image_col="path", label_cols=label_cols, size=8, split_col="split" if split else None,
                      uncertain=uncertain, val_from_train=val_f, test_from_train=test_f)
    except MedbenchError as e:
        msg = str(e)
        assert str(table) in msg, msg
        assert "\n" not in msg
        table_level = ("not found", "no data rows", "only one class", "no training images", "cannot draw",
                       "not a readable UTF-8", "leaves no", "image(s) point outside")
        assert re.search(r"\bline(\(s\))? \d", msg) or any(t in msg for t in table_level), msg
        return
    multilabel = len(label_cols) > 1
    assert ds.task == ("multilabel" if multilabel else "binary" if ds.num_classes == 2 else "multiclass")
    total = 0
    for s in SPLITS:
        x, y = ds[s].images, ds[s].labels
        assert str(x.dtype) == "torch.uint8" and x.shape[1:] in {(1, 8, 8), (3, 8, 8)}
        assert str(y.dtype) == "torch.int64" and y.shape == (len(x), len(label_cols) if multilabel else 1)
        lo = -1 if (multilabel and uncertain == "u-ignore") else 0
        hi = 1 if multilabel else ds.num_classes - 1
        assert len(x) == 0 or (lo <= int(y.min()) and int(y.max()) <= hi)
        total += len(x)
    assert 1 <= total <= len(rows) + (raw_tail is not None)  # a raw tail may add one row


# ---- image decoder ------------------------------------------------------------------------------------------

def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")


@pytest.fixture(scope="module")
def real_images(shared_data, scratch) -> dict[str, bytes]:
    from PIL import Image

    jpeg = next((shared_data / "chest_xray_subset" / "test" / "NORMAL").glob("*.jpeg")).read_bytes()
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(buf, "PNG")
    grey = io.BytesIO()
    Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).save(grey, "JPEG")
    return {"jpeg": jpeg, "png": buf.getvalue(), "small_jpeg": grey.getvalue()}


@st.composite
def image_bytes(draw):
    kind = draw(st.sampled_from(["random", "prefix", "png_header", "jpeg_header", "dicm", "flip"]))
    if kind == "random":
        return kind, draw(st.binary(max_size=300)), draw(st.sampled_from([".png", ".jpg", ".bmp", ".tif", ".dcm", ""]))
    if kind == "png_header":
        w = draw(st.sampled_from([0, 1, 3, 64, 65535, 2 ** 31 - 1, 2 ** 32 - 1]))
        h = draw(st.sampled_from([0, 1, 5, 64, 65535, 2 ** 31 - 1]))
        depth, color = draw(st.sampled_from([1, 2, 4, 8, 16, 3, 0])), draw(st.sampled_from([0, 2, 3, 4, 6, 1]))
        ihdr = _png_chunk(b"IHDR", w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([depth, color, 0, 0,
                                                                                       draw(st.sampled_from([0, 1]))]))
        body = draw(st.binary(max_size=200))
        idat = _png_chunk(b"IDAT", zlib.compress(body) if draw(st.booleans()) else body)
        tail = _png_chunk(b"IEND", b"") if draw(st.booleans()) else b""
        return kind, b"\x89PNG\r\n\x1a\n" + ihdr + idat + tail, ".png"
    if kind == "jpeg_header":
        w, h = draw(st.sampled_from([0, 1, 16, 65535])), draw(st.sampled_from([0, 1, 16, 65535]))
        comps = draw(st.sampled_from([1, 3, 4, 0]))
        sof = bytes([8]) + h.to_bytes(2, "big") + w.to_bytes(2, "big") + bytes([comps]) + bytes(3 * comps)
        seg = b"\xff\xc0" + (len(sof) + 2).to_bytes(2, "big") + sof
        return kind, b"\xff\xd8" + seg + draw(st.binary(max_size=200)) + b"\xff\xd9", ".jpg"
    if kind == "dicm":
        return kind, b"\0" * 128 + b"DICM" + draw(st.binary(max_size=300)), draw(st.sampled_from([".dcm", ""]))
    which = draw(st.sampled_from(["jpeg", "png", "small_jpeg"]))
    return kind, which, draw(st.floats(0.0, 1.0)), draw(st.integers(0, 2 ** 16))


@FUZZ
@given(case=image_bytes())
def test_decoder_returns_uint8_hwc_or_names_the_file(scratch, real_images, case):
    kind = case[0]
    if kind in ("prefix", "flip"):
        _, which, frac, pos = case
        data = bytearray(real_images[which])
        if kind == "prefix":
            data = data[: int(len(data) * frac)]
        else:  # damage a few bytes in place
            for j in range(3):
                data[(pos + 97 * j) % len(data)] ^= 0x5A
        suffix = ".png" if which == "png" else ".jpeg"
    else:
        _, data, suffix = case
    path = _fresh(scratch) / f"img{suffix}"
    path.write_bytes(bytes(data))
    for channels in (None, 1, 3):
        try:
            img = decode_image(path, channels)
        except MedbenchError as e:
            assert str(path) in str(e), str(e)
            assert "\n" not in str(e)
            continue
        assert isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3
        assert img.shape[0] >= 1 and img.shape[1] >= 1 and img.shape[2] == (channels or img.shape[2])
        assert img.shape[2] in (1, 3)


def test_decoder_complete_files_still_decode(real_images, scratch):
    """The fuzzed prefixes and flips must not hide a decoder that refuses everything."""
    for which, suffix in (("jpeg", ".jpeg"), ("png", ".png"), ("small_jpeg", ".jpg")):
        path = _fresh(scratch) / f"ok{suffix}"
        path.write_bytes(real_images[which])
        assert decode_image(path).dtype == np.uint8


# ---- metrics -----------------------------------------------------------------------------------------------

TASKS = ["binary", "multiclass", "multilabel", "ordinal"]


@st.composite
def metric_case(draw, finite=True):
    task = draw(st.sampled_from(TASKS))
    n = draw(st.integers(1, 25))
    k = 2 if task == "binary" else draw(st.integers(1 if task == "multilabel" else 3, 5))
    seed = draw(st.integers(0, 2 ** 16))
    rng = np.random.default_rng(seed)
    if task == "multilabel":
        y = rng.integers(-1 if draw(st.booleans()) else 0, 2, (n, k))
    else:
        present = draw(st.integers(1, k))  # classes that occur: 1 = a single-class split, AUC undefined
        y = rng.integers(0, present, (n, 1))
    style = draw(st.sampled_from(["probs", "uniform", "ties", "extreme", "one_column"]))
    if style == "probs":
        s = rng.dirichlet(np.ones(k), n) if task != "multilabel" else rng.random((n, k))
    elif style == "uniform":
        s = rng.random((n, k))
    elif style == "ties":
        s = np.round(rng.random((n, k)), 1)
    elif style == "extreme":
        s = rng.choice([0.0, 1.0, 1e-300, 5e-324, 1 - 1e-16, -0.0], (n, k))
    else:
        s = rng.random(n) if task == "binary" else rng.random((n, k))
    if not finite:
        bad = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        s = np.array(s, dtype=np.float64)
        s.flat[draw(st.integers(0, s.size - 1))] = bad
    return task, y, s


def _check_json(rec):
    json.dumps(rec, allow_nan=False)  # raises on NaN / inf anywhere


@FUZZ
@given(case=metric_case())
def test_metrics_are_plain_json_and_undefined_is_none_with_warning(case):
    task, y, s = case
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = compute_metrics(y, s, task)
        a, c = auc(y, s, task), acc(y, s, task)
    _check_json(m)
    assert m["n"] == len(y) and set(scalar_names(task)) <= set(m)
    assert m["auc"] == a and m["acc"] == c
    for name in scalar_names(task):
        v = m[name]
        assert v is None or math.isfinite(v)
    assert m["acc"] is None or 0 <= m["acc"] <= 1
    if m["auc"] is None:
        assert any("AUC undefined" in str(w.message) for w in caught)
    else:
        assert 0 <= m["auc"] <= 1
    if task == "binary":
        from sklearn.metrics import roc_auc_score

        pos = np.asarray(s).reshape(len(y), -1)[:, -1]
        if len(np.unique(y)) == 2:
            assert m["auc"] == pytest.approx(roc_auc_score(y[:, 0], pos), abs=1e-9)
        assert m["acc"] == pytest.approx(np.mean(y[:, 0] == (pos > 0.5)))
    if task != "multilabel" and len(np.unique(y)) == 1:  # a single-class split
        assert m["auc"] is None


@FUZZ
@given(case=metric_case(), reps=st.integers(1, 30))
def test_bootstrap_cis_are_plain_json(case, reps):
    task, y, s = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ci = bootstrap_metrics(y, s, task, replicates=reps, seed=0)
    _check_json(ci)
    assert set(ci) == {f"{name}_ci" for name in scalar_names(task)}
    for v in ci.values():
        assert v is None or (len(v) == 2 and v[0] <= v[1] and all(math.isfinite(x) for x in v))


@FUZZ
@given(case=metric_case(finite=False))
def test_nan_or_inf_scores_are_a_clear_error(case):
    task, y, s = case
    for fn in (lambda: compute_metrics(y, s, task), lambda: auc(y, s, task), lambda: acc(y, s, task),
               lambda: bootstrap_metrics(y, s, task, replicates=5)):
        with pytest.raises(ValueError, match=r"^scores hold \d+ (NaN|infinite) .*row \d+") as err:
            fn()
        assert isinstance(err.value, MedbenchError)  # one clear line on the command line too


def test_empty_split_and_single_sample():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = compute_metrics(np.zeros((0, 1), int), np.zeros((0, 2)), "binary")
    _check_json(m)
    assert m["n"] == 0 and m["auc"] is None and m["acc"] is None and caught
    with pytest.raises(ValueError, match="no samples"):
        bootstrap_metrics(np.zeros((0, 1), int), np.zeros((0, 2)), "binary")
    with pytest.warns(UserWarning, match="AUC undefined"):
        one = compute_metrics(np.array([[1]]), np.array([[0.2, 0.8]]), "binary")
    assert one["acc"] == 1.0 and one["auc"] is None
    _check_json(one)
