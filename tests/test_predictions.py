"""Traceable predictions and evaluations that never rewrite the training record (issue 21, items 1 and 4).

Real runs (the session's tiny BreastMNIST and chest X-ray folder runs, copied before anything writes into them):
each prediction row names its image and can be joined to the file on disk; the MedMNIST export is read by
`python -m medmnist evaluate` as it is; `medbench evaluate` writes evaluations/NAME and leaves RUN/metrics.json and
RUN/predictions/ byte for byte as training wrote them; the report says which record it shows.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import medbench
from medbench.cli import main
from medbench.rundir import read_prediction_table
from medbench.tasks import decide


def _files(run: Path) -> dict[str, bytes]:
    """Every file training wrote into the record: metrics.json and predictions/ (with the MedMNIST export)."""
    paths = [run / "metrics.json", *sorted((run / "predictions").rglob("*"))]
    return {str(p.relative_to(run)): p.read_bytes() for p in paths if p.is_file()}


def test_folder_predictions_join_the_files_on_disk(chest_run, shared_data):
    root = shared_data / "chest_xray_subset"
    table = read_prediction_table(chest_run / "predictions" / "test.csv")
    metrics = json.loads((chest_run / "metrics.json").read_text())["test"]
    assert len(table.items) == metrics["n"] == len(set(table.items))  # one row per image, each once
    for item, label in zip(table.items, table.labels[:, 0]):
        path = root / item
        assert path.is_file(), item  # the path under the data root, as the row names it
        assert path.parts[-3:-1] == ("test", table.class_names[label])  # true label = its class folder
    headline = json.loads((chest_run / "metrics.json").read_text())["threshold"]["headline"]
    assert np.array_equal(table.decided, decide(table.scores, "binary", headline))
    assert np.mean(table.decided == table.labels[:, 0]) == pytest.approx(metrics["acc"], abs=1e-12)


def test_the_medmnist_export_is_read_by_the_official_command(breast_run, medmnist_dir, tmp_path):
    """`python -m medmnist evaluate FILE` (its root: ~/.medmnist, here a HOME holding the real npz) reproduces the
    run's AUC and ACC from the exported file as it is."""
    home = tmp_path / "home"
    (home / ".medmnist").mkdir(parents=True)
    (home / ".medmnist" / "breastmnist.npz").symlink_to(medmnist_dir / "breastmnist.npz")
    metrics = json.loads((breast_run / "metrics.json").read_text())
    for split in ("val", "test"):
        (exported,) = (breast_run / "predictions" / "medmnist").glob(f"breastmnist_{split}_*.csv")
        rec = metrics[split]
        assert exported.name == f"breastmnist_{split}_[AUC]{rec['auc']:.3f}_[ACC]{rec['acc']:.3f}@breast-cnn5.csv"
        copy = tmp_path / split / exported.name  # the evaluator writes its own file beside the one it reads
        copy.parent.mkdir()
        shutil.copy(exported, copy)
        r = subprocess.run([sys.executable, "-m", "medmnist", "evaluate", str(copy)], capture_output=True,
                           text=True, env={**os.environ, "HOME": str(home)}, timeout=120)
        assert r.returncode == 0, r.stderr
        auc, acc = map(float, re.search(r"AUC=([\d.e-]+), ACC=([\d.e-]+)", r.stdout).groups())
        assert auc == pytest.approx(rec["auc"], abs=1e-12) and acc == pytest.approx(rec["acc"], abs=1e-12)


def test_evaluate_never_rewrites_the_training_record(breast_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(breast_run, run)
    before = _files(run)
    assert main(["evaluate", str(run), "--tta", "--bootstrap", "50", "--quiet"]) == 0
    out = capsys.readouterr().out
    first = run / "evaluations" / "tta-bootstrap50"
    assert f"wrote {first} (ensemble 1, tta on, bootstrap 50)" in out
    assert _files(run) == before  # byte for byte what training wrote
    settings = json.loads((first / "evaluation.json").read_text())
    assert {k: settings[k] for k in ("splits", "ensemble", "tta", "bootstrap", "seed", "data_md5")} == \
        {"splits": ["train", "val", "test"], "ensemble": 1, "tta": True, "bootstrap": 50, "seed": 0,
         "data_md5": "750601b1f35ba3300ea97c75c52ff8f6"}
    tta = json.loads((first / "metrics.json").read_text())
    assert tta["evaluation"]["tta"] is True and "auc_ci" in tta["test"]
    assert read_prediction_table(first / "predictions" / "test.csv").items[:2] == ["0", "1"]
    assert list((first / "predictions" / "medmnist").glob("breastmnist_test_*@run-tta-bootstrap50.csv"))
    # the same settings again: a new folder, the first kept
    assert main(["evaluate", str(run), "--tta", "--bootstrap", "50", "--quiet"]) == 0
    assert (run / "evaluations" / "tta-bootstrap50-2" / "metrics.json").is_file()
    assert json.loads((first / "metrics.json").read_text()) == tta
    # a given name that is taken is refused in one line, before any work
    capsys.readouterr()
    assert main(["evaluate", str(run), "--name", "tta-bootstrap50", "--quiet"]) == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert "tta-bootstrap50 already exists: evaluations are never overwritten" in err
    assert _files(run) == before


def test_json_prints_only_the_requested_split(breast_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(breast_run, run)
    assert main(["evaluate", str(run), "--split", "test", "--json", "--quiet"]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert "test" in printed and not {"train", "val"} & set(printed)
    record = run / "evaluations" / "test-plain"
    assert printed == json.loads((record / "metrics.json").read_text()) and f"wrote {record}" in captured.err
    assert sorted(p.name for p in (record / "predictions").glob("*.csv")) == ["test.csv"]


def test_the_python_api_writes_a_named_evaluation(breast_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(breast_run, run)
    before = _files(run)
    result = medbench.evaluate(run, ["val", "test"], quiet=True, name="mine")
    assert result.name == "mine" and result.path == run / "evaluations" / "mine"
    assert dict(result) == json.loads((result.path / "metrics.json").read_text())
    assert _files(run) == before
    with pytest.raises(medbench.MedbenchError, match="already exists"):
        medbench.evaluate(run, quiet=True, name="mine")
    with pytest.raises(medbench.MedbenchError, match="--name '../x'"):
        medbench.evaluate(run, quiet=True, name="../x")


def test_the_report_names_its_record_and_the_error_gallery_names_files(chest_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(chest_run, run)
    assert main(["evaluate", str(run), "--split", "test", "--tta", "--name", "flipped", "--quiet"]) == 0
    assert main(["report", str(run), "--evaluation", "flipped"]) == 0
    assert f"wrote {run / 'evaluations' / 'flipped' / 'report.html'} (showing evaluation flipped)" in \
        capsys.readouterr().out
    page = (run / "evaluations" / "flipped" / "report.html").read_text(encoding="utf-8")
    assert "Shows evaluation evaluations/flipped (splits test; ensemble 1, TTA on, bootstrap off" in page
    items = re.findall(r'data-item="([^"]+)"', page)
    assert items and all(i.startswith("test/") and i.endswith((".jpeg", ".png", ".jpg")) for i in items)
    assert main(["report", str(run)]) == 0
    assert "Shows the training record" in (run / "report.html").read_text(encoding="utf-8")
    capsys.readouterr()
    assert main(["report", str(run), "--evaluation", "nope"]) == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert "no evaluation 'nope'" in err and "it has: flipped" in err
