"""score_corruptions end to end on a tiny real BreastMNIST run: every cell in robustness.json, noise hurting AUC,
the clean cell equal to the run's own test metrics, never-overwritten evaluation names, the report section."""
from __future__ import annotations

import json

import pytest

from medbench.corruptions import PRESETS, SEVERITIES
from medbench.errors import MedbenchError
from medbench.report.robustness import robustness_sections
from medbench.report.run_report import write_run_report
from medbench.robustness import format_table, score_corruptions
from medbench.rundir import EVALUATION_JSON, REPORT, ROBUSTNESS, evaluation_dir, read_metrics


@pytest.fixture(scope="module")
def tiny_breast_run(tmp_path_factory, medmnist_dir, cache_dir):
    """cnn5, 3 epochs on BreastMNIST: enough for the noise to have something to destroy."""
    from medbench.run import train

    out = tmp_path_factory.mktemp("robust") / "breast-cnn5"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDBENCH_DATA", str(medmnist_dir))
        mp.setenv("MEDBENCH_CACHE", str(cache_dir))
        train({"dataset": "breastmnist", "model": "cnn5", "epochs": 3, "seed": 0}, out, quiet=True, report=False)
    return out


@pytest.mark.slow
def test_every_cell_is_scored_and_noise_hurts(tiny_breast_run):
    rec = score_corruptions(tiny_breast_run, seed=0)
    assert rec["evaluation"] == "corruptions-ultrasound" and rec["preset"] == "ultrasound"
    path = evaluation_dir(tiny_breast_run, rec["evaluation"]) / ROBUSTNESS
    on_disk = json.loads(path.read_text())
    assert on_disk == json.loads(json.dumps(rec))
    settings = json.loads((path.parent / EVALUATION_JSON).read_text())
    assert settings["kind"] == "corruptions" and settings["splits"] == ["test"] and settings["results"] == ROBUSTNESS
    assert on_disk["n"] == 156 and on_disk["severities"] == list(SEVERITIES)
    assert list(on_disk["corruptions"]) == list(PRESETS["ultrasound"])
    for name, c in on_disk["corruptions"].items():
        assert list(c["severities"]) == [str(s) for s in SEVERITIES], name
        for s, cell in c["severities"].items():
            assert 0 <= cell["auc"] <= 1 and 0 <= cell["acc"] <= 1, (name, s)
            assert cell["psnr"] is not None and cell["psnr"] < 60, (name, s)
        drops = [(on_disk["clean"]["auc"] - c["severities"][str(s)]["auc"]) / on_disk["clean"]["auc"]
                 for s in SEVERITIES]
        assert c["relative_auc_drop"] == pytest.approx(sum(drops) / len(drops), abs=1e-12)
    # the clean cell is the run's own test evaluation (same weights, same threshold)
    test = read_metrics(tiny_breast_run)["test"]
    assert on_disk["clean"]["auc"] == pytest.approx(test["auc"], abs=1e-9)
    assert on_disk["clean"]["acc"] == pytest.approx(test["acc"], abs=1e-12)
    noise = on_disk["corruptions"]["gaussian_noise"]["severities"]
    assert noise["5"]["auc"] < on_disk["clean"]["auc"]
    assert noise["5"]["auc"] < noise["1"]["auc"]
    assert on_disk["mean_relative_auc_drop"] > 0
    text = format_table(rec)
    assert "gaussian_noise" in text and "s5" in text and f"{noise['5']['auc']:.3f}" in text


@pytest.mark.slow
def test_names_are_never_reused_and_the_report_shows_the_figure(tiny_breast_run):
    first = score_corruptions(tiny_breast_run, "xray", severities=(1, 5), name="xr")
    again = score_corruptions(tiny_breast_run, "xray", severities=(5, 1))
    third = score_corruptions(tiny_breast_run, "xray", severities=(1, 5))
    assert (first["evaluation"], again["evaluation"], third["evaluation"]) == ("xr", "corruptions-xray",
                                                                             "corruptions-xray-2")
    assert again["severities"] == [1, 5] and list(again["corruptions"]) == list(PRESETS["xray"])
    # deterministic: the same seed gives the same numbers
    assert again["corruptions"] == third["corruptions"] and again["clean"] == first["clean"]
    before = (evaluation_dir(tiny_breast_run, "xr") / ROBUSTNESS).read_bytes()
    with pytest.raises(MedbenchError, match="already exists: evaluations are never overwritten"):
        score_corruptions(tiny_breast_run, "xray", severities=(1,), name="xr")
    assert (evaluation_dir(tiny_breast_run, "xr") / ROBUSTNESS).read_bytes() == before

    [(sid, heading, body)] = robustness_sections(tiny_breast_run)
    assert sid == "robustness" and 'data-figure="robustness-xr"' in body
    for name in PRESETS["xray"]:
        assert f'data-corruption="{name}" data-severity="5"' in body
    page = write_run_report(tiny_breast_run).read_text()
    assert 'id="robustness"' in page and 'data-figure="robustness-corruptions-xray-2"' in page
    assert (tiny_breast_run / REPORT).is_file()


def test_a_damaged_record_leaves_a_note(tmp_path):
    (tmp_path / "evaluations" / "corruptions-default").mkdir(parents=True)
    (tmp_path / "evaluations" / "corruptions-default" / ROBUSTNESS).write_text("{not json")
    [(_, _, body)] = robustness_sections(tmp_path)
    assert "cannot be read" in body and "evaluate --corruptions" in body
    assert robustness_sections(tmp_path / "nothing") == []


def test_bad_requests_fail_before_any_work(breast_run):
    with pytest.raises(MedbenchError, match="unknown corruption preset 'mri'"):
        score_corruptions(breast_run, "mri")
    with pytest.raises(MedbenchError, match=r"severities must be among \[1, 2, 3, 4, 5\], got \[0, 6\]"):
        score_corruptions(breast_run, severities=(0, 6))
    with pytest.raises(MedbenchError, match="--name 'a/b'"):
        score_corruptions(breast_run, severities=(1,), name="a/b")
    assert not (breast_run / "evaluations").exists()
