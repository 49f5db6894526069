"""report.html of a real (tiny) BreastMNIST run, rendered in headless Chromium; figures; Grad-CAM."""
from __future__ import annotations

import base64
import html
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

from medbench.data import load_dataset
from medbench.explain import find_target_layer, gradcam, overlay
from medbench.metrics import compute_metrics
from medbench.report import figures as F
from medbench.report import write_run_report
from medbench.report.analysis import confident_errors
from medbench.report.html import fmt
from medbench.rundir import predictions_path, read_predictions

FIGURES = {"curves", "roc", "pr", "confusion", "confusion-normalized", "reliability", "errors", "gradcam"}
HEADINGS = ["Summary metrics", "Training curves", "ROC and precision–recall curves (test)", "Confusion matrix (test)",
            "Calibration (test)", "Per-class metrics (test)", "Most confident errors (test)", "Grad-CAM (test)",
            "Configuration", "Environment"]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def ds(medmnist_dir):
    return load_dataset("breastmnist", 28, data_dir=medmnist_dir, progress=False)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, medmnist_dir, ds):
    from medbench.run import train

    torch.manual_seed(0)
    return train({"dataset": "breastmnist", "model": "cnn5", "epochs": 2}, tmp_path_factory.mktemp("report") / "run",
                 quiet=True, data_dir=medmnist_dir, dataset=ds)


@pytest.fixture(scope="module")
def report(run_dir, ds) -> Path:
    path = write_run_report(run_dir, dataset=ds)
    assert path == run_dir / "report.html" and path.is_file()
    return path


class _Cells(HTMLParser):
    """Text of every <td> with data-split/data-metric, per table id; all src/href values; tag names."""

    def __init__(self):
        super().__init__()
        self.cells: dict[tuple[str, str, str], str] = {}
        self.refs: list[str] = []
        self.tags: list[tuple[str, dict]] = []
        self._table, self._cell, self._text = None, None, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        self.refs += [v for k, v in attrs if k in ("src", "href") and v is not None]
        if tag == "table":
            self._table = a.get("id")
        if tag == "td" and "data-metric" in a:
            self._cell, self._text = (self._table, a.get("data-split", ""), a["data-metric"]), []

    def handle_data(self, data):
        if self._cell:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag == "td" and self._cell:
            self.cells[self._cell] = "".join(self._text).strip()
            self._cell = None


def _parse(path: Path) -> _Cells:
    p = _Cells()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def _check_value(text: str, value, where: str) -> None:
    if value is None:
        assert text == "n/a", where
    elif isinstance(value, bool):
        assert text == ("yes" if value else "no"), where
    elif isinstance(value, int):
        assert text == str(value), where
    else:
        shown = float(re.match(r"[+-]?\d+\.\d+", text).group(0))
        assert abs(shown - value) <= 5.01e-4, f"{where}: shows {text}, metrics.json has {value}"


def _scalar_metrics(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if not k.endswith("_ci") and (v is None or isinstance(v, (int, float)))}


def test_report_renders_in_chromium(report, run_dir, tmp_path):
    from conftest import offline_page

    metrics = json.loads((run_dir / "metrics.json").read_text())
    shot = tmp_path / "report.png"
    with offline_page() as (page, errors):
        page.goto(report.as_uri(), wait_until="load")
        images = page.evaluate("Array.from(document.images).map(i => ({figure: i.dataset.figure, "
                               "ok: i.complete && i.naturalWidth > 0, w: i.naturalWidth}))")
        headings = page.evaluate("Array.from(document.querySelectorAll('h2')).map(h => h.textContent.trim())")
        cells = page.evaluate("Array.from(document.querySelectorAll('#summary td[data-metric]')).map(td => "
                              "[td.dataset.split, td.dataset.metric, td.textContent.trim()])")
        title = page.title()
        page.screenshot(path=str(shot), full_page=True)

    assert errors == []
    assert images and all(i["ok"] for i in images), [i for i in images if not i["ok"]]
    assert sorted(i["figure"] for i in images) == sorted(FIGURES)
    expected = HEADINGS + (["Overfitting (train − test gap)"] if metrics.get("gap") else []) \
        + (["Decision threshold"] if metrics.get("threshold") else [])
    assert set(expected) <= set(headings), set(expected) - set(headings)
    assert "breastmnist" in title and "cnn5" in title
    # every scalar metric of every split is shown, with the value from metrics.json
    shown = {(s, m): text for s, m, text in cells}
    for split in ("train", "val", "test"):
        for key, value in _scalar_metrics(metrics[split]).items():
            assert (split, key) in shown, f"{split}/{key} missing from the summary"
            _check_value(shown[split, key], value, f"{split}/{key}")
    assert shot.is_file() and shot.stat().st_size > 50_000
    assert shot.read_bytes()[:8] == PNG


