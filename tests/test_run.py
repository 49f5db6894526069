"""End-to-end runs on real MedMNIST files (and generated data for the tasks not available here)."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from medmnist.evaluator import Evaluator, getACC, getAUC

import medbench
from medbench.build import build_model, build_task
from medbench.cli import main
from medbench.config import load_config, resolve_config
from medbench.data import read_npz
from medbench.errors import MedbenchError
from medbench.run import evaluate, train
from medbench.rundir import read_predictions

from conftest import make_npz

MEDMNIST_TASK = {"binary": "binary-class", "multiclass": "multi-class", "multilabel": "multi-label, binary-class",
                 "ordinal": "ordinal-regression"}


def _official_file(record, split):
    """The split's MedMNIST evaluator file, read exactly as medmnist's Evaluator.parse_and_evaluate reads it."""
    (path,) = (record / "predictions" / "medmnist").glob(f"*_{split}_*.csv")
    return pd.read_csv(path, index_col=0, header=None).sort_index().values


@pytest.fixture(scope="module")
def breast_run(tmp_path_factory, medmnist_dir):
    out = tmp_path_factory.mktemp("runs") / "breast"
    assert main(["train", "--dataset", "breastmnist", "--model", "resnet18", "--epochs", "2", "--out", str(out),
                 "--data-dir", str(medmnist_dir), "--quiet"]) == 0
    return out


@pytest.mark.slow
def test_run_directory_holds_every_file(breast_run):
    names = {p.name for p in breast_run.iterdir()}
    assert {"config.yaml", "model.safetensors", "metrics.json", "history.csv", "predictions", "tb",
            "report.html"} <= names
    assert {p.name for p in (breast_run / "predictions").iterdir()} == {"train.csv", "val.csv", "test.csv",
                                                                         "medmnist"}
    assert list((breast_run / "tb").glob("events.out.tfevents.*"))
    assert not list(breast_run.rglob("*.tmp"))  # atomic writes leave nothing behind
    history = pd.read_csv(breast_run / "history.csv")
    assert list(history["epoch"]) == [1, 2]
    assert {"lr", "train_loss", "val_loss", "val_acc", "val_auc", "seconds", "images_per_s"} <= set(history.columns)
    metrics = json.loads((breast_run / "metrics.json").read_text())
    assert list(metrics) == ["train", "val", "test", "gap", "threshold", "evaluation"]
    for split, n in [("train", 546), ("val", 78), ("test", 156)]:
        assert {"acc", "auc", "loss"} <= set(metrics[split]) and metrics[split]["n"] == n
        assert 0 <= metrics[split]["acc"] <= 1 and 0 <= metrics[split]["auc"] <= 1 and metrics[split]["loss"] > 0
    cfg = (breast_run / "config.yaml").read_text()
    assert "data_md5: 750601b1f35ba3300ea97c75c52ff8f6" in cfg and "torch:" in cfg


@pytest.mark.slow
def test_predictions_are_medmnist_standard_and_agree_with_the_official_evaluator(breast_run, medmnist_dir):
    metrics = json.loads((breast_run / "metrics.json").read_text())
    for split, n in [("train", 546), ("val", 78), ("test", 156)]:
        lines = (breast_run / "predictions" / "medmnist").glob(f"breastmnist_{split}_*@breast.csv")
        lines = next(lines).read_text().splitlines()
        assert len(lines) == n and lines[0].startswith("0,") and len(lines[0].split(",")) == 3  # no header
        scores = _official_file(breast_run, split)
        assert np.array_equal(scores, read_predictions(breast_run / "predictions" / f"{split}.csv"))
        assert np.allclose(scores.sum(1), 1)
        official = Evaluator("breastmnist", split, root=str(medmnist_dir)).evaluate(scores)
        assert official.AUC == pytest.approx(metrics[split]["auc"], abs=1e-12)
        assert official.ACC == pytest.approx(metrics[split]["acc"], abs=1e-12)


@pytest.mark.slow
def test_evaluate_reproduces_metrics_json(breast_run, capsys):
    before = json.loads((breast_run / "metrics.json").read_text())
    assert main(["evaluate", str(breast_run), "--quiet", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    record = breast_run / "evaluations" / "plain"
    after = json.loads((record / "metrics.json").read_text())
    assert printed == after and json.loads((breast_run / "metrics.json").read_text()) == before
    for split in ("train", "val", "test"):
        for key in ("acc", "auc", "loss"):
            assert after[split][key] == pytest.approx(before[split][key], abs=1e-6)
    np.testing.assert_allclose(read_predictions(record / "predictions" / "test.csv"),
                               read_predictions(breast_run / "predictions" / "test.csv"), atol=1e-6)
    # one split only: a record of that split alone
    assert main(["evaluate", str(breast_run), "--split", "val", "--quiet"]) == 0
    assert set(json.loads((breast_run / "evaluations" / "val-plain" / "metrics.json").read_text())) == \
        {"val", "threshold", "evaluation"}


@pytest.mark.slow
def test_saved_config_reproduces_the_run_settings(breast_run, tmp_path):
    cfg = load_config(breast_run / "config.yaml")
    assert (cfg.dataset, cfg.model, cfg.epochs, cfg.seed) == ("breastmnist", "resnet18", 2, 0)
    # --config reloads it; flags override single fields
    out = tmp_path / "again"
    with pytest.raises(MedbenchError, match="already holds a run"):
        train(cfg, breast_run, quiet=True)
    assert main(["train", "--config", str(breast_run / "config.yaml"), "--epochs", "1", "--set", "batch_size=200",
                 "--out", str(out), "--quiet"]) == 0
    again = load_config(out / "config.yaml")
    assert again.model_dump() == cfg.model_copy(update={"epochs": 1, "batch_size": 200}).model_dump()


@pytest.mark.slow
def test_ordinal_rgb_retinamnist_with_corn(tmp_path):
    out = train({"dataset": "retinamnist", "epochs": 1, "ordinal_loss": "corn", "batch_size": 64}, tmp_path / "r",
                quiet=True)
    scores = read_predictions(out / "predictions" / "test.csv")
    assert scores.shape == (400, 5) and (scores >= 0).all() and np.allclose(scores.sum(1), 1)
    metrics = json.loads((out / "metrics.json").read_text())
    labels = np.load(medbench.load_dataset("retinamnist").source)["test_labels"]
    assert metrics["test"]["auc"] == pytest.approx(getAUC(labels, scores, "ordinal-regression"), abs=1e-12)
    assert metrics["test"]["acc"] == pytest.approx(getACC(labels, scores, "ordinal-regression"), abs=1e-12)


@pytest.mark.parametrize("name, kwargs", [
    ("dermamnist", dict(channels=3, num_classes=7)),  # multi-class, RGB
    ("chestmnist", dict(channels=1, num_classes=14, multilabel=True)),  # multi-label, grey
    ("retinamnist", dict(channels=3, num_classes=5)),  # ordinal, plain cross-entropy
])
@pytest.mark.slow
def test_generated_tasks_train_and_match_the_official_metrics(tmp_path, name, kwargs):
    ds = read_npz(make_npz(tmp_path / f"{name}.npz", **kwargs), name)
    out = train({"dataset": name, "epochs": 2, "batch_size": 32, "lr": 3e-3}, tmp_path / "run", dataset=ds,
                quiet=True)
    metrics = json.loads((out / "metrics.json").read_text())
    y = ds["test"].labels.numpy()
    scores = read_predictions(out / "predictions" / "test.csv")
    assert scores.shape == (30, kwargs["num_classes"])
    assert metrics["test"]["auc"] == pytest.approx(getAUC(y, scores, MEDMNIST_TASK[ds.task]), abs=1e-12)
    assert metrics["test"]["acc"] == pytest.approx(getACC(y, scores, MEDMNIST_TASK[ds.task]), abs=1e-12)
    assert metrics["test"]["auc"] > 0.6  # brightness encodes the label: two epochs learn some of it
    again = evaluate(out, dataset=ds, quiet=True)
    assert again["test"]["auc"] == pytest.approx(metrics["test"]["auc"], abs=1e-6)


@pytest.mark.slow
def test_evaluate_refuses_other_data(tmp_path, breast_run):
    with pytest.raises(MedbenchError, match="is not a run directory"):
        evaluate(tmp_path)
    other = read_npz(make_npz(tmp_path / "breastmnist.npz", num_classes=2), "breastmnist")
    other.md5 = "0" * 32
    with pytest.raises(MedbenchError, match="trained on data with md5 750601b1"):
        evaluate(breast_run, dataset=other)


@pytest.mark.slow
def test_acceptance_breastmnist_three_epochs(tmp_path):
    """The issue's acceptance run: ResNet-18, 3 epochs, default settings, test AUC above 0.70."""
    assert main(["train", "--dataset", "breastmnist", "--model", "resnet18", "--epochs", "3",
                 "--out", str(tmp_path / "R"), "--quiet"]) == 0
    assert json.loads((tmp_path / "R" / "metrics.json").read_text())["test"]["auc"] > 0.70


