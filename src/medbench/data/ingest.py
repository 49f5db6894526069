"""Own image files -> a store (:mod:`medbench.data.store`), decoded in parallel, in chunks that survive a crash.

The files (already listed and assigned to splits, in split order) are cut into chunks of :func:`chunk_size` files.
Worker processes (``workers``, default: the CPUs this process may use; 1 = in this process) decode a chunk each
with :func:`medbench.data.decode.decode_fitted` and write it into the partial folder themselves:

* ``chunk-NNNNNN.npy``: uint8 ``[k, size, size, C]`` (C = 1 when every image of the chunk decoded grey, else 3;
  an unreadable file is a row of zeros), then ``chunk-NNNNNN.json``: its first file, count, per-file grey flag,
  unreadable files with the reason, and a BLAKE2b of the pixels. Both are written to a temporary name and
  renamed, the JSON last, so a chunk without its JSON (or whose pixels do not match it) is decoded again, never
  read: a SIGKILL, Ctrl-C or a full disk leaves at worst a ``.tmp`` file, removed on the next start.
* ``plan.json``: the file count, chunk size and a digest of the file list; another plan empties the folder.

When every chunk is there, the split arrays are written in split order one chunk at a time (:class:`SplitWriter`,
which hashes each image as it writes), ``store.json`` last, and the partial folder is removed. Memory: a worker
holds one chunk (at most :data:`CHUNK_BYTES` of pixels), the parent one chunk while assembling.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medbench.data.dataset import SPLITS
from medbench.data.decode import convert_channels, decode_fitted
from medbench.errors import MedbenchError
from medbench.fileio import atomic_path, no_room, no_room_error, write_json

FORMAT = 1
PLAN = "plan.json"
CHUNK_FILES = 256  # most files per chunk
MIN_CHUNK_FILES = 16  # fewest (small data: at least about 64 chunks to share among the workers)
CHUNK_BYTES = 64 << 20  # most decoded pixels per chunk (large sizes: fewer files per chunk)
DRAFT = True  # JPEG draft decoding (decode_fitted); off only for the benchmark's baseline


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))  # a container's CPU set, not the host's count
    except AttributeError:
        return os.cpu_count() or 1


def chunk_size(n: int, size: int) -> int:
    """Files per chunk: about n / 64, between MIN_CHUNK_FILES and CHUNK_FILES, at most CHUNK_BYTES of RGB pixels."""
    by_bytes = max(1, CHUNK_BYTES // (size * size * 3))
    return max(1, min(CHUNK_FILES, by_bytes, max(MIN_CHUNK_FILES, math.ceil(n / 64))))


@dataclass
class Decoded:
    """What the chunks hold: per file of the order, unreadable (index -> reason) or grey."""
    n: int
    chunk: int
    bad: dict[int, str]
    grey: np.ndarray  # bool [n]: decoded with one channel
    decoded: int  # files decoded by this call
    reused: int  # files found decoded in the partial folder
    workers: int
    seconds: float

    @property
    def chunks(self) -> int:
        return math.ceil(self.n / self.chunk)

    def stats(self) -> dict:
        return {"files": self.n, "chunk": self.chunk, "chunks": self.chunks, "decoded": self.decoded,
                "reused": self.reused, "workers": self.workers, "seconds": round(self.seconds, 3)}


def _name(i: int) -> str:
    return f"chunk-{i:06d}"


def _pixels_digest(a: np.ndarray) -> str:
    return hashlib.blake2b(memoryview(np.ascontiguousarray(a)).cast("B"), digest_size=16).hexdigest()


def _read_chunk(partial: Path, i: int, start: int, n: int, size: int) -> tuple[dict, np.ndarray] | None:
    """Chunk ``i`` (its JSON and pixels) when complete and intact, else None."""
    try:
        info = json.loads((partial / f"{_name(i)}.json").read_text(encoding="utf-8"))
        a = np.load(partial / f"{_name(i)}.npy", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    ok = (isinstance(info, dict) and info.get("start") == start and info.get("n") == n
          and a.dtype == np.uint8 and a.ndim == 4 and a.shape[:3] == (n, size, size) and a.shape[3] in (1, 3)
          and len(info.get("grey", ())) == n and info.get("pixels") == _pixels_digest(a))
    return (info, a) if ok else None


def _worker_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops the workers
    try:  # Linux: die with the parent (a SIGKILLed ingest leaves no orphan still writing chunks)
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _decode_chunk(partial: str, i: int, start: int, root: str, rel: list[str], size: int, resize: str,
                  draft: bool) -> tuple[int, dict]:
    """Decode ``rel`` (chunk ``i``) and write the chunk; returns ``(i, its JSON)``. Runs in a worker."""
    partial_dir = Path(partial)
    path = None  # the file being decoded, named if something other than the file fails
    try:
        images, bad, grey = [], [], []
        for j, f in enumerate(rel):
            path = Path(root) / f
            try:
                img = decode_fitted(path, size, resize, draft=draft)
            except MedbenchError as e:
                reason, prefix = str(e), f"{path}: "
                bad.append([j, reason[len(prefix):] if reason.startswith(prefix) else reason])
                img = None
            images.append(img)
            grey.append(img is None or img.shape[-1] == 1)
        c = 1 if all(grey) else 3
        a = np.zeros((len(rel), size, size, c), np.uint8)
        for j, img in enumerate(images):
            if img is not None:
                a[j] = img if img.shape[-1] == c else convert_channels(img, c)
        del images
        path = None
        info = {"format": FORMAT, "start": start, "n": len(rel), "grey": grey, "bad": bad,
                "pixels": _pixels_digest(a)}
        (partial_dir / f"{_name(i)}.json").unlink(missing_ok=True)  # the JSON marks a chunk done: never stale
        with atomic_path(partial_dir / f"{_name(i)}.npy") as tmp, open(tmp, "wb") as out:
            np.save(out, a, allow_pickle=False)
        write_json(partial_dir / f"{_name(i)}.json", info)
        return i, info
    except MedbenchError:
        raise
    except Exception as e:  # noqa: BLE001 - one line, the same from a worker as in-process
        target = partial_dir / f"{_name(i)}.npy"
        code = no_room(e)
        if code is not None:
            raise no_room_error(target, code) from None
        why = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
        if path is not None:
            raise MedbenchError(f"{path}: decoding failed unexpectedly ({why}); move the file aside and run again "
                                f"(decoded files are kept)") from None
        raise MedbenchError(f"cannot write {target} ({why}); check the cache folder (MEDBENCH_CACHE) and run "
                            f"again (decoded files are kept)") from None


def _start_plan(partial: Path, plan: dict) -> None:
    """Keep the chunks of the same plan; anything else in the folder goes."""
    try:
        same = json.loads((partial / PLAN).read_text(encoding="utf-8")) == plan
    except (OSError, ValueError):
        same = False
    if not same and partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    for p in partial.glob(".*.tmp"):  # left by a killed writer (we hold the lock: nobody writes them now)
        p.unlink(missing_ok=True)
    if not same:
        write_json(partial / PLAN, plan)


def _context():
    """fork where there is one (Linux): workers start at once, without importing torch again; elsewhere the
    platform's default."""
    import multiprocessing

    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else None)


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and kill the workers (an interrupted chunk leaves only a .tmp file)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=5)


