"""The run directory's one predictions reader and writer, and its data spec: exact round trips, index order,
the headered table (items, true and decided labels) and the older header-less files, the MedMNIST export's name,
and one clear error for every damaged file."""
from __future__ import annotations

import re

import numpy as np
import pytest

from medbench.errors import MedbenchError
from medbench.rundir import (
    DataSpec,
    medmnist_file_name,
    predictions_path,
    read_data_spec,
    read_metrics,
    read_prediction_table,
    read_predictions,
    safe_run_name,
    write_data_spec,
    write_medmnist_export,
    write_prediction_table,
    write_predictions,
)

NAMES = ["malignant", "normal, benign"]


def _table(tmp_path, n=50, items=None):
    rng = np.random.default_rng(0)
    scores = rng.dirichlet([1, 1], size=n)
    labels = rng.integers(0, 2, size=(n, 1))
    decided = (scores[:, 1] > 0.5) * 1
    items = items or [f"test/{NAMES[y]}/img {i}.png" for i, y in enumerate(labels[:, 0])]
    path = predictions_path(tmp_path, "test")
    write_prediction_table(path, items, labels, decided, scores, NAMES, multilabel=False)
    return path, items, labels, decided, scores


def test_prediction_table_round_trips_exactly_with_items_and_labels(tmp_path):
    items = ['a,b/"quoted".png', "x\u00e9.png"] + [f"f{i}.png" for i in range(48)]
    path, items, labels, decided, scores = _table(tmp_path, items=items)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == 'index,item,true,decided,p:malignant,"p:normal, benign"'
    assert lines[1].startswith('0,"a,b/""quoted"".png",')  # the csv module quotes what needs quoting
    t = read_prediction_table(path)
    assert t.items == items and t.class_names == NAMES and t.index.tolist() == list(range(50))
    assert np.array_equal(t.labels, labels) and np.array_equal(t.decided, decided)
    assert np.array_equal(t.scores, scores) and np.array_equal(read_predictions(path), scores)  # %.17g: exact
    assert t.labels.dtype == np.int64 and t.scores.dtype == np.float64 and not t.multilabel


def test_multilabel_table_keeps_masked_labels(tmp_path):
    rng = np.random.default_rng(1)
    scores = rng.random((6, 3))
    labels = rng.integers(0, 2, size=(6, 3))
    labels[0, 2] = -1
    path = tmp_path / "predictions" / "val.csv"
    write_prediction_table(path, [str(i) for i in range(6)], labels, (scores > 0.5) * 1, scores, ["a", "b", "c"],
                           multilabel=True)
    assert path.read_text().splitlines()[0] == ("index,item,true:a,true:b,true:c,decided:a,decided:b,decided:c,"
                                                "p:a,p:b,p:c")
    t = read_prediction_table(path)
    assert t.multilabel and t.labels[0, 2] == -1 and np.array_equal(t.labels, labels)
    assert np.array_equal(t.decided, (scores > 0.5) * 1) and np.array_equal(t.scores, scores)


def test_rows_of_the_table_are_returned_in_index_order(tmp_path):
    path, items, labels, decided, scores = _table(tmp_path, n=3)
    head, *rows = path.read_text().splitlines()
    path.write_text("\n".join([head, rows[2], rows[0], rows[1]]) + "\n")
    t = read_prediction_table(path)
    assert t.items == items and np.array_equal(t.scores, scores)


def test_an_old_headerless_file_still_loads(tmp_path):
    path = tmp_path / "predictions" / "test.csv"
    path.parent.mkdir()
    path.write_text("1,0.25,0.75\n0,0.5,0.5\n")
    t = read_prediction_table(path)
    assert t.scores.tolist() == [[0.5, 0.5], [0.25, 0.75]] and t.items is None and t.labels is None


@pytest.mark.parametrize("edit, why", [
    (lambda lines: [lines[0].replace("decided", "chosen")] + lines[1:], "unexpected header"),
    (lambda lines: lines[:1] + [lines[1] + ",0.5"] + lines[2:], "line 2 has 7 cells, the header 6"),
    (lambda lines: lines[:1] + [re.sub(r'^(0,a.png,)("[^"]*"|[^,]*)', r"\1benign", lines[1])] + lines[2:],
     "not a number or a class"),
    (lambda lines: lines[:2] + [lines[2].replace("1,", "0,", 1)] + lines[3:], "indices are not 0..2"),
    (lambda lines: lines[:1] + [lines[1].rsplit(",", 1)[0] + ",nan"] + lines[2:], "finite scores"),
    (lambda lines: lines[:1] + [lines[1].rsplit(",", 1)[0] + ",x"] + lines[2:], "not a number"),
])
def test_a_damaged_table_is_one_clear_error(tmp_path, edit, why):
    run = tmp_path / "run"
    path = _table(run, n=3, items=["a.png", "b.png", "c.png"])[0]
    path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")
    with pytest.raises(MedbenchError, match=why) as e:
        read_prediction_table(path)
    assert str(path) in str(e.value) and f"medbench evaluate {run}" in str(e.value)


