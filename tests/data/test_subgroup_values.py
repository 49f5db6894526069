"""Subgroup membership of each image: CSV columns joined by path, a regex on the path; the errors on bad input."""
import shutil

import numpy as np
import pytest

from medbench.data import load_dataset
from medbench.data.subgroups import NONE, subgroup_values
from medbench.errors import MedbenchError
from subgroup_data import read_column, write_breast_csv

OPTIONS = dict(image_col="path", label_cols=["label"], split_col="split")


@pytest.fixture(scope="module")
def breast_csv(tmp_path_factory, medmnist_dir):
    return write_breast_csv(tmp_path_factory.mktemp("subgroups") / "data", medmnist_dir, per_split=40)


@pytest.fixture(scope="module")
def ds(breast_csv):
    return load_dataset(f"csv:{breast_csv}", 28, progress=False, **OPTIONS)


def test_columns_follow_the_csv_for_every_split_in_image_order(ds, breast_csv):
    sex, site = read_column(breast_csv, "sex"), read_column(breast_csv, "site")
    for split in ("train", "val", "test"):
        got = subgroup_values(ds, split, ["sex", "site"])
        files = ds.meta["files"][split]
        assert len(files) == len(ds[split]) == 40
        assert got["sex"].tolist() == [sex[f] for f in files]
        assert got["site"].tolist() == [site[f] or NONE for f in files]  # a blank cell is "(none)"
    assert NONE in subgroup_values(ds, "test", ["site"])["site"]


def test_regex_on_the_path_and_unmatched_paths(ds):
    got = subgroup_values(ds, "test", regex=r"part=_00(\d)\d\.png$")  # images 0000-0039: parts 0..3
    assert got["part"].tolist() == [str(i // 10) for i in range(40)]
    got = subgroup_values(ds, "test", regex=r"early=_000(\d)\.png$")  # only the first ten match
    assert got["early"].tolist() == [str(i) for i in range(10)] + [NONE] * 30
    both = subgroup_values(ds, "test", ["sex"], r"part=_00(\d)\d\.png$")
    assert set(both) == {"sex", "part"}
    assert subgroup_values(ds, "test") == {}


@pytest.mark.parametrize("cols, regex, fragment", [
    (["sexx"], None, "column(s) 'sexx' not found; the header has 'path', 'label', 'split', 'sex', 'site'"),
    (None, r"x=^(nothing)/", "matches none of the 40 test paths"),
    (None, r"x=[", "not a valid regex"),
    (None, r"x=abc", "with a capture group"),
    (["sex"], r"sex=(\w+)", "rename one"),
])
def test_bad_subgroup_settings_are_one_line(ds, breast_csv, cols, regex, fragment):
    with pytest.raises(MedbenchError) as e:
        subgroup_values(ds, "test", cols, regex)
    assert fragment in str(e.value) and "\n" not in str(e.value)
    if cols == ["sexx"]:
        assert str(breast_csv.resolve()) in str(e.value)


def test_one_image_with_two_values_names_both_lines(ds, breast_csv, tmp_path):
    lines = breast_csv.read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("img/test_0005.png"))
    dup = lines[first].rsplit(",", 2)
    flipped = "M" if dup[1] == "F" else "F"
    lines.append(f"{dup[0]},{flipped},{dup[2]}")  # the same image again, the other sex
    breast_csv.write_text("\n".join(lines) + "\n")
    try:
        with pytest.raises(MedbenchError, match=rf"'img/test_0005.png' has 'sex' = '{dup[1]}' on line {first + 1} "
                                                rf"but '{flipped}' on line {len(lines)}"):
            subgroup_values(ds, "test", ["sex"])
        assert subgroup_values(ds, "test", ["site"])["site"].shape == (40,)  # other columns still agree
    finally:
        breast_csv.write_text("\n".join(lines[:-1]) + "\n")


def test_folders_take_a_regex_but_not_columns_and_medmnist_neither(shared_data, tmp_path):
    chest = load_dataset(f"folder:{shared_data / 'chest_xray_subset'}", 28, progress=False)
    got = subgroup_values(chest, "test", regex=r"kind=(bacteria|virus)")
    files = chest.meta["files"]["test"]
    expected = ["bacteria" if "bacteria" in f else "virus" if "virus" in f else NONE for f in files]
    assert got["kind"].tolist() == expected and expected.count(NONE) == 30  # the 30 NORMAL images
    with pytest.raises(MedbenchError, match="is not a csv: dataset; for a folder use --subgroup-regex"):
        subgroup_values(chest, "test", ["sex"])
    breast = load_dataset("breastmnist", 28, progress=False)
    with pytest.raises(MedbenchError, match="subgroups need a folder: or csv: dataset"):
        subgroup_values(breast, "test", regex="x=(1)")


def test_a_csv_changed_after_decoding_is_named(breast_csv, tmp_path):
    data = tmp_path / "copy"
    shutil.copytree(breast_csv.parent, data)
    csv_path = data / "labels.csv"
    ds = load_dataset(f"csv:{csv_path}", 28, progress=False, **OPTIONS)
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join(line for line in lines if not line.startswith("img/test_0007.png")) + "\n")
    with pytest.raises(MedbenchError, match=r"1 image\(s\) of the run are not listed in it \(img/test_0007.png\)"):
        subgroup_values(ds, "test", ["sex"])
    assert np.array_equal(subgroup_values(ds, "test", regex=r"i=_(\d+)\.png")["i"],
                          np.array([f"{i:04d}" for i in range(40)]))