def decode_chunks(partial: str | os.PathLike, root: str | os.PathLike, rel: list[str], *, size: int, resize: str,
                  workers: int | None = None, progress: bool = False, label: str = "",
                  source: str | os.PathLike | None = None) -> Decoded:
    """Make sure every chunk of ``rel`` (paths under ``root``, in order) is decoded in ``partial``; reuse the ones
    there. Progress over the files, reused chunks counted as done."""
    from medbench.progress import progress_bar

    t0 = time.perf_counter()
    partial, root = Path(partial), Path(root)
    n = len(rel)
    chunk = chunk_size(n, size)
    files_digest = hashlib.sha256("\0".join(rel).encode()).hexdigest()
    _start_plan(partial, {"format": FORMAT, "n": n, "chunk": chunk, "size": size, "resize": resize,
                          "draft": bool(DRAFT), "files": files_digest, "root": str(root),
                          "source": str(source if source is not None else root)})
    starts = list(range(0, n, chunk))
    infos: dict[int, dict] = {}
    for i, a in enumerate(starts):
        got = _read_chunk(partial, i, a, min(chunk, n - a), size)
        if got is not None:
            infos[i] = got[0]
    reused = sum(infos[i]["n"] for i in infos)
    todo = [i for i in range(len(starts)) if i not in infos]
    workers = max(1, min(workers or default_workers(), len(todo)))

    def job(i):
        a = starts[i]
        return (str(partial), i, a, str(root), rel[a:a + chunk], size, resize, bool(DRAFT))

    pool = pending = None
    try:
        if workers > 1:
            # started before the progress bar's thread: a forked worker copies no lock that thread may hold
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=_context(), initializer=_worker_init)
            pending = {pool.submit(_decode_chunk, *job(i)) for i in todo}
        with progress_bar(f"decode {label or root.name}", total=n, enabled=progress, unit="images") as bar:
            bar.advance(reused)
            if pool is None:
                for i in todo:
                    infos[i] = _decode_chunk(*job(i))[1]
                    bar.advance(infos[i]["n"])
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    i, info = fut.result()
                    infos[i] = info
                    bar.advance(info["n"])
    except BrokenProcessPool:
        _stop(pool)
        raise MedbenchError(f"{source or root}: a decoding worker process died (killed, or out of memory); run "
                            f"again (decoded chunks are kept), or with fewer workers") from None
    except BaseException:
        if pool is not None:
            _stop(pool)
        raise
    if pool is not None:
        pool.shutdown()
    bad = {starts[i] + j: reason for i in infos for j, reason in infos[i]["bad"]}
    grey = np.array([g for i in range(len(starts)) for g in infos[i]["grey"]], dtype=bool)
    return Decoded(n=n, chunk=chunk, bad=bad, grey=grey, decoded=n - reused, reused=reused, workers=workers,
                   seconds=time.perf_counter() - t0)