def test_the_fix_of_an_evaluation_names_its_run(tmp_path):
    path = tmp_path / "run" / "evaluations" / "tta" / "predictions" / "test.csv"
    with pytest.raises(MedbenchError, match=f"not found: run `medbench evaluate {tmp_path / 'run'}`"):
        read_prediction_table(path)


def test_medmnist_export_name_and_stale_files(tmp_path):
    assert safe_run_name("my_run.v2@x") == "my-run-v2-x" and safe_run_name("__") == "run"
    assert medmnist_file_name("breastmnist", 28, "test", 0.84149, 0.8, "r_1") == \
        "breastmnist_test_[AUC]0.841_[ACC]0.800@r-1.csv"
    assert medmnist_file_name("breastmnist", 64, "val", 0.5, 0.5, "r").startswith("breastmnist_64_val_[AUC]0.500")
    scores = np.random.default_rng(0).dirichlet([1, 1], size=4)
    first = write_medmnist_export(tmp_path, "breastmnist", 28, "test", scores, 0.9, 0.8, "run")
    other = write_medmnist_export(tmp_path, "breastmnist", 28, "val", scores, 0.9, 0.8, "run")
    second = write_medmnist_export(tmp_path, "breastmnist", 28, "test", scores, 0.7, 0.6, "run")
    assert not first.exists() and second.exists() and other.exists()  # the test file was replaced, val kept
    assert second.parent == tmp_path / "medmnist" and np.array_equal(read_predictions(second), scores)
    assert second.read_text().splitlines()[0].startswith("0,")  # no header: what medmnist's parser reads


def test_predictions_round_trip_exactly(tmp_path):
    scores = np.random.default_rng(0).dirichlet([1, 1, 1], size=50)
    path = predictions_path(tmp_path, "test")
    write_predictions(path, scores)
    assert path == tmp_path / "predictions" / "test.csv"
    assert np.array_equal(read_predictions(path), scores)  # %.17g: every float64 bit kept
    first = path.read_text().splitlines()[0].split(",")
    assert first[0] == "0" and len(first) == 4  # MedMNIST evaluator layout: index, then one score per class


def test_rows_are_returned_in_index_order(tmp_path):
    path = tmp_path / "predictions" / "val.csv"
    path.parent.mkdir()
    path.write_text("2,0.2,0.8\n0,0.9,0.1\n1,0.5,0.5\n")
    assert read_predictions(path).tolist() == [[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]]


@pytest.mark.parametrize("text, why", [
    ("0,0.1,0.9\n0,0.2,0.8\n", "indices are not 0..1"),
    ("0,0.1,0.9\n2,0.2,0.8\n", "indices are not 0..1"),
    ("0,0.1\n1,0.2,0.8\n", "damaged predictions"),
    ("0,nan,0.9\n", "finite scores"),
    ("index,a,b\n0,0.1,0.9\n", "damaged predictions"),
])
def test_damaged_predictions_are_one_clear_error(tmp_path, text, why):
    path = tmp_path / "run" / "predictions" / "test.csv"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    with pytest.raises(MedbenchError, match=why) as e:
        read_predictions(path)
    assert str(path) in str(e.value) and "medbench evaluate" in str(e.value)


def test_missing_predictions_name_the_fix(tmp_path):
    with pytest.raises(MedbenchError, match="not found: run `medbench evaluate"):
        read_predictions(predictions_path(tmp_path, "test"))


def test_data_spec_round_trip_and_damage(tmp_path):
    spec = DataSpec("breastmnist", "binary", ["malignant", "normal, benign"], 1, 28)
    write_data_spec(tmp_path, spec)
    assert read_data_spec(tmp_path) == spec and spec.num_classes == 2
    assert read_data_spec(tmp_path / "none") is None
    (tmp_path / "dataset.json").write_text('{"name": "x"}')
    with pytest.raises(MedbenchError, match="dataset.json: damaged"):
        read_data_spec(tmp_path)


def test_metrics_reader(tmp_path):
    assert read_metrics(tmp_path, missing_ok=True) == {}
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(MedbenchError, match="metrics.json"):
        read_metrics(tmp_path)
