"""The study comparison report (report.html, results.md, summary.json) of a real study: BreastMNIST, cnn2 and cnn5,
seeds 0 and 1, one epoch, plus a run that fails in the same results store. Its numbers are checked against each
run's metrics.json and an independent bootstrap of the saved predictions; the page is rendered in headless
Chromium. The CheXtransfer pieces (Spearman, boost, truncation, parameter counts, ImageNet top-1) are checked on
small synthetic inputs and real model metadata."""
from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from medbench.study import load_study, run_study
from medbench.study import published as P
from medbench.study.grid import build_study
from medbench.study.report import (
    count_params,
    imagenet_top1,
    mean_std,
    min_wilcoxon_p,
    percentile_ci,
    pretraining_boost,
    spearman,
    truncation_efficiency,
    wilcoxon_pairs,
    write_study_report,
)

STUDY = """\
name: report-tiny
grid: {dataset: [breastmnist], model: [cnn2, cnn5], seed: [0, 1]}
fixed: {epochs: 1}
"""
# in the same store: a run that fails at once (cnn2 has no stages to truncate)
FAILING = """\
name: report-failing
grid: {dataset: [breastmnist], model: [cnn2], truncate: [1], seed: [0]}
fixed: {epochs: 1}
"""
REPLICATES = 400
SEED = 3
SECTIONS = ("leaderboard", "gap", "published", "significance", "chextransfer")


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory, medmnist_dir, cache_dir):
    """A finished study directory and its report (written once for the module)."""
    root = tmp_path_factory.mktemp("study-report")
    (root / "study.yaml").write_text(STUDY)
    (root / "failing.yaml").write_text(FAILING)
    out = root / "out"
    with pytest.MonkeyPatch.context() as mp:  # the autouse env fixture is per test; this fixture is per module
        mp.setenv("MEDBENCH_DATA", str(medmnist_dir))
        mp.setenv("MEDBENCH_CACHE", str(cache_dir))
        mp.setenv("MEDBENCH_MIRROR", "http://127.0.0.1:9/")
        failing = run_study(load_study(root / "failing.yaml"), out, data_dir=medmnist_dir)
        assert failing["failed"] == 1
        study = load_study(root / "study.yaml")
        counts = run_study(study, out, data_dir=medmnist_dir)
        assert counts["done"] == 4, counts
        results_csv = (out / "results.csv").read_text()
        paths = write_study_report(out, data_dir=medmnist_dir, replicates=REPLICATES, seed=SEED)
    return {"out": out, "study": study, "paths": paths, "results_csv": results_csv,
            "summary": json.loads(paths["summary"].read_text())}


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: set[str] = set()
        self.srcs: list[str] = []
        self.hrefs: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        if tag == "link":
            self.links.append(a.get("href"))
        elif "href" in a:
            self.hrefs.append(a["href"])
        if "src" in a:
            self.srcs.append(a["src"])


def _metrics(out: Path, run_id: str) -> dict:
    return json.loads((out / "runs" / run_id / "metrics.json").read_text())


def _section(summary: dict) -> dict:
    assert [s["title"] for s in summary["sections"]] == ["breastmnist"]
    return summary["sections"][0]


def _arms(summary: dict) -> dict[str, dict]:
    return {a["arm"]: a for a in _section(summary)["arms"]}


def _replicates(out: Path, run_ids, medmnist_dir) -> dict[str, np.ndarray]:
    """Independent recomputation: mean over runs of each resample's AUC / ACC on the shared count matrix."""
    from medbench.data import load_dataset
    from medbench.metrics import bootstrap_replicates, resample_counts
    from medbench.rundir import read_predictions

    ds = load_dataset("breastmnist", 28, data_dir=medmnist_dir, progress=False)
    y = ds["test"].labels.numpy()
    counts = resample_counts(len(y), REPLICATES, SEED)
    reps = [bootstrap_replicates(y, read_predictions(out / "runs" / i / "predictions" / "test.csv"), ds.task,
                                 counts=counts, metrics=["auc", "acc"]) for i in run_ids]
    return {m: np.mean([r[m] for r in reps], axis=0) for m in ("auc", "acc")}


