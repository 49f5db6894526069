"""Output folders are owned: writers refuse a user's folder untouched, a second writer is refused while the first
runs, a killed writer's lock and temporary files do not get in the way, and an unfinished run says so."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from medbench.cli import main
from medbench.rundir import LOCK, RESUME, locked

TRAIN = ["train", "--dataset", "breastmnist", "--model", "cnn5", "--quiet", "--no-report"]


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != LOCK}  # a dead writer's lock may go


def _one_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medbench: error: "), lines
    return lines[0]


def test_a_users_folder_survives_train_byte_identical(tmp_path, capsys):
    user = tmp_path / "userdir"
    (user / "predictions").mkdir(parents=True)
    for name in ("metrics.json", "model.safetensors", "history.csv", "MODEL_CARD.md", "report.html",
                 "predictions/test.csv"):
        (user / name).write_text(f"the user's own {name}\n")
    before = _digest(user)
    assert main([*TRAIN, "--epochs", "1", "--out", str(user)]) == 2
    line = _one_line(capsys)
    assert f"{user} is not empty and is not a medbench run" in line and "choose another --out" in line
    assert _digest(user) == before and not (user / LOCK).exists()


@pytest.mark.parametrize("verb", ["train", "gan", "study"])
def test_out_that_is_a_file_or_under_a_file_is_one_line(tmp_path, capsys, verb):
    afile = tmp_path / "notes.txt"
    afile.write_text("mine\n")
    study = tmp_path / "s.yaml"
    study.write_text("name: s\ngrid: {dataset: [breastmnist], model: [cnn5]}\nfixed: {epochs: 1}\n")
    argv = {"train": [*TRAIN, "--epochs", "1"], "gan": ["gan", "train", "--dataset", "breastmnist", "--epochs", "1"],
            "study": ["study", str(study)]}[verb]
    assert main([*argv, "--out", str(afile)]) == 2
    assert f"{afile} is a file, not a folder" in _one_line(capsys)
    assert main([*argv, "--out", str(afile / "run")]) == 2
    assert f"{afile} is a file, so {afile / 'run'} cannot be created" in _one_line(capsys)
    assert afile.read_text() == "mine\n"


@pytest.mark.slow
def test_two_concurrent_trains_one_runs_one_is_refused(tmp_path, medmnist_dir, capsys):
    """Acceptance: the second writer gets one line naming the first; the first completes and evaluate
    reproduces its metrics."""
    out = tmp_path / "same"
    env = {**os.environ, "MEDBENCH_DATA": str(medmnist_dir), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "medbench", *TRAIN, "--epochs", "3", "--seed", "1",
                              "--out", str(out)], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "config.yaml").exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert first.poll() is None, first.stderr.read()
    assert main([*TRAIN, "--model", "cnn2", "--epochs", "1", "--out", str(out)]) == 2
    assert "already holds a run" in _one_line(capsys)
    # the same folder through the lock alone (a run whose config.yaml is not written yet looks like this)
    assert main(["evaluate", str(out)]) == 2
    line = _one_line(capsys)
    assert f"{out} is in use by medbench train (pid {first.pid} on " in line and "wait for it" in line
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert "model: cnn5" in (out / "config.yaml").read_text() and not (out / LOCK).exists()
    recorded = json.loads((out / "metrics.json").read_text())
    assert main(["evaluate", str(out), "--quiet"]) == 0
    again = json.loads((out / "metrics.json").read_text())
    for split in ("train", "val", "test"):
        assert again[split]["auc"] == pytest.approx(recorded[split]["auc"], abs=1e-12)
        assert again[split]["acc"] == recorded[split]["acc"]


def test_a_dead_writers_lock_and_temporaries_do_not_block(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK).write_text(json.dumps({"pid": 999999, "host": "gone", "command": "medbench train"}))
    (out / ".metrics.json.abc123.tmp").write_text("half")
    (out / "predictions").mkdir()
    (out / "predictions" / ".test.csv.x.tmp").write_text("half")
    with locked(out, "test"):
        assert json.loads((out / LOCK).read_text())["pid"] == os.getpid()
        assert not list(out.rglob("*.tmp"))
        with locked(out, "nested"):  # train's own evaluate takes it again
            pass
        held = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
            from medbench.rundir import locked
            from medbench.errors import MedbenchError
            try:
                with locked({str(out)!r}, "other"):
                    print("got it")
            except MedbenchError as e:
                print(e)""")], capture_output=True, text=True, timeout=120)
        assert f"is in use by test (pid {os.getpid()}" in held.stdout, held
    assert not (out / LOCK).exists() and (out / "predictions").is_dir()


def test_a_class_only_in_test_is_refused(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for split, classes in {"train": {"NORMAL": 8, "PNEUMONIA": 8}, "val": {"NORMAL": 3, "PNEUMONIA": 3},
                           "test": {"NORMAL": 3, "PNEUMONIA": 3, "COVID": 2}}.items():
        for cls, n in classes.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(root / split / cls / f"{i}.png")
    assert main(["train", "--dataset", f"folder:{root}", "--model", "cnn5", "--epochs", "1",
                 "--out", str(tmp_path / "r")]) == 2
    line = _one_line(capsys)
    assert "class 'COVID' has 2 image(s) in the test split but none in train" in line and str(root) in line
    assert not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory, medmnist_dir) -> Path:
    """A run killed (os._exit) right after its first of three epochs: weights and resume state, no metrics."""
    out = tmp_path_factory.mktemp("killed") / "run"
    code = textwrap.dedent(f"""
        import os
        from medbench.run import train
        train({{"dataset": "breastmnist", "model": "cnn5", "epochs": 3, "seed": 2}}, {str(out)!r}, quiet=True,
              report=False, on_epoch=lambda row: os._exit(9))""")
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "MEDBENCH_DATA": str(medmnist_dir)},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 9, r.stderr
    assert (out / RESUME).is_file() and not (out / "metrics.json").exists()
    return out


def test_evaluating_an_unfinished_run_says_so(killed_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(killed_run, run)
    capsys.readouterr()
    assert main(["evaluate", str(run), "--quiet"]) == 0
    # besides the unfinished-run warning, a one-epoch model may warn that its predictions collapsed
    (line,) = [w for w in capsys.readouterr().err.splitlines() if "unfinished run" in w]
    assert line.startswith(f"medbench: warning: {run} is an unfinished run (stopped after epoch 1 of 3)")
    assert f"recorded as 'unfinished' in {run / 'evaluations' / 'plain' / 'metrics.json'}" in line
    assert line.endswith(f"finish it with medbench train --resume {run}")
    recorded = json.loads((run / "evaluations" / "plain" / "metrics.json").read_text())
    assert recorded["unfinished"] == "stopped after epoch 1 of 3" and not (run / "metrics.json").exists()
    assert main(["train", "--resume", str(run), "--quiet", "--no-report"]) == 0
    done = json.loads((run / "metrics.json").read_text())
    assert "unfinished" not in done and not (run / RESUME).exists()


def test_a_resume_file_without_optimizer_state_is_refused(killed_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(killed_run, run)
    with safe_open(str(run / RESUME), framework="pt") as f:
        meta = f.metadata()
    tensors = {k: v for k, v in load_file(str(run / RESUME)).items() if not k.startswith("optim.")}
    save_file(tensors, str(run / RESUME), metadata=meta)
    before = _digest(run)
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    line = _one_line(capsys)
    assert f"{run / RESUME} is incomplete (missing optimizer state of " in line and "train again" in line
    assert _digest(run) == before
