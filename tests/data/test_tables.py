"""load_csv on CSV files written here that point at the real chest X-ray subset."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from medbench.data.decode import decode_fitted
from medbench.data.tables import load_csv
from medbench.errors import MedbenchError


@pytest.fixture(scope="module")
def chest(shared_data) -> Path:
    return shared_data / "chest_xray_subset"


def _files(chest: Path, per_class: int = 4) -> list[tuple[str, str, str]]:
    """(relative path, split, class) for a few images of each split and class."""
    out = []
    for split in ("train", "val", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            for f in sorted((chest / split / cls).iterdir())[:per_class]:
                out.append((f.relative_to(chest).as_posix(), split, cls))
    return out


def _write(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_single_label_with_split_column(chest, tmp_path):
    files = _files(chest)
    table = _write(tmp_path / "labels.csv", ["path", "finding", "split"], [[p, c, s] for p, s, c in files])
    ds = load_csv(table, image_col="path", label_cols=["finding"], root=chest, split_col="split", size=32)
    assert ds.task == "binary" and ds.class_names == ["NORMAL", "PNEUMONIA"] and ds.name == "csv:labels"
    assert {s: len(v) for s, v in ds.splits.items()} == {"train": 8, "val": 8, "test": 8}
    assert ds.in_chans == 1 and ds["train"].labels.shape == (8, 1)
    for s, split in ds.splits.items():
        for i, rel in enumerate(ds.meta["files"][s]):
            assert rel.startswith(s + "/")
            assert ds.class_names[int(split.labels[i, 0])] == rel.split("/")[1]
    rel = ds.meta["files"]["val"][3]
    assert np.array_equal(ds["val"].images[3].permute(1, 2, 0).numpy(), decode_fitted(chest / rel, 32))


def test_integer_labels_no_split_column_default_root(chest, tmp_path):
    # CSV in the data folder's parent: paths relative to the CSV's folder
    files = _files(chest, per_class=5)
    table = _write(tmp_path / "t.csv", ["img", "y"],
                   [[str(chest / p), 1 if c == "PNEUMONIA" else 0] for p, _, c in files])
    assert len(files) == 28  # val holds 4 per class
    with pytest.raises(MedbenchError, match=r"t.csv: 28 image path\(s\) point outside .*line 2 "):
        load_csv(table, image_col="img", label_cols=["y"], size=16)
    ds = load_csv(table, image_col="img", label_cols=["y"], size=16, allow_outside_root=True, seed=1)
    assert ds.class_names == ["0", "1"] and ds.task == "binary"
    assert sum(len(s) for s in ds.splits.values()) == 28 and len(ds["val"]) >= 1 and len(ds["test"]) >= 1
    escape = _write(tmp_path / "sub.csv", ["img", "y"], [["../../etc/passwd", 0], ["a.png", 1]])
    with pytest.raises(MedbenchError, match=r"sub.csv: 1 image path\(s\) point outside .*line 2 \(\.\./\.\./etc"):
        load_csv(escape, image_col="img", label_cols=["y"], size=16)


def test_multilabel_uncertainty_policies(chest, tmp_path):
    files = _files(chest, per_class=2)  # 12 images
    values = [["1", "0", "-1"], ["0", "", "1"], ["-1", "1", ""], ["1.0", "-1.0", "0"]]
    rows = [[p, *values[i % 4], s] for i, (p, s, _) in enumerate(files)]
    table = _write(tmp_path / "chex.csv",
                   ["Path", "A", "B", "C", "split"], rows)
    want = {"u-ones": [[1, 0, 1], [0, 0, 1], [1, 1, 0], [1, 1, 0]],
            "u-zeros": [[1, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0]],
            "u-ignore": [[1, 0, -1], [0, 0, 1], [-1, 1, 0], [1, -1, 0]]}
    for policy, rows_want in want.items():
        ds = load_csv(table, image_col="Path", label_cols=["A", "B", "C"], root=chest, split_col="split",
                      uncertain=policy, size=16)
        assert ds.task == "multilabel" and ds.class_names == ["A", "B", "C"]
        assert ds["train"].labels.dtype == torch.int64 and ds["train"].labels.shape == (4, 3)
        got = torch.cat([ds[s].labels for s in ("train", "val", "test")]).tolist()
        assert got == [rows_want[i % 4] for i in range(12)], policy
        assert ds.meta["label_mask_value"] == (-1 if policy == "u-ignore" else None)


def test_csv_errors_name_the_problem(chest, tmp_path):
    p = _files(chest, per_class=1)[0][0]
    t = _write(tmp_path / "a.csv", ["path", "y"], [[p, "x"], [p, ""]])
    with pytest.raises(MedbenchError, match=r"column\(s\) 'label' not found; the header has 'path', 'y'"):
        load_csv(t, image_col="path", label_cols=["label"], root=chest, size=8)
    with pytest.raises(MedbenchError, match=r"line\(s\) 3 have no value in label column 'y'"):
        load_csv(t, image_col="path", label_cols=["y"], root=chest, size=8)
    t = _write(tmp_path / "b.csv", ["path", "A", "B"], [[p, "1", "yes"]])
    with pytest.raises(MedbenchError, match=r"line 2: value 'yes' in label column 'B'"):
        load_csv(t, image_col="path", label_cols=["A", "B"], root=chest, size=8)
    t = _write(tmp_path / "c.csv", ["path", "y", "s"], [[p, "a", "train"], [p, "b", "holdout"]])
    with pytest.raises(MedbenchError, match=r"line 3: split 'holdout'"):
        load_csv(t, image_col="path", label_cols=["y"], root=chest, split_col="s", size=8)
    q = [f for f, _, _ in _files(chest, per_class=2)][:5]
    t = _write(tmp_path / "d.csv", ["path", "y"], [[q[0], "a"], ["missing.png", "b"], [q[1], "a"], [q[2], "b"],
                                                  [q[3], "a"], [q[4], "b"]])
    with pytest.raises(MedbenchError, match=r"1 image\(s\) cannot be decoded: missing.png"):
        load_csv(t, image_col="path", label_cols=["y"], root=chest, size=8, seed=0)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        ds = load_csv(t, image_col="path", label_cols=["y"], root=chest, size=8, skip_bad=True)
    assert [s["path"] for s in ds.meta["skipped"]] == ["missing.png"]
    with pytest.raises(MedbenchError, match="uncertain must be one of"):
        load_csv(t, image_col="path", label_cols=["y"], root=chest, size=8, uncertain="u-maybe")


def test_group_column_keeps_patients_together(chest, tmp_path):
    import re

    files = [(p, c) for p, s, c in _files(chest, per_class=50) if s == "train"]  # all 80 train images
    rows = []
    for p, c in files:
        m = re.search(r"(person\d+)_", p)
        rows.append([p, c, m.group(1) if m else ""])
    table = _write(tmp_path / "g.csv", ["path", "y", "patient"], rows)
    ds = load_csv(table, image_col="path", label_cols=["y"], root=chest, group_col="patient", size=8,
                  val_from_train=0.2, test_from_train=0.2, seed=2)
    patient = {p: g for p, _, g in rows}
    seen: dict[str, set] = {}
    for s, fs in ds.meta["files"].items():
        for f in fs:
            if patient[f]:
                seen.setdefault(patient[f], set()).add(s)
    assert all(len(v) == 1 for v in seen.values()) and len(seen) > 20
    assert sum(len(v) for v in ds.splits.values()) == 80 and min(len(v) for v in ds.splits.values()) >= 10