def test_leaderboard_matches_metrics_json(study_dir, medmnist_dir):
    out, study, summary = study_dir["out"], study_dir["study"], study_dir["summary"]
    sec = _section(summary)
    assert sec["dataset"] == "breastmnist" and sec["n_test"] == 156 and sec["task"] == "binary"
    arms = _arms(summary)
    assert set(arms) == {"model=cnn2", "model=cnn5", "model=cnn2, truncate=1"}
    for model in ("cnn2", "cnn5"):
        arm = arms[f"model={model}"]
        ids = [r.id for r in study.runs if r.axes["model"] == model]
        ms = [_metrics(out, i) for i in ids]
        assert arm["n_seeds"] == arm["n_runs"] == 2 and sorted(arm["seeds"]) == [0, 1]
        for split in ("train", "val", "test"):
            for name in ("auc", "acc"):
                vals = [m[split][name] for m in ms]
                st = arm[f"{split}_{name}"]
                assert st["mean"] == pytest.approx(np.mean(vals), abs=1e-12), (model, split, name)
                assert st["std"] == pytest.approx(np.std(vals, ddof=1), abs=1e-12), (model, split, name)
        for name in ("auc", "acc"):
            assert arm[f"gap_{name}"]["mean"] == pytest.approx(np.mean([m["gap"][name] for m in ms]), abs=1e-12)
        # the CI: a bootstrap of the mean over seeds on one shared count matrix, recomputed independently
        reps = _replicates(out, ids, medmnist_dir)
        for name in ("auc", "acc"):
            lo, hi = np.percentile(reps[name][np.isfinite(reps[name])], [2.5, 97.5])
            ci = arm[f"test_{name}"]["ci"]
            assert ci == pytest.approx([lo, hi], abs=1e-12)
            assert ci[0] <= arm[f"test_{name}"]["mean"] <= ci[1]
    # ranked by mean test AUC; the best arm is the highest
    means = {k: a["test_auc"]["mean"] for k, a in arms.items() if a["n_seeds"]}
    best = max(means, key=means.get)
    assert sec["best_arm"] == best and arms[best]["best"] and arms[best]["rank"] == 1
    assert [a["arm"] for a in sec["arms"]][:2] == sorted(means, key=means.get, reverse=True)


def test_significance_paired_bootstrap(study_dir, medmnist_dir):
    out, study, summary = study_dir["out"], study_dir["study"], study_dir["summary"]
    sec = _section(summary)
    arms = _arms(summary)
    best = sec["best_arm"]
    other = next(a for a in ("model=cnn2", "model=cnn5") if a != best)
    comp = {s["arm"]: s for s in sec["significance"]}
    assert set(comp) == {other, "model=cnn2, truncate=1"}
    s = comp[other]
    assert s["diff"] == pytest.approx(arms[best]["test_auc"]["mean"] - arms[other]["test_auc"]["mean"], abs=1e-12)
    ids = {m: [r.id for r in study.runs if r.axes["model"] == m] for m in ("cnn2", "cnn5")}
    d = (_replicates(out, ids[best.split("=")[1]], medmnist_dir)["auc"]
         - _replicates(out, ids[other.split("=")[1]], medmnist_dir)["auc"])
    d = d[np.isfinite(d)]
    # two seeds per arm: no CI or p (the seed noise cannot be told from the effect), the limitation instead
    limit = "2 seeds per arm: too few to separate seed noise from the effect (need 3+)"
    assert s["p"] is None and s["ci"] is None and s["too_few"] == limit and s["n_seeds_compared"] == [2, 2]
    # the test-images-only bootstrap is kept in summary.json for contrast, never shown as the result
    images = s["test_images_only"]
    assert images["p"] == pytest.approx(min(1.0, 2 * min(np.mean(d <= 0), np.mean(d >= 0))), abs=1e-12)
    assert images["ci"] == pytest.approx(list(np.percentile(d, [2.5, 97.5])), abs=1e-12)
    md = study_dir["paths"]["markdown"].read_text()
    sig = md[md.index("## Significance"):md.index("## CheXtransfer")]
    row = next(line for line in sig.splitlines() if line.startswith(f"| {other} |"))
    assert row.endswith(f"| — | — | {limit} |"), row  # the limitation stands where the CI and p would
    assert "p (bootstrap)" not in md
    assert "seed-to-seed variation" in sig
    # the arm that never finished has nothing to compare
    assert comp["model=cnn2, truncate=1"]["p"] is None and comp["model=cnn2, truncate=1"]["n_seeds_arm"] == 0
    # one dataset: no across-dataset Wilcoxon
    assert summary["cross_dataset"]["wilcoxon"] == []


