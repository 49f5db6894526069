"""Runs on a real image folder (chest X-rays in the Kermany layout): a CNN, a classical baseline, bad files."""
import json
import shutil

import numpy as np
import pytest

from medbench.cli import main
from medbench.run import evaluate


@pytest.fixture(scope="module")
def chest(shared_data):
    return shared_data / "chest_xray_subset"


def _metrics(run):
    return json.loads((run / "metrics.json").read_text())


def test_two_class_folder_run_with_cnn5(chest, tmp_path, capsys):
    run = tmp_path / "cnn5"
    assert main(["train", "--dataset", f"folder:{chest}", "--model", "cnn5", "--size", "64", "--epochs", "2",
                 "--out", str(run), "--quiet"]) == 0
    names = {p.name for p in run.iterdir()}
    assert {"config.yaml", "model.safetensors", "metrics.json", "history.csv", "predictions", "report.html",
            "leakage.json"} <= names
    m = _metrics(run)
    assert [m[s]["n"] for s in ("train", "val", "test")] == [80, 8, 80]
    assert set(m["test"]["per_class"]) == {"NORMAL", "PNEUMONIA"}  # the folder's class names
    assert np.array(m["test"]["confusion_matrix"]).shape == (2, 2)
    assert json.loads((run / "leakage.json").read_text())["duplicates_across_splits"] == 0
    assert "NORMAL" in (run / "report.html").read_text()
    capsys.readouterr()
    assert main(["cache", "info", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert any(e["source"] == str(chest.resolve()) and e["size"] == 64 for e in entries)


def test_three_class_decision_tree_on_hog_features(chest, tmp_path):
    run = tmp_path / "tree"
    assert main(["train", "--dataset", f"folder:{chest}", "--label-regex", "(NORMAL|bacteria|virus)",
                 "--model", "sk:decision_tree", "--features", "hog", "--size", "64", "--val-from-train", "0.2",
                 "--out", str(run), "--quiet"]) == 0
    m = _metrics(run)
    cm = np.array(m["test"]["confusion_matrix"])
    assert cm.shape == (3, 3) and cm.sum() == 80
    assert list(m["test"]["per_class"]) == ["NORMAL", "bacteria", "virus"]
    assert m["train"]["acc"] == 1.0  # an unpruned tree memorises its training split
    assert m["gap"]["acc"] > 0 and (run / "report.html").is_file() and (run / "history.csv").is_file()
    assert not (run / "model.safetensors").exists()  # nothing to pickle: evaluate refits, deterministically
    again = evaluate(run, quiet=True)
    assert again["test"]["confusion_matrix"] == m["test"]["confusion_matrix"]
    assert again["test"]["auc"] == pytest.approx(m["test"]["auc"])


def test_unreadable_files_stop_the_run_or_are_skipped_and_listed(chest, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(chest, data)
    bad = data / "train" / "NORMAL" / "IM-0199-0001.jpeg"
    assert bad.is_file()
    bad.write_bytes(bad.read_bytes()[:2000])  # a truncated JPEG
    argv = ["train", "--dataset", f"folder:{data}", "--model", "sk:logreg", "--size", "28", "--quiet"]
    assert main(argv + ["--out", str(tmp_path / "r1")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "IM-0199-0001.jpeg" in err[0] and "--skip-bad" in err[0], err
    assert not (tmp_path / "r1").exists()
    assert main(argv + ["--skip-bad", "--out", str(tmp_path / "r2")]) == 0
    skipped = json.loads((tmp_path / "r2" / "skipped.json").read_text())
    assert len(skipped) == 1 and "IM-0199-0001.jpeg" in json.dumps(skipped)
    assert _metrics(tmp_path / "r2")["train"]["n"] == 79


def test_leakage_check_reports_an_image_in_two_splits(chest, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(chest, data)
    src = next((data / "train" / "PNEUMONIA").iterdir())
    shutil.copy(src, data / "test" / "PNEUMONIA" / ("copy_" + src.name))
    run = tmp_path / "r"
    assert main(["train", "--dataset", f"folder:{data}", "--model", "sk:decision_tree", "--size", "28", "--out",
                 str(run), "--quiet", "--no-report"]) == 0
    leak = json.loads((run / "leakage.json").read_text())
    assert leak["duplicates_across_splits"] == 1 and leak["duplicates"][0]["splits"] == ["test", "train"]


@pytest.mark.parametrize("uncertain", ["u-zeros", "u-ignore"])
def test_chexpert_style_csv_trains_a_multilabel_run(chest, tmp_path, uncertain):
    rows = ["Path,Pneumonia,Bacterial,Split"]
    for split in ("train", "val", "test"):
        for f in sorted((chest / split).rglob("*.jpeg")):
            pneu = "1" if "PNEUMONIA" in f.parts else "0"
            bact = "1" if "bacteria" in f.name else ("-1" if "virus" in f.name else "")  # uncertain / blank
            rows.append(f"{f.relative_to(chest).as_posix()},{pneu},{bact},{split}")
    (chest_csv := tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    # the CSV must sit beside the images (paths stay inside its folder): point root at the data by copying it
    data = tmp_path / "cxr"
    shutil.copytree(chest, data)
    shutil.move(chest_csv, data / "labels.csv")
    run = tmp_path / "run"
    assert main(["train", "--dataset", f"csv:{data / 'labels.csv'}", "--image-col", "Path", "--label-cols",
                 "Pneumonia,Bacterial", "--split-col", "Split", "--uncertain", uncertain, "--model", "cnn5",
                 "--epochs", "1", "--out", str(run), "--quiet"] + (["--no-report"] if uncertain == "u-zeros" else [])
                ) == 0
    m = _metrics(run)
    assert m["test"]["n"] == 80 and len(m["test"]["per_label_auc"]) == 2
    assert list(m["test"]["per_class"]) == ["Pneumonia", "Bacterial"]
    virus = sum("virus" in f.name for f in (chest / "test").rglob("*.jpeg"))
    bacteria = sum("bacteria" in f.name for f in (chest / "test").rglob("*.jpeg"))
    assert virus > 0
    bact = m["test"]["per_class"]["Bacterial"]
    assert m["test"]["per_class"]["Pneumonia"]["n"] == 80 and bact["support"] == bacteria
    if uncertain == "u-ignore":  # the virus images' Bacterial label is unknown: out of its counts and metrics
        assert bact["n"] == 80 - virus and sum(map(sum, m["test"]["confusion_matrix"][1])) == 80 - virus
        assert (run / "report.html").stat().st_size > 10_000
    else:
        assert bact["n"] == 80 and sum(map(sum, m["test"]["confusion_matrix"][1])) == 80
