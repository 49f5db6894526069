"""--track mlflow[:URI] against a real MLflow: a local SQLite store in tmp_path, and an ``mlflow server`` on
127.0.0.1 started here (one per module: it takes 15-60 s to answer on the shared 2-core machine). Everything is
checked through MlflowClient against the run directory's own files."""
from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from medbench.config import load_config
from medbench.errors import MedbenchError
from medbench.run import train
from medbench.study import run_study
from medbench.tracking import config_params, parse_track

BREAST = {"dataset": "breastmnist", "model": "cnn2", "size": 28, "seed": 0}
ARTIFACTS = {"report.html", "MODEL_CARD.md", "model_card.json", "config.yaml", "history.csv", "metrics.json"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _history(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "history.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _only_run(client: MlflowClient, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment '{experiment}'"
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id, path)}


def _check_run(client: MlflowClient, run, run_dir: Path, epochs: int) -> None:
    """The MLflow run holds what the run directory holds: params, one point per epoch, final metrics, files."""
    info, data = run.info, run.data
    assert info.run_name == run_dir.name and info.status == "FINISHED"
    assert data.tags["medbench.run_dir"] == str(run_dir.resolve())
    assert data.tags["medbench.dataset"] == "breastmnist" and data.tags["medbench.model"] == "cnn2"
    assert data.tags["medbench.version"]
    cfg = load_config(run_dir / "config.yaml")
    assert data.params == config_params(cfg)
    assert data.params["lr"] == json.dumps(cfg.lr) and data.params["model"] == "cnn2"
    assert json.loads(data.params["milestones"]) == cfg.milestones and data.params["epochs"] == str(epochs)
    history = _history(run_dir)
    assert len(history) == epochs
    for key in ("train_loss", "train_auc", "val_loss", "val_auc", "val_acc", "lr", "seconds"):
        points = client.get_metric_history(info.run_id, key)
        assert [p.step for p in sorted(points, key=lambda p: p.step)] == list(range(1, epochs + 1)), key
        assert [p.value for p in sorted(points, key=lambda p: p.step)] == pytest.approx(
            [float(r[key]) for r in history], rel=1e-12), key
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for split in ("train", "val", "test"):
        for name in ("acc", "auc", "balanced_acc", "loss"):
            assert data.metrics[f"{split}/{name}"] == pytest.approx(metrics[split][name], rel=1e-12)
    assert data.metrics["gap/auc"] == pytest.approx(metrics["gap"]["auc"], rel=1e-12)
    arts = _artifacts(client, info.run_id)
    assert ARTIFACTS <= arts and "predictions" in arts
    assert {"predictions/train.csv", "predictions/val.csv", "predictions/test.csv"} <= _artifacts(
        client, info.run_id, "predictions")


# ---- a local store --------------------------------------------------------------------------------------------
def test_bad_track_values_are_one_line_errors(tmp_path):
    assert parse_track("mlflow") is None and parse_track("mlflow:http://h:5000") == "http://h:5000"
    assert parse_track("mlflow:sqlite:///x.db") == "sqlite:///x.db"
    with pytest.raises(MedbenchError, match="unknown tracker 'wandb'; valid: mlflow"):
        parse_track("wandb")
    with pytest.raises(MedbenchError, match="no URI after 'mlflow:'"):
        parse_track("mlflow:")
    with pytest.raises(MedbenchError, match=r"cannot open the MLflow store htp://127.0.0.1:5000: .*unsupported URI"):
        train({**BREAST, "epochs": 1}, tmp_path / "run", quiet=True, track="mlflow:htp://127.0.0.1:5000")
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_unreachable_server_fails_before_training(tmp_path):
    port = _free_port()  # nothing listens there
    t0 = time.perf_counter()
    with pytest.raises(MedbenchError) as err:
        train({**BREAST, "epochs": 1}, tmp_path / "run", quiet=True, track=f"mlflow:http://127.0.0.1:{port}")
    took = time.perf_counter() - t0
    msg = str(err.value)
    assert f"no MLflow tracking server answers at http://127.0.0.1:{port}" in msg and "mlflow server" in msg
    assert "\n" not in msg and took < 15
    assert not (tmp_path / "run" / "config.yaml").exists() and not (tmp_path / "run" / "history.csv").exists()
    with pytest.raises(MedbenchError, match=f"127.0.0.1:{port}"):  # a study refuses before any run
        run_study(_study(tmp_path), tmp_path / "study", track=f"mlflow:http://127.0.0.1:{port}")
    assert not (tmp_path / "study" / "study.db").exists()


