import json
import subprocess
import sys

import pytest

from medbench.cli import main


def _run(*args):
    return subprocess.run([sys.executable, "-m", "medbench.cli", *args], capture_output=True, text=True, timeout=120)


def test_datasets_json_lists_the_catalogue_and_what_is_on_disk():
    r = _run("datasets", "--json")
    assert r.returncode == 0, r.stderr
    rows = {d["name"]: d for d in json.loads(r.stdout)}
    assert len(rows) == 12
    assert rows["breastmnist"]["task"] == "binary" and rows["breastmnist"]["cached_sizes"] == [28]
    assert rows["chestmnist"]["task"] == "multilabel" and len(rows["chestmnist"]["classes"]) == 14
    assert rows["retinamnist"]["task"] == "ordinal" and rows["retinamnist"]["n_samples"]["test"] == 400
    assert rows["pathmnist"]["cached_sizes"] == []


def test_unknown_dataset_is_one_line_with_exit_2():
    r = _run("train", "--dataset", "breastmnst", "--out", "/nonexistent/x")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "unknown dataset 'breastmnst'" in lines[0] and "Did you mean breastmnist" in lines[0]
    assert "pneumoniamnist" in lines[0]  # lists the valid names


@pytest.mark.parametrize("argv, fragment", [
    (["train", "--dataset", "breastmnist", "--model", "resnet19", "--out", "{tmp}/r"], "unknown model 'resnet19'"),
    (["train", "--dataset", "breastmnist", "--set", "epoch=3", "--out", "{tmp}/r"], "unknown key 'epoch'"),
    (["train", "--dataset", "breastmnist", "--set", "oops", "--out", "{tmp}/r"], "--set expects KEY=VALUE"),
    (["train", "--dataset", "breastmnist", "--size", "32", "--out", "{tmp}/r"], "size must be one of 28, 64"),
    (["train", "--model", "resnet18", "--out", "{tmp}/r"], "no dataset given"),
    (["evaluate", "{tmp}"], "is not a run directory"),
    (["train", "--dataset", "breastmnist", "--size", "64", "--data-dir", "{tmp}/data", "--out", "{tmp}/r"],
     "download of http://127.0.0.1:9/breastmnist_64.npz failed"),
])
def test_errors_exit_2_with_one_clear_line(argv, fragment, tmp_path, capsys):
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("medbench: error: ") and fragment in err[0], err


def test_bad_flag_is_one_line_usage_error():
    r = _run("train", "--dataset", "breastmnist", "--epochs", "three", "--out", "x")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "invalid int value" in r.stderr


@pytest.mark.slow
def test_debug_shows_the_traceback():
    r = _run("train", "--dataset", "nope", "--out", "x", "--debug")
    assert r.returncode != 0 and "Traceback (most recent call last)" in r.stderr and "MedbenchError" in r.stderr


def test_models_json(capsys):
    assert main(["models", "--json"]) == 0
    rows = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert rows["resnet18"]["family"] == "resnet" and "resnet50" in rows