def test_failed_run_is_listed_and_results_csv_untouched(study_dir):
    out, summary = study_dir["out"], study_dir["summary"]
    assert summary["counts"] == {"total": 5, "done": 4, "failed": 1, "running": 0, "pending": 0, "missing": 0}
    [failed] = summary["not_done"]
    assert failed["status"] == "failed" and failed["arm"] == "model=cnn2, truncate=1" and failed["seed"] == 0
    assert "cannot be truncated" in failed["error"]
    arm = _arms(summary)["model=cnn2, truncate=1"]
    assert arm["n_seeds"] == 0 and arm["n_runs"] == 1 and arm["test_auc"]["mean"] is None and arm["rank"] is None
    md = study_dir["paths"]["markdown"].read_text()
    html = study_dir["paths"]["html"].read_text()
    for text in (md, html):
        assert failed["id"] in text and "failed" in text and "cannot be truncated" in text
    # results.csv is the runner's (one row per run of the last study run), not rewritten by the report
    assert (out / "results.csv").read_text() == study_dir["results_csv"]
    assert (out / "results.csv").read_text().splitlines()[0].startswith("id,status,dataset,model,seed,")


def test_outputs_hold_every_arm_and_section(study_dir):
    paths = study_dir["paths"]
    assert set(paths) == {"html", "markdown", "summary"} and all(p.is_file() for p in paths.values())
    assert paths["html"].name == "report.html" and paths["markdown"].name == "results.md"
    html = paths["html"].read_text()
    md = paths["markdown"].read_text()
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in html
    for heading in ("## Leaderboard", "## Train vs test", "## Published MedMNIST v2 comparison", "## Significance",
                    "## CheXtransfer analyses"):
        assert heading in md
    arms = _arms(study_dir["summary"])
    for arm in arms:
        assert f'data-arm="{arm}"' in html and (f"| {arm} |" in md or f"| **{arm}** |" in md), arm
    best = _section(study_dir["summary"])["best_arm"]
    assert f"| **{best}** |" in md  # the best arm in bold
    # the numbers shown are the summary's, to three decimals
    a = arms[best]
    assert f"{a['test_auc']['mean']:.3f} ± {a['test_auc']['std']:.3f}" in md
    assert f"{a['test_auc']['ci'][0]:.3f}–{a['test_auc']['ci'][1]:.3f}" in md
    # self-contained: inline images only, no scripts, no references to anything outside the file
    refs = _Refs()
    refs.feed(html)
    assert "script" not in refs.tags and refs.links == ["data:,"]  # the only link: an empty inline favicon
    assert refs.srcs and all(r.startswith("data:image/png;base64,") for r in refs.srcs)
    assert all(h.startswith("#") for h in refs.hrefs), refs.hrefs


