import numpy as np
import pytest
from medmnist.evaluator import getACC, getAUC

from medbench.metrics import acc, auc, compute_metrics
from medbench.rundir import read_predictions

MEDMNIST_TASK = {"binary": "binary-class", "multiclass": "multi-class", "multilabel": "multi-label, binary-class",
                 "ordinal": "ordinal-regression"}


def _generated(task, n, k, rng):
    if task == "multilabel":
        y = (rng.random((n, k)) < 0.3).astype(int)
        s = np.clip(y * 0.3 + rng.random((n, k)) * 0.7, 0, 1)
    else:
        c = 2 if task == "binary" else k
        y = rng.integers(0, c, (n, 1))
        logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[y[:, 0]]
        s = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, s


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel", "ordinal"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_acc_auc_equal_medmnist_evaluator(task, seed):
    rng = np.random.default_rng(seed)
    y, s = _generated(task, 257, 5 if task == "ordinal" else 9, rng)
    # rounding to 2 decimals makes ties, which AUC must break exactly as sklearn does
    for scores in (s, np.round(s, 2)):
        assert auc(y, scores, task) == pytest.approx(getAUC(y, scores, MEDMNIST_TASK[task]), abs=1e-12)
        assert acc(y, scores, task) == pytest.approx(getACC(y, scores, MEDMNIST_TASK[task]), abs=1e-12)


def test_binary_uses_last_column_and_strict_threshold():
    y = np.array([[0], [1], [1], [0]])
    s = np.array([[0.5, 0.5], [0.2, 0.8], [0.6, 0.4], [0.9, 0.1]])
    assert acc(y, s, "binary") == 0.75  # 0.5 is not > 0.5: sample 0 is called negative (right); sample 2 is wrong
    assert auc(y, s, "binary") == 0.75


def test_undefined_auc_is_none_with_warning():
    y = np.zeros((10, 1), dtype=int)
    s = np.random.default_rng(0).random((10, 2))
    with pytest.warns(UserWarning, match="only one class"):
        m = compute_metrics(y, s, "binary")
    assert m["auc"] is None and m["n"] == 10 and 0 <= m["acc"] <= 1


def test_mismatched_rows_raise():
    with pytest.raises(ValueError, match="3 labels but 2 score rows"):
        acc(np.zeros((3, 1)), np.zeros((2, 2)), "binary")


def test_rank_auc_equals_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    from medbench.metrics import rank_auc

    rng = np.random.default_rng(3)
    y = (rng.random((500, 6)) < 0.3).astype(int)
    s = np.round(rng.random((500, 6)) + 0.4 * y, 1)  # one decimal: many ties
    got = rank_auc(y, s)
    for j in range(6):
        assert got[j] == pytest.approx(roc_auc_score(y[:, j], s[:, j]), abs=1e-12)
    assert np.isnan(rank_auc(np.zeros((5, 1)), rng.random((5, 1))))[0]


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel", "ordinal"])
def test_vectorised_bootstrap_equals_a_loop_over_the_same_resamples(task):
    import torch

    from medbench.metrics import bootstrap

    rng = np.random.default_rng(5)
    y, s = _generated(task, 300, 5 if task == "ordinal" else 4, rng)
    s = np.round(s, 2)
    reps, seed = 200, 11
    ci = bootstrap(y, s, task, replicates=reps, seed=seed)
    # the same resamples, drawn as documented, scored one by one with the reference metrics
    idx = torch.randint(0, len(y), (reps, len(y)), generator=torch.Generator().manual_seed(seed)).numpy()
    aucs = [getAUC(y[i], s[i], MEDMNIST_TASK[task]) for i in idx]
    accs = [getACC(y[i], s[i], MEDMNIST_TASK[task]) for i in idx]
    assert ci["auc_ci"] == pytest.approx(list(np.percentile(aucs, [2.5, 97.5])), abs=1e-12)
    assert ci["acc_ci"] == pytest.approx(list(np.percentile(accs, [2.5, 97.5])), abs=1e-12)
    point = auc(y, s, task)
    assert ci["auc_ci"][0] < point < ci["auc_ci"][1]


# ---- the full metric record, its bootstrap and paired comparisons, against scikit-learn on real predictions ----

