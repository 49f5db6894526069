"""Stratified (optionally patient-grouped) splits, and a report of images shared between splits.

``stratified_split`` draws a fraction of the samples, the same share from every class, deterministically for a
seed. With ``groups`` (e.g. patient ids) every group lands wholly on one side; groups are stratified by their
majority label (ties: the smallest label) and picked so that the number of *samples* drawn per class is as close
to the target as whole groups allow.

``leakage_report`` finds exact duplicates across splits. It hashes the **decoded, resized uint8 arrays**
(BLAKE2b, 16-byte digests) when given :class:`Split` objects — so it catches copies of the same file under
other names, and re-encodings that decode to the very same pixels, but not near-duplicates — or uses the hashes
you pass (e.g. :func:`file_hashes` of the file bytes).
"""
from __future__ import annotations

import hashlib
import os
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from medbench.errors import MedbenchError


def _strata(labels) -> np.ndarray:
    """One stratum id per sample: the class for [N] / [N, 1] labels, the label row for multi-label [N, L]."""
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 1:
        return y.astype(np.int64)
    _, inv = np.unique(y, axis=0, return_inverse=True)
    return inv.reshape(-1).astype(np.int64)


def _allocate(sizes: Sequence[int], total: int, rng: np.random.Generator) -> np.ndarray:
    """Split ``total`` over strata proportionally to ``sizes`` (largest remainder, random tie-break)."""
    sizes = np.asarray(sizes, dtype=np.float64)
    exact = sizes * total / sizes.sum()
    base = np.floor(exact).astype(np.int64)
    rest = total - int(base.sum())
    order = np.lexsort((rng.random(len(sizes)), -(exact - base)))
    base[order[:rest]] += 1
    return np.minimum(base, sizes.astype(np.int64))


def group_strata(strata: np.ndarray, groups: Sequence) -> tuple[dict, list, np.ndarray]:
    """Each group's sample indices, the groups in first-seen order, and each group's stratum: the most frequent
    one among its samples (ties: the smallest), so a group is kept whole and counted once for its class."""
    groups = list(groups)
    if len(groups) != len(strata):
        raise MedbenchError(f"groups has {len(groups)} entries for {len(strata)} labels")
    members: dict = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    keys = list(members)
    g_label = np.array([min(Counter(strata[members[g]].tolist()).most_common(), key=lambda kv: (-kv[1], kv[0]))[0]
                        for g in keys], dtype=np.int64)
    return members, keys, g_label


def stratified_split(labels, fraction: float, seed: int = 0, groups: Sequence | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(keep, take)``: ``take`` holds about ``fraction`` of the samples, stratified by label.

    ``labels``: ``[N]``, ``[N, 1]`` class ids or ``[N, L]`` multi-label rows (stratified by the whole row).
    ``groups``: one hashable id per sample (None = every sample is its own group); a group is never split.
    At least one sample is drawn when ``fraction > 0``, and at least one is kept. Both arrays are sorted.
    """
    strata = _strata(labels)
    n = len(strata)
    if not 0 <= fraction < 1:
        raise MedbenchError(f"a split fraction must be in [0, 1), not {fraction}")
    if fraction == 0 or n == 0:
        return np.arange(n), np.zeros(0, dtype=np.int64)
    if n < 2:
        raise MedbenchError(f"cannot split {n} sample(s) into two parts; add images or set the fraction to 0")
    rng = np.random.default_rng(seed)
    if groups is None:
        groups = np.arange(n)
    members, keys, g_label = group_strata(strata, groups)
    g_size = np.array([len(members[g]) for g in keys])
    if len(keys) < 2:
        raise MedbenchError("cannot split: all samples are in one group; check the group regex")
    total = min(max(1, int(round(fraction * n))), n - 1)
    classes = np.unique(g_label)
    per_class = _allocate([g_size[g_label == c].sum() for c in classes], total, rng)
    take_groups: list[int] = []
    for c, target in zip(classes, per_class):
        idx = np.flatnonzero(g_label == c)
        idx = idx[rng.permutation(len(idx))]
        got = 0
        for gi in idx:  # greedy: take a group when it brings the count closer to the target
            if got >= target:
                break
            if abs(got + g_size[gi] - target) < abs(got - target) or got == 0:
                take_groups.append(int(gi))
                got += int(g_size[gi])
    if sum(g_size[take_groups]) >= n:  # never take everything
        take_groups = take_groups[:-1]
    take = np.sort(np.array([i for gi in take_groups for i in members[keys[gi]]], dtype=np.int64))
    keep = np.setdiff1d(np.arange(n), take)
    return keep, take


def array_hash(a) -> str:
    """BLAKE2b-128 of an array's bytes (shape and dtype included)."""
    a = np.ascontiguousarray(np.asarray(a))
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def file_hashes(paths: Sequence[str | os.PathLike]) -> list[str]:
    """BLAKE2b-128 of each file's bytes (for :func:`leakage_report` on byte-identical files)."""
    out = []
    for p in paths:
        h = hashlib.blake2b(digest_size=16)
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        out.append(h.hexdigest())
    return out


def leakage_report(splits: Mapping, files: Mapping[str, Sequence[str]] | None = None) -> list[dict]:
    """Exact duplicates found in more than one split.

    ``splits``: ``{split: Split}`` (each image's decoded uint8 array is hashed) or ``{split: [hash, ...]}``.
    ``files``: optional ``{split: [name, ...]}`` in the same order, to name the duplicates (default: indices).
    Returns ``[{"hash": h, "splits": [split, ...], "files": ["split/name", ...]}, ...]``, sorted by hash.
    """
    seen: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for split, content in splits.items():
        if hasattr(content, "images") and getattr(content, "hashes", None) is not None:
            hashes = list(content.hashes)  # computed when the store was written
        elif hasattr(content, "images"):
            images = content.images
            hashes = [array_hash(images[i].numpy() if hasattr(images[i], "numpy") else images[i])
                      for i in range(len(images))]
        else:
            hashes = list(content)
        names = list(files[split]) if files is not None and split in files else [str(i) for i in range(len(hashes))]
        if len(names) != len(hashes):
            raise MedbenchError(f"leakage_report: split {split!r} has {len(hashes)} images but {len(names)} names")
        for h, name in zip(hashes, names):
            seen[h].append((split, name))
    out = []
    for h in sorted(seen):
        where = seen[h]
        split_names = sorted({s for s, _ in where})
        if len(split_names) > 1:
            out.append({"hash": h, "splits": split_names, "files": [f"{s}/{name}" for s, name in where]})
    return out
