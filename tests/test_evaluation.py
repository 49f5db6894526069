"""Evaluation depth on real runs: kept checkpoints, ensembles, TTA, bootstrap CIs, Youden threshold, gaps, compare."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from medbench.build import build_model, build_task, normalization
from medbench.cli import main
from medbench.config import load_config
from medbench.data import load_dataset
from medbench.data.loader import Preprocess
from medbench.errors import MedbenchError
from medbench.metrics import compute_metrics, youden_threshold
from medbench.run import evaluate, train
from medbench.rundir import read_predictions

BASE = {"dataset": "breastmnist", "model": "cnn5", "epochs": 4, "seed": 0}


def _scores(path):
    return read_predictions(path)


@pytest.fixture(scope="module")
def kept_run(tmp_path_factory, medmnist_dir):
    out = tmp_path_factory.mktemp("eval") / "run"
    return train({**BASE, "keep_checkpoints": 3}, out, data_dir=medmnist_dir, quiet=True, report=False)


@pytest.fixture(scope="module")
def other_run(tmp_path_factory, medmnist_dir):
    out = tmp_path_factory.mktemp("eval") / "other"
    return train({**BASE, "model": "cnn2", "epochs": 2}, out, data_dir=medmnist_dir, quiet=True, report=False)


def test_the_best_checkpoints_are_kept_best_first(kept_run):
    index = json.loads((kept_run / "checkpoints" / "index.json").read_text())
    assert len(index) == 3 and sorted(p.name for p in (kept_run / "checkpoints").glob("*.safetensors")) == \
        sorted(e["file"] for e in index)
    aucs = [e["val_auc"] for e in index]
    assert aucs == sorted(aucs, reverse=True)
    history = [line.split(",") for line in (kept_run / "history.csv").read_text().splitlines()[1:]]
    by_epoch = {int(r[0]): float(r[7]) for r in history}  # epoch, ..., val_auc
    assert aucs == sorted(by_epoch.values(), reverse=True)[:3]
    best = load_file(str(kept_run / "checkpoints" / index[0]["file"]))
    assert all(torch.equal(best[k], v) for k, v in load_file(str(kept_run / "model.safetensors")).items())


def test_evaluate_ensemble_tta_bootstrap_from_the_cli(kept_run, medmnist_dir, capsys):
    assert main(["evaluate", str(kept_run), "--bootstrap", "200", "--ensemble", "3", "--tta", "--quiet"]) == 0
    out = capsys.readouterr().out
    record = kept_run / "evaluations" / "ensemble3-tta-bootstrap200"
    assert f"wrote {record} (ensemble 3, tta on, bootstrap 200)" in out and "gap    train - test" in out
    metrics = json.loads((record / "metrics.json").read_text())
    assert metrics["evaluation"]["ensemble"] == 3 and metrics["evaluation"]["tta"] is True
    assert len(metrics["evaluation"]["members"]) == 3
    # the predictions are the mean of 3 checkpoints x 2 views, recomputed here by hand
    cfg = load_config(kept_run / "config.yaml")
    ds = load_dataset("breastmnist", data_dir=medmnist_dir)
    task = build_task(cfg, ds)
    prep = Preprocess(*normalization(cfg, 1))
    x = ds["test"].images
    probs = 0
    for e in metrics["evaluation"]["members"]:
        model = build_model(cfg, ds, task, load_weights=False)
        model.load_state_dict(load_file(str(kept_run / e)))
        model.eval()
        with torch.no_grad():
            probs = probs + task.scores(model(prep(x))).double() + task.scores(model(prep(x.flip(-1)))).double()
    assert np.allclose(_scores(record / "predictions" / "test.csv"), (probs / 6).numpy(), atol=1e-5)
    for split in ("train", "val", "test"):
        rec = metrics[split]
        for key in ("acc", "auc", "f1_macro", "balanced_acc", "sensitivity", "specificity", "ece", "log_loss"):
            lo, hi = rec[f"{key}_ci"]
            assert lo <= rec[key] <= hi, (split, key)
    assert metrics["gap"]["auc"] == pytest.approx(metrics["train"]["auc"] - metrics["test"]["auc"])
    assert metrics["gap"]["acc"] == pytest.approx(metrics["train"]["acc"] - metrics["test"]["acc"])


def test_binary_metrics_at_the_validation_youden_threshold(kept_run, medmnist_dir):
    metrics = evaluate(kept_run, quiet=True)
    ds = load_dataset("breastmnist", data_dir=medmnist_dir)
    val = _scores(metrics.path / "predictions" / "val.csv")
    t = youden_threshold(ds["val"].labels.numpy(), val)
    assert metrics["threshold"]["youden"] == pytest.approx(t) and metrics["threshold"]["chosen_on"] == "val"
    test = _scores(metrics.path / "predictions" / "test.csv")
    y = ds["test"].labels.numpy()[:, 0]
    at = metrics["test"]["at_youden"]
    assert at["acc"] == pytest.approx(np.mean((test[:, 1] > t) == y))
    # the positive class is the minority of train: 'malignant' (class 0) on BreastMNIST
    assert at["class_of"]["sensitivity"] == "malignant"
    assert at["sensitivity"] == pytest.approx(np.mean(test[y == 0, 1] <= t))
    assert at["specificity"] == pytest.approx(np.mean(test[y == 1, 1] > t))
    assert metrics["test"]["acc"] == pytest.approx(np.mean((test[:, 1] > 0.5) == y))  # MedMNIST's 0.5 stays
    assert metrics["evaluation"] == {"ensemble": 1, "tta": False, "bootstrap": 0}
    assert metrics["test"]["confusion_matrix"] == compute_metrics(y[:, None], test, "binary")["confusion_matrix"]


def test_compare_two_real_runs(kept_run, other_run, capsys):
    evaluate(kept_run, quiet=True)
    assert main(["compare", str(kept_run), str(other_run), "--bootstrap", "300", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    a = json.loads((kept_run / "metrics.json").read_text())["test"]
    b = json.loads((other_run / "metrics.json").read_text())["test"]
    assert res["auc"]["diff"] == pytest.approx(a["auc"] - b["auc"])
    assert res["acc"]["diff"] == pytest.approx(a["acc"] - b["acc"])
    lo, hi = res["auc"]["diff_ci"]
    assert lo <= res["auc"]["diff"] <= hi and 0 <= res["auc"]["p_value"] <= 1
    assert res["delong"]["diff"] == pytest.approx(res["auc"]["diff"]) and 0 < res["delong"]["p_value"] <= 1
    assert main(["compare", str(kept_run), str(kept_run)]) == 0
    out = capsys.readouterr().out
    assert "A - B +0.0000" in out and "DeLong" in out


@pytest.mark.parametrize("argv, fragment", [
    (["evaluate", "{run}", "--ensemble", "5"], "kept 3 checkpoint(s) but --ensemble 5 needs 5"),
    (["train", "--dataset", "breastmnist", "--ensemble", "3", "--out", "{tmp}/x"], "ensemble 3 needs keep_checkpoints"),
    (["train", "--dataset", "breastmnist", "--tta", "--no-flip", "--out", "{tmp}/x"], "tta averages horizontally"),
    (["compare", "{run}", "{tmp}"], "is not a run directory"),
])
def test_evaluation_errors_are_one_clear_line(kept_run, tmp_path, capsys, argv, fragment):
    argv = [a.replace("{run}", str(kept_run)).replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv + ["--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err


def test_compare_refuses_runs_on_different_data(kept_run, tmp_path, medmnist_dir):
    other = train({**BASE, "dataset": "retinamnist", "epochs": 1}, tmp_path / "r", data_dir=medmnist_dir, quiet=True,
                  report=False)
    from medbench.compare import compare_runs

    with pytest.raises(MedbenchError, match="a paired comparison needs the same test images"):
        compare_runs(kept_run, other)


def test_gap_survives_bootstrapping_and_needs_train_and_test_in_one_evaluation(kept_run):
    evaluate(kept_run, quiet=True)
    m = evaluate(kept_run, bootstrap=50, quiet=True)  # CIs leave the point estimates as they were
    assert m["gap"]["auc"] == pytest.approx(m["train"]["auc"] - m["test"]["auc"])
    m = evaluate(kept_run, ["test"], ensemble=2, quiet=True)  # one split: no gap, and nothing mixed in
    assert "gap" not in m and "train" not in m and m.name == "test-ensemble2"