import inspect  # noqa: E402
import json  # noqa: E402
import warnings  # noqa: E402

from sklearn import metrics as skm  # noqa: E402

from medbench.metrics import (  # noqa: E402
    ECE_BINS,
    bootstrap,
    bootstrap_metrics,
    bootstrap_replicates,
    compare_predictions,
    delong_test,
    resample_counts,
    scalar_names,
    weighted_auc,
    youden_threshold,
)

TASKS = ("binary", "multiclass", "multilabel", "ordinal")


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _train_scores(tmp, name, data_dir=None, dataset=None, **cfg):
    """Scores and labels of a tiny run's val and test splits, read back from its predictions files."""
    from medbench.run import train

    extra = {"report": False} if "report" in inspect.signature(train).parameters else {}
    run = _quiet(train, {"dataset": name, "model": "cnn5", "epochs": 2, "seed": 0, **cfg}, tmp / name,
                 quiet=True, data_dir=data_dir, dataset=dataset, **extra)
    if dataset is None:
        from medbench.data import load_dataset

        dataset = load_dataset(name, data_dir=data_dir, progress=False)
    return {split: (dataset[split].labels.numpy(),
                    read_predictions(run / "predictions" / f"{split}.csv"))
            for split in ("val", "test")}


@pytest.fixture(scope="module")
def real(tmp_path_factory, medmnist_dir):
    """{task: {split: (labels, scores)}} from tiny cnn5 runs: BreastMNIST (binary), RetinaMNIST (ordinal), and
    generated DermaMNIST-layout (multi-class, 7 classes) and ChestMNIST-layout (multi-label, 14 labels) data.
    "binary_b" is a second, different BreastMNIST model for the paired comparisons."""
    from medbench.data import read_npz

    from conftest import make_npz

    tmp = tmp_path_factory.mktemp("metrics")
    out = {"binary": _train_scores(tmp, "breastmnist", medmnist_dir),
           "ordinal": _train_scores(tmp, "retinamnist", medmnist_dir)}
    (tmp / "b").mkdir()
    out["binary_b"] = _train_scores(tmp / "b", "breastmnist", medmnist_dir, seed=1, epochs=1, batch_size=64)
    for task, name, kw in (("multiclass", "dermamnist", dict(num_classes=7, channels=3)),
                           ("multilabel", "chestmnist", dict(num_classes=14, multilabel=True))):
        ds = read_npz(make_npz(tmp / f"{name}.npz", n=(200, 40, 300), **kw), name)
        out[task] = _train_scores(tmp, name, dataset=ds, epochs=4)
    return out


def _predict(y, s, task, threshold=0.5):
    if task == "multilabel":
        return (s > threshold).astype(int)
    if task == "binary":
        return (s[:, -1] > threshold).astype(int)
    return s.argmax(1)


def _ece_reference(conf, correct, bins=15):
    """ECE from its definition: sum over bins (lo, hi] (the first also holding 0) of |B|/N |acc(B) - conf(B)|."""
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for b in range(bins):
        inside = (conf <= edges[b + 1]) & ((conf > edges[b]) if b else (conf >= 0))
        if b == bins - 1:
            inside |= conf > 1
        if inside.any():
            total += inside.sum() / len(conf) * abs(np.mean(correct[inside]) - np.mean(conf[inside]))
    return total


def _confidence(y, s, task, threshold=0.5):
    pred = _predict(y, s, task, threshold)
    if task == "multilabel":
        return np.where(pred == 1, s, 1 - s).ravel(), (pred == y).ravel()
    if task == "binary":
        return np.where(pred == 1, s[:, -1], 1 - s[:, -1]), pred == y[:, 0]
    return s.max(1), pred == y[:, 0]


