"""Data larger than memory: the on-disk store, the memory-budget switch, streaming npz conversion, identical batches."""
from __future__ import annotations

import io
import os
import zipfile

import numpy as np
import pytest
import torch

from medbench.data import load_dataset
from medbench.data import medmnist as mm
from medbench.data.loader import iterate_batches
from medbench.data.medmnist import load_npz, read_npz
from medbench.data.memory import BUDGET_ENV, memory_budget
from medbench.data.splits import leakage_report
from medbench.data.store import ArrayWriter, DiskImages, gather, open_store
from medbench.data.views import CatImages
from medbench.errors import MedbenchError


@pytest.fixture
def breast_npz(medmnist_dir):
    return medmnist_dir / "breastmnist.npz"


def _disk_copy(tmp_path, x: torch.Tensor) -> DiskImages:
    with ArrayWriter(tmp_path / "x.npy", tuple(x.shape), np.uint8) as w:
        w.write(x.numpy())
    return DiskImages(tmp_path / "x.npy")


def test_disk_images_index_like_a_tensor(tmp_path):
    x = torch.randint(0, 256, (37, 3, 5, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    d = _disk_copy(tmp_path, x)
    assert d.shape == x.shape and len(d) == 37 and d.nbytes == x.numel()
    idx = torch.tensor([5, 0, 36, 5, 12])
    for key in (3, -1, slice(2, 9), slice(None), slice(30, 99), slice(1, 20, 3), idx, idx.numpy(), [4, 4, 1],
                torch.arange(37) % 2 == 0, torch.tensor([], dtype=torch.long)):
        assert torch.equal(d[key], x[key]), key
    assert torch.equal(gather(d, idx), x[idx]) and torch.equal(d.to("cpu"), x)
    with pytest.raises(IndexError):
        d[torch.tensor([37])]
    both = CatImages(d, x[:3])
    assert torch.equal(both[torch.tensor([38, 0, 39, 36])], torch.cat([x, x[:3]])[[38, 0, 39, 36]])


def test_damaged_store_files_are_one_line_errors(tmp_path):
    x = torch.zeros((4, 1, 3, 3), dtype=torch.uint8)
    d = _disk_copy(tmp_path, x)
    path = d.path
    data = path.read_bytes()
    path.write_bytes(data[:-5])
    with pytest.raises(MedbenchError, match=r"x\.npy: .*truncated or damaged store.*delete the folder"):
        DiskImages(path)
    np.save(path, np.zeros((4, 3, 3), np.float32))
    with pytest.raises(MedbenchError, match=r"expected uint8 \[N, C, H, W\]"):
        DiskImages(path)


def test_memory_budget_switch(monkeypatch):
    mem = load_dataset("breastmnist", progress=False)
    monkeypatch.setenv(BUDGET_ENV, "0")
    disk = load_dataset("breastmnist", progress=False)
    assert torch.is_tensor(mem["train"].images) and isinstance(disk["train"].images, DiskImages)
    assert mem.md5 == disk.md5 and mem.class_names == disk.class_names and mem.task == disk.task
    for s in mem.splits:
        assert torch.equal(mem[s].images, disk[s].images[:]) and torch.equal(mem[s].labels, disk[s].labels)
    # an explicit budget wins over the environment; 1 GB holds BreastMNIST's 0.6 MB
    assert torch.is_tensor(load_dataset("breastmnist", progress=False, memory_budget=1)["train"].images)
    monkeypatch.setenv(BUDGET_ENV, "lots")
    with pytest.raises(MedbenchError, match=f"{BUDGET_ENV}='lots' is not a size in GB"):
        memory_budget()


def test_the_same_batches_from_memory_and_from_disk(monkeypatch):
    mem = load_dataset("breastmnist", progress=False)
    disk = load_dataset("breastmnist", progress=False, memory_budget=0)
    for shard in ((0, 1), (0, 2), (1, 2)):
        a = iterate_batches(mem["train"], 64, shuffle=True, generator=torch.Generator().manual_seed(7), shard=shard)
        b = iterate_batches(disk["train"], 64, shuffle=True, generator=torch.Generator().manual_seed(7), shard=shard)
        pairs = list(zip(a, b, strict=True))
        assert len(pairs) == 9 and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in pairs)
    block = slice(40, 97)
    a = torch.cat([x for x, _ in iterate_batches(mem["test"], 16, rows=block)])
    b = torch.cat([x for x, _ in iterate_batches(disk["test"], 16, rows=block)])
    assert torch.equal(a, b) and torch.equal(a, mem["test"].images[block])


def test_prefetch_passes_errors_and_stops(tmp_path):
    x = torch.zeros((10, 1, 2, 2), dtype=torch.uint8)
    d = _disk_copy(tmp_path, x)
    split = type(load_dataset("breastmnist", progress=False)["train"])(d, torch.zeros(10, 1, dtype=torch.long))
    it = iterate_batches(split, 3)
    assert sum(len(b) for b, _ in it) == 10
    os.close(d._fd)  # the file goes away under the reader: the reading thread's error reaches the caller
    d._fd = -1
    with pytest.raises(OSError):
        list(iterate_batches(split, 3, prefetch=2))


def _resave(src, dest, *, compress: bool) -> None:
    """The same arrays in a new npz (deflated like MedMNIST's, or stored)."""
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files}
    (np.savez_compressed if compress else np.savez)(dest, **arrays)


