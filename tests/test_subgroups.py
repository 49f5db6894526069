"""Subgroup metrics on a CSV dataset of real images with a generated ``sex`` column: per subgroup equal to
scikit-learn, CIs that bracket them, undefined values with their reason, the largest gap; the report section; and
``medbench train --subgroup-cols`` end to end."""
import json
import re
import warnings

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, recall_score, roc_auc_score

from medbench.cli import main
from medbench.data import load_dataset
from medbench.data.subgroups import NONE, subgroup_values
from medbench.metrics import compute_metrics
from medbench.metrics.subgroups import subgroup_metrics
from medbench.report.subgroups import subgroup_sections
from subgroup_data import read_column, write_breast_csv

OPTIONS = dict(image_col="path", label_cols=["label"], split_col="split")


@pytest.fixture(scope="module")
def breast_csv(tmp_path_factory, medmnist_dir):
    return write_breast_csv(tmp_path_factory.mktemp("subgroup-metrics") / "data", medmnist_dir)


@pytest.fixture(scope="module")
def scored(breast_csv):
    """The real test images (156), scored by a real image feature: darker lesions score as malignant."""
    ds = load_dataset(f"csv:{breast_csv}", 28, progress=False, **OPTIONS)
    images = ds["test"].images.numpy().astype(np.float64)
    p1 = images.reshape(len(images), -1).mean(1) / 255.0  # P(class 1, "normal, benign") rises with brightness
    scores = np.stack([1 - p1, p1], 1)
    return ds, ds["test"].labels.numpy(), scores


def test_per_subgroup_auc_acc_equal_scikit_learn_and_cis_bracket_them(scored, breast_csv):
    ds, y, scores = scored
    groups = subgroup_values(ds, "test", ["sex", "site"])
    sex = read_column(breast_csv, "sex")
    assert groups["sex"].tolist() == [sex[f] for f in ds.meta["files"]["test"]]
    thr = float(np.median(scores[:, 1]))  # a threshold that is not 0.5, as a run's Youden one
    rec = subgroup_metrics(y, scores, "binary", groups, threshold=thr, bootstrap=400, seed=3,
                           class_names=ds.class_names, positive=0)
    assert rec["positive"] == "0" and rec["replicates"] == 400
    assert set(rec["columns"]["site"]["groups"]) == {"A", "B", NONE}
    assert list(rec["columns"]["site"]["groups"])[-1] == NONE
    for col in ("sex", "site"):
        for g, r in rec["columns"][col]["groups"].items():
            m = groups[col] == g
            yt, p = y[m, 0], scores[m, 1]
            decided = (p > thr).astype(int)
            assert r["n"] == m.sum() and r["class_counts"] == {"0": int((yt == 0).sum()), "1": int((yt == 1).sum())}
            assert r["prevalence"] == pytest.approx(np.mean(yt == 0), abs=1e-15)
            assert abs(r["auc"] - roc_auc_score(yt, p)) <= 1e-12
            assert abs(r["acc"] - accuracy_score(yt, decided)) <= 1e-12
            assert abs(r["sensitivity"] - recall_score(yt, decided, pos_label=0)) <= 1e-12
            assert abs(r["specificity"] - recall_score(yt, decided, pos_label=1)) <= 1e-12
            for key in ("auc", "acc", "sensitivity", "specificity"):
                lo, hi = r[f"{key}_ci"]
                assert lo <= r[key] <= hi and lo < hi, (col, g, key, r)
            assert r["undefined"] == {}
    whole = compute_metrics(y, scores, "binary", threshold=thr)
    assert sum(r["n"] for r in rec["columns"]["sex"]["groups"].values()) == whole["n"] == 156
    gap = rec["columns"]["sex"]["gaps"]["auc"]
    f, m = (rec["columns"]["sex"]["groups"][g]["auc"] for g in ("F", "M"))
    assert gap["gap"] == pytest.approx(abs(f - m)) and {gap["max"]["group"], gap["min"]["group"]} == {"F", "M"}
    assert gap["max"]["value"] == max(f, m)
    tie = subgroup_metrics(y, np.stack([np.zeros(len(y)), np.ones(len(y))], 1), "binary", groups, bootstrap=0)
    even = tie["columns"]["sex"]["gaps"]["sensitivity"]  # every image decided positive: sensitivity 1 everywhere
    assert even["gap"] == 0 and {even["max"]["group"], even["min"]["group"]} == {"F", "M"}
    json.dumps(rec, allow_nan=False)  # plain JSON: no NaN anywhere


