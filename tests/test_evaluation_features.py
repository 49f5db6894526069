"""Issue 21's evaluation features end to end through `medbench train` / `medbench evaluate`: a calibrated run
records calibration.json and calibrated predictions (AUC kept), `evaluate --corruptions` writes its own evaluation
without touching the training record, and bad requests fail before any work."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medbench.cli import main
from medbench.metrics import auc
from medbench.metrics.calibration import apply_temperature
from medbench.predict import Predictor
from medbench.rundir import CALIBRATION, METRICS, predictions_path, read_metrics, read_predictions


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory, medmnist_dir):
    out = tmp_path_factory.mktemp("calibrated") / "run"
    assert main(["train", "--dataset", "breastmnist", "--model", "cnn5", "--epochs", "3", "--lr", "0.003",
                 "--calibrate", "temperature", "--out", str(out), "--data-dir", str(medmnist_dir), "--quiet"]) == 0
    return out


def test_train_with_calibrate_temperature_records_and_applies_it(calibrated_run, medmnist_dir):
    record = json.loads((calibrated_run / CALIBRATION).read_text())
    metrics = read_metrics(calibrated_run)
    t = record["temperature"]
    assert t > 0 and metrics["calibration"]["temperature"] == t
    assert record["nll_after"] <= record["nll_before"] + 1e-12  # T minimises the validation NLL
    for split in ("val", "test"):
        assert set(record["splits"][split]) >= {"ece_before", "ece_after"}
        calibrated = read_predictions(predictions_path(calibrated_run, split))
        raw = apply_temperature(calibrated, "binary", 1 / t)  # the map is invertible: back to the network's
        with np.load(medmnist_dir / "breastmnist.npz") as z:
            y = z[f"{split}_labels"]
        assert auc(y, raw, "binary") == pytest.approx(auc(y, calibrated, "binary"), abs=1e-12)
        # the recorded ECE is the calibrated one
        assert metrics[split]["ece"] == pytest.approx(record["splits"][split]["ece_after"], abs=1e-12)
    # the model card names the temperature and the class whose recall the sensitivity is
    card = (calibrated_run / "MODEL_CARD.md").read_text()
    assert "after temperature scaling (T = " in card and "sensitivity (malignant)" in card
    # predict applies the same temperature to the same images
    p = Predictor(calibrated_run)
    assert p.temperature == t
    with np.load(medmnist_dir / "breastmnist.npz") as z:
        x = torch.from_numpy(z["test_images"][:8, None].copy())
    np.testing.assert_allclose(p.probabilities(x), read_predictions(predictions_path(calibrated_run, "test"))[:8],
                               atol=1e-6)


@pytest.mark.slow
def test_evaluate_corruptions_cli_writes_its_own_evaluation(calibrated_run, capsys):
    before = {p: p.read_bytes() for p in (calibrated_run / METRICS, predictions_path(calibrated_run, "test"))}
    assert main(["evaluate", str(calibrated_run), "--corruptions", "--name", "robust", "--quiet"]) == 0, \
        capsys.readouterr().err
    out = capsys.readouterr().out
    assert "gaussian_noise" in out and "gaussian_blur" in out
    rec = json.loads((calibrated_run / "evaluations" / "robust" / "robustness.json").read_text())
    assert rec["evaluation"] == "robust"
    assert {p: p.read_bytes() for p in before} == before  # the training record is untouched


def test_evaluate_corruptions_refuses_settings_it_ignores(calibrated_run, capsys):
    assert main(["evaluate", str(calibrated_run), "--corruptions", "--tta"]) != 0
    err = capsys.readouterr().err
    assert "--corruptions" in err and "--tta" in err