@pytest.mark.slow
def test_deterministic_runs_repeat_exactly_and_seeds_differ(tmp_path):
    from safetensors.torch import load_file

    ds = read_npz(make_npz(tmp_path / "dermamnist.npz", channels=3, num_classes=7), "dermamnist")
    settings = {"dataset": "dermamnist", "epochs": 2, "batch_size": 16, "deterministic": True}
    runs = [train({**settings, "seed": seed}, tmp_path / f"run{i}", dataset=ds, quiet=True, report=False)
            for i, seed in enumerate([3, 3, 4])]
    a, b, c = (json.loads((r / "metrics.json").read_text()) for r in runs)
    assert a == b and a != c
    wa, wb = (load_file(str(r / "model.safetensors")) for r in runs[:2])
    assert all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)


@pytest.mark.slow
def test_pneumoniamnist_run_agrees_with_the_official_evaluator(tmp_path, medmnist_dir):
    # cnn5: the agreement is about the predictions files, not the network (ResNet-18 took ~3 min here)
    out = train({"dataset": "pneumoniamnist", "model": "cnn5", "epochs": 2, "batch_size": 64}, tmp_path / "p",
                quiet=True, report=False)
    metrics = json.loads((out / "metrics.json").read_text())
    for split in ("train", "val", "test"):
        official = Evaluator("pneumoniamnist", split, root=str(medmnist_dir)).evaluate(_official_file(out, split))
        assert official.AUC == pytest.approx(metrics[split]["auc"], abs=1e-12)
        assert official.ACC == pytest.approx(metrics[split]["acc"], abs=1e-12)
    assert metrics["test"]["auc"] > 0.85