@pytest.mark.slow
def test_train_to_a_sqlite_store_logs_everything_and_changes_no_result(tmp_path, monkeypatch):
    settings = {**BREAST, "epochs": 1, "bootstrap": 50, "deterministic": True}  # epoch curves: the server test
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    (tmp_path / "store").mkdir()
    monkeypatch.chdir(tmp_path)
    tracked = train(settings, tmp_path / "tracked", quiet=True, track=f"mlflow:{uri}")
    client = MlflowClient(uri)
    run = _only_run(client, "breastmnist")  # a single train's experiment: the dataset
    _check_run(client, run, tracked, epochs=1)
    # the files sit beside the database, not in MLflow's default ./mlruns of the working folder
    assert (tmp_path / "store" / "mlartifacts").is_dir() and not (tmp_path / "mlruns").exists()
    metrics = json.loads((tracked / "metrics.json").read_text())
    lo, hi = metrics["test"]["auc_ci"]
    assert (run.data.metrics["test/auc_ci_low"], run.data.metrics["test/auc_ci_high"]) == (lo, hi)
    assert run.data.metrics["test/per_class/malignant/auc"] == pytest.approx(metrics["test"]["per_class"][
        "malignant"]["auc"])
    # the same run without tracking: the same numbers
    plain = train(settings, tmp_path / "plain", quiet=True)
    again = json.loads((plain / "metrics.json").read_text())
    assert {s: {k: v for k, v in again[s].items()} for s in ("train", "val", "test")} == {
        s: {k: v for k, v in metrics[s].items()} for s in ("train", "val", "test")}
    drop = ("seconds", "images_per_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in _history(plain)] == [
        {k: v for k, v in r.items() if k not in drop} for r in _history(tracked)]


class _Stop(Exception):
    pass


@pytest.mark.slow
def test_failed_run_is_marked_failed_and_resume_continues_its_mlflow_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # plain 'mlflow': MLflow's default store, ./mlflow.db
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def crash(row):
        if row["epoch"] == 1:
            raise _Stop("stopped by the test")

    out = tmp_path / "run"
    with pytest.raises(_Stop):
        train({**BREAST, "epochs": 2}, out, quiet=True, track="mlflow", experiment="resume-check", on_epoch=crash)
    assert (tmp_path / "mlflow.db").is_file()
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = _only_run(client, "resume-check")
    assert run.info.status == "FAILED" and "stopped by the test" in run.data.tags["medbench.error"]
    assert [p.step for p in client.get_metric_history(run.info.run_id, "val_auc")] == [1]
    train(load_config(out / "config.yaml"), out, quiet=True, track="mlflow", experiment="resume-check",
          resume=True)
    resumed = _only_run(client, "resume-check")  # the same MLflow run, now finished
    assert resumed.info.run_id == run.info.run_id
    _check_run(client, resumed, out, epochs=2)


@pytest.mark.slow
def test_a_pruned_trial_ends_killed_with_its_reason(tmp_path):
    import optuna

    def prune(row):
        raise optuna.TrialPruned(f"pruned at epoch {row['epoch']}")

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(optuna.TrialPruned):
        train({**BREAST, "epochs": 1}, tmp_path / "run", quiet=True, track=f"mlflow:{uri}", on_epoch=prune)
    run = _only_run(MlflowClient(uri), "breastmnist")
    assert run.info.status == "KILLED" and run.data.tags["medbench.pruned"] == "pruned at epoch 1"
    assert "medbench.error" not in run.data.tags and run.data.metrics["val_auc"] > 0