def test_published_comparison(study_dir):
    sec = _section(study_dir["summary"])
    pub = sec["published"]
    assert {r["method"] for r in pub["rows"]} == set(P.MEDMNIST_V2_METHODS)
    assert pub["best"]["auc"] == {"value": 0.919, "methods": ["Google AutoML Vision"]}
    assert pub["best"]["acc"] == {"value": 0.863, "methods": ["ResNet-18 (28)"]}
    # ours: chosen by mean validation AUC, not test
    arms = {k: v for k, v in _arms(study_dir["summary"]).items() if v["n_seeds"]}
    by_val = max(arms, key=lambda k: arms[k]["val_auc"]["mean"])
    assert pub["ours"]["arm"] == by_val and sec["best_by_val"] == by_val
    assert pub["ours"]["test_auc"]["mean"] == arms[by_val]["test_auc"]["mean"]
    assert pub["ours"]["auc_rank"] == 1 + sum(r["auc"] > arms[by_val]["test_auc"]["mean"] for r in pub["rows"])
    md = study_dir["paths"]["markdown"].read_text()
    assert "| Google AutoML Vision | **0.919** | 0.861 |" in md and "| ResNet-18 (28) | 0.901 | **0.863** |" in md


def test_chextransfer_on_the_real_study(study_dir):
    chex = study_dir["summary"]["chextransfer"]
    assert chex["applicable"] and chex["architectures"] == ["cnn2", "cnn5"]
    points = {p["model"]: p for p in chex["points"]}
    assert set(points) == {"cnn2", "cnn5"}
    for model, p in points.items():
        assert p["params"] == count_params(model, num_classes=2, in_chans=1, img_size=28) > 0
        assert p["imagenet_top1"] is None  # no ImageNet weights for the small CNNs
    assert points["cnn2"]["params"] < points["cnn5"]["params"]
    assert chex["has_truncate_axis"] and chex["truncation"] == []  # the truncated arm never finished
    # two architectures per setting: Spearman needs three
    assert chex["spearman"] and all(s["rho"] is None for s in chex["spearman"])


def test_study_argument_lists_missing_runs(study_dir, tmp_path, medmnist_dir):
    """With a study, only its runs are reported, in its order; a run the store never saw is listed as missing."""
    for f in study_dir["out"].glob("study.db*"):  # the database (and any WAL files); its run_dir paths are absolute
        shutil.copy(f, tmp_path / f.name)
    study = build_study({"name": "report-tiny", "grid": {"dataset": ["breastmnist"], "model": ["cnn2", "cnn5"],
                                                         "seed": [0, 1, 2]}, "fixed": {"epochs": 1}})
    paths = write_study_report(tmp_path, study=study, data_dir=medmnist_dir, replicates=50)
    summary = json.loads(paths["summary"].read_text())
    assert summary["counts"] == {"total": 6, "done": 4, "failed": 0, "running": 0, "pending": 0, "missing": 2}
    assert summary["axes"] == ["dataset", "model", "seed"]
    assert sorted((r["arm"], r["seed"], r["status"]) for r in summary["not_done"]) == [
        ("model=cnn2", 2, "missing"), ("model=cnn5", 2, "missing")]
    arms = _arms(summary)
    assert set(arms) == {"model=cnn2", "model=cnn5"}
    assert all(a["n_seeds"] == 2 and a["n_runs"] == 3 for a in arms.values())
    full = _arms(study_dir["summary"])
    for k, a in arms.items():  # the same runs give the same means as the store-wide report
        assert a["test_auc"]["mean"] == full[k]["test_auc"]["mean"]


def test_report_renders_in_chromium(study_dir):
    from conftest import offline_page

    report = study_dir["paths"]["html"]
    with offline_page() as (page, errors):
        page.goto(report.as_uri(), wait_until="load")
        images = page.evaluate("Array.from(document.images).map(i => ({figure: i.dataset.figure, "
                               "ok: i.complete && i.naturalWidth > 0}))")
        tables = page.evaluate("Array.from(document.querySelectorAll('table')).map(t => ({id: t.id, "
                               "rows: t.querySelectorAll('tbody tr').length, "
                               "section: t.closest('section') && t.closest('section').id}))")
        sections = page.evaluate("Array.from(document.querySelectorAll('main > section')).map(s => s.id)")
        board = page.evaluate("Array.from(document.querySelectorAll('#leaderboard-breastmnist td[data-arm]'))"
                              ".map(td => td.dataset.arm)")
    assert errors == []
    assert sections == list(SECTIONS)
    assert images and all(i["ok"] for i in images), images
    assert {"leaderboard-breastmnist", "chex-params"} <= {i["figure"] for i in images}
    assert tables and all(t["rows"] > 0 for t in tables), tables
    ids = {t["id"] for t in tables}
    assert {"leaderboard-breastmnist", "not-done", "gap-breastmnist", "published-breastmnist",
            "significance-breastmnist", "chex-params"} <= ids
    assert sorted(board) == sorted(_arms(study_dir["summary"]))


