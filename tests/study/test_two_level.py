"""Arm comparisons with seed variance: the two-level bootstrap (seeds within each arm and test images, one image
resample shared by both arms) on constructed predictions, and the study report built from it on the real
BreastMNIST test labels with 3 and 2 seeds per arm."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from medbench.metrics import auc, bootstrap_replicates, resample_counts
from medbench.metrics.comparison import compare_run_groups, too_few_text, two_level_difference
from medbench.metrics.resampling import seed_resample_means
from medbench.rundir import predictions_path
from medbench.rundir.predictions import write_predictions
from medbench.study import blocks as B
from medbench.study.analysis import analyse
from medbench.study.records import RunRecord
from medbench.study.render import render_markdown
from medbench.study.stats import arm_difference

N = 400


def _labels() -> np.ndarray:
    return (np.random.default_rng(1).random(N) < 0.35).astype(int)


def _runs(y: np.ndarray, strengths, delta: float, noise_seed: int) -> list[np.ndarray]:
    """One run per seed: logit = (strength + delta) * label + noise; the seed sets strength and noise."""
    out = []
    for i, st in enumerate(strengths):
        x = (st + delta) * y + np.random.default_rng(noise_seed + i).normal(size=len(y))
        p = 1 / (1 + np.exp(-x))
        out.append(np.stack([1 - p, p], 1))
    return out


def test_seed_resample_means_matches_the_standard_error_of_a_mean():
    vals = np.array([0.70, 0.78, 0.81, 0.90])
    per_run = np.repeat(vals[:, None], 40_000, axis=1)  # no image noise: the seed level alone
    out = seed_resample_means(per_run, np.random.default_rng(0))
    # rescaled by sqrt(R / (R - 1)): the bootstrap variance is s^2 / R, not (R - 1) / R * s^2 / R
    assert out.var() == pytest.approx(vals.var(ddof=1) / 4, rel=0.03)
    assert out.mean() == pytest.approx(vals.mean(), abs=1e-3)
    # every replicate is the mean + sqrt(4/3) x (mean of 4 drawn values - mean)
    drawn = vals.mean() + (out - vals.mean()) / np.sqrt(4 / 3)
    sums = np.round(drawn * 4, 9)
    possible = {round(a + b + c + d, 9) for a in vals for b in vals for c in vals for d in vals}
    assert set(sums) <= possible
    one = np.arange(5.0)[None, :]
    assert np.array_equal(seed_resample_means(one, np.random.default_rng(0)), one[0])  # one run: nothing to draw
    with pytest.raises(ValueError, match="per_run must be"):
        seed_resample_means(np.zeros(3), np.random.default_rng(0))


def test_seed_spread_widens_the_interval_and_removes_a_spurious_p():
    """Seeds that differ by ~0.08 AUC and an arm that is better by ~0.02 on every seed's own images: the
    test-images-only bootstrap calls it certain, the two-level one does not."""
    y = _labels()
    strengths = [1.4, 1.5, 1.6]
    a, b = _runs(y, strengths, 0.1, 100), _runs(y, strengths, 0.0, 100)
    va, vb = [auc(y, s, "binary") for s in a], [auc(y, s, "binary") for s in b]
    assert 0.06 < max(va) - min(va) < 0.1  # the seed spread
    res = compare_run_groups(y, a, b, "binary", replicates=2000, seed=0)["auc"]
    assert res["diff"] == pytest.approx(np.mean(va) - np.mean(vb), abs=1e-12) and 0.01 < res["diff"] < 0.03
    assert res["image_only_p"] < 0.01  # test images only: "significant"
    assert res["p_value"] > 0.2  # with the seeds resampled: not
    width = np.diff(res["diff_ci"])[0]
    assert width > 5 * np.diff(res["image_only_ci"])[0]
    # at least what the seed spread suggests: the normal interval of a difference of seed means
    se = np.sqrt(np.var(va, ddof=1) / 3 + np.var(vb, ddof=1) / 3)
    assert width >= 2 * 1.96 * se
    # (a t interval over the seed means, df ~ 4, is wider still: the caveat says the bootstrap is approximate)
    assert width < 2 * stats.t.ppf(0.975, 4) * se


def test_identical_arms_cover_zero_and_few_seeds_give_no_p():
    y = _labels()
    runs = _runs(y, [1.0, 1.3, 1.6, 1.9], 0.0, 7)
    same = compare_run_groups(y, runs, runs, "binary", replicates=1000)
    for name in ("auc", "acc"):
        lo, hi = same[name]["diff_ci"]
        assert lo < 0 < hi and same[name]["diff"] == 0 and same[name]["p_value"] > 0.5
    two = compare_run_groups(y, runs[:2], runs[2:], "binary", replicates=200)
    assert two["too_few"] == "2 seeds per arm: too few to separate seed noise from the effect (need 3+)"
    assert two["auc"]["p_value"] is None and two["auc"]["diff_ci"] is None
    assert two["auc"]["image_only_ci"] is not None  # kept for contrast
    assert too_few_text(2, 5) == "2 vs 5 seeds per arm: too few to separate seed noise from the effect (need 3+)"
    with pytest.raises(ValueError, match="same B"):
        two_level_difference(np.zeros((3, 10)), np.zeros((3, 11)))


def test_arm_difference_on_shared_replicates():
    """The study's form: per-run replicates on one shared count matrix; image-only for contrast."""
    y = _labels()
    counts = resample_counts(N, 500, 3)
    a = np.stack([bootstrap_replicates(y, s, "binary", counts=counts, metrics=["auc"])["auc"]
                  for s in _runs(y, [1.4, 1.5, 1.6], 0.1, 100)])
    b = np.stack([bootstrap_replicates(y, s, "binary", counts=counts, metrics=["auc"])["auc"]
                  for s in _runs(y, [1.4, 1.5, 1.6], 0.0, 100)])
    d = arm_difference(a, b, n_images=N, seed=0)
    assert d["n_seeds_a"] == d["n_seeds_b"] == 3 and d["too_few"] is None
    assert d["p"] > 0.2 and d["test_images_only"]["p"] < 0.01
    assert d["caveat"] == ("two-level bootstrap: seeds resampled within each arm (3 vs 3) and 400 test images "
                           "(shared by both arms), 500 replicates; approximate with few seeds")
    assert d["ci"] == pytest.approx(two_level_difference(a, b, seed=0)["diff_ci"], abs=0)
    few = arm_difference(a[:2], b, n_images=N)
    assert few["p"] is None and few["ci"] is None and few["too_few"].startswith("2 vs 3 seeds per arm")
    assert arm_difference(None, b)["p"] is None


