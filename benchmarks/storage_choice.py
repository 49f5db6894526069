"""Which on-disk storage for decoded image datasets larger than memory: random-batch reads, RSS, write cost, deps.

N generated uint8 images [3, 224, 224] (smooth gradients + noise; image ``i`` is a pure function of ``i``, so any
batch can be checked against the in-memory answer) are written once per format under /tmp/storage_choice/ (deleted
at the end). Each format is written and read in its own fresh process (this script re-run with ``--child``):

* write: seconds including fsync (the generated source is read back from the page cache; for ``npy`` generation
  time is reported apart), size on disk, the writer's peak RSS;
* read: batches of 128 indices from ``torch.randperm(N, generator=seed 0)`` (same order for every format).
  ``cold``: the first ``--batches`` batches right after evicting the files from the page cache with
  ``posix_fadvise(DONTNEED)`` (per file, no root needed; a VM host may still cache the disk); then one full epoch
  (all N in random order, the warm-up); ``warm``: the same ``--batches`` batches again. RSS from /proc/self/status
  after the epoch: VmHWM (peak), RssAnon, RssFile (mapped file pages count here);
* exact: whether ``take(idx)`` returns exactly ``stack(image(i) for i in idx)`` for an unsorted index list with
  duplicates, as indexing the in-memory tensor does;
* deps: the library's requirement closure (``importlib.metadata``, what ``pip show`` reads) outside medbench's own,
  with installed sizes.

Libraries that conflict with the project venv (mosaicml-streaming pins numpy<2.2 and huggingface-hub<1) can run from
another interpreter: ``--libs-python``. A format whose imports fail is recorded as skipped with the error.

Usage: ``python benchmarks/storage_choice.py [--n 12000] [--batches 48] [--libs-python PY]
[--out benchmarks/results/storage-choice.json]``
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path("/tmp/storage_choice")
SHAPE = (3, 224, 224)
ROW = 3 * 224 * 224
BATCH = 128
CHUNK = 1000  # rows per write block: 150 MB
_yy, _xx = np.mgrid[0:224, 0:224].astype(np.float32) / 224


def image(i: int) -> np.ndarray:
    """Image ``i``: a per-image smooth colour gradient and wave, plus uniform noise."""
    rng = np.random.default_rng(i)
    a, b, f, ph = rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(2, 12), rng.uniform(0, 6.3)
    base = 90 * (a * _xx + b * _yy) + 40 * np.sin(f * (_xx + a * _yy) + ph)
    img = base[None] + rng.uniform(60, 190, (3, 1, 1)).astype(np.float32) + rng.integers(-20, 20, SHAPE, np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


def status() -> dict:
    keys = ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem")
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in keys:
            out[k + "_mb"] = round(int(v.split()[0]) / 1024, 1)
    return out


def source_blocks(n: int):
    """The npy store's rows in blocks of CHUNK, read into one reused 150 MB buffer (no mmap)."""
    src = PreadRows(DATA / "npy" / "images.npy", CHUNK)
    for s in range(0, n, CHUNK):
        yield src.take(np.arange(s, min(s + CHUNK, n)))


def fsync_tree(path: Path) -> list[Path]:
    files = [p for p in sorted(path.rglob("*")) if p.is_file()] if path.is_dir() else [path]
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    return files


# ---------------------------------------------------------------- the candidate: .npy + os.preadv row gather
class PreadRows:
    """Rows of a uint8 C-order .npy read with os.preadv into one preallocated buffer; contiguous runs coalesced."""

    def __init__(self, path, max_batch: int = BATCH):
        from numpy.lib import format as npy

        with open(path, "rb") as f:
            version = npy.read_magic(f)
            read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
            self.shape, fortran, dtype = read(f)
            self.offset = f.tell()
        assert dtype == np.uint8 and not fortran
        self.row = int(np.prod(self.shape[1:]))
        self.fd = os.open(path, os.O_RDONLY)
        self.buf = np.empty((max_batch, *self.shape[1:]), np.uint8)
        self.flat = memoryview(self.buf).cast("B")

    def take(self, idx) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        k, row, j = len(idx), self.row, 0
        while j < k:
            r = 1
            while j + r < k and idx[j + r] == idx[j] + r:  # a run of consecutive rows: one read
                r += 1
            done, want, pos = 0, r * row, self.offset + int(idx[j]) * row
            while done < want:  # preadv may return short
                got = os.preadv(self.fd, [self.flat[j * row + done:(j + r) * row]], pos + done)
                if got <= 0:
                    raise EOFError(f"short read at row {idx[j]}")
                done += got
            j += r
        return self.buf[:k]  # valid until the next take()


