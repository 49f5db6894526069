"""stratified_split, patient-grouped splits on the chest X-ray subset, and the cross-split leakage report."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from medbench.data.folders import assign_splits, load_folder, scan_folder
from medbench.data.splits import file_hashes, leakage_report, stratified_split
from medbench.errors import MedbenchError

PERSON = r"(person\d+)_"


@pytest.fixture(scope="module")
def chest(shared_data) -> Path:
    return shared_data / "chest_xray_subset"


def test_stratified_split_proportions_and_determinism():
    labels = np.array([0] * 60 + [1] * 30 + [2] * 10)
    keep, take = stratified_split(labels, 0.2, seed=3)
    assert len(take) == 20 and len(keep) == 80
    assert np.bincount(labels[take]).tolist() == [12, 6, 2]
    assert sorted(np.concatenate([keep, take]).tolist()) == list(range(100))
    k2, t2 = stratified_split(labels[:, None], 0.2, seed=3)
    assert np.array_equal(t2, take) and np.array_equal(k2, keep)
    assert not np.array_equal(stratified_split(labels, 0.2, seed=4)[1], take)
    assert len(stratified_split(labels, 0.0, seed=0)[1]) == 0
    assert len(stratified_split(np.array([0, 1, 1]), 0.01, seed=0)[1]) == 1  # at least one drawn
    with pytest.raises(MedbenchError, match="fraction"):
        stratified_split(labels, 1.0, seed=0)


def test_grouped_split_keeps_groups_together():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), rng.integers(1, 5, 40))
    labels = (groups % 3 == 0).astype(int)  # one label per patient
    keep, take = stratified_split(labels, 0.25, seed=1, groups=groups)
    assert not set(groups[keep]) & set(groups[take])
    assert abs(len(take) - 0.25 * len(labels)) <= 4
    assert set(labels[take]) == {0, 1}


def test_group_regex_on_chest_subset_no_patient_in_two_splits(chest):
    ds = load_folder(chest, size=16, val_from_train=0.2, group_regex=PERSON, seed=7)
    # val replaced by a draw from train (+ the 8 original val images), test folder kept
    assert {s: len(v) for s, v in ds.splits.items()}["test"] == 80
    assert len(ds["train"]) + len(ds["val"]) == 88 and 12 <= len(ds["val"]) <= 24
    assert set(ds["val"].labels[:, 0].tolist()) == {0, 1}
    where: dict[str, set] = {}
    for split, files in ds.meta["files"].items():
        for f, g in zip(files, ds.meta["groups"][split]):
            m = re.search(PERSON, f)
            assert g == (m.group(1) if m else None)
            if m:
                where.setdefault(m.group(1), set()).add(split)
    assert len(where) > 20 and all(len(s) == 1 for s in where.values())
    # the same draw without reading any pixels, and deterministic for the seed
    again = assign_splits(scan_folder(chest), val_from_train=0.2, group_regex=PERSON, seed=7)
    assert [f for f, _ in again["val"]] == ds.meta["files"]["val"]


def test_leakage_report_finds_duplicate_across_splits(chest, tmp_path):
    root = tmp_path / "dup"
    shutil.copytree(chest, root)
    src = sorted((root / "train" / "PNEUMONIA").iterdir())[0]
    shutil.copy2(src, root / "test" / "PNEUMONIA" / "copy_of_train_image.jpeg")
    ds = load_folder(root, size=32)
    report = leakage_report(ds.splits, files=ds.meta["files"])
    assert len(report) == 1
    dup = report[0]
    assert dup["splits"] == ["test", "train"]
    assert sorted(dup["files"]) == ["test/test/PNEUMONIA/copy_of_train_image.jpeg",
                                    f"train/{src.relative_to(root).as_posix()}"]
    # the same from file bytes, without decoding
    hashes = {s: file_hashes([root / f for f in fs]) for s, fs in ds.meta["files"].items()}
    assert [d["splits"] for d in leakage_report(hashes, files=ds.meta["files"])] == [["test", "train"]]
    # the original folder has no byte-identical files across splits
    listing = scan_folder(chest)
    assert leakage_report({s: file_hashes([chest / f for f in fs]) for s, fs in listing.files.items()}) == []