@pytest.mark.slow
def test_a_store_that_fails_mid_run_only_warns(tmp_path):
    from medbench.tracking import TrackingWarning

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)

    def delete_it(row):  # a deleted MLflow run refuses every later call, as a vanished server would
        if row["epoch"] == 1:
            client.delete_run(_only_run(client, "breastmnist").info.run_id)

    with pytest.warns(TrackingWarning, match=r"MLflow tracking at sqlite:///.* stopped \(epoch 2: ") as caught:
        out = train({**BREAST, "epochs": 2}, tmp_path / "run", quiet=True, track=f"mlflow:{uri}", on_epoch=delete_it)
    assert sum(issubclass(w.category, TrackingWarning) for w in caught) == 1
    assert (out / "metrics.json").is_file() and len(_history(out)) == 2  # the run finished all the same


# ---- a real server ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """``mlflow server`` on a free 127.0.0.1 port, SQLite backend and proxied artifacts in a temporary folder."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (root / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1", "--backend-store-uri", f"sqlite:///{root}/backend.db",
                             "--artifacts-destination", str(root / "artifacts")],
                            cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")})
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not answer at {url}:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)  # uvicorn's worker may linger: its state is a temporary folder, nothing to save
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
        log.close()


def _study(tmp_path: Path) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text("name: track-study\ngrid: {seed: [0, 1]}\nfixed: {dataset: breastmnist, model: cnn2, epochs: 1}\n")
    return path


@pytest.mark.slow
def test_train_and_a_study_on_a_server(tmp_path, mlflow_server):
    client = MlflowClient(mlflow_server)
    out = train({**BREAST, "epochs": 2}, tmp_path / "single", quiet=True, track=f"mlflow:{mlflow_server}",
                experiment="server-train")
    _check_run(client, _only_run(client, "server-train"), out, epochs=2)
    counts = run_study(_study(tmp_path), tmp_path / "study", workers=2, report=True,
                       track=f"mlflow:{mlflow_server}")
    assert counts["done"] == 2
    exp = client.get_experiment_by_name("track-study")
    runs = client.search_runs([exp.experiment_id])
    run_dirs = sorted((tmp_path / "study" / "runs").iterdir())
    assert sorted(r.info.run_name for r in runs) == [d.name for d in run_dirs]
    for run in runs:
        run_dir = Path(run.data.tags["medbench.run_dir"])
        assert run_dir.parent == (tmp_path / "study" / "runs").resolve()
        _check_run(client, run, run_dir, epochs=1)
    assert {r.data.params["seed"] for r in runs} == {"0", "1"}


@pytest.mark.slow
def test_a_tune_groups_its_trials_on_a_server(tmp_path, mlflow_server):
    from medbench.study.tune import run_tune
    from medbench.study.tune_space import build_space

    space = build_space({"name": "track-tune", "fixed": {"dataset": "breastmnist", "model": "cnn2", "epochs": 2},
                         "space": {"lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True}}, "pruner": "none",
                         "seed": 0, "report": True})
    summary = run_tune(space, tmp_path / "tune", trials=2, track=f"mlflow:{mlflow_server}")
    assert summary["complete"] == 2
    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("track-tune").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["0000", "0001"]
    with (tmp_path / "tune" / "trials.csv").open(newline="") as f:
        lrs = {Path(r["run_dir"]).name: float(r["lr"]) for r in csv.DictReader(f)}
    for run in runs:
        _check_run(client, run, Path(run.data.tags["medbench.run_dir"]), epochs=2)
        assert float(run.data.params["lr"]) == lrs[run.info.run_name]