def _study(tmp_path, medmnist_dir, seeds: int) -> tuple[dict, list]:
    """A study of two arms on BreastMNIST's real test labels, each seed's predictions constructed and written
    as a run would, then analysed and laid out as the report does."""
    from medbench.data import load_dataset

    y = load_dataset("breastmnist", 28, data_dir=medmnist_dir, progress=False)["test"].labels.numpy()[:, 0]
    records = []
    strengths = [1.0, 1.3, 1.6, 1.9][:seeds]
    for model, delta in (("cnn5", 0.15), ("cnn2", 0.0)):
        for seed, scores in enumerate(_runs(y, strengths, delta, 50)):
            run_dir = tmp_path / f"{model}-{seed}"
            write_predictions(predictions_path(run_dir, "test"), scores)
            m = {"auc": auc(y, scores, "binary"), "acc": float(np.mean(scores.argmax(1) == y))}
            records.append(RunRecord(id=f"{model}-{seed}", status="done", run_dir=run_dir,
                                     config={"dataset": "breastmnist", "model": model, "seed": seed, "epochs": 1},
                                     axes={"model": model, "seed": seed},
                                     metrics={"train": m, "val": m, "test": m}))
    numbers, _ = analyse(records, ["model", "seed"], data_dir=medmnist_dir, replicates=400, seed=1)
    summary = {**numbers, "replicates": 400, "seed": 1, "level": 0.95, "not_done": [], "study": "t",
               "generated": "now", "counts": {"total": len(records), "done": len(records), "failed": 0, "running": 0,
                                              "pending": 0, "missing": 0}}
    return summary, [s for s in (B.significance(summary), B.published(summary)) if s is not None]


def test_study_report_gives_p_with_its_caveat_from_three_seeds(tmp_path, medmnist_dir):
    summary, sections = _study(tmp_path, medmnist_dir, 3)
    [comp] = summary["sections"][0]["significance"]
    assert comp["best"] == "model=cnn5" and comp["n_seeds_compared"] == [3, 3] and comp["too_few"] is None
    assert comp["ci"][0] < comp["diff"] < comp["ci"][1] and 0 <= comp["p"] <= 1
    assert "156 test images" in comp["caveat"] and "(3 vs 3)" in comp["caveat"]
    # wider than the test-images-only interval of the same replicates
    assert np.diff(comp["ci"])[0] > np.diff(comp["test_images_only"]["ci"])[0]
    md = render_markdown(summary, sections)
    row = next(line for line in md.splitlines() if line.startswith("| model=cnn2 |"))
    p = "<0.001" if comp["p"] < 0.001 else f"{comp['p']:.3f}"
    assert row.endswith(f"| {p} | {comp['caveat']} |"), row  # the caveat beside the p-value
    # one dataset: no across-dataset heading; published MedMNIST v2 has breastmnist
    assert "Wilcoxon" not in md and "one dataset" not in md and "## Published MedMNIST v2 comparison" in md


def test_study_report_states_the_seed_limitation_with_two_seeds(tmp_path, medmnist_dir):
    summary, sections = _study(tmp_path, medmnist_dir, 2)
    [comp] = summary["sections"][0]["significance"]
    assert comp["p"] is None and comp["ci"] is None
    md = render_markdown(summary, sections)
    row = next(line for line in md.splitlines() if line.startswith("| model=cnn2 |"))
    assert row.endswith("| — | — | 2 seeds per arm: too few to separate seed noise from the effect (need 3+) |")
