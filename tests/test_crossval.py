"""Cross-validation (``--folds K``): the fold split (stratified, patient-grouped, over train+val), a fold's dataset
(index views of data on disk), the CV parent's record (cv.json, predictions/oof.csv, metrics.json, report, card),
a fold run reproduced alone, resume after SIGKILL, and the refusals."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medbench.config import resolve_config
from medbench.data import ImageDataset, Split
from medbench.data.folds import assign_folds, fold_dataset, make_pool
from medbench.data.store import DiskImages, SplitWriter
from medbench.data.views import IndexedImages, select_rows
from medbench.errors import MedbenchError
from medbench.rundir import read_prediction_table, write_prediction_table

from conftest import kill_when

CHEST_GROUPS = r"((?:NORMAL2-)?IM-\d+|person\d+)[_-]"  # patient ids in the chest X-ray file names


# ---- the split ----------------------------------------------------------------------------------------------
def test_folds_are_stratified_balanced_and_deterministic():
    y = np.array([0] * 30 + [1] * 50 + [2] * 7)
    f = assign_folds(y, 5, seed=3)
    assert sorted(np.bincount(f)) == [17, 17, 17, 18, 18]
    for c, n in ((0, 30), (1, 50), (2, 7)):
        per = np.bincount(f[y == c], minlength=5)
        assert per.max() - per.min() <= 1 and per.sum() == n  # every class spread evenly
    assert np.array_equal(f, assign_folds(y, 5, seed=3))
    assert not np.array_equal(f, assign_folds(y, 5, seed=4))


def test_groups_never_span_two_folds():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 40, 200)
    y = (groups % 3 == 0).astype(int)  # a patient's images share its label
    f = assign_folds(y, 4, seed=0, groups=groups)
    for g in np.unique(groups):
        assert len(set(f[groups == g])) == 1
    assert set(np.unique(f)) == {0, 1, 2, 3}
    per = [np.bincount(y[f == i], minlength=2) for i in range(4)]
    assert all(p[0] > 0 and p[1] > 0 for p in per)


@pytest.mark.parametrize(("labels", "k", "groups", "message"), [
    ([0] * 3 + [1] * 20, 5, None, "--folds 5 needs 5 image(s) of every class in train+val, class 'malignant' has 3; "
                                  "use --folds 3 or fewer"),
    ([0, 1] * 6, 3, [0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1], "--folds 3 needs 3 group(s) at least, the pooled "
                                                          "train+val holds 2; use --folds 2 or fewer"),
])
def test_too_many_folds_is_one_line(labels, k, groups, message):
    with pytest.raises(MedbenchError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        assign_folds(np.array(labels), k, groups=groups, class_names=["malignant", "benign"])


def _tiny(n=(20, 10, 8), seed=0) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    splits = {}
    for s, m in zip(("train", "val", "test"), n):
        splits[s] = Split(torch.randint(0, 255, (m, 1, 4, 4), dtype=torch.uint8, generator=g),
                          torch.arange(m).remainder(2).reshape(-1, 1))
    return ImageDataset("tiny", "binary", ["a", "b"], splits, 4)


def test_fold_dataset_pools_train_and_val_and_keeps_test():
    ds = _tiny()
    pooled = torch.cat([ds["train"].images, ds["val"].images])
    seen = []
    for i in range(3):
        fd = fold_dataset(ds, 3, i, seed=1)
        assert fd["test"] is ds["test"] and len(fd["train"]) + len(fd["val"]) == 30
        idx = [int(x.split("/")[1]) + (20 if x.startswith("val/") else 0) for x in fd.meta["files"]["val"]]
        assert torch.equal(fd["val"].images, pooled[idx])  # the ids say which pooled image each row is
        assert fd.meta["files"]["test"] == [str(j) for j in range(8)]
        assert fold_dataset(fd, 3, i, seed=1) is fd  # already this fold's view
        seen += fd.meta["files"]["val"]
    assert sorted(seen) == sorted([f"train/{j}" for j in range(20)] + [f"val/{j}" for j in range(10)])
    with pytest.raises(MedbenchError, match="fold 0 of a 3-fold split already"):
        fold_dataset(fold_dataset(ds, 3, 0), 3, 1)


def test_disk_images_stay_on_disk_in_a_fold(tmp_path):
    ds = _tiny()
    for s in ("train", "val"):
        w = SplitWriter(tmp_path, s, len(ds[s]), (1, 4, 4))
        w.write(ds[s].images.numpy())
        w.close(ds[s].labels.numpy())
    disk = ImageDataset("tiny", "binary", ["a", "b"], {
        s: Split(DiskImages(tmp_path / f"{s}.images.npy"), ds[s].labels) for s in ("train", "val")} | {
        "test": ds["test"]}, 4)
    a, b = fold_dataset(ds, 3, 2), fold_dataset(disk, 3, 2)
    assert isinstance(b["train"].images, IndexedImages) and b["train"].images.shape == a["train"].images.shape
    assert torch.equal(b["train"].images[3:9], a["train"].images[3:9])
    assert torch.equal(b["val"].images.take([4, 0, 2]), a["val"].images[[4, 0, 2]])
    assert torch.equal(select_rows(a["val"].images, [1, 0]), a["val"].images[[1, 0]])


def test_oof_table_round_trips_its_fold_column(tmp_path):
    path = tmp_path / "oof.csv"
    scores = np.array([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
    write_prediction_table(path, ["train/0", "val/1", "train/2"], np.array([[1], [0], [1]]), np.array([1, 0, 0]),
                           scores, ["a", "b"], multilabel=False, folds=np.array([2, 0, 1]))
    assert path.read_text().splitlines()[0] == "index,item,fold,true,decided,p:a,p:b"
    t = read_prediction_table(path)
    assert t.folds.tolist() == [2, 0, 1] and t.items[1] == "val/1" and np.array_equal(t.scores, scores)


@pytest.mark.parametrize(("settings", "message"), [
    ({"folds": 3, "members": 2}, "folds 3 with members 2 is not supported"),
    ({"dataset": "folder:/x", "folds": 3, "val_from_train": 0.2}, "val_from_train 0.2 has no effect with folds 3"),
    ({"fold": 1}, "fold 1 needs folds K > fold"),
])
def test_config_refusals(settings, message):
    with pytest.raises(MedbenchError, match=message):
        resolve_config({"dataset": "breastmnist", **settings})


# ---- a cross-validation end to end ----------------------------------------------------------------------------
def _md5s(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (hashlib.md5(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".medbench.lock"}


@pytest.fixture(scope="module")
def chest_cv(tmp_path_factory, shared_data):
    """A 3-fold, patient-grouped CV of cnn2 (2 epochs, 28 px) on the real chest X-ray folder."""
    from medbench.run import train

    out = tmp_path_factory.mktemp("cv") / "chest-cv3"
    cfg = {"dataset": f"folder:{shared_data / 'chest_xray_subset'}", "model": "cnn2", "epochs": 2, "seed": 0,
           "folds": 3, "group_regex": CHEST_GROUPS, "deterministic": True, "decision": "youden"}
    train(cfg, out, quiet=True, report=True)
    return out, cfg


@pytest.mark.slow
def test_cv_parent_record(chest_cv):
    out, _ = chest_cv
    cv = json.loads((out / "cv.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert cv["k"] == 3 and [f["run_dir"] for f in cv["folds"]] == ["folds/00", "folds/01", "folds/02"]
    vals = [json.loads((out / f"folds/0{i}/metrics.json").read_text())["val"]["auc"] for i in range(3)]
    assert [f["val"]["auc"] for f in cv["folds"]] == vals
    assert cv["mean"]["val"]["auc"] == pytest.approx(np.mean(vals))
    assert cv["sd"]["val"]["auc"] == pytest.approx(np.std(vals, ddof=1))
    assert cv["split"]["n"] == 88 and cv["split"]["groups"] == 86  # 80 train + 8 val; two patients twice
    oof = read_prediction_table(out / "predictions" / "oof.csv")
    assert len(oof.items) == len(set(oof.items)) == 88 and sorted(set(oof.folds.tolist())) == [0, 1, 2]
    for i in range(3):  # each pooled image scored by the one fold that held it out
        val = read_prediction_table(out / f"folds/0{i}/predictions/val.csv")
        rows = [oof.items.index(x) for x in val.items]
        assert np.array_equal(oof.scores[rows], val.scores) and set(oof.folds[rows]) == {i}
    groups = {}
    for item, f in zip(oof.items, oof.folds):
        m = re.search(CHEST_GROUPS, item)
        groups.setdefault(m.group(1), set()).add(int(f))
    assert all(len(v) == 1 for v in groups.values())  # no patient in two folds
    tests = [read_prediction_table(out / f"folds/0{i}/predictions/test.csv").scores for i in range(3)]
    ens = read_prediction_table(out / "predictions" / "test.csv")
    assert np.allclose(ens.scores, np.mean(tests, axis=0), atol=1e-15) and len(ens.scores) == 80
    assert metrics["test"]["auc"] == cv["ensemble"]["test"]["auc"]
    assert metrics["val"]["auc"] == cv["oof"]["auc"] and metrics["val"]["n"] == 88
    lo, hi = cv["oof"]["auc_ci"]
    assert lo <= cv["oof"]["auc"] <= hi and metrics["threshold"]["chosen_on"] == "oof"
    from sklearn.metrics import roc_auc_score

    assert cv["oof"]["auc"] == pytest.approx(roc_auc_score(oof.labels[:, 0], oof.scores[:, 1]))
    card = (out / "MODEL_CARD.md").read_text()
    assert "## Cross-validation" in card and "Out-of-fold, pooled (88 images)" in card
    report = (out / "report.html").read_text()
    assert 'id="crossval"' in report and "3-fold cross-validation" in report and "mean ± sd" in report
    assert not (out / "folds/00/report.html").exists()


@pytest.mark.slow
def test_a_fold_run_reproduces_alone(chest_cv, tmp_path):
    from medbench.config import load_config
    from medbench.run import train

    out, _ = chest_cv
    alone = train(load_config(out / "folds/01/config.yaml"), tmp_path / "fold1", quiet=True, report=False)
    a = read_prediction_table(alone / "predictions/val.csv")
    b = read_prediction_table(out / "folds/01/predictions/val.csv")
    assert a.items == b.items and np.array_equal(a.scores, b.scores)


@pytest.mark.slow
def test_evaluate_refuses_the_parent(chest_cv):
    from medbench.evaluation import evaluate

    with pytest.raises(MedbenchError, match="3-fold cross-validation.*evaluate a fold run"):
        evaluate(chest_cv[0])


def test_too_many_folds_fails_before_training(tmp_path, shared_data):
    from medbench.run import train

    cfg = {"dataset": f"folder:{shared_data / 'chest_xray_subset'}", "model": "cnn2", "epochs": 1, "folds": 40}
    with pytest.raises(MedbenchError, match="--folds 40 needs 40 image.s. of every class in train\\+val, class "
                                            "'NORMAL' has 34; use --folds 34 or fewer"):
        train(cfg, tmp_path / "cv", quiet=True)
    assert not (tmp_path / "cv" / "folds").exists()


@pytest.mark.slow
def test_sigkill_then_resume_retrains_only_unfinished_folds(tmp_path, shared_data):
    out = tmp_path / "cv"
    cmd = [sys.executable, "-m", "medbench", "train", "--dataset", f"folder:{shared_data / 'chest_xray_subset'}",
           "--model", "cnn2", "--epochs", "2", "--folds", "3", "--seed", "0", "--no-report", "--out", str(out)]
    kill_when(cmd, lambda: (out / "folds/01/resume.safetensors").is_file() and (out / "folds/01/history.csv")
              .is_file(), env=os.environ.copy(), what="the CV run")
    assert (out / "folds/00/metrics.json").is_file() and not (out / "folds/01/metrics.json").exists()
    before = _md5s(out / "folds/00")
    done = subprocess.run([sys.executable, "-m", "medbench", "train", "--resume", str(out)], capture_output=True,
                          text=True, env=os.environ.copy(), timeout=600)
    assert done.returncode == 0, done.stderr
    assert _md5s(out / "folds/00") == before  # the finished fold is untouched
    assert "fold 1/3" not in done.stderr + done.stdout and "fold 2/3 (resumed)" in done.stderr + done.stdout
    assert len((out / "folds/01/history.csv").read_text().splitlines()) == 3  # header + 2 epochs, none twice
    cv = json.loads((out / "cv.json").read_text())
    assert [f["fold"] for f in cv["folds"]] == [0, 1, 2] and (out / "predictions/oof.csv").is_file()
    assert not any((out / f"folds/0{i}/resume.safetensors").exists() for i in range(3))
    again = subprocess.run([sys.executable, "-m", "medbench", "train", "--resume", str(out)], capture_output=True,
                           text=True, env=os.environ.copy(), timeout=120)
    assert again.returncode == 2 and "nothing to resume" in again.stderr


def test_make_pool_items_of_own_data(shared_data):
    from medbench.build import build_dataset

    ds = build_dataset(resolve_config({"dataset": f"folder:{shared_data / 'chest_xray_subset'}"}))
    pool = make_pool(ds, 3, group_regex=CHEST_GROUPS)
    assert pool.items[0].startswith("train/") and pool.items[-1].startswith("val/") and len(pool.items) == 88
