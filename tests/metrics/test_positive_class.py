"""--positive-class: which class's recall is the sensitivity. Default: the minority class of train (BreastMNIST:
label 0, 'malignant'); MedMNIST's acc/auc never change."""
from __future__ import annotations

import numpy as np
import pytest
from medmnist.evaluator import getACC, getAUC
from sklearn.metrics import recall_score

from medbench.data import load_dataset
from medbench.errors import MedbenchError
from medbench.metrics import compute_metrics
from medbench.metrics.positive import positive_index


@pytest.fixture(scope="module")
def breast(medmnist_dir, cache_dir):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDBENCH_CACHE", str(cache_dir))
        return load_dataset("breastmnist", data_dir=medmnist_dir)


def _scores(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Softmax scores that separate the classes imperfectly (so both recalls lie strictly inside (0, 1))."""
    rng = np.random.default_rng(seed)
    logit = rng.normal(size=len(labels)) + 1.2 * (labels[:, 0] * 2 - 1)
    p1 = 1 / (1 + np.exp(-logit))
    return np.stack([1 - p1, p1], 1)


def test_breastmnist_sensitivity_is_malignancy_recall_by_default(breast):
    """Acceptance (issue 21): sensitivity was the recall of label 1 ('normal, benign'); by default it is now the
    recall of the minority class of train, label 0 'malignant', as scikit-learn's recall_score(pos_label=0)."""
    names = breast.class_names
    assert names[0] == "malignant"
    pos = positive_index(None, names, breast["train"].labels.numpy(), "binary")
    assert pos == 0  # 147 malignant vs 399 normal/benign in train
    y = breast["test"].labels.numpy()
    s = _scores(y)
    m = compute_metrics(y, s, "binary", class_names=names, positive=pos)
    pred = (s[:, 1] > 0.5).astype(int)
    assert m["class_of"] == {"sensitivity": "malignant", "specificity": "normal, benign"}
    assert m["sensitivity"] == pytest.approx(recall_score(y[:, 0], pred, pos_label=0), abs=1e-12)
    assert m["specificity"] == pytest.approx(recall_score(y[:, 0], pred, pos_label=1), abs=1e-12)
    assert m["sensitivity"] != pytest.approx(m["specificity"])  # the two really differ: the test can fail
    # MedMNIST's acc / auc are the same whichever class is positive
    plain = compute_metrics(y, s, "binary", class_names=names)
    assert plain["class_of"]["sensitivity"] == "normal, benign" and plain["sensitivity"] == m["specificity"]
    for rec in (m, plain):
        assert rec["acc"] == pytest.approx(getACC(y, s, "binary-class"), abs=1e-12)
        assert rec["auc"] == pytest.approx(getAUC(y, s, "binary-class"), abs=1e-12)
    # the Youden-threshold record (evaluation's at_youden) follows the same positive class
    at = compute_metrics(y, s, "binary", threshold=0.37, class_names=names, positive=pos)
    assert at["sensitivity"] == pytest.approx(recall_score(y[:, 0], (s[:, 1] > 0.37) * 1, pos_label=0), abs=1e-12)


def test_named_positive_class_ties_and_refusals(breast):
    names, train = breast.class_names, breast["train"].labels.numpy()
    assert positive_index("normal, benign", names, train, "binary") == 1
    assert positive_index("malignant", names, train, "binary") == 0
    assert positive_index(None, ["a", "b"], np.array([0, 1, 1, 0]), "binary") == 1  # a tie: the last class
    with pytest.raises(MedbenchError, match=r"--positive-class 'benign' is not a class of this dataset; classes: "
                                            r"'malignant', 'normal, benign'") as e:
        positive_index("benign", names, train, "binary")
    assert "\n" not in str(e.value)
    with pytest.raises(MedbenchError, match="binary tasks only: this dataset's task is multiclass"):
        positive_index("0", ["0", "1", "2"], np.array([0, 1, 2]), "multiclass")
    assert positive_index(None, ["0", "1", "2"], np.array([0, 1, 2]), "multiclass") is None
    with pytest.raises(ValueError, match="binary tasks only"):
        compute_metrics(np.array([0, 1, 2]), np.eye(3), "multiclass", positive=0)
    with pytest.raises(ValueError, match="0 or 1"):
        compute_metrics(np.array([0, 1]), np.eye(2), "binary", positive=2)


def test_a_bad_positive_class_stops_training_before_it_starts(tmp_path):
    from medbench.run import train

    out = tmp_path / "run"
    with pytest.raises(MedbenchError, match="not a class of this dataset"):
        train({"dataset": "breastmnist", "model": "cnn2", "epochs": 1, "positive_class": "cancer"}, out, quiet=True,
              report=False)
    assert not (out / "model.safetensors").exists()