def _check_against_sklearn(y, s, task, threshold=0.5, class_names=None):
    m = _quiet(compute_metrics, y, s, task, threshold=threshold, class_names=class_names)
    json.dumps(m, allow_nan=False)  # plain JSON, no NaN
    p = _predict(y, s, task, threshold)
    k = s.shape[1] if task != "binary" else 2
    names = class_names or [str(i) for i in range(k)]
    assert m["n"] == len(y) and list(m["per_class"]) == names
    assert m["ece"] == pytest.approx(_ece_reference(*_confidence(y, s, task, threshold)), abs=1e-12)
    if task == "multilabel":
        assert m["acc"] == pytest.approx(np.mean([skm.accuracy_score(y[:, j], p[:, j]) for j in range(k)]), abs=1e-12)
        assert m["balanced_acc"] == pytest.approx(
            np.mean([_quiet(skm.balanced_accuracy_score, y[:, j], p[:, j]) for j in range(k)]), abs=1e-12)
        assert m["confusion_matrix"] == skm.multilabel_confusion_matrix(y, p).tolist()
        bce = np.mean([skm.log_loss(y[:, j], s[:, j], labels=[0, 1]) for j in range(k)])
        assert m["log_loss"] == pytest.approx(bce, abs=1e-12)
        auc_cols = [(y[:, j], s[:, j]) for j in range(k)]
        assert m["threshold"] == threshold
    else:
        t = y[:, 0]
        assert m["acc"] == pytest.approx(skm.accuracy_score(t, p), abs=1e-12)
        assert m["balanced_acc"] == pytest.approx(_quiet(skm.balanced_accuracy_score, t, p), abs=1e-12)
        assert m["confusion_matrix"] == skm.confusion_matrix(t, p, labels=range(k)).tolist()
        if task == "binary":
            assert m["log_loss"] == pytest.approx(skm.log_loss(t, s[:, -1], labels=[0, 1]), abs=1e-12)
            assert m["sensitivity"] == pytest.approx(skm.recall_score(t, p, pos_label=1, zero_division=0), abs=1e-12)
            assert m["specificity"] == pytest.approx(skm.recall_score(t, p, pos_label=0, zero_division=0), abs=1e-12)
            assert m["threshold"] == threshold
            auc_cols = [(t == 0, 1 - s[:, -1]), (t == 1, s[:, -1])]
        else:
            normalised = s / s.sum(1, keepdims=True)  # scikit-learn may warn or renormalise; ours is then equal
            assert _quiet(compute_metrics, y, normalised, task)["log_loss"] == pytest.approx(
                skm.log_loss(t, normalised, labels=list(range(k))), abs=1e-12)
            auc_cols = [(t == c, s[:, c]) for c in range(k)]
        if task == "ordinal":
            assert m["kappa_quadratic"] == pytest.approx(
                skm.cohen_kappa_score(t, p, weights="quadratic", labels=list(range(k))), abs=1e-12)
            assert m["mae"] == pytest.approx(skm.mean_absolute_error(t, p), abs=1e-12)
        y, p = t, p
    # macro over scikit-learn's default labels (classes in y_true or y_pred); zero_division=0
    for avg in ("macro", "weighted"):
        prec, rec, f1, _ = skm.precision_recall_fscore_support(y, p, average=avg, zero_division=0)
        if avg == "macro":
            assert m["precision_macro"] == pytest.approx(prec, abs=1e-12)
            assert m["recall_macro"] == pytest.approx(rec, abs=1e-12)
            assert m["f1_macro"] == pytest.approx(f1, abs=1e-12)
        assert m[f"f1_{avg}"] == pytest.approx(f1, abs=1e-12)
    labels = None if task == "multilabel" else list(range(k))
    prec, rec, f1, sup = skm.precision_recall_fscore_support(y, p, labels=labels, average=None, zero_division=0)
    for i, name in enumerate(names):
        pc = m["per_class"][name]
        assert (pc["precision"], pc["recall"], pc["f1"]) == pytest.approx((prec[i], rec[i], f1[i]), abs=1e-12)
        assert pc["support"] == sup[i] and isinstance(pc["support"], int)
        yc, sc = auc_cols[i]
        if len(np.unique(yc)) < 2:
            assert pc["auc"] is None
        else:
            assert pc["auc"] == pytest.approx(skm.roc_auc_score(yc, sc), abs=1e-12)
    if task == "multilabel":
        assert m["per_label_auc"] == [m["per_class"][c]["auc"] for c in names]
    scalars = [key for key, v in m.items() if not isinstance(v, (dict, list)) and key not in ("n", "threshold")]
    assert scalars == scalar_names(task)
    return m


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("split", ["val", "test"])
def test_compute_metrics_equal_sklearn_on_real_predictions(real, task, split):
    y, s = real[task][split]
    assert s.min() > 1e-15 and s.max() < 1 - 1e-15  # scikit-learn clips log-loss probabilities elsewhere
    m = _check_against_sklearn(y, s, task)
    assert m["acc"] == acc(y, s, task) and m["auc"] == auc(y, s, task)  # MedMNIST's definitions, unchanged


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("seed", [0, 1])
def test_compute_metrics_equal_sklearn_on_generated_edge_cases(task, seed):
    rng = np.random.default_rng(seed)
    y, s = _generated(task, 120, 5 if task != "multilabel" else 6, rng)
    _check_against_sklearn(y, np.round(s, 1).clip(1e-3, 1 - 1e-3), task, class_names=None)
    if task == "multilabel":
        y[:, 0] = 0  # a label without positives
        s[:, 1] = 0.2  # a label never predicted
    elif task != "binary":
        y[y == 3] = 0  # class 3 absent from y_true
        s[:, 4] = 1e-6  # class 4 never predicted (zero division: precision 0)
        s = s / s.sum(1, keepdims=True)
    names = [f"c{i}" for i in range(s.shape[1] if task != "binary" else 2)]
    _check_against_sklearn(y, s, task, class_names=names)


