"""--patience: the stopping rule (from the history, the selection's tie rule included), and a real BreastMNIST run
with the imbalance options that stops early, is killed there, resumes without training more, and records it."""
from __future__ import annotations

import pytest

from medbench.config import load_config
from medbench.errors import MedbenchError
from medbench.handlers import early_stop
from medbench.metrics.diagnostics import read_history
from medbench.run import train
from medbench.rundir import read_metrics, read_provenance


def rows(*values, losses=None):
    losses = losses or [1.0] * len(values)
    return [{"epoch": i + 1, "val_auc": v, "val_loss": loss, "val_acc": 0.5} for i, (v, loss)
            in enumerate(zip(values, losses))]


def test_stops_when_the_selected_epoch_lies_patience_epochs_back():
    h = rows(0.6, 0.7, 0.69, 0.65)
    assert early_stop(h[:3], "auc", 2, 10) is None
    stop = early_stop(h, "auc", 2, 10)
    assert stop == {"epoch": 4, "of": 10, "best_epoch": 2, "patience": 2,
                    "reason": "val auc has not improved for 2 epochs since epoch 2 (patience 2)"}
    assert early_stop(h, "auc", 0, 10) is None  # no patience: never
    assert early_stop(h, "auc", 2, 4) is None  # the last epoch: it ran out, not stopped
    assert early_stop(h, "auc", 3, 10) is None


def test_a_tie_broken_by_a_lower_val_loss_counts_as_an_improvement():
    tie = rows(0.6, 0.7, 0.7, 0.7, losses=[1.0, 0.9, 0.8, 0.85])
    assert early_stop(tie, "auc", 2, 10) is None  # epoch 3 won the tie: one epoch since
    assert early_stop(tie + rows(0.7, 0.7, 0.7, 0.7, 0.7)[4:], "auc", 2, 10)["best_epoch"] == 3
    by_loss = [{"epoch": i + 1, "val_loss": v, "val_auc": 0.8} for i, v in enumerate([0.5, 0.4, 0.45, 0.41])]
    assert early_stop(by_loss, "loss", 2, 10)["best_epoch"] == 2
    history_csv = [{k: str(v) for k, v in r.items()} for r in rows(0.6, 0.7, 0.69, 0.65)]  # as read back
    assert early_stop(history_csv, "auc", 2, 10)["epoch"] == 4


class Killed(Exception):
    pass


@pytest.mark.slow
def test_breastmnist_stops_early_resumes_without_training_and_records_it(tmp_path, capfd):
    cfg = {"dataset": "breastmnist", "model": "cnn5", "size": 28, "epochs": 15, "batch_size": 64, "lr": 3e-3,
           "class_weights": "balanced", "sampler": "balanced", "loss": "focal", "focal_gamma": 2.0, "patience": 1,
           "deterministic": True, "checkpoint_minutes": 0}
    out = tmp_path / "run"

    def kill_at_the_stop(row):  # after the stopping epoch's checkpoint, before the run finished
        if row["epoch"] - row["best_epoch"] >= 1:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, out, quiet=True, on_epoch=kill_at_the_stop)
    history = read_history(out / "history.csv")
    stopped_at = len(history)
    assert stopped_at < 15
    assert not (out / "metrics.json").exists()
    train(cfg, out, resume=True, quiet=False)  # trains no further epoch: the history already met the patience
    assert "stopped early after epoch" in capfd.readouterr().err.replace("\n", " ")
    history = read_history(out / "history.csv")
    assert len(history) == stopped_at
    stop = read_provenance(out)["stopped_early"]
    assert stop == early_stop(history, "auc", 1, 15)
    assert stop["epoch"] == stopped_at and stop["best_epoch"] == stopped_at - 1
    # the selected epoch was evaluated and the run finished normally
    metrics = read_metrics(out)
    best = next(r for r in history if int(r["epoch"]) == stop["best_epoch"])
    assert metrics["val"]["auc"] == pytest.approx(float(best["val_auc"]), abs=1e-6)
    assert (out / "MODEL_CARD.md").is_file() and not (out / "resume.safetensors").exists()
    report = (out / "report.html").read_text(encoding="utf-8")
    assert 'id="stopped-early">stopped early after epoch' in report
    assert "class weights balanced over 546 training images (malignant 1.857, normal, benign 0.6842)" in report
    weights = read_provenance(out)["class_weights"]["weight_per_class"]
    assert weights == {"malignant": pytest.approx(546 / 294, abs=1e-6), "normal, benign": pytest.approx(546 / 798,
                                                                                                         abs=1e-6)}
    # a finished run (stopped early or not) has nothing to resume
    with pytest.raises(MedbenchError, match="already finished"):
        train(load_config(out / "config.yaml"), out, resume=True, quiet=True)
