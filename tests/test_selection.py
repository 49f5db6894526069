"""Epoch selection you can trust: ties on the selection metric go to the lower validation loss (not the first
epoch), and a run says when its validation split cannot select or its predictions collapse to one class."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from safetensors import safe_open

from medbench.metrics.diagnostics import (
    MIN_PER_CLASS,
    SelectionWarning,
    collapse_warning,
    prefer,
    read_history,
    saturated_selection,
    select_epoch,
    selection_warnings,
    small_validation,
)
from medbench.rundir import HISTORY, WEIGHTS, read_metrics, read_predictions


def _rows(*vals):
    """History rows from (val_auc, val_loss) pairs, as training writes them."""
    return [{"epoch": i + 1, "val_auc": a, "val_acc": 0.5, "val_loss": loss} for i, (a, loss) in enumerate(vals)]


def test_a_tie_goes_to_the_lowest_validation_loss_not_the_first_epoch():
    history = _rows((1.0, 0.68), (1.0, 0.66), (1.0, 0.72), (1.0, 0.92))
    assert select_epoch(history, "auc") == 2
    # a better value still wins over a lower loss; a tie within float noise is a tie
    assert select_epoch(_rows((0.90, 0.3), (0.91, 0.9)), "auc") == 2
    assert select_epoch(_rows((0.9, 0.5), (0.9 + 1e-15, 0.4)), "auc") == 2
    # a tie in both keeps the earlier epoch; text values (history.csv) select the same way
    assert select_epoch(_rows((0.8, 0.5), (0.8, 0.5)), "auc") == 1
    assert select_epoch([{k: str(v) for k, v in r.items()} for r in history], "auc") == 2
    # undefined AUC in every epoch (one class in val): the loss still decides
    assert select_epoch(_rows((None, 0.7), (None, 0.6), (math.nan, 0.65)), "auc") == 2


def test_select_metric_loss_breaks_ties_by_the_higher_auc_and_acc_by_the_loss():
    rows = _rows((0.7, 0.5), (0.9, 0.5), (0.8, 0.6))
    assert select_epoch(rows, "loss") == 2
    acc_rows = [{"epoch": 1, "val_acc": 0.8, "val_loss": 0.5}, {"epoch": 2, "val_acc": 0.8, "val_loss": 0.4},
                {"epoch": 3, "val_acc": 0.7, "val_loss": 0.1}]
    assert select_epoch(acc_rows, "acc") == 2
    assert prefer(acc_rows[0], None, "acc") and not prefer(acc_rows[2], acc_rows[1], "acc")


def test_saturated_selection_rule():
    assert "in 4 of 4 epochs" in saturated_selection(_rows(*[(1.0, 0.5)] * 4), "auc")
    msg = saturated_selection(_rows((0.9, 0.5), (1.0, 0.6), (1.0, 0.4), (0.8, 0.3)), "auc")
    assert "in 2 of 4 epochs" in msg and "epoch 3 was selected by the lower validation loss" in msg
    assert saturated_selection(_rows((0.9, 0.5), (1.0, 0.6), (1.0, 0.4), (0.8, 0.3), (0.7, 0.3)), "auc") is None
    assert saturated_selection(_rows((0.9, 0.5), (0.91, 0.6), (0.92, 0.4)), "auc") is None
    assert saturated_selection(_rows((1.0, 0.5)), "auc") is None  # one epoch: nothing was selected


def test_small_validation_rule_names_the_class_and_the_count():
    names = ["malignant", "normal, benign"]
    y = np.array([0] * (MIN_PER_CLASS - 1) + [1] * 50)[:, None]
    msg = small_validation(y, "binary", names)
    assert f"'malignant' {MIN_PER_CLASS - 1} validation images" in msg and f"fewer than {MIN_PER_CLASS}" in msg
    assert small_validation(np.array([0] * MIN_PER_CLASS + [1] * 50), "binary", names) is None
    ml = np.zeros((40, 3), int)
    ml[:12, 0] = ml[:3, 1] = ml[:20, 2] = 1
    assert "'b' 3 positive validation images" in small_validation(ml, "multilabel", ["a", "b", "c"])
    # one epoch: nothing was selected, nothing to warn about
    assert selection_warnings(_rows((1.0, 0.5)), "auc", y, "binary", names) == []


def test_collapse_warning_for_single_and_multi_label():
    y = np.array([[0], [1], [1], [0]])
    all_one = np.array([[0.2, 0.8], [0.1, 0.9], [0.3, 0.7], [0.4, 0.6]])
    msg = collapse_warning("test", y, all_one, "binary", ["NORMAL", "PNEUMONIA"])
    assert msg.startswith("test: predictions collapsed to one class: all 4 images are predicted PNEUMONIA")
    assert "(NORMAL 2, PNEUMONIA 2)" in msg
    assert collapse_warning("test", y, all_one, "binary", ["NORMAL", "PNEUMONIA"], threshold=0.75) is None
    assert collapse_warning("test", np.ones((4, 1), int), all_one, "binary", ["N", "P"]) is None  # one class
    mc = np.eye(3)[[0, 0, 0, 0]] * 0.8 + 0.1
    assert "predicted a" in collapse_warning("val", np.array([0, 1, 2, 1]), mc, "multiclass", ["a", "b", "c"])
    ml_y = np.array([[1, 0], [0, 1], [1, 1]])
    assert "same labels (no label)" in collapse_warning("val", ml_y, np.full((3, 2), 0.1), "multilabel", ["a", "b"])


def test_tied_validation_auc_run_selects_by_loss_and_warns(tmp_path, shared_data):
    """Acceptance (issue 21): folder:chest_xray_subset, cnn5, 64 px, --val-from-train 0.2, seed 1 has validation
    AUC 1.000 in every epoch; the old rule kept epoch 1, a model that calls every image PNEUMONIA. Now the tie goes
    to the epoch with the lowest validation loss, and the run warns that val cannot select and collapsed."""
    from medbench.run import train

    out = tmp_path / "tied"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train({"dataset": f"folder:{shared_data / 'chest_xray_subset'}", "model": "cnn5", "size": 64, "epochs": 3,
               "val_from_train": 0.2, "seed": 1}, out, quiet=True, report=False)
    history = read_history(out / HISTORY)
    assert [float(r["val_auc"]) for r in history] == [1.0, 1.0, 1.0]  # the tie of the issue
    losses = [float(r["val_loss"]) for r in history]
    chosen = int(np.argmin(losses)) + 1
    assert chosen != 1  # the old rule's epoch
    with safe_open(str(out / WEIGHTS), framework="pt") as f:
        assert f.metadata()["epoch"] == str(chosen)
    said = [str(w.message) for w in caught if issubclass(w.category, SelectionWarning)]
    assert any("validation split is too small to select" in m and "'NORMAL' 7 validation images" in m for m in said)
    assert any("in 3 of 3 epochs" in m and f"epoch {chosen} was selected" in m for m in said)
    assert any(m.startswith("val (selected epoch): predictions collapsed to one class") for m in said)
    # the test split at the headline threshold (0.5): every image PNEUMONIA, and the check says so
    scores = read_predictions(out / "predictions" / "test.csv")
    labels = np.array([0] * 30 + [1] * 50)[:, None]  # chest_xray_subset/test: 30 NORMAL, 50 PNEUMONIA (a collapse
    assert (scores[:, 1] > 0.5).all()                # is order-free: every row decided the same)
    test = collapse_warning("test", labels, scores, "binary", ["NORMAL", "PNEUMONIA"])
    assert test is not None and "predicted PNEUMONIA" in test and "NORMAL 30, PNEUMONIA 50" in test
    # ... and metrics.json records the selection warnings and the test split's collapse, the test one logged too
    recorded = read_metrics(out)["warnings"]
    assert any("validation split is too small to select" in m for m in recorded)
    assert any(m.startswith("test: predictions collapsed to one class") for m in recorded)
    assert any(m.startswith("test: predictions collapsed") for m in said)


@pytest.mark.parametrize("select", ["auc", "loss"])
def test_selection_warnings_are_returned_as_data(select):
    y = np.array([0] * 5 + [1] * 20)
    warns = selection_warnings(_rows((1.0, 0.6), (1.0, 0.5)), select, y, "binary", ["a", "b"])
    assert any("too small to select" in w for w in warns)
    assert any("could not tell them apart" in w for w in warns) == (select == "auc")
