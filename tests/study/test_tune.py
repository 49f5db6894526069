"""Hyper-parameter search (`medbench tune`): the space file's checks, a tiny tune end to end (trials.csv, best.yaml
that reproduces the best trial's val AUC, the report, the runs table), resuming it, a failing combination, pruning,
a SIGKILLed tune continued, two workers sharing one study through SQLite and PostgreSQL, and Ray workers."""
from __future__ import annotations

import csv
import json
import os
import sys
import uuid
from pathlib import Path

import optuna
import pytest
import torch
from test_study import BACKENDS, _fresh_store, postgres_url  # noqa: F401 - the PostgreSQL fixture

from medbench.config import load_config
from medbench.errors import MedbenchError
from medbench.run import train
from medbench.study import study_status
from medbench.study.store import Store
from medbench.study.tune import open_study, run_tune
from medbench.study.tune_space import build_space, load_space

from conftest import kill_when

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "tune" / "breast-tune.yaml"


def tiny(name: str = "tiny", epochs: int = 1, **extra) -> dict:
    """cnn2 at 28 px on BreastMNIST: a trial takes seconds."""
    return {"name": name, "fixed": {"dataset": "breastmnist", "model": "cnn2", "epochs": epochs},
            "space": {"lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True}, "augment": ["none", "basic"]},
            "pruner": "none", "seed": 0, **extra}


def _rows(out: Path) -> list[dict]:
    with (out / "trials.csv").open(newline="") as f:
        return list(csv.DictReader(f))


# ---- the space file -----------------------------------------------------------------------------------------
def test_example_space_loads():
    space = load_space(EXAMPLE)
    dims = {d.name: d for d in space.dims}
    assert set(dims) == {"lr", "weight_decay", "drop_rate", "augment"}
    assert dims["lr"].log and not dims["lr"].is_int and dims["augment"].choices == ("none", "basic")
    assert space.direction == "maximize" and space.pruner == "median" and space.trials == 20
    assert space.config({"lr": 1e-3, "weight_decay": 1e-4, "drop_rate": 0.1, "augment": "basic"}).select_metric == "auc"


def test_int_and_float_ranges_follow_the_setting():
    space = build_space({**tiny(), "space": {"epochs": {"low": 1, "high": 3}, "drop_rate": {"low": 0, "high": 0.9},
                                             "lr": [1e-3, 1e-2]}, "fixed": {"dataset": "breastmnist"}})
    dims = {d.name: d for d in space.dims}
    assert dims["epochs"].is_int and not dims["drop_rate"].is_int  # int bounds on a float setting stay a float
    assert space.max_epochs == 3


@pytest.mark.parametrize("change, message", [
    ({"space": {"lrr": [0.1]}}, "unknown key 'lrr' in space"),
    ({"space": {"lr": 0.1}}, "a single value belongs in fixed"),
    ({"space": {"lr": {"low": 0.1, "high": 0.01}}}, "low 0.1 must be below high 0.01"),
    ({"space": {"lr": {"low": 0.0, "high": 0.1, "log": True}}}, "a log range needs low > 0"),
    ({"space": {"lr": {"low": 0.001, "high": 0.1, "log": True, "step": 0.01}}}, "cannot be combined"),
    ({"space": {"drop_rate": {"low": 0.0, "high": 2.0}}}, "space 'drop_rate': the value 2.0 is invalid"),
    ({"space": {"augment": ["none", "sparkles"]}}, "space 'augment': the value 'sparkles' is invalid"),
    ({"fixed": {"dataset": "breastmnist", "epochs": 0}}, "fixed 'epochs'"),
    ({"fixed": {"dataset": "breastmnist", "lr": 0.1}}, "'lr' is in both fixed and space"),
    ({"metric": "f1"}, "metric 'f1' is not one of auc, acc, loss"),
    ({"pruner": "asha"}, "pruner 'asha' is not one of median, hyperband, none"),
    ({"grid": {"seed": [0, 1]}}, "a study grid is for `medbench study`"),
])
def test_bad_spaces_name_the_file_and_key(tmp_path, change, message):
    import yaml

    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({**tiny(), **change}))
    with pytest.raises(MedbenchError) as e:
        load_space(path)
    assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_cli_dry_run_shows_the_space_and_an_estimate(capsys):
    from medbench.cli import main
    from medbench.cli.tune import _print_plan

    assert main(["tune", str(EXAMPLE), "--dry-run", "--json", "--trials", "4"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["trials"] == 4 and info["space"]["lr"] == "float [0.0001, 0.01] log"
    assert info["space"]["augment"] == "one of none, basic"
    assert info["estimate"]["total_seconds"] == pytest.approx(4 * info["estimate"]["trial_seconds"])
    _print_plan(info)
    text = capsys.readouterr().out
    assert "lr: float [0.0001, 0.01] log" in text and "4 trials: about" in text


# ---- a tiny tune end to end ---------------------------------------------------------------------------------
def test_tiny_tune_resumes_and_best_yaml_reproduces(tmp_path):
    out = tmp_path / "tune"
    space = build_space(tiny())
    summary = run_tune(space, out, trials=1)
    assert summary["ended"] == summary["complete"] == 1
    study_id = open_study(space, f"sqlite:///{out / 'study.db'}")._study_id
    summary = run_tune(space, out, trials=2)  # resumed: one more trial of the same Optuna study
    assert summary["complete"] == 2
    study = open_study(space, f"sqlite:///{out / 'study.db'}")
    assert study._study_id == study_id and [t.number for t in study.trials] == [0, 1]
    rows = _rows(out)
    assert [r["number"] for r in rows] == ["0", "1"] and {r["state"] for r in rows} == {"complete"}
    assert list(rows[0])[:5] == ["number", "state", "value", "lr", "augment"] and rows[0]["epochs_run"] == "1"
    assert all((Path(r["run_dir"]) / "metrics.json").is_file() for r in rows)
    assert study_status(out) == {"total": 2, "done": 2, "failed": 0, "running": 0, "pending": 0}
    # best.yaml: the best trial's full config; `train --config` with the same threads gives its val AUC exactly
    best = summary["best"]
    cfg = load_config(out / "best.yaml")
    assert cfg.lr == best["params"]["lr"] and cfg.augment == best["params"]["augment"] and cfg.model == "cnn2"
    assert f"OMP_NUM_THREADS={torch.get_num_threads()}" in (out / "best.yaml").read_text()
    again = train(cfg, tmp_path / "again", quiet=True, report=False)
    assert json.loads((again / "metrics.json").read_text())["val"]["auc"] == best["value"]
    html = (out / "report.html").read_text()
    assert all(f'data-figure="{f}"' in html for f in ("history", "curves", "parallel"))
    assert "importances need at least 4 complete trials; this tune has 2" in html


def test_a_failing_combination_is_a_failed_trial(tmp_path, capsys):
    """ensemble 2 needs keep_checkpoints >= 2: valid one key at a time, so the file loads; the trial fails."""
    import yaml

    from medbench.cli import main

    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({**tiny("bad"), "fixed": {"dataset": "breastmnist", "model": "cnn2",
                                                             "epochs": 1, "keep_checkpoints": 1},
                                    "space": {"ensemble": [2]}}))
    assert main(["tune", str(path), "--out", str(tmp_path / "t"), "--trials", "1", "--quiet"]) == 1
    assert "1 trials ended: 0 complete, 0 pruned, 1 failed" in capsys.readouterr().out
    (row,) = _rows(tmp_path / "t")
    assert row["state"] == "fail" and "ensemble 2 needs keep_checkpoints >= 2" in row["error"]
    assert not (tmp_path / "t" / "best.yaml").exists()
    assert study_status(tmp_path / "t")["failed"] == 1


def test_pruned_trials_are_recorded_and_their_folders_removed(tmp_path):
    """Two earlier trials that scored 0.99 at every epoch: the median pruner stops the real one after epoch 1."""
    space = build_space({**tiny("prune", epochs=3), "pruner": "median"})
    out = tmp_path / "t"
    out.mkdir()
    study = open_study(space, f"sqlite:///{out / 'study.db'}")
    dists = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
             "augment": optuna.distributions.CategoricalDistribution(["none", "basic"])}
    for _ in range(2):
        study.add_trial(optuna.trial.create_trial(params={"lr": 1e-3, "augment": "none"}, distributions=dists,
                                                  value=0.99, intermediate_values={1: 0.99, 2: 0.99, 3: 0.99}))
    summary = run_tune(space, out, trials=3)
    assert (summary["complete"], summary["pruned"]) == (2, 1)
    row = _rows(out)[2]
    assert row["state"] == "pruned" and row["epochs_run"] == "1" and row["run_dir"] == ""
    assert not (out / "runs" / "0002").exists()
    with Store(f"sqlite:///{out / 'study.db'}") as store:
        (rec,) = store.rows()
        assert rec["status"] == "pruned" and "pruned at epoch 1" in rec["error"]