@pytest.mark.parametrize("threshold", [0.2, 0.35, 0.8])
def test_threshold_moves_binary_and_multilabel_predictions(real, threshold):
    for task in ("binary", "multilabel"):
        y, s = real[task]["test"]
        _check_against_sklearn(y, s, task, threshold=threshold)
    y, s = real["binary"]["test"]
    m = compute_metrics(y, s, "binary", threshold=threshold)
    assert m["acc"] == pytest.approx(np.mean((s[:, 1] > threshold) == y[:, 0]), abs=1e-15)


def test_undefined_metrics_are_null_with_a_warning():
    y = np.zeros((6, 1), dtype=int)
    s = np.tile([[0.7, 0.3]], (6, 1))
    with pytest.warns(UserWarning) as record:
        m = compute_metrics(y, s, "binary")
    assert any("sensitivity undefined: no positive samples" in str(w.message) for w in record)
    assert m["sensitivity"] is None and m["specificity"] == 1.0 and m["auc"] is None
    assert m["per_class"]["1"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0, "auc": None}
    json.dumps(m, allow_nan=False)
    y = np.full((5, 1), 2)
    s = np.tile([[0.1, 0.1, 0.6, 0.1, 0.1]], (5, 1))
    with pytest.warns(UserWarning) as record:
        m = compute_metrics(y, s, "ordinal")
    assert any("kappa_quadratic undefined" in str(w.message) for w in record)
    assert m["kappa_quadratic"] is None and m["mae"] == 0.0 and m["acc"] == 1.0 and m["ece"] == pytest.approx(0.4)
    with pytest.warns(UserWarning):
        m = compute_metrics(np.zeros((0, 1), int), np.zeros((0, 3)), "multiclass")
    assert m["n"] == 0 and m["acc"] is None and m["f1_macro"] is None and m["confusion_matrix"] == [[0] * 3] * 3
    json.dumps(m, allow_nan=False)
    with pytest.raises(ValueError, match="class labels must lie in"):
        compute_metrics(np.array([[0], [3]]), np.full((2, 3), 1 / 3), "multiclass")
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        compute_metrics(np.array([[0], [2]]), np.full((2, 3), 1 / 3), "multiclass", class_names=["a", "b"])


def test_log_loss_clips_probabilities_at_1e_15():
    m = compute_metrics(np.array([[1], [0]]), np.array([[1.0, 0.0], [1.0, 0.0]]), "binary")
    assert m["log_loss"] == pytest.approx(-np.log(1e-15) / 2, rel=1e-15)
    m = _quiet(compute_metrics, np.array([[1, 0]]), np.array([[0.0, 0.0]]), "multilabel")
    assert m["log_loss"] == pytest.approx(-np.log(1e-15) / 2, rel=1e-15)


# ---- Youden's threshold ----

def _j(y, p, t):
    return np.mean(p[y == 1] > t) - np.mean(p[y == 0] > t)


