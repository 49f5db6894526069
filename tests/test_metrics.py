import numpy as np
import pytest
from medmnist.evaluator import getACC, getAUC

from medbench.metrics import acc, auc, compute_metrics

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