# ---- pure pieces on synthetic inputs --------------------------------------------------------------------------

def test_mean_std_and_percentiles():
    assert mean_std([1.0, None, 2.0, float("nan"), 3.0]) == {"n": 3, "mean": 2.0, "std": 1.0}
    assert mean_std([0.7]) == {"n": 1, "mean": 0.7, "std": None}
    assert mean_std([]) == {"n": 0, "mean": None, "std": None}
    assert percentile_ci(np.array([np.nan] * 3)) is None
    assert percentile_ci(np.arange(101.0)) == pytest.approx([2.5, 97.5])


def test_spearman():
    from scipy.stats import spearmanr

    top1 = [69.758, 73.314, 76.13, 77.374, None]
    auc = [0.81, 0.80, 0.86, 0.88, 0.9]
    res = spearman(top1, auc)
    ref = spearmanr(top1[:4], auc[:4])
    assert res["n"] == 4 and res["rho"] == pytest.approx(ref.statistic) and res["p"] == pytest.approx(ref.pvalue)
    assert res["rho"] == pytest.approx(0.8)
    assert spearman([1, 2, 3], [3, 2, 1])["rho"] == pytest.approx(-1.0)
    small = spearman([1, 2], [0.5, 0.6])
    assert small["rho"] is None and small["p"] is None and "at least 3" in small["note"]
    assert spearman([1, 2, 3], [0.5, 0.5, 0.5])["rho"] is None


def test_pretraining_boost():
    reps = {k: np.full(200, v) + np.linspace(-0.01, 0.01, 200) for k, v in (("a", 0.9), ("b", 0.85))}
    rows = [{"group": "resnet18", "model": "resnet18", "pretrained": True, "auc": 0.90, "params": 11_000_000,
             "reps": reps["a"]},
            {"group": "resnet18", "model": "resnet18", "pretrained": False, "auc": 0.85, "params": 11_000_000,
             "reps": reps["b"]},
            {"group": "densenet121", "model": "densenet121", "pretrained": False, "auc": 0.8, "params": 7_000_000}]
    [b] = pretraining_boost(rows)  # densenet121 has no pretrained counterpart
    assert b["model"] == "resnet18" and b["boost"] == pytest.approx(0.05) and b["params"] == 11_000_000
    assert b["boost_ci"] == pytest.approx([0.05, 0.05]) and b["p"] == 0.0
    assert b["auc_pretrained"] == 0.90 and b["auc_scratch"] == 0.85


def test_truncation_efficiency():
    rows = [{"group": "r", "model": "resnet18", "truncate": 0, "auc": 0.90, "params": 11_000_000},
            {"group": "r", "model": "resnet18", "truncate": 1, "auc": 0.88, "params": 3_000_000},
            {"group": "r", "model": "resnet18", "truncate": 2, "auc": 0.80, "params": 700_000},
            {"group": "d", "model": "densenet121", "truncate": 1, "auc": 0.7, "params": 1_000_000}]
    res = truncation_efficiency(rows)
    assert [(t["model"], t["truncate"]) for t in res] == [("resnet18", 1), ("resnet18", 2)]  # d: no full model
    t1 = res[0]
    assert t1["delta_auc"] == pytest.approx(-0.02) and t1["params_removed"] == 8_000_000
    assert t1["auc_retained"] == pytest.approx(0.88 / 0.90) and t1["share_removed"] == pytest.approx(8 / 11)
    assert t1["delta_auc_per_mparam"] == pytest.approx(-0.02 / 8)
    assert t1["delta_ci"] is None and t1["p"] is None  # no replicates given


