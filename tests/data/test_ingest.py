"""Own data -> store: parallel chunks equal serial ones, a killed ingest resumes, damaged chunks are decoded again,
the memory budget picks tensors or disk reads (medbench.data.ingest, medbench.data.cache)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medbench.data import ingest
from medbench.data.cache import cache_clear, cache_info
from medbench.data.decode import convert_channels, decode_fitted
from medbench.data.folders import load_folder
from medbench.data.store import DiskImages
from medbench.errors import MedbenchError

from conftest import kill_when


@pytest.fixture(scope="module")
def chest(shared_data) -> Path:
    return shared_data / "chest_xray_subset"


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(ingest, "CHUNK_FILES", 4)
    monkeypatch.setattr(ingest, "MIN_CHUNK_FILES", 4)


def _mixed(root: Path) -> Path:
    """Two classes of PNG and JPEG files, grey and colour, of several sizes (chunks of 1 and of 3 channels)."""
    rng = np.random.default_rng(0)
    for k in range(14):
        for j, cls in enumerate(("a", "b")):
            h, w = 40 + 37 * k, 300 + 23 * k + 50 * j
            yy, xx = np.mgrid[0:h, 0:w]
            grey = (120 + 80 * np.sin(xx / (13.0 + k)) * np.cos(yy / 17.0) + rng.normal(0, 5, (h, w))).clip(0, 255)
            grey = grey.astype(np.uint8)
            (root / cls).mkdir(parents=True, exist_ok=True)
            kind = (k + j) % 4
            if kind == 0:
                Image.fromarray(grey).save(root / cls / f"{k}.jpg", quality=90)
            elif kind == 1:
                Image.fromarray(np.stack([grey] * 3, -1)).save(root / cls / f"{k}.jpg", quality=90)  # grey as RGB
            elif kind == 2 and k < 8:
                Image.fromarray(grey).save(root / cls / f"{k}.png")
            else:
                rgb = np.stack([grey, 255 - grey, grey // 2], -1)
                Image.fromarray(rgb).save(root / cls / f"{k}{'.png' if k % 2 else '.jpg'}")
    return root


def _arrays(store: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(store.glob("*.npy"))}


def _meta(store: Path) -> dict:
    info = json.loads((store / "store.json").read_text())
    info.pop("created")
    info["meta"].pop("ingest")
    return info


def _store(ds) -> Path:
    return Path(ds.meta["cache"]["path"])


@pytest.mark.slow
def test_parallel_ingest_equals_serial_and_the_decoder(tmp_path, chest, small_chunks):
    data = _mixed(tmp_path / "mixed")
    for channels in (None, 1):
        one = load_folder(data, size=24, channels=channels, cache_dir=tmp_path / "c1", workers=1)
        two = load_folder(data, size=24, channels=channels, cache_dir=tmp_path / "c2", workers=2)
        assert one.meta["ingest"]["workers"] == 1 and two.meta["ingest"]["workers"] == 2
        assert one.meta["ingest"]["chunks"] == 7
        assert _arrays(_store(one)) == _arrays(_store(two)) and _meta(_store(one)) == _meta(_store(two))
        assert one.in_chans == (3 if channels is None else 1)
        for s, split in two.splits.items():  # each row is decode_fitted + convert_channels of its file
            for i, rel in enumerate(two.meta["files"][s]):
                want = convert_channels(decode_fitted(data / rel, 24, "pad"), two.in_chans)
                assert np.array_equal(split.images[i].permute(1, 2, 0).numpy(), want), rel
            assert two[s].hashes is not None and len(two[s].hashes) == len(split)
    a = load_folder(chest, size=32, cache_dir=tmp_path / "c1", workers=1)
    b = load_folder(chest, size=32, cache_dir=tmp_path / "c2", workers=2)
    assert a.in_chans == 1 and _arrays(_store(a)) == _arrays(_store(b)) and _meta(_store(a)) == _meta(_store(b))


_KILLABLE = """
import os, sys, time
from medbench.data import ingest
from medbench.data.folders import load_folder

ingest.CHUNK_FILES = ingest.MIN_CHUNK_FILES = 8
real = ingest.decode_fitted


def logged(path, *args, **kwargs):  # runs in the worker processes: one line per decode call
    with open(sys.argv[3], "a") as f:
        f.write(f"{path}\\n")
    time.sleep(float(sys.argv[4]))
    return real(path, *args, **kwargs)