@pytest.mark.slow
def test_epoch_hook_sees_each_epoch_and_can_stop_training(tmp_path):
    ds = read_npz(make_npz(tmp_path / "dermamnist.npz", channels=3, num_classes=7), "dermamnist")
    seen = []

    def hook(info):
        seen.append(info)
        return info["epoch"] == 2

    out = train({"dataset": "dermamnist", "epochs": 5, "batch_size": 16}, tmp_path / "r", dataset=ds, quiet=True,
                on_epoch=hook)
    assert [i["epoch"] for i in seen] == [1, 2]
    assert seen[0]["is_best"] and seen[0]["best_epoch"] == 1 and 0 < seen[0]["train_seconds"] < seen[1]["train_seconds"]
    assert isinstance(seen[0]["model"], torch.nn.Module)
    assert len(pd.read_csv(out / "history.csv")) == 2 and (out / "metrics.json").is_file()


def test_ema_run_validates_selects_and_saves_the_averaged_weights(tmp_path):
    """The best epoch's validation AUC in history.csv is reproduced by reloading model.safetensors: the saved
    weights are the averaged ones that were validated (saving the raw weights would not reproduce it)."""
    settings = {"dataset": "breastmnist", "model": "cnn5", "epochs": 3, "seed": 1, "ema": 0.95, "deterministic": True}
    out = train(settings, tmp_path / "ema", quiet=True, report=False)
    hist = pd.read_csv(out / "history.csv")
    best = hist.loc[hist.val_auc.idxmax()]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val"]["auc"] == pytest.approx(best.val_auc, abs=1e-12)
    raw = train({**settings, "ema": 0.0}, tmp_path / "raw", quiet=True, report=False)
    assert json.loads((raw / "metrics.json").read_text())["val"] != metrics["val"]