def _check_youden(y, p):
    t = youden_threshold(y, np.stack([1 - p, p], 1))
    candidates = np.append(np.unique(p), -np.inf)  # every distinct prediction set under "score > t"
    js = np.array([_j(y, p, c) for c in candidates])
    assert _j(y, p, t) == pytest.approx(js.max(), abs=1e-12)
    fpr, tpr, _ = skm.roc_curve(y, p, drop_intermediate=False)
    assert _j(y, p, t) == pytest.approx(np.max(tpr - fpr), abs=1e-12)
    # ties in J go to the largest positive set (the lowest threshold)
    best = candidates[np.isclose(js, js.max(), rtol=0, atol=1e-12)]
    assert (p > t).sum() == max((p > c).sum() for c in best)
    assert youden_threshold(y, p) == t  # [N] scores are the positive column
    return t


def test_youden_threshold_on_real_predictions(real):
    for split in ("val", "test"):
        y, s = real["binary"][split]
        t = _check_youden(y[:, 0], s[:, 1])
        assert s[:, 1].min() > t or np.any(s[:, 1] <= t)


@pytest.mark.parametrize("seed", range(4))
def test_youden_threshold_with_ties_and_extremes(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 80)
    p = np.round(np.clip(rng.random(80) * 0.7 + 0.3 * y, 0, 1), 1)  # many ties
    t = _check_youden(y, p)
    assert np.unique(p).min() - 1e-12 <= t <= p.max() or t < p.min()
    # inverted scores: J 0 at best, at calling everything positive
    t = _check_youden(np.array([0, 0, 1, 1]), np.array([0.9, 0.8, 0.2, 0.1]))
    assert t < 0.1 and np.nextafter(t, 1) == 0.1
    t = _check_youden(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]))
    assert t == pytest.approx(0.5)
    with pytest.warns(UserWarning, match="only one class"):
        assert youden_threshold(np.zeros(4), np.linspace(0, 1, 4)) is None


# ---- bootstrap ----

@pytest.mark.parametrize("block", [2 ** 22, 700])  # one draw, or blocks of two replicates (bounded memory)
def test_resample_counts_are_the_documented_resamples(monkeypatch, block):
    import torch

    from medbench.metrics import resampling

    monkeypatch.setattr(resampling, "RESAMPLE_BLOCK", block)
    for n, reps, seed in ((1, 3, 0), (7, 20, 1), (300, 41, 2)):
        counts = resample_counts(n, reps, seed)
        idx = torch.randint(0, n, (reps, n), generator=torch.Generator().manual_seed(seed)).numpy()
        expected = np.stack([np.bincount(r, minlength=n) for r in idx], 1)
        assert counts.dtype == np.uint8 and counts.shape == (n, reps) and np.array_equal(counts, expected)


@pytest.mark.parametrize("block", [2 ** 23, 2000])  # all replicates at once, or 5 at a time (bounded memory)
def test_weighted_auc_equals_sklearn_with_sample_weights(monkeypatch, block):
    from medbench.metrics import ranking

    monkeypatch.setattr(ranking, "AUC_BLOCK", block)
    rng = np.random.default_rng(4)
    y = (rng.random(400) < 0.3).astype(int)
    s = np.round(rng.random(400) + 0.3 * y, 1)
    counts = resample_counts(400, 30, seed=9)
    got = weighted_auc(y, s, counts)
    for b in range(30):
        assert got[b] == pytest.approx(skm.roc_auc_score(y, s, sample_weight=counts[:, b]), abs=1e-12)
    assert np.array_equal(weighted_auc(y, s, counts.astype(np.float64)), got)  # the float64 path
    w = rng.random((400, 3)) * 2  # any non-negative weights
    for b in range(3):
        assert weighted_auc(y, s, w)[b] == pytest.approx(skm.roc_auc_score(y, s, sample_weight=w[:, b]), abs=1e-12)
    assert np.isnan(weighted_auc(np.zeros(5), s[:5], counts[:5])).all()