# ---------------------------------------------------------------- writers (one per on-disk format)
def write_npy(n: int, out: Path) -> dict:
    from numpy.lib import format as npy

    gen = 0.0
    with open(out / "images.npy", "wb") as f:
        npy.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": (n, *SHAPE)})
        for s in range(0, n, CHUNK):
            t = time.perf_counter()
            block = np.stack([image(i) for i in range(s, min(s + CHUNK, n))])
            gen += time.perf_counter() - t
            f.write(memoryview(block).cast("B"))
    return {"generate_s": gen}


def write_safetensors(n: int, out: Path) -> dict:
    # safetensors.numpy.save_file needs the whole array in RAM (1.8 GB here); the format is an 8-byte header size,
    # a JSON header (space-padded to 8 bytes) and the raw bytes, so it is written here a block at a time instead.
    header = json.dumps({"images": {"dtype": "U8", "shape": [n, *SHAPE], "data_offsets": [0, n * ROW]}},
                        separators=(",", ":")).encode()
    header += b" " * (-(8 + len(header)) % 8)
    with open(out / "images.safetensors", "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        for block in source_blocks(n):
            f.write(memoryview(block).cast("B"))
    return {"note": "written in 150 MB blocks by this script (format spec: u64 header size, JSON header, raw "
                    "bytes); safetensors.numpy.save_file would need the whole array in RAM"}


def write_datasets(n: int, out: Path) -> dict:
    from datasets import Array3D, Dataset, Features

    ds = Dataset.from_generator(_hf_rows, gen_kwargs={"n": n}, features=Features({"image": Array3D(SHAPE, "uint8")}),
                                cache_dir=str(out / "cache"), writer_batch_size=CHUNK // 10)
    for k, f in enumerate(ds.cache_files):  # datasets shards its cache at ~500 MB
        Path(f["filename"]).rename(out / f"images-{k:05d}.arrow")
    shutil.rmtree(out / "cache")
    return {"note": "Dataset.from_generator (Arrow IPC, Array3D uint8, ~500 MB shards), rows streamed from the source"}


def _hf_rows(n):
    for block in source_blocks(n):
        for img in block:
            yield {"image": img}


def _lit_rows(start):
    src = PreadRows(DATA / "npy" / "images.npy", CHUNK)
    for img in src.take(np.arange(start, min(start + CHUNK, src.shape[0]))):
        yield {"image": img.copy()}


def write_litdata(n: int, out: Path) -> dict:
    from litdata import optimize

    optimize(fn=_lit_rows, inputs=list(range(0, n, CHUNK)), output_dir=str(out), chunk_bytes="64MB", num_workers=1,
             mode="overwrite")
    return {"note": "litdata.optimize, 1 worker, 64 MB chunks, no compression"}


def write_mds(n: int, out: Path) -> dict:
    from streaming import MDSWriter

    with MDSWriter(out=str(out), columns={"image": "ndarray:uint8:3,224,224"}, compression=None,
                   size_limit="64mb", exist_ok=True) as w:
        for block in source_blocks(n):
            for img in block:
                w.write({"image": img})
    return {"note": "MDSWriter, 64 MB shards, no compression"}


def write_wds(n: int, out: Path) -> dict:
    import webdataset as wds

    i = 0
    with wds.TarWriter(str(out / "images.tar")) as w:
        for block in source_blocks(n):
            for img in block:
                w.write({"__key__": f"{i:06d}", "npy": img})
                i += 1
    return {"note": "one tar, one .npy member per image (webdataset.TarWriter)"}


LIBRARY = {"safetensors": "safetensors", "datasets": "datasets", "litdata": "litdata", "mds": "streaming",
           "webdataset": "webdataset"}  # imported before the write clock starts (streaming alone takes ~9 s)
WRITERS = {"npy": write_npy, "safetensors": write_safetensors, "datasets": write_datasets, "litdata": write_litdata,
           "mds": write_mds, "webdataset": write_wds}


# ---------------------------------------------------------------- readers: (take(idx) -> array, files) per variant
FOLDER = {"pread": "npy", "DiskImages": "npy", "mmap-unsorted": "npy", "mmap-sorted": "npy",
          "safetensors": "safetensors", "datasets-uint8": "datasets", "datasets-default": "datasets",
          "litdata-item": "litdata", "litdata-auto": "litdata", "mds": "mds", "webdataset": "webdataset"}


def open_reader(variant: str, n: int):
    d = DATA / FOLDER[variant]
    if variant == "pread":
        return PreadRows(d / "images.npy").take
    if variant == "DiskImages":
        sys.path.insert(0, str(ROOT / "src"))
        import torch

        from medbench.data.store import DiskImages

        x = DiskImages(d / "images.npy")
        return lambda idx: x[torch.from_numpy(idx)]
    if variant.startswith("mmap"):
        a = np.load(d / "images.npy", mmap_mode="r")
        if variant == "mmap-unsorted":
            return lambda idx: a[idx]

        def sorted_take(idx):  # read in file order, then scatter back to the requested order
            order = np.argsort(idx, kind="stable")
            out = np.empty((len(idx), *SHAPE), np.uint8)
            out[order] = a[idx[order]]
            return out
        return sorted_take
    if variant == "safetensors":
        from safetensors import safe_open

        sl = safe_open(str(d / "images.safetensors"), framework="numpy").get_slice("images")
        return lambda idx: np.stack([sl[int(i)] for i in idx])
    if variant.startswith("datasets"):
        from datasets import Dataset, concatenate_datasets

        kw = {"dtype": np.uint8} if variant == "datasets-uint8" else {}  # the default returns int64
        ds = concatenate_datasets([Dataset.from_file(str(f)) for f in sorted(d.glob("*.arrow"))])
        ds = ds.with_format("numpy", **kw)
        return lambda idx: ds[idx.tolist()]["image"]
    if variant.startswith("litdata"):
        from litdata import StreamingDataset

        ds = StreamingDataset(str(d), batch_decode="item" if variant == "litdata-item" else "auto")
        return lambda idx: np.stack([ds[int(i)]["image"] for i in idx])
    if variant == "mds":
        from streaming import StreamingDataset

        ds = StreamingDataset(local=str(d), shuffle=False, batch_size=BATCH)
        return lambda idx: np.stack([ds[int(i)]["image"] for i in idx])
    if variant == "webdataset":
        import webdataset as wds

        def stream():  # sequential only: the tar is read front to back
            for s in wds.WebDataset(str(d / "images.tar"), shardshuffle=False).decode():
                yield s["npy"]
        return stream
    raise ValueError(variant)


def cached_mb(files) -> float:
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES", *map(str, files)],
                         capture_output=True, text=True).stdout.split()
    return round(sum(int(x) for x in out) / 2**20, 1)


def evict(files) -> None:
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def read_child(variant: str, n: int, nb: int, quick: bool) -> dict:
    import torch

    torch.set_num_threads(1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0)).numpy()
    epoch = [perm[s:s + BATCH] for s in range(0, n, BATCH)]
    timed = epoch[:nb]
    files = [p for p in sorted((DATA / FOLDER[variant]).rglob("*")) if p.is_file()]
    t = time.perf_counter()
    take = open_reader(variant, n)
    res = {"variant": variant, "import_open_s": round(time.perf_counter() - t, 2), "rss_open": status()}

    if variant == "webdataset":  # sequential throughput: the first nb*128 images of the tar, then the whole tar
        def run(limit):
            t, k = time.perf_counter(), 0
            for _img in take():
                k += 1
                if k == limit:
                    break
            return round(k / (time.perf_counter() - t))
        evict(files)
        res["cached_before_cold_mb"] = cached_mb(files)
        res["cold_img_s"] = run(nb * BATCH)
        t = time.perf_counter()
        res["epoch_img_s"] = run(n)
        res["epoch_s"] = round(time.perf_counter() - t, 1)
        res["rss_epoch"] = status()
        res["warm_img_s"] = run(nb * BATCH)
        res["exact_batch"] = False
        res["exact_note"] = "sequential stream, no random access by index"
        return res

    def run(batches):
        t = time.perf_counter()
        for idx in batches:
            b = take(idx)
            assert tuple(b.shape) == (len(idx), *SHAPE), b.shape
        return round(sum(len(i) for i in batches) / (time.perf_counter() - t))

    if not quick:
        evict(files)
        res["cached_before_cold_mb"] = cached_mb(files)
        res["cold_img_s"] = run(timed)
        t = time.perf_counter()
        res["epoch_img_s"] = run(epoch)
        res["epoch_s"] = round(time.perf_counter() - t, 1)
        res["rss_epoch"] = status()
    else:
        timed = timed[:8]
        res["note"] = "quick: 8 warm batches only (no cold pass, no epoch)"
    res["warm_img_s"] = run(timed)
    res["rss_end"] = status()
    idx = np.concatenate([perm[:BATCH - 3], perm[[5, 0]], [n - 1]])  # unsorted, with duplicates, last row
    got = np.asarray(take(idx))
    want = np.stack([image(int(i)) for i in idx])
    res["exact_batch"] = bool(got.dtype == np.uint8 and got.shape == want.shape and np.array_equal(got, want))
    if not res["exact_batch"]:
        res["exact_note"] = f"returned {got.dtype} {list(got.shape)}; values equal: {np.array_equal(got, want)}"
    return res