def test_decision_youden_makes_the_validation_threshold_the_headline(tmp_path):
    settings = {"dataset": "breastmnist", "model": "cnn5", "epochs": 2, "seed": 2, "deterministic": True}
    plain = json.loads((train(settings, tmp_path / "p", quiet=True, report=False) / "metrics.json").read_text())
    out = train({**settings, "decision": "youden"}, tmp_path / "y", quiet=True, report=False)
    m = json.loads((out / "metrics.json").read_text())
    assert plain["threshold"]["headline"] == 0.5
    assert m["threshold"]["headline"] == m["threshold"]["youden"] == plain["threshold"]["youden"] != 0.5
    for split in ("val", "test"):
        assert m[split]["acc"] == m[split]["at_youden"]["acc"] == plain[split]["at_youden"]["acc"]
        assert m[split]["confusion_matrix"] == m[split]["at_youden"]["confusion_matrix"]
        assert m[split]["auc"] == plain[split]["auc"]  # the same network: only thresholded metrics move
    assert m["test"]["acc"] != plain["test"]["acc"]


def test_dropout_settings_reach_the_model_or_are_refused(tmp_path):
    ds = read_npz(make_npz(tmp_path / "dermamnist.npz", channels=3, num_classes=7), "dermamnist")
    cfg = resolve_config({"dataset": "dermamnist", "model": "cnn5", "drop_rate": 0.35})
    model = build_model(cfg, ds, build_task(cfg, ds))
    assert {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)} == {0.35}
    cfg = resolve_config({"dataset": "dermamnist", "model": "cnn2", "drop_path_rate": 0.1})
    with pytest.raises(MedbenchError, match="does not take.*drop_path_rate"):
        build_model(cfg, ds, build_task(cfg, ds))


@pytest.mark.slow
def test_deep_ensemble_averages_its_members_everywhere(tmp_path, medmnist_dir):
    """members=3: three ordinary runs with seeds seed*3+i; the run's metrics, Predictor and exported model all
    use the mean of the members' probabilities; a resumed ensemble trains only the missing member."""
    from medbench.export import deployable
    from medbench.metrics import auc as medmnist_auc
    from medbench.predict import Predictor

    settings = {"dataset": "breastmnist", "model": "cnn5", "epochs": 2, "seed": 1, "members": 3,
                "deterministic": True}
    out = train(settings, tmp_path / "ens", quiet=True)
    members = [out / "members" / f"{i:02d}" for i in range(3)]
    report = (out / "report.html").read_text()
    assert "history.csv not found" in report and "Grad-CAM" in report  # no single network's curves
    assert "| members | 3 |" in (out / "MODEL_CARD.md").read_text()
    assert [load_config(m / "config.yaml").seed for m in members] == [3, 4, 5]
    assert all(load_config(m / "config.yaml").members == 1 for m in members)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["evaluation"]["members"] == [f"members/{i:02d}/model.safetensors" for i in range(3)]
    probs = np.mean([read_predictions(m / "predictions" / "test.csv") for m in members], axis=0)
    npz = np.load(medmnist_dir / "breastmnist.npz")
    labels = npz["test_labels"]
    assert metrics["test"]["auc"] == pytest.approx(medmnist_auc(labels, probs, "binary"), abs=1e-12)
    member_aucs = [json.loads((m / "metrics.json").read_text())["test"]["auc"] for m in members]
    assert metrics["test"]["auc"] not in member_aucs
    predictor = Predictor(out)
    assert len(predictor.models) == 3
    images = torch.from_numpy(npz["test_images"][:, None])
    got = predictor.probabilities(images)
    assert np.allclose(got, read_predictions(out / "predictions" / "test.csv"), atol=1e-6)
    with torch.no_grad():
        assert np.allclose(deployable(predictor)(images).numpy(), got, atol=1e-5)
    # resume after a kill during member 3: members 1 and 2 are kept as they are
    before = (members[0] / "model.safetensors").stat().st_mtime_ns
    shutil.rmtree(members[2])
    (out / "metrics.json").unlink()
    train(load_config(out / "config.yaml"), out, quiet=True, report=False, resume=True)
    assert (members[0] / "model.safetensors").stat().st_mtime_ns == before
    assert json.loads((out / "metrics.json").read_text())["test"] == metrics["test"]
    with pytest.raises(MedbenchError, match="nothing to resume: the ensemble already finished"):
        train(load_config(out / "config.yaml"), out, quiet=True, report=False, resume=True)
