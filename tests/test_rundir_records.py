"""The run directory's one predictions reader and writer, and its data spec: exact round trips, index order,
and one clear error for every damaged file."""
from __future__ import annotations

import numpy as np
import pytest

from medbench.errors import MedbenchError
from medbench.rundir import (
    DataSpec,
    predictions_path,
    read_data_spec,
    read_metrics,
    read_predictions,
    write_data_spec,
    write_predictions,
)


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