def test_report_is_self_contained(report):
    text = report.read_text(encoding="utf-8")
    parsed = _parse(report)
    assert not [r for r in parsed.refs if r.lower().startswith(("http://", "https://", "//"))]
    assert not [t for t, _ in parsed.tags if t in ("script", "iframe", "object", "embed")]
    assert not re.search(r"<script[^>]*\bsrc=", text, re.I)
    assert not [a for t, a in parsed.tags if t == "link" and a.get("rel") == "stylesheet"]
    assert "@import" not in text and "url(" not in text
    srcs = [a["src"] for t, a in parsed.tags if t == "img"]
    assert len(srcs) == len(FIGURES)
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG


def test_report_shows_cis_and_extra_keys(run_dir, ds, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("tb", "report.html"))
    metrics = json.loads((run / "metrics.json").read_text())
    test = metrics["test"]
    test.update(auc_ci=[0.70123, 0.81234], acc_ci=[0.6, 0.9], kappa_quadratic=None, brier_score=0.1234,
                mae=None)
    names = list(ds.class_names)
    test["per_class"] = {n: {"precision": 0.5, "recall": None, "f1": 0.25, "support": 7, "auc": 0.75,
                             "auc_ci": [0.6, 0.85]} for n in names}
    metrics["gap"] = {"acc": 0.0512, "auc": -0.0123, "auc_ci": [-0.05, 0.02]}
    metrics["threshold"] = {"youden": 0.4321, "chosen_on": "val"}
    metrics["evaluation"] = {"ensemble": 3, "tta": True, "bootstrap": 1000, "seed": {"nested": [1, 2]}}
    test["at_youden"] = {"threshold": 0.4321, "acc": 0.8, "sensitivity": 0.75, "specificity": None}
    (run / "metrics.json").write_text(json.dumps(metrics))

    path = write_run_report(run, dataset=ds)
    parsed = _parse(path)
    cells = parsed.cells
    assert cells["summary", "test", "auc"] == f"{fmt(test['auc'])} (0.701–0.812)"
    assert cells["summary", "test", "acc"] == f"{fmt(test['acc'])} (0.600–0.900)"
    assert cells["summary", "test", "kappa_quadratic"] == "n/a"
    assert cells["summary", "test", "mae"] == "n/a"
    assert cells["summary", "test", "brier_score"] == "0.123"
    assert cells["summary", "train", "brier_score"] == "—"  # a key only one split has
    assert cells["gap", "", "acc"] == "+0.051" and cells["gap", "", "auc"] == "-0.012 (-0.050–0.020)"
    assert cells["at-youden", "test", "threshold"] == "0.432" and cells["at-youden", "test", "specificity"] == "n/a"
    assert cells["per-class", "", "auc"] == "0.750 (0.600–0.850)" and cells["per-class", "", "recall"] == "n/a"
    text = path.read_text(encoding="utf-8")
    for heading in ("Overfitting (train − test gap)", "Decision threshold", "Evaluation settings"):
        assert f">{heading}</h2>" in text
    assert "Source: metrics.json" in text
    assert "{&quot;nested&quot;: [1, 2]}" in text  # nested settings as escaped JSON


def test_report_tolerates_minimal_run_dir(run_dir, ds, tmp_path):
    """Only acc/auc/loss/n per split, no history, no predictions: the test scores come from the weights."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("tb", "report.html", "predictions", "history.csv"))
    full = json.loads((run / "metrics.json").read_text())
    minimal = {s: {k: full[s][k] for k in ("acc", "auc", "loss", "n")} for s in ("train", "val", "test")}
    minimal["test"]["auc"] = None
    (run / "metrics.json").write_text(json.dumps(minimal))
    (run / "config.yaml").write_text((run / "config.yaml").read_text() + "# <script>alert(1)</script>\n")

    path = write_run_report(run, dataset=ds)
    parsed = _parse(path)
    text = path.read_text(encoding="utf-8")
    assert parsed.cells["summary", "test", "auc"] == "n/a"
    assert parsed.cells["summary", "val", "n"] == str(full["val"]["n"])
    assert "history.csv not found" in text and "recomputed from the saved weights" in text
    assert "Source: computed by medbench.metrics" in text and "computed from the test predictions" in text
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    figures = {a.get("data-figure") for t, a in parsed.tags if t == "img"}
    assert figures == FIGURES - {"curves"}
    assert ">Overfitting" not in text and ">Decision threshold<" not in text


def test_fallback_confusion_follows_the_runs_decision(run_dir, ds, tmp_path):
    """A binary run evaluated with ``decision: youden``: with no confusion matrix in metrics.json the report
    computes one from the test predictions, at the run's (Youden) threshold, not at 0.5."""
    from medbench.run import evaluate

    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("tb", "report.html"))
    config = run / "config.yaml"
    text, swaps = re.subn(r"^decision: .*$", "decision: youden", config.read_text(), count=1, flags=re.M)
    assert swaps == 1
    config.write_text(text)
    record = evaluate(run, dataset=ds, quiet=True).path  # evaluations/plain: the training record stays as it was
    metrics = json.loads((record / "metrics.json").read_text())
    assert metrics["threshold"]["headline"] == metrics["threshold"]["youden"] != 0.5
    youden_cm = metrics["test"].pop("confusion_matrix")
    del metrics["test"]["per_class"]
    (record / "metrics.json").write_text(json.dumps(metrics))
    labels = ds["test"].labels.numpy()
    at_half = compute_metrics(labels, read_predictions(predictions_path(record, "test")), "binary")["confusion_matrix"]
    assert at_half != youden_cm  # else this run could not tell the two rules apart

    text = write_run_report(run, dataset=ds, evaluation=record.name).read_text(encoding="utf-8")
    assert f"Shows evaluation evaluations/{record.name}" in text
    shown = re.search(r'<p data-matrix="([^"]*)">[^<]*Source: computed from the test predictions', text)
    assert shown and json.loads(html.unescape(shown.group(1))) == youden_cm
    assert "Source: computed by medbench.metrics" in text
    assert f"positive when p &gt; {metrics['threshold']['headline']:.4g}" in text