def _loop_replicates(y, s, task, counts, threshold=0.5):
    """Each resample materialised (np.repeat by counts) and scored by compute_metrics."""
    out = {name: [] for name in scalar_names(task)}
    for b in range(counts.shape[1]):
        idx = np.repeat(np.arange(len(y)), counts[:, b])
        m = _quiet(compute_metrics, y[idx], s[idx], task, threshold=threshold)
        for name in out:
            out[name].append(np.nan if m[name] is None else m[name])
    return {name: np.array(v) for name, v in out.items()}


def _assert_same_replicates(got, expected):
    assert list(got) == list(expected)
    for name in got:
        assert got[name].shape == expected[name].shape
        assert np.array_equal(np.isnan(got[name]), np.isnan(expected[name])), name
        ok = ~np.isnan(got[name])
        np.testing.assert_allclose(got[name][ok], expected[name][ok], rtol=0, atol=1e-9, err_msg=name)


@pytest.mark.parametrize("task", TASKS)
def test_vectorised_replicates_equal_a_loop_over_materialised_resamples(real, task):
    y, s = real[task]["test"]
    threshold = 0.4 if task in ("binary", "multilabel") else 0.5
    got = bootstrap_replicates(y, s, task, replicates=50, seed=3, threshold=threshold)
    _assert_same_replicates(got, _loop_replicates(y, s, task, resample_counts(len(y), 50, 3), threshold))


@pytest.mark.parametrize("task", TASKS)
def test_replicates_where_metrics_are_undefined_match_the_loop(task):
    """A tiny split with a rare class: some resamples leave AUC, sensitivity or kappa undefined (NaN)."""
    rng = np.random.default_rng(6)
    y, s = _generated(task, 12, 4 if task != "multilabel" else 3, rng)
    if task == "multilabel":
        y[:, 0] = 0
        y[0, 0] = 1
    else:
        y[y == 1] = 0
        y[0] = 1
    s = np.round(s, 1)
    got = _quiet(bootstrap_replicates, y, s, task, replicates=60, seed=1)
    assert np.isnan(got["auc"]).any() and np.isfinite(got["auc"]).any()
    _assert_same_replicates(got, _loop_replicates(y, s, task, resample_counts(len(y), 60, 1)))
    with pytest.warns(UserWarning, match="AUC undefined in"):
        ci = bootstrap_metrics(y, s, task, replicates=60, seed=1)
    json.dumps(ci, allow_nan=False)


@pytest.mark.parametrize("task", TASKS)
def test_bootstrap_cis_contain_the_point_estimates(real, task):
    for split in ("val", "test"):
        y, s = real[task][split]
        m = _quiet(compute_metrics, y, s, task)
        ci = _quiet(bootstrap_metrics, y, s, task, replicates=1000, seed=0)
        json.dumps(ci, allow_nan=False)
        assert list(ci) == [f"{name}_ci" for name in scalar_names(task)]
        for name in scalar_names(task):
            lo, hi = ci[f"{name}_ci"]
            assert lo <= m[name] <= hi, (split, name, lo, m[name], hi)
        # the summary is the 2.5th and 97.5th percentiles of the replicates
        reps = bootstrap_replicates(y, s, task, replicates=1000, seed=0)
        assert ci["f1_macro_ci"] == list(np.percentile(reps["f1_macro"], [2.5, 97.5]))
        assert _quiet(bootstrap, y, s, task) == {"acc_ci": ci["acc_ci"], "auc_ci": ci["auc_ci"]}
    narrow = bootstrap_metrics(y, s, task, replicates=300, level=0.5)
    wide = bootstrap_metrics(y, s, task, replicates=300, level=0.99)
    assert wide["acc_ci"][0] <= narrow["acc_ci"][0] <= narrow["acc_ci"][1] <= wide["acc_ci"][1]


def test_ece_of_replicates_uses_fifteen_bins():
    assert ECE_BINS == 15
    y = np.array([[1], [0], [1], [1]])
    s = np.array([[0.05, 0.95], [0.95, 0.05], [0.2, 0.8], [0.7, 0.3]])  # confidences 0.95, 0.95, 0.8, 0.7
    m = compute_metrics(y, s, "binary")
    # bins: 0.95 -> (14/15, 1]: 2 right, conf .95; 0.8 -> (11/15, 12/15]: right; 0.7 -> (10/15, 11/15]: wrong
    assert m["ece"] == pytest.approx((2 * 0.05 + 0.2 + 0.7) / 4, abs=1e-15)


