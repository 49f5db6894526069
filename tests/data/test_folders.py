"""scan_folder / load_folder / the decoded-dataset cache, on the real chest X-ray subset and small temp folders."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medbench.data.cache import cache_clear, cache_info, cached, default_cache_dir
from medbench.data.decode import decode_fitted, decode_image, resize_square
from medbench.data.folders import load_folder, scan_folder
from medbench.errors import MedbenchError


@pytest.fixture(scope="module")
def chest(shared_data) -> Path:
    return shared_data / "chest_xray_subset"


@pytest.fixture(scope="module")
def chest64(chest):
    return load_folder(chest, size=64)


def _img(path: Path, value: int, shape=(12, 16), rgb=False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.full(shape, value, np.uint8)
    Image.fromarray(np.stack([a, a // 2, a // 3], -1) if rgb else a).save(path)
    return path


def _small_copy(chest: Path, dest: Path, per_class: int = 3) -> Path:
    for split in ("train", "val", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            (dest / split / cls).mkdir(parents=True)
            for f in sorted((chest / split / cls).iterdir())[:per_class]:
                shutil.copy2(f, dest / split / cls / f.name)
    return dest


def test_scan_chest_layout(chest):
    listing = scan_folder(chest)
    assert listing.has_splits and listing.class_names == ["NORMAL", "PNEUMONIA"]
    assert {s: len(v) for s, v in listing.files.items()} == {"train": 80, "val": 8, "test": 80}
    assert all(f.startswith("train/") for f in listing.files["train"])


def test_load_chest_matches_decoder(chest, chest64):
    ds = chest64
    assert ds.name == "folder:chest_xray_subset" and ds.task == "binary" and ds.source == str(chest.resolve())
    assert ds.class_names == ["NORMAL", "PNEUMONIA"] and ds.size == 64 and ds.in_chans == 1  # all grey
    assert {s: len(v) for s, v in ds.splits.items()} == {"train": 80, "val": 8, "test": 80}
    for s, split in ds.splits.items():
        assert split.images.dtype == torch.uint8 and split.images.shape[1:] == (1, 64, 64)
        assert split.labels.dtype == torch.int64 and split.labels.shape == (len(split), 1)
        assert len(ds.meta["files"][s]) == len(split)
    i = 5
    rel = ds.meta["files"]["test"][i]
    got = ds["test"].images[i].permute(1, 2, 0).numpy()
    assert np.array_equal(got, decode_fitted(chest / rel, 64, "pad"))  # what predict and serve decode
    full = resize_square(decode_image(chest / rel), 64, "pad")  # every pixel decoded: JPEG draft within a few levels
    assert np.abs(got.astype(int) - full).mean() < 1
    assert int(ds["test"].labels[i, 0]) == ds.class_names.index(rel.split("/")[1])


def test_pool_label_regex_hidden_and_channels(tmp_path):
    root = tmp_path / "pool"
    for k in range(10):
        _img(root / "sub" / f"case{k}_benign.png", 40 + k)
        _img(root / f"case{k}_malignant.png", 200 - k, rgb=(k == 0))
    (root / "notes.txt").write_text("x")
    _img(root / ".hidden.png", 0)
    ds = load_folder(root, size=8, label_regex=r"_(benign|malignant)\.png$", resize="crop")
    assert ds.class_names == ["benign", "malignant"] and ds.in_chans == 3  # one colour image -> 3 channels
    assert sum(len(s) for s in ds.splits.values()) == 20
    assert set(ds.meta["ignored"]) == {"notes.txt", ".hidden.png"}
    # no split folders: val and test are drawn from the pool, stratified, nothing lost or duplicated
    files = [f for s in ds.meta["files"].values() for f in s]
    assert len(set(files)) == 20 and all(len(ds[s]) >= 2 for s in ("val", "test"))
    assert load_folder(root, size=8, label_regex=r"_(benign|malignant)\.png$", channels=1).in_chans == 1
    _img(root / "case_unknown.png", 9)
    with pytest.raises(MedbenchError, match=r"do not match the label regex.*case_unknown.png"):
        load_folder(root, size=8, label_regex=r"_(benign|malignant)\.png$")


def test_layout_errors(tmp_path):
    with pytest.raises(MedbenchError, match="not a folder"):
        scan_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedbenchError, match="no image files found"):
        scan_folder(tmp_path / "empty")
    _img(tmp_path / "one" / "a" / "x.png", 1)
    (tmp_path / "one" / "b").mkdir()
    with pytest.raises(MedbenchError, match=r"class folder\(s\) with no images: b/"):
        scan_folder(tmp_path / "one")
    _img(tmp_path / "single" / "a" / "x.png", 1)
    with pytest.raises(MedbenchError, match="only one class"):
        scan_folder(tmp_path / "single")
    _img(tmp_path / "loose" / "a" / "x.png", 1)
    _img(tmp_path / "loose" / "b" / "y.png", 1)
    _img(tmp_path / "loose" / "z.png", 1)
    with pytest.raises(MedbenchError, match=r"not inside a class folder: z.png"):
        scan_folder(tmp_path / "loose")


def test_bad_files_listed_or_skipped(chest, tmp_path):
    root = _small_copy(chest, tmp_path / "c")
    victims = [sorted((root / "train" / c).iterdir())[0] for c in ("NORMAL", "PNEUMONIA")]
    victims[0].write_bytes(victims[0].read_bytes()[:1000])  # truncated
    victims[1].write_bytes(b"garbage")
    with pytest.raises(MedbenchError, match=r"2 image\(s\) cannot be decoded: .*NORMAL.*cannot decode.*skip_bad"):
        load_folder(root, size=16)
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable"):
        ds = load_folder(root, size=16, skip_bad=True)
    assert sorted(s["path"] for s in ds.meta["skipped"]) == sorted(v.relative_to(root).as_posix() for v in victims)
    assert all("cannot decode" in s["reason"] for s in ds.meta["skipped"])
    assert len(ds["train"]) == 4 and not any(s["path"] in ds.meta["files"]["train"] for s in ds.meta["skipped"])


def test_cache_is_fast_identical_and_invalidated(chest, tmp_path, chest64):
    cache = tmp_path / "cache"
    t0 = time.perf_counter()
    first = load_folder(chest, size=64, cache_dir=cache)
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    second = load_folder(chest, size=64, cache_dir=cache)
    t_second = time.perf_counter() - t0
    print(f"\nchest_xray_subset @64: first load {t_first:.3f} s, cached load {t_second:.3f} s, "
          f"ratio {t_first / t_second:.1f}x")
    assert not first.meta["cache"]["hit"] and second.meta["cache"]["hit"]
    assert t_first / t_second >= 3  # the first load decodes in parallel with JPEG drafts: 10x before, ~8x now
    for s in first.splits:
        assert torch.equal(first[s].images, second[s].images) and torch.equal(first[s].labels, second[s].labels)
        assert torch.equal(first[s].images, chest64[s].images)
    assert second.meta["files"] == first.meta["files"] and second.task == "binary"
    assert second.class_names == first.class_names and second.source == first.source
    info = cache_info(cache)
    assert len(info) == 1 and info[0]["name"] == "folder:chest_xray_subset"
    assert info[0]["images"] == {"train": 80, "val": 8, "test": 80}
    # another setting is another entry; changed content (same size, same mtime) invalidates the entry
    copy = _small_copy(chest, tmp_path / "copy", per_class=2)
    a = load_folder(copy, size=32, cache_dir=cache)
    assert load_folder(copy, size=32, cache_dir=cache).meta["cache"]["hit"]
    assert not load_folder(copy, size=32, resize="crop", cache_dir=cache).meta["cache"]["hit"]
    f = sorted((copy / "train" / "NORMAL").iterdir())[0]
    st = f.stat()
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    b = load_folder(copy, size=32, cache_dir=cache)
    assert not b.meta["cache"]["hit"] and b.meta["cache"]["key"] != a.meta["cache"]["key"]
    stores = sorted(p.name for p in cache.iterdir() if p.name.endswith(".store"))
    assert len(stores) == 4 and not list(cache.glob("*.partial")) and first.meta["cache"]["path"] == str(
        cache / stores[[s[:64] for s in stores].index(first.meta["cache"]["key"])])
    assert cache_clear(cache) == 4 + 4 and cache_info(cache) == []  # 4 stores, 4 lock files


def test_cached_generic_and_default_dir(tmp_path, monkeypatch, chest64):
    monkeypatch.setenv("MEDBENCH_CACHE", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    calls = []

    def build():
        calls.append(1)
        return chest64

    cached({"x": 1}, build)
    again = cached({"x": 1}, build)
    assert len(calls) == 1 and again.meta["cache"]["hit"]
    assert [p.suffix for p in sorted((tmp_path / "env").iterdir())] == [".store", ".lock"]
    for s in chest64.splits:
        assert torch.equal(again[s].images, chest64[s].images) and torch.equal(again[s].labels, chest64[s].labels)
    assert cache_clear() == 2


def test_multiclass_missing_test_folder_is_drawn_from_train(tmp_path):
    root = tmp_path / "three"
    for k in range(12):
        for j, cls in enumerate(("a", "b", "c")):
            _img(root / "train" / cls / f"{k}.png", 30 + 80 * j + k)
    for j, cls in enumerate(("a", "b", "c")):
        _img(root / "val" / cls / "v.png", 30 + 80 * j)
    (root / "README.md").write_text("about")
    ds = load_folder(root, size=8, seed=1)
    assert ds.task == "multiclass" and ds.class_names == ["a", "b", "c"]
    assert ds.meta["ignored"] == ["README.md"]
    assert len(ds["val"]) == 3 and all(f.startswith("val/") for f in ds.meta["files"]["val"])
    # no test folder: 20 % of train, stratified (3 classes x 12 -> 36 * 0.2 = 7)
    assert len(ds["test"]) == 7 and len(ds["train"]) == 29
    assert sorted(np.bincount(ds["test"].labels[:, 0].numpy(), minlength=3).tolist()) == [2, 2, 3]
    assert all(f.startswith("train/") for f in ds.meta["files"]["test"])


def test_links_that_point_outside_the_folder_are_refused(tmp_path):
    root = tmp_path / "data"
    for cls in ("a", "b"):
        _img(root / cls / "1.png", 10)
    outside = _img(tmp_path / "elsewhere" / "cls" / "x.png", 20)
    (root / "a" / "inside-link.png").symlink_to(root / "b" / "1.png")  # stays inside: allowed
    assert len(scan_folder(root).files["train"]) == 3
    (root / "b" / "out.png").symlink_to(outside)
    with pytest.raises(MedbenchError, match=r"1 image\(s\) are links that point outside the folder: b/out.png; "
                                            r"copy those images into the folder or remove the links"):
        scan_folder(root)
    (root / "b" / "out.png").unlink()
    (root / "c").symlink_to(outside.parent, target_is_directory=True)  # a linked class folder
    with pytest.raises(MedbenchError, match=r"links that point outside the folder: c/x.png"):
        load_folder(root, size=8, skip_bad=True)
