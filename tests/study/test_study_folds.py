"""``folds`` as a study grid axis: a CV parent is one study run whose results.csv row reads its metrics.json
(val = out-of-fold, test = fold ensemble)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from medbench.study import load_study, run_study


@pytest.mark.slow
def test_folds_as_a_grid_axis(tmp_path, shared_data):
    path = tmp_path / "study.yaml"
    path.write_text(f"name: cv-axis\ngrid: {{folds: [1, 3]}}\nfixed: {{dataset: 'folder:"
                    f"{shared_data / 'chest_xray_subset'}', model: cnn2, epochs: 1}}\n")
    study = load_study(path)
    out = tmp_path / "study"
    assert run_study(study, out)["done"] == 2
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["folds"] for r in rows] == ["1", "3"]
    for r in rows:
        metrics = json.loads((Path(r["run_dir"]) / "metrics.json").read_text())
        assert float(r["test_auc"]) == pytest.approx(metrics["test"]["auc"])
        assert float(r["val_auc"]) == pytest.approx(metrics["val"]["auc"])
    cv_dir = Path(rows[1]["run_dir"])
    cv = json.loads((cv_dir / "cv.json").read_text())
    assert cv["k"] == 3 and float(rows[1]["val_auc"]) == pytest.approx(cv["oof"]["auc"])
    assert float(rows[1]["test_auc"]) == pytest.approx(cv["ensemble"]["test"]["auc"])
    assert not (Path(rows[0]["run_dir"]) / "cv.json").exists()
