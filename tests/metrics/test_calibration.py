"""Temperature scaling on constructed scores: the fit recovers a known temperature, the map keeps the binary AUC
and every decision, ECE falls, T = 1 is the identity, and the record's ECE is compute_metrics' own."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.special import expit, softmax

from medbench.errors import MedbenchError
from medbench.metrics import compute_metrics
from medbench.metrics.calibration import (
    apply_temperature,
    calibrate_splits,
    calibration_summary,
    fit_temperature,
    read_temperature,
    write_calibration,
)
from medbench.tasks import decide

RNG = np.random.default_rng(21)


def _multiclass(n: int, k: int, t0: float):
    """Labels drawn from softmax(z); scores softmax(t0 * z): over-confident by t0 (so the fitted T is t0)."""
    z = RNG.normal(size=(n, k)) * 1.5
    p = softmax(z, axis=1)
    labels = (p.cumsum(1) < RNG.random((n, 1))).sum(1).clip(0, k - 1)[:, None]
    return labels, softmax(t0 * z, axis=1)


def _binary(n: int, t0: float):
    z = RNG.normal(size=n) * 2
    labels = (RNG.random(n) < expit(z)).astype(np.int64)[:, None]
    p1 = expit(t0 * z)
    return labels, np.stack([1 - p1, p1], 1)


@pytest.mark.parametrize("t0", [0.5, 2.5])
def test_fit_recovers_a_known_temperature_multiclass(t0):
    labels, scores = _multiclass(20000, 4, t0)
    assert fit_temperature(labels, scores, "multiclass") == pytest.approx(t0, rel=0.06)
    assert fit_temperature(labels, scores, "ordinal") == pytest.approx(t0, rel=0.06)


def test_fit_recovers_a_known_temperature_binary_and_multilabel():
    labels, scores = _binary(20000, 3.0)
    assert fit_temperature(labels, scores, "binary") == pytest.approx(3.0, rel=0.06)
    z = RNG.normal(size=(20000, 3)) * 2
    y = (RNG.random(z.shape) < expit(z)).astype(np.int64)
    ml = expit(2.0 * z)
    assert fit_temperature(y, ml, "multilabel") == pytest.approx(2.0, rel=0.06)
    # unknown (-1) labels are left out: making a third of them unknown, and wrong, moves nothing
    y2 = y.copy()
    y2[: len(y) // 3] = -1
    assert fit_temperature(y2, ml, "multilabel") == pytest.approx(fit_temperature(y[len(y) // 3:], ml[len(y) // 3:],
                                                                                  "multilabel"), rel=1e-6)


def test_binary_auc_identical_decisions_kept_and_ece_falls():
    labels, scores = _binary(3000, 4.0)
    val, test = slice(0, 1500), slice(1500, None)
    cal, rec = calibrate_splits("binary", {"val": scores[val], "test": scores[test]},
                                {"val": labels[val], "test": labels[test]})
    assert rec["temperature"] == pytest.approx(4.0, rel=0.15)
    for split, sl in (("val", val), ("test", test)):
        before = compute_metrics(labels[sl], scores[sl], "binary")
        after = compute_metrics(labels[sl], cal[split], "binary")
        assert after["auc"] == before["auc"]  # exactly: a strictly increasing map of P(positive)
        assert after["acc"] == before["acc"]  # 0.5 stays 0.5
        np.testing.assert_array_equal(decide(cal[split], "binary"), decide(scores[sl], "binary"))
        r = rec["splits"][split]
        assert r["ece_before"] == before["ece"] and r["ece_after"] == after["ece"]  # compute_metrics' own ECE
        assert r["ece_after"] < 0.5 * r["ece_before"]
        assert sum(r["reliability"]["before"]["count"]) == sum(r["reliability"]["after"]["count"]) == 1500
    assert rec["nll_after"] < rec["nll_before"]
    np.testing.assert_allclose(cal["val"].sum(1), 1.0, atol=1e-12)
    summary = calibration_summary(rec)
    assert summary["ece"]["test"] == {"before": rec["splits"]["test"]["ece_before"],
                                      "after": rec["splits"]["test"]["ece_after"]}
    json.dumps(rec, allow_nan=False)  # plain JSON: no NaN, no numpy types


def test_youden_decision_ece_matches_the_decided_threshold():
    labels, scores = _binary(800, 3.0)
    cal, rec = calibrate_splits("binary", {"val": scores}, {"val": labels}, decision="youden")
    th = rec["splits"]["val"]["threshold"]
    after = compute_metrics(labels, cal["val"], "binary", threshold=th["after"])
    assert rec["splits"]["val"]["ece_after"] == after["ece"]
    # the Youden cut calls the same validation images positive before and after
    np.testing.assert_array_equal(decide(scores, "binary", th["before"]), decide(cal["val"], "binary", th["after"]))


def test_argmax_kept_multiclass_and_reliability_bins_sum_to_ece():
    labels, scores = _multiclass(2000, 5, 3.0)
    cal, rec = calibrate_splits("multiclass", {"val": scores}, {"val": labels})
    np.testing.assert_array_equal(cal["val"].argmax(1), scores.argmax(1))
    r = rec["splits"]["val"]
    assert r["ece_after"] < r["ece_before"]
    bins = r["reliability"]["before"]
    ece = sum(c * abs(a - f) for c, a, f in zip(bins["count"], bins["accuracy"], bins["confidence"]) if c) / 2000
    assert ece == pytest.approx(r["ece_before"], abs=1e-12)


def test_temperature_one_is_the_identity_and_bad_input():
    labels, scores = _multiclass(50, 3, 1.0)
    for task, s in (("multiclass", scores), ("binary", _binary(50, 1.0)[1]), ("multilabel", scores)):
        np.testing.assert_array_equal(apply_temperature(s, task, 1.0), s)
        np.testing.assert_allclose(apply_temperature(apply_temperature(s, task, 2.0), task, 0.5), s, atol=1e-12)
    # probabilities of exactly 0 and 1 stay finite and ordered
    edge = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    out = apply_temperature(edge, "binary", 3.0)
    np.testing.assert_array_equal(out, edge)
    assert np.isfinite(apply_temperature(edge, "multiclass", 3.0)).all()
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        apply_temperature(scores, "multiclass", 0.0)
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        apply_temperature(scores * 2, "multiclass", 2.0)
    with pytest.raises(MedbenchError, match="fitted on the 'val' split"):
        calibrate_splits("multiclass", {"test": scores}, {"test": labels})


def test_perfect_separation_warns_at_the_bound():
    labels = np.array([[0], [1]] * 20)
    scores = np.where(labels == 1, [[0.2, 0.8]], [[0.8, 0.2]])
    with pytest.warns(UserWarning, match="at the search bound"):
        t = fit_temperature(labels, scores, "binary")
    assert t < 0.05  # sharper is always better when every validation image is right


def test_calibration_file_round_trip_and_damage(tmp_path):
    path = tmp_path / "calibration.json"
    assert read_temperature(path) is None
    labels, scores = _binary(400, 2.0)
    _, rec = calibrate_splits("binary", {"val": scores}, {"val": labels})
    write_calibration(path, rec)
    assert read_temperature(path) == rec["temperature"] and math.isfinite(rec["temperature"])
    path.write_text('{"method": "temperature", "temperature": -1}')
    with pytest.raises(MedbenchError, match="calibration.json: not a temperature-scaling record"):
        read_temperature(path)
    path.write_text("{broken")
    with pytest.raises(MedbenchError, match="calibration.json: not valid JSON"):
        read_temperature(path)