def deps_child(lib: str) -> dict:
    import importlib.metadata as md
    import re

    from packaging.requirements import Requirement

    def norm(s):
        return re.sub(r"[-_.]+", "-", s).lower()

    def closure(root):
        seen, todo = {}, [root]
        while todo:
            name = norm(todo.pop())
            if name in seen:
                continue
            try:
                dist = md.distribution(name)
            except md.PackageNotFoundError:
                continue
            seen[name] = dist
            for r in dist.requires or []:
                req = Requirement(r)
                if not req.marker or req.marker.evaluate({"extra": ""}):
                    todo.append(req.name)
        return seen

    def size(dist):
        total = 0
        for f in dist.files or []:
            p = Path(dist.locate_file(f))
            if p.is_file():
                total += p.stat().st_size
        return total

    own, lib_deps = closure("medbench"), closure(lib)
    extra = {k: v for k, v in lib_deps.items() if k not in own}
    return {"library": lib, "version": md.version(lib), "closure_packages": len(lib_deps),
            "extra_packages": sorted(f"{k}=={v.version}" for k, v in extra.items()),
            "extra_installed_mb": round(sum(size(v) for v in extra.values()) / 2**20, 1),
            "closure_installed_mb": round(sum(size(v) for v in lib_deps.values()) / 2**20, 1)}