# ---- paired comparison ----

def _slow_delong(y, a, b):
    """DeLong's variance from its definition: structural components over all positive-negative pairs."""
    from scipy.stats import norm

    pos, neg = y == 1, y == 0
    m, n = pos.sum(), neg.sum()
    comps = []
    for sc in (a, b):
        x, z = sc[pos][:, None], sc[neg][None, :]
        psi = (x > z) + 0.5 * (x == z)  # Heaviside kernel: 1, 0.5, 0
        comps.append((psi.mean(1), psi.mean(0), psi.mean()))
    v10 = np.stack([c[0] for c in comps])
    v01 = np.stack([c[1] for c in comps])
    s10, s01 = np.cov(v10), np.cov(v01)
    cov = s10 / m + s01 / n
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    diff = comps[0][2] - comps[1][2]
    z = diff / np.sqrt(var)
    return {"auc_a": comps[0][2], "auc_b": comps[1][2], "diff": diff, "se": np.sqrt(var), "z": z,
            "p_value": 2 * norm.sf(abs(z))}


def test_delong_equals_the_definition_on_real_predictions(real):
    for split in ("val", "test"):
        y, a = real["binary"][split]
        _, b = real["binary_b"][split]
        for sa, sb in ((a, b), (np.round(a, 2), np.round(b, 1))):  # rounding makes ties
            got = delong_test(y, sa, sb)
            want = _slow_delong(y[:, 0], sa[:, 1], sb[:, 1])
            assert set(got) == set(want)
            for key in want:
                assert got[key] == pytest.approx(want[key], abs=1e-10), key
            assert got["auc_a"] == pytest.approx(auc(y, sa, "binary"), abs=1e-12)
            json.dumps(got, allow_nan=False)


def test_delong_identical_and_degenerate_models():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 50)
    s = rng.random(50)
    same = delong_test(y, s, s.copy())
    assert same["diff"] == 0 and same["se"] == 0 and same["z"] == 0 and same["p_value"] == 1.0
    with pytest.warns(UserWarning, match="standard error is 0"):
        d = delong_test(y, y.astype(float), np.full(50, 0.5))  # perfect vs constant: both V's constant
    assert d["diff"] == 0.5 and d["z"] is None and d["p_value"] == 0.0
    with pytest.warns(UserWarning, match="only one class"):
        assert set(delong_test(np.zeros(5), s[:5], s[:5]).values()) == {None}


def test_compare_predictions_on_real_models(real):
    y, a = real["binary"]["test"]
    _, b = real["binary_b"]["test"]
    res = compare_predictions(y, a, b, "binary", replicates=500, seed=0)
    json.dumps(res, allow_nan=False)
    assert set(res) == {"auc", "acc", "delong"}
    for name, fn in (("auc", auc), ("acc", acc)):
        r = res[name]
        assert r["value_a"] == fn(y, a, "binary") and r["value_b"] == fn(y, b, "binary")
        assert r["diff"] == r["value_a"] - r["value_b"]
        lo, hi = r["diff_ci"]
        assert lo <= r["diff"] <= hi and 0 <= r["p_value"] <= 1
        # paired: the same resample for both models, differences summarised
        ra = bootstrap_replicates(y, a, "binary", replicates=500, seed=0)[name]
        rb = bootstrap_replicates(y, b, "binary", replicates=500, seed=0)[name]
        d = ra - rb
        assert r["diff_ci"] == list(np.percentile(d, [2.5, 97.5]))
        assert r["p_value"] == min(1.0, 2 * min(np.mean(d <= 0), np.mean(d >= 0)))
    assert res["delong"] == delong_test(y, a, b) and res["delong"]["diff"] == pytest.approx(res["auc"]["diff"])


@pytest.mark.parametrize("task", TASKS)
def test_compare_identical_predictions(real, task):
    y, s = real[task]["test"]
    res = compare_predictions(y, s, s.copy(), task, replicates=200, seed=1)
    json.dumps(res, allow_nan=False)
    for name in ("auc", "acc"):
        assert res[name]["diff"] == 0 and res[name]["diff_ci"] == [0.0, 0.0] and res[name]["p_value"] == 1.0
    assert ("delong" in res) == (task == "binary")
    if task == "binary":
        assert res["delong"]["p_value"] == 1.0 and res["delong"]["z"] == 0.0


