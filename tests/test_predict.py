"""medbench predict and the model card: new images through a run's own preprocessing, on the real chest X-rays."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from medbench.build import build_dataset as dataset_for
from medbench.cli import main
from medbench.data.decode import decode_image
from medbench.errors import MedbenchError
from medbench.predict import Predictor, expand_inputs, predict_files
from medbench.rundir import read_prediction_table


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_predict_folder_writes_one_row_per_image_equal_to_the_runs_test_predictions(chest_run, shared_data,
                                                                                    tmp_path, capsys):
    """Acceptance: the chest X-ray test folder -> one row per image; preprocessing equals training's, so the
    probabilities equal those the run itself wrote for its test split."""
    folder = shared_data / "chest_xray_subset" / "test"
    out = tmp_path / "preds.csv"
    assert main(["predict", str(chest_run), str(folder), "--out", str(out), "--cam", str(tmp_path / "cams")]) == 0
    assert "80 images" in capsys.readouterr().out
    rows = _rows(out)
    files = sorted(folder.rglob("*.jpeg"))
    assert len(rows) == len(files) == 80 and [r["path"] for r in rows] == [str(f) for f in files]
    assert list(rows[0]) == ["path", "NORMAL", "PNEUMONIA", "label"]
    probs = np.array([[float(r["NORMAL"]), float(r["PNEUMONIA"])] for r in rows])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    metrics = json.loads((chest_run / "metrics.json").read_text())
    threshold = metrics["threshold"]["youden"]
    assert [r["label"] for r in rows] == ["PNEUMONIA" if p > threshold else "NORMAL" for p in probs[:, 1]]
    # the run's own test predictions, in the dataset's file order
    from medbench.config import load_config

    ds = dataset_for(load_config(chest_run / "config.yaml"))
    own = read_prediction_table(chest_run / "predictions" / "test.csv")
    assert own.items == ds.meta["files"]["test"]  # each row names its file
    by_path = {str(folder.parent / rel): p for rel, p in zip(own.items, own.scores)}
    for r, p in zip(rows, probs):
        np.testing.assert_allclose(p, by_path[r["path"]], atol=1e-5)
    cams = sorted((tmp_path / "cams").glob("*.png"))
    assert len(cams) == 80 and np.asarray(Image.open(cams[0])).shape == (28, 28, 3)


def test_predict_npz_globs_dicom_and_duplicates(chest_run, shared_data, tmp_path):
    from conftest import write_dicom

    xray = sorted((shared_data / "chest_xray_subset" / "test" / "PNEUMONIA").glob("*.jpeg"))[0]
    pixels = decode_image(xray, channels=1)
    dcm = write_dicom(tmp_path / "x.dcm", pixels[..., 0])
    npz = tmp_path / "batch.npz"
    np.savez(npz, test_images=np.stack([pixels[:300, :300, 0]] * 3), test_labels=np.zeros((3, 1), np.uint8))
    shutil.copy(xray, tmp_path / "copy.jpeg")
    out = tmp_path / "p.csv"
    info = predict_files(chest_run, [dcm, npz, str(tmp_path / "*.jpeg"), tmp_path / "copy.jpeg"], out)
    rows = _rows(out)
    assert info["images"] == 5 and [r["path"] for r in rows] == [
        str(dcm), *(f"{npz}:test_images[{i}]" for i in range(3)), str(tmp_path / "copy.jpeg")]  # listed once
    p = Predictor(chest_run)
    same = p.probabilities(p.load_image(xray)[None])
    for r in (rows[0], rows[4]):  # the DICOM holds the JPEG's pixels: the same probabilities
        np.testing.assert_allclose([float(r["NORMAL"]), float(r["PNEUMONIA"])], same[0], atol=1e-5)


def test_predict_errors_name_the_input(chest_run, tmp_path, capsys):
    with pytest.raises(MedbenchError, match="nothing.png: no such file or folder"):
        expand_inputs([tmp_path / "nothing.png"])
    with pytest.raises(MedbenchError, match="matches no file"):
        expand_inputs([str(tmp_path / "*.png")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedbenchError, match="no image or npz files"):
        expand_inputs([tmp_path / "empty"])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    good = tmp_path / "good.png"
    Image.fromarray(np.full((40, 30), 128, np.uint8)).save(good)
    assert main(["predict", str(chest_run), str(bad), str(good), "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert "bad.png: cannot decode" in err and "\n" not in err and not (tmp_path / "p.csv").exists()
    assert main(["predict", str(chest_run), str(bad), str(good), "--out", str(tmp_path / "p.csv"), "--skip-bad"]) == 0
    rows = _rows(tmp_path / "p.csv")
    assert rows[0]["path"] == str(bad) and "cannot decode" in rows[0]["error"] and rows[0]["NORMAL"] == ""
    assert rows[1]["error"] == "" and rows[1]["label"] in ("NORMAL", "PNEUMONIA")
    with pytest.raises(MedbenchError, match="not a run directory"):
        Predictor(tmp_path)


def test_threshold_and_tta_change_decisions_as_documented(chest_run, shared_data):
    images = [Predictor(chest_run).load_image(f) for f in sorted((shared_data / "chest_xray_subset" / "test")
                                                                   .rglob("*.jpeg"))[:40]]
    import torch

    x = torch.stack(images)
    p = Predictor(chest_run, threshold=0.5).probabilities(x)
    low = Predictor(chest_run, threshold=0.0)
    assert low.decide(p) == ["PNEUMONIA"] * 40
    flipped = Predictor(chest_run).probabilities(x.flip(-1))
    np.testing.assert_allclose(Predictor(chest_run, tta=True).probabilities(x), (p + flipped) / 2, atol=1e-6)


def test_model_card_states_data_metrics_with_cis_and_not_for_clinical_use(chest_run):
    card = json.loads((chest_run / "model_card.json").read_text())
    md = (chest_run / "MODEL_CARD.md").read_text()
    metrics = json.loads((chest_run / "metrics.json").read_text())
    assert card["classes"] == ["NORMAL", "PNEUMONIA"] and card["task"] == "binary"
    assert card["input"] == {"size": 28, "channels": 1, "fit": "pad",
                             "formats": ["PNG", "JPEG", "DICOM", "BMP", "TIFF"]}
    test = card["metrics"]["test"]
    assert test["auc"] == metrics["test"]["auc"] and test["n"] == 80
    lo, hi = test["auc_ci"]
    assert lo <= test["auc"] <= hi and hi - lo > 0.01
    assert card["threshold"]["used_for_labels"] == metrics["threshold"]["youden"]
    assert "Not for clinical use" in md and f"{test['auc']:.4f}" in md and "NORMAL" in md
    assert "| epochs | 2 |" in md