def child(args) -> None:
    kind, name = args.child
    if kind == "write":
        out = DATA / name
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        t = time.perf_counter()
        if name in LIBRARY:
            importlib.import_module(LIBRARY[name])
        imp = time.perf_counter() - t
        t = time.perf_counter()
        res = WRITERS[name](args.n, out) or {}
        res["import_s"] = round(imp, 2)
        files = fsync_tree(out)
        res["write_s"] = round(time.perf_counter() - t - res.get("generate_s", 0), 1)
        res["generate_s"] = round(res.get("generate_s", 0), 1) or None
        res.update(format=name, files=len(files), size_mb=round(sum(p.stat().st_size for p in files) / 2**20, 1),
                   writer_peak_rss_mb=status()["VmHWM_mb"])
    elif kind == "read":
        res = read_child(name, args.n, args.batches, quick=name == "litdata-auto")
    else:
        res = deps_child(name)
    print("RESULT " + json.dumps(res))


# ---------------------------------------------------------------- parent
NOTES = [
    "warm_img_s: the same --batches random batches after the warm-up epoch, page cache warm; cold_img_s: those "
    "batches right after posix_fadvise(DONTNEED) on the format's files (cached_before_cold_mb checks it with fincore; "
    "guest page cache only, the VM host may still cache the disk; global drop_caches was not used, the machine is "
    "shared); epoch_img_s is the warm-up pass that follows the cold batches, partly cold, not comparable across "
    "formats (mmap read-around pulls in neighbouring pages during the cold batches).",
    "growth_mb: /proc/self/status after the full random epoch minus after imports and open (torch and numpy "
    "imported in every reader); RssFile counts the pages of mapped files (np.load mmap, safetensors, Arrow), pread "
    "and read() leave them in the kernel page cache only.",
    "pread (reference reader in this script) reuses one preallocated 128-image buffer; DiskImages "
    "(src/medbench/data/store.py, the working-tree version whose git hash-object is diskimages_source) returns a "
    "fresh tensor per batch, rows read in file order; mmap-sorted reads np.sort(idx) then scatters rows back to the "
    "requested order.",
    "datasets-default is with_format('numpy') as is: it returns int64 batches (8x the bytes), so exact_batch is "
    "false although the values are equal; datasets-uint8 passes dtype=np.uint8.",
    "litdata-auto is StreamingDataset's default batch_decode='auto', which deserializes a window of ~100 neighbouring "
    "rows per random item (8 warm batches only, it is ~100 img/s); litdata-item sets batch_decode='item'.",
    "webdataset is sequential only (tar read front to back, no random access by index): its img/s are sequential "
    "throughput, not random batches.",
    "Install: datasets 5.2.0 went into the project venv (pip install, not in pyproject). mosaicml-streaming 0.13.0 "
    "requires numpy<2.2 and pulled huggingface-hub 0.36 (datasets 5.2 needs >=1.31) and python-dateutil<3, so it, "
    "litdata 0.2.76 and webdataset 1.0.2 were installed with --no-deps into a separate venv (--libs-python) that sees "
    "the project's torch through a .pth file; each installed in < 2 min, none needs the network at read time.",
]
def run_child(py: str, kind: str, name: str, args, timeout=420) -> dict:
    cmd = [py, str(Path(__file__).resolve()), "--child", kind, name, "--n", str(args.n), "--batches", str(args.batches)]
    # TMPDIR: litdata's work folders go there
    # (the HF_DATASETS_CACHE entry, str(DATA / "hf"), stood inside this comment: kept out, as measured)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(DATA / "tmp"), "PYTHONWARNINGS": "ignore"}
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    for line in p.stdout.splitlines()[::-1]:
        if line.startswith("RESULT "):
            res = json.loads(line[7:])
            print(f"  {kind} {name}: {time.perf_counter() - t:.0f} s {res}", flush=True)
            return res
    err = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
    print(f"  {kind} {name}: FAILED {err}", flush=True)
    return {"error": err}