def test_bootstrap_arguments_are_checked():
    y, s = _generated("multiclass", 30, 3, np.random.default_rng(0))
    assert list(bootstrap_metrics(y, s, "multiclass", replicates=20, metrics=["ece", "acc"])) == ["ece_ci", "acc_ci"]
    with pytest.raises(ValueError, match="unknown metrics"):
        bootstrap_metrics(y, s, "multiclass", replicates=20, metrics=["sensitivity"])
    with pytest.raises(ValueError, match="level must lie"):
        bootstrap_metrics(y, s, "multiclass", level=95)
    with pytest.raises(ValueError, match="replicates must be at least 1"):
        bootstrap_metrics(y, s, "multiclass", replicates=0)
    with pytest.raises(ValueError, match="unknown task"):
        compute_metrics(y, s, "regression")
    with pytest.raises(ValueError, match="scores of A have shape"):
        compare_predictions(y, s, s[:, :2], "multiclass")


def test_multilabel_unknown_labels_are_left_out_of_every_metric(real):
    """-1 entries (CheXpert uncertain under u-ignore): each label's metrics equal scikit-learn's on its known rows,
    and the bootstrap on an all-ones resample equals the point estimate."""
    y, s = real["multilabel"]["test"]
    y = y.copy()
    rng = np.random.default_rng(0)
    y[rng.random(y.shape) < 0.3] = -1
    m = _quiet(compute_metrics, y, s, "multilabel")
    json.dumps(m, allow_nan=False)
    k = y.shape[1]
    cols = [(y[y[:, j] >= 0, j], s[y[:, j] >= 0, j]) for j in range(k)]
    assert m["acc"] == pytest.approx(np.mean([skm.accuracy_score(t, p > 0.5) for t, p in cols]), abs=1e-12)
    assert m["acc"] == pytest.approx(acc(y, s, "multilabel"), abs=1e-12)
    per_auc = [skm.roc_auc_score(t, p) if len(np.unique(t)) == 2 else None for t, p in cols]
    assert m["per_label_auc"] == pytest.approx(per_auc, abs=1e-12)
    if None not in per_auc:
        assert m["auc"] == pytest.approx(np.mean(per_auc), abs=1e-12) == auc(y, s, "multilabel")
    bce = sum(skm.log_loss(t, p, labels=[0, 1], normalize=False) for t, p in cols) / sum(len(t) for t, _ in cols)
    assert m["log_loss"] == pytest.approx(bce, abs=1e-12)
    conf = np.concatenate([np.where(p > 0.5, p, 1 - p) for _, p in cols])
    hit = np.concatenate([(p > 0.5) == t for t, p in cols])
    assert m["ece"] == pytest.approx(_ece_reference(conf, hit), abs=1e-12)
    for j, name in enumerate(m["per_class"]):
        t, p = cols[j]
        pc = m["per_class"][name]
        assert pc["n"] == len(t) and pc["support"] == int(t.sum())
        assert m["confusion_matrix"][j] == skm.confusion_matrix(t, p > 0.5, labels=[0, 1]).tolist()
        prec, rec, f1, _ = skm.precision_recall_fscore_support(t, p > 0.5, average="binary", zero_division=0)
        assert (pc["precision"], pc["recall"], pc["f1"]) == pytest.approx((prec, rec, f1), abs=1e-12)
    ones = np.ones((len(y), 1), np.uint8)
    rep = bootstrap_replicates(y, s, "multilabel", counts=ones)
    for name in scalar_names("multilabel"):
        if m[name] is not None:
            assert rep[name][0] == pytest.approx(m[name], abs=1e-9), name
    got = bootstrap_replicates(y, s, "multilabel", replicates=30, seed=2)
    _assert_same_replicates(got, _loop_replicates(y, s, "multilabel", resample_counts(len(y), 30, 2), 0.5))
    with pytest.raises(ValueError, match="0, 1 or -1"):
        compute_metrics(np.full_like(y, 2), s, "multilabel")