def test_one_class_subgroup_is_null_with_its_reason_and_left_out_of_the_gap(scored):
    ds, y, scores = scored
    some_malignant = (y[:, 0] == 0) & (np.cumsum(y[:, 0] == 0) <= 12)
    groups = {"cls": np.where(some_malignant, "all-malignant", np.where(np.arange(len(y)) % 2, "odd", "even"))}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the reasons are recorded, not warned
        rec = subgroup_metrics(y, scores, "binary", groups, bootstrap=200, class_names=["malignant", "benign"])
    one = rec["columns"]["cls"]["groups"]["all-malignant"]
    assert one["auc"] is None and one["auc_ci"] is None
    assert one["undefined"]["auc"] == "only class 'malignant' present"
    # positive defaults to class 1 (MedMNIST's last column): this subgroup has no positive image
    assert one["sensitivity"] is None and one["sensitivity_ci"] is None
    assert one["undefined"]["sensitivity"] == "no positive ('benign') images in this subgroup"
    assert one["n"] == 12 and one["specificity"] == pytest.approx(np.mean(scores[some_malignant, 1] <= 0.5))
    for key in ("auc", "sensitivity"):
        gap = rec["columns"]["cls"]["gaps"][key]
        assert {gap["max"]["group"], gap["min"]["group"]} == {"odd", "even"}
    gap = rec["columns"]["cls"]["gaps"]["specificity"]
    assert "all-malignant" in (gap["max"]["group"], gap["min"]["group"])
    lonely = subgroup_metrics(y, scores, "binary", {"cls": groups["cls"]}, bootstrap=0)["columns"]["cls"]
    assert lonely["groups"]["odd"]["auc_ci"] is None  # no bootstrap, no CI
    json.dumps(rec, allow_nan=False)


def test_multiclass_subgroups_equal_scikit_learn(medmnist_dir):
    data = np.load(medmnist_dir / "retinamnist.npz")
    y = data["test_labels"].astype(int)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(len(y), 5)) + 2.0 * np.eye(5)[y[:, 0]]
    scores = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    site = np.where(rng.random(len(y)) < 0.5, "north", "south")
    rec = subgroup_metrics(y, scores, "multiclass", {"site": site}, bootstrap=100)
    for g, r in rec["columns"]["site"]["groups"].items():
        m = site == g
        assert abs(r["acc"] - accuracy_score(y[m, 0], scores[m].argmax(1))) <= 1e-12
        assert abs(r["auc"] - roc_auc_score(y[m, 0], scores[m], multi_class="ovr", labels=range(5))) <= 1e-12
        assert "sensitivity" not in r and "prevalence" not in r
    assert set(rec["columns"]["site"]["gaps"]) == {"auc", "acc"}


def test_report_section_shows_each_subgroup_and_the_gap(scored):
    ds, y, scores = scored
    rec = subgroup_metrics(y, scores, "binary", subgroup_values(ds, "test", ["sex"]), bootstrap=100)
    assert subgroup_sections({"test": {"auc": 0.8}}) == []
    [(sid, heading, body)] = subgroup_sections({"test": {"subgroups": rec}})
    assert sid == "subgroups" and "test" in heading
    f = rec["columns"]["sex"]["groups"]["F"]
    cell = re.search(r'data-column="sex" data-group="F" data-metric="auc">([^<]+)<', body).group(1)
    assert cell == f"{f['auc']:.3f} ({f['auc_ci'][0]:.3f}–{f['auc_ci'][1]:.3f})"
    gap = re.search(r'data-column="sex" data-gap="auc">([^<]+)<', body).group(1)
    assert gap == f"{rec['columns']['sex']['gaps']['auc']['gap']:.3f}"


def test_train_with_subgroup_cols_records_and_reports_them(breast_csv, tmp_path):
    """Needs evaluation.py to call subgroup_metrics (the lead wires it): metrics.json["test"]["subgroups"]."""
    from medbench.rundir import read_prediction_table  # the headered predictions table (being added)

    run = tmp_path / "run"
    assert main(["train", "--dataset", f"csv:{breast_csv}", "--image-col", "path", "--label-cols", "label",
                 "--split-col", "split", "--subgroup-cols", "sex,site", "--model", "cnn5", "--epochs", "1",
                 "--out", str(run), "--quiet"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    rec = metrics["test"]["subgroups"]
    table = read_prediction_table(run / "predictions" / "test.csv")
    sex, site = read_column(breast_csv, "sex"), read_column(breast_csv, "site")
    thr = metrics["test"]["threshold"]
    for col, values in (("sex", sex), ("site", site)):
        member = np.array([values[i] or NONE for i in table.items])
        for g, r in rec["columns"][col]["groups"].items():
            m = member == g
            yt, p = table.labels[m, 0], table.scores[m, 1]
            assert r["n"] == m.sum()
            assert abs(r["auc"] - roc_auc_score(yt, p)) <= 1e-12
            assert abs(r["acc"] - accuracy_score(yt, (p > thr).astype(int))) <= 1e-12
            assert r["auc_ci"] is not None and r["auc_ci"][0] <= r["auc"] <= r["auc_ci"][1]
    html = (run / "report.html").read_text()
    assert 'id="subgroups"' in html and 'data-column="site" data-group="(none)"' in html
