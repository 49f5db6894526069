"""The run report shows metrics.json's warnings first, and names the class of every class-specific metric."""
from __future__ import annotations

import json
import re
import shutil

from medbench.metrics import compute_metrics
from medbench.report import write_run_report
from medbench.rundir import predictions_path, read_predictions


def test_warnings_come_first_and_sensitivity_names_its_class(breast_run, medmnist_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(breast_run, run, ignore=shutil.ignore_patterns("tb", "report.html"))
    from medbench.data import load_dataset

    ds = load_dataset("breastmnist", 28, data_dir=medmnist_dir, progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    for split in ("train", "val", "test"):  # as evaluation records them with positive class 0
        y, s = ds[split].labels.numpy(), read_predictions(predictions_path(run, split))
        metrics[split] = compute_metrics(y, s, "binary", class_names=ds.class_names, positive=0)
    test = metrics["test"]
    at = compute_metrics(y, s, "binary", threshold=0.4, class_names=ds.class_names, positive=0)
    test["at_youden"] = {k: at[k] for k in ("threshold", "acc", "sensitivity", "specificity")}
    warns = ["the validation split is too small to select an epoch: 'malignant' 7 validation images (rule: ...)",
             "test: predictions collapsed to one class: all 156 images are predicted <normal, benign>"]
    metrics["warnings"] = warns
    (run / "metrics.json").write_text(json.dumps(metrics))

    text = write_run_report(run, dataset=ds).read_text(encoding="utf-8")
    headings = re.findall(r"<h2>(.*?)</h2>", text)
    assert headings[0] == "Warnings (2)" and headings[1] == "Summary metrics"
    section = text[text.index('<section id="warnings">'):text.index('<section id="summary">')]
    assert "&#x27;malignant&#x27; 7 validation images" in section
    assert "predicted &lt;normal, benign&gt;" in section  # escaped, not markup
    assert text.index('href="#warnings"') < text.index('href="#summary"')
    # the class each class-specific metric is about: sensitivity is malignancy recall here
    assert "sensitivity (malignant) <code>sensitivity</code>" in text
    assert "specificity (normal, benign) <code>specificity</code>" in text
    youden = text[text.index('id="at-youden"'):]
    assert "sensitivity (malignant)" in youden  # the at-Youden table names it too (its record has no class_of)
    assert text.count("sensitivity (malignant)") == 2
    # splits that disagree on the class (an inconsistent file) name none rather than a wrong one
    metrics["train"]["class_of"] = {"sensitivity": "normal, benign", "specificity": "malignant"}
    (run / "metrics.json").write_text(json.dumps(metrics))
    text = write_run_report(run, dataset=ds).read_text(encoding="utf-8")
    assert "sensitivity <code>sensitivity</code>" in text and "sensitivity (" not in text


def test_no_warnings_section_without_warnings(breast_run, medmnist_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(breast_run, run, ignore=shutil.ignore_patterns("tb", "report.html"))
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.pop("warnings", None)
    (run / "metrics.json").write_text(json.dumps(metrics))
    text = write_run_report(run, data_dir=medmnist_dir).read_text(encoding="utf-8")
    assert 'id="warnings"' not in text and re.findall(r"<h2>(.*?)</h2>", text)[0] == "Summary metrics"