@pytest.mark.parametrize("compress", [True, False])
def test_npz_converts_in_blocks_to_the_same_store(tmp_path, breast_npz, monkeypatch, compress):
    src = tmp_path / "b.npz"
    _resave(breast_npz, src, compress=compress)
    monkeypatch.setattr(mm, "BLOCK_BYTES", 7 * 28 * 28)  # 7 images a block: many blocks and a short last one
    whole = read_npz(breast_npz, "breastmnist")
    ds = read_npz(src, "breastmnist", store=tmp_path / "s.store")
    assert isinstance(ds["train"].images, DiskImages)
    for s in whole.splits:
        assert torch.equal(whole[s].images, ds[s].images[:]) and torch.equal(whole[s].labels, ds[s].labels)
    # hashes were computed while converting: the leakage check needs no second pass over the images
    assert leakage_report(ds.splits) == leakage_report(whole.splits)
    assert ds["train"].hashes is not None and len(ds["train"].hashes) == 546


def test_a_converted_store_is_reused(tmp_path, breast_npz, monkeypatch):
    calls = []
    real = mm.read_npz
    monkeypatch.setattr(mm, "read_npz", lambda *a, **k: calls.append(k.get("store")) or real(*a, **k))
    a = load_npz(breast_npz, "breastmnist", 28, memory_budget=0, cache_dir=tmp_path)
    b = load_npz(breast_npz, "breastmnist", 28, memory_budget=0, cache_dir=tmp_path)
    assert len(calls) == 1 and calls[0] is not None
    assert a.meta["store"] == b.meta["store"] and a.md5 == b.md5 == mm.md5sum(breast_npz)
    assert torch.equal(a["val"].images[:], b["val"].images[:])
    # an unfinished store (store.json missing, e.g. a killed conversion) is converted again, never read
    (tmp_path / a.meta["store"].split("/")[-1] / "store.json").unlink()
    load_npz(breast_npz, "breastmnist", 28, memory_budget=0, cache_dir=tmp_path)
    assert len(calls) == 2
    with pytest.raises(MedbenchError, match="store.json: missing or damaged"):
        open_store(tmp_path / "nowhere")


def test_corrupt_or_truncated_npz_is_one_line_error_while_streaming(tmp_path, breast_npz):
    src = tmp_path / "b.npz"
    _resave(breast_npz, src, compress=True)
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as z:
        info = z.getinfo("train_images.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    for i in range(start + 200, start + 400):  # garble the middle of the deflated train images
        data[i] ^= 0x5A
    bad = tmp_path / "bad.npz"
    bad.write_bytes(bytes(data))
    with pytest.raises(MedbenchError) as e:
        read_npz(bad, "breastmnist", store=tmp_path / "bad.store")
    msg = str(e.value)
    assert "\n" not in msg and str(bad) in msg and "train_images cannot be read" in msg
    assert not (tmp_path / "bad.store" / "store.json").exists()
    assert not list((tmp_path / "bad.store").glob("*.tmp")) and not list((tmp_path / "bad.store").glob(".*.tmp"))
    cut = tmp_path / "cut.npz"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(MedbenchError) as e:
        read_npz(cut, "breastmnist", store=tmp_path / "cut.store")
    assert "\n" not in str(e.value) and str(cut) in str(e.value)


def _rss_anon_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon")) / 1024


def test_memory_stays_flat_while_the_caller_keeps_every_batchs_labels(tmp_path):
    """What the training loop does (it keeps each batch's labels for the epoch's metrics): memory must not grow with
    the batches read. A regression: labels gathered in the reading thread pinned the freed image buffers between
    them in that thread's malloc arena, and RSS grew by one batch per step (18 MB at 224 px)."""
    x = torch.randint(0, 256, (512, 3, 128, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    split = type(load_dataset("breastmnist", progress=False)["train"])(_disk_copy(tmp_path, x),
                                                                    torch.zeros(512, 1, dtype=torch.long))
    del x
    kept, g = [], torch.Generator().manual_seed(0)
    for _ in range(2):  # warm up the allocator
        kept += [y for _, y in iterate_batches(split, 64, shuffle=True, generator=g)]
    before = _rss_anon_mb()
    for _ in range(25):  # 200 batches of 3 MB: 600 MB if each stayed pinned
        kept += [y for _, y in iterate_batches(split, 64, shuffle=True, generator=g)]
    assert len(kept) == 216 and _rss_anon_mb() - before < 120