ingest.decode_fitted = logged
ds = load_folder(sys.argv[1], size=32, cache_dir=sys.argv[2], workers=2)
print(ds.meta["ingest"])
"""


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.slow
def test_killed_ingest_resumes_with_the_missing_chunks_only(tmp_path, chest):
    cache = tmp_path / "cache"
    script = tmp_path / "ingest_script.py"
    script.write_text(_KILLABLE)
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    kill_when([sys.executable, str(script), str(chest), str(cache), str(first), "0.03"],
              lambda: len(list(cache.glob("*.store.partial/chunk-*.json"))) >= 4, timeout=120, group=False,
              what="the ingest")
    time.sleep(0.5)  # the workers die with the parent (PR_SET_PDEATHSIG); none writes a chunk after this
    (partial,) = cache.glob("*.store.partial")
    done = sorted(partial.glob("chunk-*.json"))
    kept = sum(json.loads(p.read_text())["n"] for p in done)
    assert 4 * 8 <= kept < 168 and not list(cache.glob("*.store/store.json"))
    r = subprocess.run([sys.executable, str(script), str(chest), str(cache), str(second), "0"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    decoded_again = _lines(second)
    assert len(decoded_again) == 168 - kept  # only the files of the missing chunks
    (store,) = cache.glob("*.store")
    info = json.loads((store / "store.json").read_text())["meta"]["ingest"]
    files = json.loads((store / "store.json").read_text())["meta"]["files"]
    order = [str(chest / f) for s in ("train", "val", "test") for f in files[s]]  # the chunks' order
    finished = {f for p in done for f in order[int(p.stem[-6:]) * 8:(int(p.stem[-6:]) + 1) * 8]}
    assert len(finished) == kept and not finished & set(decoded_again)
    assert info["reused"] == kept and info["decoded"] == 168 - kept and not partial.exists()
    full = load_folder(chest, size=32, cache_dir=tmp_path / "clean", workers=1)  # uninterrupted
    assert _arrays(store) == _arrays(_store(full)) and _meta(store) == _meta(_store(full))
    # together the two runs decoded every file, the second none that the first had finished (the loader names
    # files by their resolved path: the data root may be reached through a link)
    assert set(_lines(first)) | set(decoded_again) == {str(p) for p in chest.resolve().rglob("*.jpeg")}


def test_memory_budget_picks_tensors_or_disk_reads(tmp_path, chest):
    cache = tmp_path / "cache"
    disk = load_folder(chest, size=32, cache_dir=cache, memory_budget=0)
    held = load_folder(chest, size=32, cache_dir=cache, memory_budget=64)
    assert not disk.meta["cache"]["hit"] and held.meta["cache"]["hit"]
    for s in ("train", "val", "test"):
        assert isinstance(disk[s].images, DiskImages) and torch.is_tensor(held[s].images)
        assert torch.equal(disk[s].images[0:len(disk[s])], held[s].images)
        assert torch.equal(disk[s].labels, held[s].labels) and disk[s].hashes == held[s].hashes
    assert disk.meta["files"] == held.meta["files"]
    # no cache folder: a temporary store, removed at once when the images are held in memory
    tmp = load_folder(chest, size=32, memory_budget=0)
    assert isinstance(tmp["train"].images, DiskImages) and Path(tmp.meta["store"]).is_dir()
    assert "cache" not in tmp.meta and torch.equal(tmp["test"].images[:], held["test"].images)
    mem = load_folder(chest, size=32)
    assert torch.is_tensor(mem["train"].images) and "store" not in mem.meta and "cache" not in mem.meta


def test_damaged_chunk_is_decoded_again_and_skip_bad_reuses_the_chunks(tmp_path, chest, small_chunks):
    data = _mixed(tmp_path / "mixed")
    (data / "b" / "broken.jpg").write_bytes((data / "a" / "0.jpg").read_bytes()[:900])
    cache = tmp_path / "cache"
    with pytest.raises(MedbenchError, match=r"1 image\(s\) cannot be decoded: b/broken.jpg"):
        load_folder(data, size=24, cache_dir=cache)
    (partial,) = cache.glob("*.store.partial")  # every chunk is kept for the --skip-bad rerun
    chunks = sorted(partial.glob("chunk-*.npy"))
    assert len(chunks) == 8 and len(list(partial.glob("chunk-*.json"))) == 8
    victim = chunks[3]
    victim.write_bytes(victim.read_bytes()[:-100])  # truncated
    flipped = chunks[5]
    raw = bytearray(flipped.read_bytes())
    raw[-7] ^= 0x55  # one pixel changed: the digest no longer matches
    flipped.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image\(s\): b/broken.jpg"):
        ds = load_folder(data, size=24, cache_dir=cache, skip_bad=True)
    assert ds.meta["ingest"]["decoded"] == 8 and ds.meta["ingest"]["reused"] == 29 - 8
    assert [s["path"] for s in ds.meta["skipped"]] == ["b/broken.jpg"]
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        clean = load_folder(data, size=24, cache_dir=tmp_path / "clean", skip_bad=True, workers=1)
    assert _arrays(_store(ds)) == _arrays(_store(clean)) and _meta(_store(ds)) == _meta(_store(clean))
    assert not partial.exists()


def test_interrupted_chunk_leaves_nothing_that_is_read(tmp_path, chest, small_chunks, monkeypatch):
    data = _mixed(tmp_path / "mixed")
    cache = tmp_path / "cache"
    real, calls, stop = ingest.decode_fitted, [], [10]

    def interrupted(path, *a, **k):
        calls.append(path)
        if len(calls) == stop[0]:
            raise KeyboardInterrupt  # Ctrl-C in the middle of chunk 2 (files 8-11)
        return real(path, *a, **k)

    monkeypatch.setattr(ingest, "decode_fitted", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_folder(data, size=24, cache_dir=cache, workers=1)
    (partial,) = cache.glob("*.store.partial")
    assert sorted(p.name for p in partial.iterdir() if p.name != "plan.json") == [
        "chunk-000000.json", "chunk-000000.npy", "chunk-000001.json", "chunk-000001.npy"]
    calls.clear()
    stop[0] = 0
    ds = load_folder(data, size=24, cache_dir=cache, workers=1)
    assert len(calls) == 28 - 8 and ds.meta["ingest"]["reused"] == 8


def test_worker_failures_are_one_line_errors(tmp_path, small_chunks, monkeypatch):
    data = _mixed(tmp_path / "mixed")
    real = ingest.decode_fitted

    def boom(path, *a, **k):
        if Path(path).name == "5.jpg":
            raise ValueError("boom\nsecond line")
        return real(path, *a, **k)

    monkeypatch.setattr(ingest, "decode_fitted", boom)  # the forked workers inherit it
    messages = []
    for workers in (1, 2):
        with pytest.raises(MedbenchError) as e:
            load_folder(data, size=24, cache_dir=tmp_path / f"c{workers}", workers=workers)
        messages.append(str(e.value))
    assert messages[0] == messages[1] and "\n" not in messages[0]
    assert messages[0].startswith(f"{data.resolve() / 'a' / '5.jpg'}: decoding failed unexpectedly (ValueError: boom")

    def dies(path, *a, **k):
        if Path(path).name == "5.jpg":
            os._exit(3)
        return real(path, *a, **k)

    monkeypatch.setattr(ingest, "decode_fitted", dies)
    with pytest.raises(MedbenchError, match=r"a decoding worker process died .*run again \(decoded chunks are kept\)"):
        load_folder(data, size=24, cache_dir=tmp_path / "c3", workers=2)


def test_cache_info_and_clear_cover_partial_and_old_entries(tmp_path, chest):
    cache = tmp_path / "cache"
    cache.mkdir()
    old = "ab" * 32
    (cache / f"{old}.json").write_text("{}")
    (cache / f"{old}.safetensors").write_bytes(b"x" * 10)
    ds = load_folder(chest, size=16, cache_dir=cache)
    states = sorted(r["state"] for r in cache_info(cache))
    assert states == ["complete", "old-format"]
    assert not ds.meta["cache"]["hit"]
    partial = cache / ("cd" * 32 + ".store.partial")
    partial.mkdir()
    (partial / "plan.json").write_text(json.dumps({"n": 5, "size": 16, "source": "somewhere"}))
    rows = {r["state"]: r for r in cache_info(cache)}
    assert rows["partial"]["source"] == "somewhere" and rows["partial"]["files"] == 5
    assert rows["complete"]["images"] == {"train": 80, "val": 8, "test": 80}
    assert rows["old-format"]["bytes"] == 12
    assert cache_clear(cache) == 5 and list(cache.iterdir()) == []  # store, its lock, partial, 2 old files


def test_a_split_left_empty_by_skip_bad_is_an_empty_array(tmp_path):
    root = tmp_path / "data"
    for split in ("train", "test"):
        for cls, v in (("a", 40), ("b", 200)):
            for k in range(3):
                (root / split / cls).mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((20, 30), v + k, np.uint8)).save(root / split / cls / f"{k}.png")
    (root / "val" / "a").mkdir(parents=True)
    (root / "val" / "a" / "bad.png").write_bytes(b"not an image")
    for cache_dir in (tmp_path / "cache", None):
        with pytest.warns(UserWarning, match="skipped 1 unreadable"):
            ds = load_folder(root, size=8, skip_bad=True, cache_dir=cache_dir)
        assert len(ds["val"]) == 0 and tuple(ds["val"].images.shape) == (0, 1, 8, 8)
        assert tuple(ds["val"].labels.shape) == (0, 1) and len(ds["train"]) == 6
    # nothing left to train on: the error of today, and no chunks kept (other settings decode in another order)
    for f in (root / "train").rglob("*.png"):
        f.write_bytes(b"broken too")
    with pytest.warns(UserWarning), pytest.raises(MedbenchError, match="no training images left after splitting"):
        load_folder(root, size=8, skip_bad=True, cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.partial"))