def machine() -> dict:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")), "?")
    flags = set(Path("/proc/cpuinfo").read_text().split())
    return {"cpu": model, "cores": os.cpu_count(), "avx512": any(f.startswith("avx512") for f in flags),
            "amx": any(f.startswith("amx") for f in flags), "avx2": "avx2" in flags,
            "mem_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "kernel": os.uname().release, "python": sys.version.split()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=12000)
    ap.add_argument("--batches", type=int, default=48, help="timed batches of 128 (cold and warm)")
    ap.add_argument("--libs-python", default=sys.executable,
                    help="interpreter for litdata, mosaicml-streaming and webdataset (default: this one)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "storage-choice.json"))
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    py, lib_py = sys.executable, args.libs_python
    plan = [  # (format written, interpreter, read variants)
        ("npy", py, ["pread", "DiskImages", "mmap-unsorted", "mmap-sorted"]),
        ("safetensors", py, ["safetensors"]),
        ("datasets", py, ["datasets-uint8", "datasets-default"]),
        ("litdata", lib_py, ["litdata-item", "litdata-auto"]),
        ("mds", lib_py, ["mds"]),
        ("webdataset", lib_py, ["webdataset"]),
    ]
    libs = {"safetensors": py, "datasets": py, "litdata": lib_py, "mosaicml-streaming": lib_py, "webdataset": lib_py}
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    shutil.rmtree(DATA, ignore_errors=True)
    (DATA / "tmp").mkdir(parents=True)
    writes, reads, deps = {}, {}, {}
    try:
        for fmt, interp, variants in plan:
            print(fmt, flush=True)
            writes[fmt] = run_child(interp, "write", fmt, args)
            for v in variants:
                if "error" in writes[fmt]:
                    reads[v] = {"skipped": f"write failed: {writes[fmt]['error']}"}
                elif v == "DiskImages" and not (ROOT / "src" / "medbench" / "data" / "store.py").exists():
                    reads[v] = {"skipped": "src/medbench/data/store.py does not exist"}
                else:
                    reads[v] = run_child(interp, "read", v, args)
            if fmt != "npy":
                shutil.rmtree(DATA / fmt, ignore_errors=True)
        for lib, interp in libs.items():
            deps[lib] = run_child(interp, "deps", lib, args, timeout=120)
    finally:
        shutil.rmtree(DATA, ignore_errors=True)
    for r in reads.values():  # what reading added to the process, over its RSS after imports and open
        after = r.get("rss_epoch") or r.get("rss_end")
        if after and "rss_open" in r:
            r["growth_mb"] = {k: round(after[k + "_mb"] - r["rss_open"][k + "_mb"], 1)
                              for k in ("VmHWM", "RssAnon", "RssFile")}
    summary = {}
    for v, r in reads.items():
        fmt, w = FOLDER[v], writes.get(FOLDER[v], {})
        lib = {"safetensors": "safetensors", "datasets": "datasets", "litdata": "litdata", "mds": "mosaicml-streaming",
               "webdataset": "webdataset"}.get(fmt)
        summary[v] = {"warm_img_s": r.get("warm_img_s"), "cold_img_s": r.get("cold_img_s"),
                      "peak_rss_growth_mb": r.get("growth_mb", {}).get("VmHWM"),
                      "anon_growth_mb": r.get("growth_mb", {}).get("RssAnon"),
                      "file_growth_mb": r.get("growth_mb", {}).get("RssFile"),
                      "write_s": w.get("write_s"), "size_mb": w.get("size_mb"), "exact_batch": r.get("exact_batch"),
                      "import_open_s": r.get("import_open_s"),
                      "extra_deps": len(deps.get(lib, {}).get("extra_packages", [])) if lib else 0,
                      "extra_deps_mb": deps.get(lib, {}).get("extra_installed_mb", 0.0 if lib is None else None),
                      **({"error": r.get("error") or r.get("skipped")} if "warm_img_s" not in r else {})}
    store = ROOT / "src" / "medbench" / "data" / "store.py"
    result = {
        "benchmark": "storage_choice",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python benchmarks/storage_choice.py " + " ".join(sys.argv[1:]),
        "machine": {**machine(), "loadavg_start": [round(x, 2) for x in load0],
                    "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
        "data": {"n": args.n, "shape": [3, 224, 224], "dtype": "uint8", "gb": round(args.n * ROW / 1e9, 2),
                 "batch": BATCH, "timed_batches": args.batches, "order": "torch.randperm(n, seed 0), 128 per batch"},
        "interpreters": {"main": py, "libs": lib_py},
        "notes": NOTES,
        "summary": summary,
        "diskimages_source": (subprocess.run(["git", "hash-object", str(store)], capture_output=True, text=True)
                              .stdout.strip() if store.exists() else None),
        "writes": writes, "reads": reads, "deps": deps,
        "wall_s": round(time.perf_counter() - t0),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} in {result['wall_s']} s")


if __name__ == "__main__":
    main()