def test_gradcam_on_real_images(run_dir, ds):
    from medbench.build import build_preprocess, build_task, load_run_model
    from medbench.config import load_config
    from medbench.models import create_model

    cfg = load_config(run_dir / "config.yaml")
    task = build_task(cfg, ds)
    trained = load_run_model(run_dir, cfg, ds, task, torch.device("cpu")).eval()
    torch.manual_seed(0)
    resnet = create_model("resnet18", num_classes=2, in_chans=1, img_size=28).eval()
    images = ds["test"].images[:8]
    x = build_preprocess(cfg, ds)(images)
    for model, layer_name in ((trained, None), (resnet, "layer4.1.conv2")):
        layer = find_target_layer(model, x)
        names = {m: n for n, m in model.named_modules()}
        if layer_name:
            assert names[layer].endswith(layer_name)
        else:  # cnn5 at 28 px: the fifth (256-channel) convolution still has a 2x2 output
            assert isinstance(layer, torch.nn.Conv2d) and layer.out_channels == 256
        with torch.no_grad():
            predicted = model(x).argmax(1)  # the report explains the predicted class
        cams = gradcam(model, x, predicted)
        assert cams.shape == (8, 28, 28) and cams.dtype == torch.float32
        assert float(cams.min()) >= 0.0 and float(cams.max()) <= 1.0
        assert all(float(c.max() - c.min()) > 0.05 for c in cams), "constant heatmap"
        assert model.training is False
        rgb = overlay(images[0], cams[0])
        assert rgb.shape == (28, 28, 3) and rgb.dtype == np.uint8
        assert not np.array_equal(rgb, np.repeat(images[0].permute(1, 2, 0).numpy(), 3, axis=2))
    # one target for the whole batch; and a model run in training mode gets it back
    resnet.train()
    assert gradcam(resnet, x[:2], 1).shape == (2, 28, 28) and resnet.training


def test_figures_for_every_task_type():
    rng = np.random.default_rng(0)
    n = 60
    y_mc = rng.integers(0, 4, (n, 1))
    s_mc = rng.dirichlet(np.ones(4), n)
    y_ml = rng.integers(0, 2, (n, 3))
    s_ml = rng.random((n, 3))
    y_ml[:, 2] = 1  # a label with one class only: AUC n/a, no crash
    names = ["a", "b", "c", "a very long class name indeed"]
    figs = [F.roc_figure(y_mc, s_mc, "multiclass", names), F.pr_figure(y_mc, s_mc, "ordinal", names),
            F.roc_figure(y_ml, s_ml, "multilabel", names[:3]), F.pr_figure(y_ml, s_ml, "multilabel", names[:3]),
            F.reliability_figure(y_mc, s_mc, "multiclass"), F.reliability_figure(y_ml, s_ml, "multilabel", bins=10),
            F.confusion_figure(np.array([[5, 1, 0, 0], [2, 3, 0, 0], [0, 0, 0, 0], [1, 1, 1, 4]]), names, True),
            F.confusion_figure(np.array([[[10, 2], [3, 5]]] * 3), names[:3], False),
            F.curves_figure([{"epoch": "1", "train_loss": "0.7", "val_loss": "0.6", "train_auc": "", "val_auc": ""},
                             {"epoch": "2", "train_loss": "0.5", "val_loss": "0.55", "train_auc": "0.8",
                              "val_auc": ""}])]
    for fig in figs:
        png = F.figure_to_png(fig)
        assert png[:8] == PNG and len(png) > 5_000
    r = F.reliability_bins(np.array([[1], [0], [1], [1]]), np.array([[0.1, 0.9], [0.2, 0.8], [0.4, 0.6], [0.3, 0.7]]),
                           "binary", bins=5)
    assert r["count"].sum() == 4 and 0 <= r["ece"] <= 1
    errs = confident_errors(y_ml, s_ml, "multilabel", k=5)
    assert len(errs) == 5 and [e[3] for e in errs] == sorted((e[3] for e in errs), reverse=True)
    for i, label, pred, p in errs:
        assert pred != y_ml[i, label] and p >= 0.5
    errs = confident_errors(y_mc, s_mc, "multiclass")
    assert len(errs) == 16 and all(t != p for _, t, p, _ in errs)