def assemble(store: str | os.PathLike, partial: str | os.PathLike, dec: Decoded, *, splits: list[str],
             labels: np.ndarray, channels: int, size: int) -> dict[str, int]:
    """Write each split's images (good files only, in order, as ``channels``), labels and hashes into ``store``
    from the chunks, one chunk in memory at a time; returns the images per split."""
    from medbench.data.store import SplitWriter

    store, partial = Path(store), Path(partial)
    labels = np.asarray(labels, dtype=np.int64).reshape(dec.n, -1)
    keep = np.ones(dec.n, dtype=bool)
    keep[list(dec.bad)] = False
    split_of = np.array(splits)
    rows = {s: np.flatnonzero(keep & (split_of == s)) for s in SPLITS}
    writers = {s: SplitWriter(store, s, len(rows[s]), (channels, size, size)) for s in SPLITS}
    try:
        for i, a in enumerate(range(0, dec.n, dec.chunk)):
            k = min(dec.chunk, dec.n - a)
            got = _read_chunk(partial, i, a, k, size)
            if got is None:
                raise MedbenchError(f"{partial / _name(i)}.npy: changed or removed while the store was being "
                                    f"written; run again (it is decoded again)")
            x = got[1]
            for s in SPLITS:
                idx = rows[s][(rows[s] >= a) & (rows[s] < a + k)] - a
                if idx.size:
                    writers[s].write(_as_channels(x[idx], dec.grey[a + idx], channels), channels_last=True)
            del got, x
        for s in SPLITS:
            _close(writers[s], labels[rows[s]])
    except BaseException:
        for w in writers.values():
            w.abort()  # harmless on a closed one
        raise
    return {s: len(rows[s]) for s in SPLITS}