def test_wilcoxon_pairs_and_the_small_n_floor():
    five = {f"d{i}": 0.8 + 0.01 * i for i in range(5)}
    table = {"A": {k: v + 0.02 for k, v in five.items()}, "B": dict(five), "C": {"d0": 0.5}}
    [w] = wilcoxon_pairs(table)  # C shares one dataset only
    assert (w["a"], w["b"], w["n"], w["a_wins"], w["b_wins"]) == ("A", "B", 5, 5, 0)
    assert w["p"] == pytest.approx(0.0625) and w["min_p"] == pytest.approx(0.0625)
    assert not w["can_reach_005"] and "cannot go below 0.0625" in w["too_few"]
    six = {f"d{i}": 0.8 + 0.01 * i for i in range(6)}
    [w6] = wilcoxon_pairs({"A": {k: v + 0.02 for k, v in six.items()}, "B": six})
    assert w6["p"] == pytest.approx(0.03125) and w6["can_reach_005"] and w6["too_few"] is None
    assert [min_wilcoxon_p(n) for n in (2, 3, 4, 5, 6)] == pytest.approx([0.5, 0.25, 0.125, 0.0625, 0.03125])


def test_count_params_matches_built_models():
    import torch
    import torchvision

    from medbench.models import create_model
    from medbench.models.registry import num_params

    for kw in ({"model": "cnn2", "num_classes": 2, "in_chans": 1, "img_size": 28},
               {"model": "resnet18", "num_classes": 5, "in_chans": 1, "img_size": 28, "truncate": 2}):
        name = kw.pop("model")
        torch.manual_seed(0)
        assert count_params(name, **kw) == num_params(create_model(name, load_weights=False, **kw))
    # ImageNet stem, 3 channels, 1000 classes: torchvision's ResNet-18
    assert count_params("resnet18", num_classes=1000, in_chans=3, img_size=224, pretrained=True) == sum(
        p.numel() for p in torchvision.models.resnet18().parameters()) == 11_689_512
    assert count_params("resnet18", num_classes=2, truncate=1) < count_params("resnet18", num_classes=2)
    assert count_params("sk:logreg") is None


def test_imagenet_top1_lookup():
    from torchvision.models import ResNet18_Weights

    r18 = imagenet_top1("resnet18")
    assert r18["top1"] == ResNet18_Weights.IMAGENET1K_V1.meta["_metrics"]["ImageNet-1K"]["acc@1"] == 69.758
    assert "torchvision" in r18["source"]
    import timm

    tag = timm.models.get_pretrained_cfg("densenet121").tag
    d121 = imagenet_top1("densenet121")
    assert d121["top1"] == P.TIMM_IMAGENET_TOP1[f"densenet121.{tag}"][0] and "results-imagenet.csv" in d121["source"]
    assert imagenet_top1("cnn2")["top1"] is None and imagenet_top1("no-such-model")["top1"] is None


def test_published_table():
    assert P.published_best("breastmnist") == {"auc": {"value": 0.919, "methods": ["Google AutoML Vision"]},
                                               "acc": {"value": 0.863, "methods": ["ResNet-18 (28)"]}}
    assert P.published_best("pneumoniamnist")["auc"]["value"] == 0.991
    assert P.published_best("pneumoniamnist")["acc"]["value"] == 0.946
    assert P.published_best("retinamnist")["auc"]["value"] == 0.750
    assert P.published_best("retinamnist")["acc"]["value"] == 0.531
    assert len(P.MEDMNIST_V2) == 12 and P.published_rows("folder:/x") == [] and P.published_best("x") is None
    for dataset, table in P.MEDMNIST_V2.items():
        assert list(table) == list(P.MEDMNIST_V2_METHODS)
        assert all(0.5 < v["auc"] <= 1 and 0 < v["acc"] <= 1 for v in table.values()), dataset