# ---- kill and resume, sharing ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_sigkilled_tune_continues_the_same_study(tmp_path):
    import yaml

    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(tiny("killed", epochs=3)))
    out = tmp_path / "t"
    cmd = [sys.executable, "-m", "medbench", "tune", str(path), "--out", str(out), "--trials", "3", "--quiet"]
    kill_when(cmd, lambda: (out / "runs" / "0001" / "history.csv").is_file(), env=os.environ.copy(),
              what="medbench tune")
    space = load_space(path)
    study = open_study(space, f"sqlite:///{out / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "RUNNING"]
    study_id, killed = study._study_id, study.trials[1]
    summary = run_tune(space, out, trials=3)  # at once: the dead pid marks the trial stale, not its heartbeat
    assert summary["complete"] == 3
    study = open_study(space, f"sqlite:///{out / 'study.db'}")
    assert study._study_id == study_id
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    retry = study.trials[2]
    assert retry.system_attrs["failed_trial"] == 1 and retry.params == killed.params  # retried with its settings
    assert not (out / "runs" / "0001").exists() and [r["state"] for r in _rows(out)][1] == "interrupted"
    counts = study_status(out)
    assert counts["done"] == 3 and counts["failed"] == 1 and counts["running"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_two_workers_share_one_study(request, tmp_path, backend):
    url = _fresh_store(request, tmp_path, backend)
    space = build_space(tiny(f"shared-{uuid.uuid4().hex[:8]}"))
    summary = run_tune(space, tmp_path / "t", trials=4, workers=2, db_url=url)
    assert summary["complete"] == 4
    study = open_study(space, url)
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    pids = {t.user_attrs["pid"] for t in study.trials}
    assert len(pids) == 2 and os.getpid() not in pids
    assert {t.user_attrs["threads"] for t in study.trials} == {max(1, len(os.sched_getaffinity(0)) // 2)}
    with Store(url) as store:
        assert store.counts()["done"] == 4


@pytest.mark.slow
def test_ray_workers(tmp_path):
    space = build_space(tiny("ray"))
    summary = run_tune(space, tmp_path / "t", trials=2, workers=2, executor="ray")
    assert summary["complete"] == 2
    pids = {t.user_attrs["pid"] for t in open_study(space, f"sqlite:///{tmp_path / 't' / 'study.db'}").trials}
    assert os.getpid() not in pids
    assert len(_rows(tmp_path / "t")) == 2


def test_a_changed_space_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    open_study(build_space(tiny("same")), url)
    with pytest.raises(MedbenchError, match="another search space"):
        open_study(build_space({**tiny("same"), "metric": "loss"}), url)
    assert optuna.load_study(study_name="same", storage=url).direction.name == "MAXIMIZE"