def _close(writer, labels: np.ndarray) -> None:
    if writer.n:
        writer.close(labels)
        return
    from medbench.data.store import ArrayWriter  # an empty split (all its files skipped): reshape(0, -1) fails

    writer.images.close()
    with ArrayWriter(writer.folder / f"{writer.split}.labels.npy", (0, labels.shape[1]), np.int64):
        pass
    with ArrayWriter(writer.folder / f"{writer.split}.hashes.npy", (0,), "S32"):
        pass


def _as_channels(x: np.ndarray, grey: np.ndarray, channels: int) -> np.ndarray:
    """Chunk rows ``[k, H, W, 1|3]`` -> ``channels``, exactly as convert_channels on each decoded image."""
    c = x.shape[-1]
    if c == channels:
        return x
    if channels == 3:
        return np.repeat(x, 3, axis=-1)
    # 3 -> 1: images that decoded grey were repeated into the chunk: take one; colour ones get the luma
    return np.stack([img[..., :1] if g else convert_channels(img, 1) for img, g in zip(x, grey)])


def ingest(store: str | os.PathLike, partial: str | os.PathLike, root: str | os.PathLike,
           order: list[tuple[str, str, object]], *, size: int, resize: str, channels: int | None,
           describe: Callable[[dict[str, list[str]], list[tuple[str, str]], int], dict],
           on_bad: Callable[[list[tuple[str, str]]], None], workers: int | None = None, progress: bool = False,
           label: str = "", source: str | os.PathLike | None = None) -> None:
    """Decode ``order`` (``(split, path under root, label)`` in split order) into the complete store ``store``.

    ``on_bad(bad)`` gets the unreadable files ``[(path, reason)]`` once all are decoded (and raises, or warns; the
    chunks stay for a rerun with ``skip_bad``).
    ``describe(files per split, bad, channels)`` returns ``finish_store``'s keywords (name, task, class_names,
    source, meta) and may raise (e.g. no training images left). ``channels`` None: 1 when every kept image is
    grey, else 3. ``meta["ingest"]`` records how the chunks were made (files decoded now, reused, workers, s).
    """
    from medbench.data.store import finish_store, remove_store

    rel = [f for _, f, _ in order]
    dec = decode_chunks(partial, root, rel, size=size, resize=resize, workers=workers, progress=progress,
                        label=label, source=source)
    bad = [(rel[i], dec.bad[i]) for i in sorted(dec.bad)]
    on_bad(bad)
    keep = np.ones(dec.n, dtype=bool)
    keep[list(dec.bad)] = False
    if channels is None:
        channels = 1 if bool(dec.grey[keep].all()) else 3
    files = {s: [order[i][1] for i in np.flatnonzero(keep) if order[i][0] == s] for s in SPLITS}
    try:
        info = describe(files, bad, channels)
    except BaseException:  # e.g. no training images left: other settings decode in another order, so drop them
        shutil.rmtree(partial, ignore_errors=True)
        raise
    labels = np.array([y if isinstance(y, (tuple, list)) else [y] for _, _, y in order], dtype=np.int64)
    labels = labels.reshape(dec.n, -1) if dec.n else np.zeros((0, 1), np.int64)
    remove_store(store)  # an unfinished earlier attempt
    try:
        assemble(store, partial, dec, splits=[s for s, _, _ in order], labels=labels, channels=channels, size=size)
        finish_store(Path(store), size=size, **{**info, "meta": {**info.get("meta", {}), "ingest": dec.stats()}})
    except OSError as e:
        code = no_room(e)
        if code is not None:
            raise no_room_error(store, code) from e
        raise MedbenchError(f"cannot write the decoded data to {store} ({e.strerror or e}); free space or set "
                            f"MEDBENCH_CACHE to a writable folder") from e
    shutil.rmtree(partial, ignore_errors=True)
