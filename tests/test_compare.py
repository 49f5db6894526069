"""`medbench compare` pairs runs by the images they scored (prediction items), not by their settings: two real
folder runs with different models, sizes and validation splits over the same 80 test X-rays are compared; runs on
other images, other labels or other data are refused in one line; subgroup metrics are shown side by side."""
import csv
import json
import shutil

import numpy as np
import pytest

from medbench.cli import main
from medbench.compare import compare_runs, subgroups_side_by_side
from medbench.data.subgroups import NONE
from medbench.errors import MedbenchError
from medbench.metrics import compare_predictions
from medbench.metrics.subgroups import subgroup_metrics
from medbench.rundir import read_prediction_table, write_predictions

KIND = "kind=(bacteria|virus)"


@pytest.fixture(scope="module")
def cxr(tmp_path_factory, shared_data):
    """A copy of the chest X-ray folder with a CSV beside it listing 60 of the 80 test images."""
    data = tmp_path_factory.mktemp("compare") / "cxr"
    shutil.copytree(shared_data / "chest_xray_subset", data)
    rows = [("path", "label", "split")]
    for split in ("train", "val", "test"):
        files = sorted((data / split).rglob("*.jpeg"))[:60 if split == "test" else None]
        rows += [(f.relative_to(data).as_posix(), f.parent.name, split) for f in files]
    with open(data / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return data


def _train(out, dataset, *extra):
    assert main(["train", "--dataset", dataset, "--epochs", "1", "--out", str(out), "--quiet", "--no-report",
                 *extra]) == 0
    return out


@pytest.fixture(scope="module")
def runs(cxr, tmp_path_factory):
    base = tmp_path_factory.mktemp("compare-runs")
    a = _train(base / "a", f"folder:{cxr}", "--model", "cnn5", "--size", "28", "--subgroup-regex", KIND)
    b = _train(base / "b", f"folder:{cxr}", "--model", "cnn2", "--size", "32", "--val-from-train", "0.2",
               "--seed", "1", "--subgroup-regex", KIND)
    return a, b


def _copy_with_table(run, to, edit):
    """A copy of ``run`` whose test predictions are rewritten by ``edit(rows) -> rows`` (header kept)."""
    shutil.copytree(run, to)
    path = to / "predictions" / "test.csv"
    with open(path, newline="") as f:
        header, *rows = list(csv.reader(f))
    with open(path, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([header, *edit(rows)])
    return to


def test_two_folder_runs_over_the_same_test_files_are_compared(runs, capsys):
    a, b = runs
    ta, tb = (read_prediction_table(r / "predictions" / "test.csv") for r in runs)
    assert ta.items == tb.items and len(ta.items) == 80 and ta.items[0].startswith("test/")
    assert main(["compare", str(a), str(b), "--bootstrap", "300", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["matched_by"] == "items" and res["n"] == 80 and res["task"] == "binary"
    ma, mb = (json.loads((r / "metrics.json").read_text())["test"] for r in runs)
    assert res["auc"]["diff"] == pytest.approx(ma["auc"] - mb["auc"], abs=1e-12)
    lo, hi = res["auc"]["diff_ci"]
    assert 0 <= res["auc"]["p_value"] <= 1 and lo <= res["auc"]["diff"] <= hi
    assert 0 <= res["delong"]["p_value"] <= 1
    same = compare_predictions(ta.labels, ta.scores, tb.scores, "binary", replicates=300, seed=0)
    assert res["auc"]["p_value"] == same["auc"]["p_value"] and res["acc"]["diff_ci"] == same["acc"]["diff_ci"]


def test_rows_in_another_order_are_paired_by_item(runs, tmp_path):
    a, b = runs
    perm = np.random.default_rng(0).permutation(80)
    shuffled = _copy_with_table(b, tmp_path / "b-shuffled",
                                lambda rows: [[str(i), *rows[j][1:]] for i, j in enumerate(perm)])
    assert read_prediction_table(shuffled / "predictions" / "test.csv").items != \
        read_prediction_table(b / "predictions" / "test.csv").items
    r1, r2 = (compare_runs(a, other, replicates=200) for other in (b, shuffled))
    assert r1["auc"] == r2["auc"] and r1["acc"] == r2["acc"] and r1["delong"] == r2["delong"]


def test_runs_on_other_images_or_labels_are_refused_in_one_line(runs, cxr, tmp_path, capsys):
    a, b = runs
    c = _train(tmp_path / "c", f"csv:{cxr / 'labels.csv'}", "--image-col", "path", "--label-cols", "label",
               "--split-col", "split", "--model", "cnn2", "--size", "28")
    assert len(read_prediction_table(c / "predictions" / "test.csv").items) == 60
    capsys.readouterr()  # training's own messages
    assert main(["compare", str(a), str(c)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "scores 80 images" in err[0] and "60 (first only in A: 'test/" in err[0], err
    first = read_prediction_table(b / "predictions" / "test.csv").items[0]
    flipped = _copy_with_table(b, tmp_path / "b-flipped", lambda rows: [
        [r[0], r[1], "PNEUMONIA" if r[2] == "NORMAL" else "NORMAL", *r[3:]] if i == 0 else r
        for i, r in enumerate(rows)])
    with pytest.raises(MedbenchError, match=rf"label 1 image\(s\) differently \(first '{first}': "):
        compare_runs(a, flipped)
    other_root = shutil.copytree(a, tmp_path / "a-elsewhere")
    (other_root / "config.yaml").write_text((a / "config.yaml").read_text().replace(str(cxr), str(tmp_path / "x")))
    with pytest.raises(MedbenchError, match="a paired comparison needs the same test images"):
        compare_runs(a, other_root)


def test_old_predictions_without_items_fall_back_to_the_settings_rule(runs, tmp_path):
    a, b = runs
    old = shutil.copytree(b, tmp_path / "b-old")
    write_predictions(old / "predictions" / "test.csv", read_prediction_table(b / "predictions" / "test.csv").scores)
    assert read_prediction_table(old / "predictions" / "test.csv").items is None
    with pytest.raises(MedbenchError, match="at 28 px, .* at 32 px: a paired comparison needs the same test images"):
        compare_runs(a, old)
    old_a = shutil.copytree(a, tmp_path / "a-old")
    write_predictions(old_a / "predictions" / "test.csv", read_prediction_table(a / "predictions" / "test.csv").scores)
    assert compare_runs(a, old_a, replicates=50)["matched_by"] == "settings"


def test_subgroup_metrics_side_by_side_from_real_tables(runs):
    tables = [read_prediction_table(r / "predictions" / "test.csv") for r in runs]
    kind = np.array(["bacteria" if "bacteria" in i else "virus" if "virus" in i else NONE for i in tables[0].items])
    recs = [{"test": {"subgroups": subgroup_metrics(t.labels, t.scores, "binary", {"kind": kind}, bootstrap=100)}}
            for t in tables]
    sub = subgroups_side_by_side(*recs)
    assert list(sub["kind"]["groups"]) == ["bacteria", "virus", NONE]
    for g, row in sub["kind"]["groups"].items():
        ga, gb = (r["test"]["subgroups"]["columns"]["kind"]["groups"][g] for r in recs)
        assert row["n_a"] == row["n_b"] == (kind == g).sum()
        assert row["acc"]["a"] == ga["acc"] and row["acc"]["b"] == gb["acc"]
        assert row["acc"]["diff"] == pytest.approx(ga["acc"] - gb["acc"])
    assert sub["kind"]["groups"]["virus"]["auc"]["diff"] is None  # one class (PNEUMONIA) only: undefined
    assert subgroups_side_by_side(recs[0], {"test": {"auc": 0.5}}) == {}


def test_compare_shows_recorded_subgroups(runs, capsys):
    """Needs the lead's wiring (train --subgroup-regex records metrics.json["test"]["subgroups"])."""
    a, b = runs
    assert main(["compare", str(a), str(b), "--bootstrap", "100"]) == 0
    out = capsys.readouterr().out
    assert "subgroups by kind (A | B | A - B):" in out and "bacteria" in out and "largest gap" in out
    res = compare_runs(a, b, replicates=100)
    ma = json.loads((a / "metrics.json").read_text())["test"]["subgroups"]["columns"]["kind"]["groups"]
    assert res["subgroups"]["kind"]["groups"]["bacteria"]["auc"]["a"] == ma["bacteria"]["auc"]
