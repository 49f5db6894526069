"""The duration estimate: its warm-up leaves the run exactly as it was, it scales with epochs, it stays silent (and
costs nothing) when quiet, and the dry runs of `train` and `study` print it."""
from __future__ import annotations

import copy
import csv
import json
import random
import time

import numpy as np
import pytest
import torch

from medbench.build import build_dataset
from medbench.config import resolve_config
from medbench.distributed import Dist
from medbench.engine import seed_everything, train_one_epoch
from medbench.estimate import Estimate, announce, duration, estimate_config, estimate_configs, estimate_loop, makespan
from medbench.training import build_loop

SMALL = {"dataset": "breastmnist", "model": "cnn2", "epochs": 2, "batch_size": 64}


def _snapshot(loop) -> dict:
    return {"model": copy.deepcopy(loop.model.state_dict()), "opt": copy.deepcopy(loop.opt.state_dict()),
            "sched": copy.deepcopy(loop.sched.state_dict()), "gen": loop.gen.get_state(),
            "ema": copy.deepcopy(loop.ema.module.state_dict()), "ema_updates": loop.ema.updates,
            "torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "grad": torch.is_grad_enabled(), "training": loop.model.training}


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if torch.is_tensor(a):
        return torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return a == b


def test_warmup_leaves_weights_batchnorm_optimiser_and_every_random_state_unchanged(tmp_path):
    # augmentation, mixup and EMA draw random numbers and keep state: all of it must be as before
    cfg = resolve_config({**SMALL, "model": "cnn5", "augment": "basic", "mixup": 0.2, "ema": 0.9})
    seed_everything(cfg.seed)
    ds = build_dataset(cfg)
    loop = build_loop(cfg, tmp_path / "run", ds, Dist(), torch.device("cpu"))
    train_one_epoch(loop.net, loop.task, loop.splits["train"], loop.opt, loop.sched, loop.prep, loop.precision,
                    cfg.batch_size, loop.gen, None, augment=loop.augment, mix=loop.mix, ema=loop.ema)  # Adam state
    before = _snapshot(loop)
    assert any(k.endswith("running_mean") for k in before["model"])  # BatchNorm statistics are compared too
    est = estimate_loop(loop, budget_s=0.5)
    assert _same(before, _snapshot(loop))
    assert est.measured_steps >= 1 and est.epoch_seconds > 0 and est.epochs == 2


@pytest.mark.slow
def test_same_seed_gives_identical_history_with_and_without_the_estimate(tmp_path, capsys):
    from medbench.run import train

    cfg = {**SMALL, "deterministic": True, "augment": "basic"}
    train(cfg, tmp_path / "with", quiet=False, report=False)  # announce measures before the first epoch
    assert "estimated " in capsys.readouterr().err
    train(cfg, tmp_path / "without", quiet=True, report=False)
    assert capsys.readouterr().err == ""

    def rows(run):
        with open(run / "history.csv") as f:
            return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in csv.DictReader(f)]

    assert rows(tmp_path / "with") == rows(tmp_path / "without")
    m1, m2 = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("with", "without"))
    assert m1["test"]["auc"] == m2["test"]["auc"] and m1["val"]["loss"] == m2["val"]["loss"]


def test_announce_when_quiet_prints_nothing_and_measures_nothing(tmp_path, capsys):
    cfg = resolve_config(SMALL)
    loop = build_loop(cfg, tmp_path, build_dataset(cfg), Dist(), torch.device("cpu"))
    t0 = time.perf_counter()
    assert announce(loop, quiet=True) is None
    assert time.perf_counter() - t0 < 0.01
    assert announce(loop, quiet=False, first_epoch=3) is None  # a resumed run with no epochs left
    assert capsys.readouterr().err == ""
    est = announce(loop, quiet=False, first_epoch=2)  # resumed after epoch 1: one epoch left
    assert est.epochs == 1 and f"estimated {est.text()}" in capsys.readouterr().err
    assert "1 epoch x" in est.text()


def test_estimate_config_is_positive_and_scales_with_epochs_members_and_tta():
    e = estimate_config({**SMALL, "epochs": 3}, budget_s=0.5)
    assert e.epochs == 3 and e.measured_steps >= 1 and 0 < e.train_seconds < e.epoch_seconds
    assert e.seconds == pytest.approx(3 * e.epoch_seconds + e.eval_seconds)
    assert "3 epochs x" in e.text() and "measured on cpu fp32" in e.text()
    # one measurement for runs of one shape: the training part is exactly proportional to the epochs
    cfgs = [resolve_config({**SMALL, "epochs": n, "seed": s, "lr": lr})
            for n, s, lr in ((2, 0, 1e-3), (4, 1, 1e-2))] + [resolve_config({**SMALL, "members": 3, "tta": True})]
    (two, four, three), shapes = estimate_configs(cfgs, budget_s=0.5)
    assert shapes == 1
    assert four.seconds - four.eval_seconds == pytest.approx(2 * (two.seconds - two.eval_seconds))
    assert three.runs == 3 and three.eval_seconds > two.eval_seconds  # TTA predicts every split twice
    assert three.seconds == pytest.approx(3 * (2 * three.epoch_seconds + three.eval_seconds))
    assert estimate_config({**SMALL, "model": "sk:logreg"}).note.startswith("sk:logreg: a classical model")


def test_duration_text_and_makespan():
    assert [duration(s) for s in (0.42, 55, 250, 1500, 5520)] == ["0.4 s", "55 s", "4 min 10 s", "25 min",
                                                                  "1 h 32 min"]
    e = Estimate(5520.0, 55.0, 100, 4, train_seconds=50, val_seconds=5, eval_seconds=20)
    assert e.text() == ("1 h 32 min: 100 epochs x 55 s (train 50 s + val 5.0 s) + evaluation 20 s, measured on "
                        "cpu fp32") and e.short() == "~1 h 32 min"
    assert makespan([10, 10, 10, 30], 2) == 30 and makespan([5, 5], 1) == 10 and makespan([], 3) == 0


def test_study_dry_run_prints_each_run_estimate_and_the_total(tmp_path, capsys):
    from medbench.cli import main

    study = tmp_path / "s.yaml"
    study.write_text("name: est\ngrid: {epochs: [1, 2], seed: [0, 1]}\nfixed: {dataset: breastmnist, model: cnn2}\n")
    assert main(["study", str(study), "--dry-run", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("  ~") == 4 and "estimated total ~" in out and "with 2 workers ~" in out
    assert "(1 measured)" in out  # one shape: the four runs share one measurement
    assert main(["study", str(study), "--dry-run", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    secs = [r["estimate"]["seconds"] for r in listed["runs"]]
    assert all(s > 0 for s in secs) and listed["estimate"]["total_seconds"] == pytest.approx(sum(secs), abs=0.5)
    assert main(["study", str(study), "--dry-run", "--no-estimate"]) == 0
    assert "~" not in capsys.readouterr().out


def test_train_dry_run_prints_the_estimate_and_trains_nothing(tmp_path, capsys):
    from medbench.cli import main

    out = tmp_path / "run"
    assert main(["train", "--dataset", "breastmnist", "--model", "cnn2", "--epochs", "3", "--out", str(out),
                 "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("estimated ") and "3 epochs x" in text and "nothing trained" in text
    assert not out.exists()
    assert main(["train", "--resume", str(out), "--dry-run"]) == 2
