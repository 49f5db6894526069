"""Hostile values through the real command line (issue 18): every verb, every answer one line with exit 2.

Each row calls ``medbench.cli.main`` in-process and asserts exit code 2, exactly one stderr line (warnings count)
that starts ``medbench: error: `` and names the problem, the file where there is one, and the fix; and that the
earlier run (or its damaged copy) is byte-for-byte unchanged. Found by trying each verb with negative, zero, NaN,
inf, huge and empty values, folders for files, damaged run files and weights of other networks.
"""
from __future__ import annotations

import hashlib
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from medbench.cli import main


def _digest(root: Path) -> dict[str, str]:
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


class _Evil:
    def __reduce__(self):  # unpickling would call print: torch's weights_only loader must refuse it
        return (print, ("pwned",))


@pytest.fixture
def env(tmp_path, breast_run):
    """The earlier run, a scratch folder, and hostile files in it."""
    from safetensors.torch import save_file

    torch.save({"w": _Evil()}, tmp_path / "evil.pth")
    torch.save({"conv.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    save_file({"foo.weight": torch.zeros(2, 2)}, str(tmp_path / "other.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    (tmp_path / "folder").mkdir()
    (tmp_path / "study.yaml").write_text("name: s\nbase: {dataset: breastmnist, model: cnn5, epochs: 1}\n")

    class Env:
        tmp, run = tmp_path, breast_run

        @staticmethod
        def damaged(rel: str, content: bytes | str | None) -> Path:
            """A copy of the run with ``rel`` replaced by ``content`` (None: a folder in its place)."""
            copy = tmp_path / "damaged"
            shutil.copytree(breast_run, copy)
            target = copy / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if content is None:
                target.unlink()
                target.mkdir()
            else:
                target.write_bytes(content.encode() if isinstance(content, str) else content)
            return copy

    return Env


def _train(env, *args) -> list:
    return ["train", "--dataset", "breastmnist", "--model", "cnn5", "--epochs", "1", "--quiet", "--no-report",
            "--out", env.tmp / "new-run", *args]


NOT_JSON = "run `medbench evaluate"
# id -> (argv maker, fragments of the one line); the maker returns argv and the folder that must stay unchanged
ROWS = {
    # models --info: sizes that would allocate tens of GB, or nothing at all
    "models-size-20000": (lambda e: ["models", "--info", "cnn5", "--size", "20000"],
                          ["argument --size: must be from 1 to 2048, got 20000", "medbench models --help"]),
    "models-size-0": (lambda e: ["models", "--info", "cnn5", "--size", "0"], ["--size: must be from 1 to 2048"]),
    "models-in-chans-0": (lambda e: ["models", "--info", "cnn5", "--in-chans", "0"], ["--in-chans: must be from 1"]),
    "models-num-classes-huge": (lambda e: ["models", "--info", "cnn5", "--num-classes", "1e12"],
                                ["--num-classes: must be from 1 to 100000, got 1000000000000"]),
    "models-info-empty": (lambda e: ["models", "--info", ""], ["--info: must not be empty"]),
    # train: every numeric config field checked at the config
    "train-epochs-0": (lambda e: _train(e, "--epochs", "0"), ["epochs: Input should be greater than or equal to 1"]),
    "train-epochs-huge": (lambda e: _train(e, "--epochs", str(10 ** 12)),
                          ["epochs: Input should be less than or equal to 100000"]),
    "train-lr-nan": (lambda e: _train(e, "--lr", "nan"), ["lr: Input should be a finite number"]),
    "train-lr-inf": (lambda e: _train(e, "--lr", "inf"), ["lr: Input should be a finite number"]),
    "train-lr-negative": (lambda e: _train(e, "--lr", "-0.1"), ["lr: Input should be greater than 0"]),
    "train-lr-overflow": (lambda e: _train(e, "--set", "lr=1e400"), ["lr: Input should be a finite number"]),
    "train-batch-0": (lambda e: _train(e, "--batch-size", "0"), ["batch_size: Input should be greater than or equal"]),
    "train-batch-huge": (lambda e: _train(e, "--batch-size", str(10 ** 12)),
                         ["batch_size: Input should be less than or equal to 65536"]),
    "train-size-0": (lambda e: _train(e, "--size", "0"), ["size: Input should be greater than or equal to 1"]),
    "train-seed-negative": (lambda e: _train(e, "--seed", "-1"), ["seed: Input should be greater than or equal to 0"]),
    "train-seed-2**64": (lambda e: _train(e, "--seed", str(2 ** 64)),
                         ["seed: Input should be less than 9223372036854775808"]),
    "train-momentum-1": (lambda e: _train(e, "--set", "momentum=1"), ["momentum: Input should be less than 1"]),
    "train-smoothing-1": (lambda e: _train(e, "--label-smoothing", "1"), ["label_smoothing: Input should be less"]),
    "train-mixup-inf": (lambda e: _train(e, "--mixup", "inf"), ["mixup: Input should be a finite number"]),
    "train-mixup-negative": (lambda e: _train(e, "--mixup", "-1"), ["mixup: Input should be greater than or equal"]),
    "train-milestones": (lambda e: _train(e, "--set", "milestones=[0,1.5]"),
                         ["milestones", "strictly between 0 and 1", "e.g. [0.5, 0.75]"]),
    "train-dropout-1.5": (lambda e: _train(e, "--drop-rate", "1.5"), ["drop_rate: Input should be less than 1"]),
    "train-bootstrap-huge": (lambda e: _train(e, "--bootstrap", str(10 ** 8)),
                             ["bootstrap: Input should be less than or equal to 100000"]),
    "train-members-huge": (lambda e: _train(e, "--members", str(10 ** 6)), ["members: Input should be less than"]),
    "train-dataset-empty": (lambda e: _train(e, "--dataset", ""), ["dataset: String should have at least 1 character"]),
    # train --weights: hostile, damaged and foreign files
    "weights-malicious-pth": (lambda e: _train(e, "--weights", e.tmp / "evil.pth"),
                              ["evil.pth: refused: it holds code or objects that are not plain tensors",
                               "safetensors"]),
    "weights-other-pth": (lambda e: _train(e, "--weights", e.tmp / "other.pth"),
                          ["other.pth: weights of another architecture: 39 missing, 1 unexpected, 0 shape mismatches",
                           "e.g. missing features.0.weight", "choose the --model"]),
    "weights-other-safetensors": (lambda e: _train(e, "--weights", e.tmp / "other.safetensors"),
                                  ["other.safetensors: weights of another architecture", "unexpected foo.weight"]),
    "weights-cnn5-into-resnet18": (lambda e: _train(e, "--model", "resnet18", "--weights",
                                                    e.run / "model.safetensors"),
                                   ["model.safetensors: weights of another architecture", "for model 'resnet18'"]),
    "weights-junk": (lambda e: _train(e, "--weights", e.tmp / "junk.safetensors"),
                     ["junk.safetensors: cannot read weights", "use a .safetensors file"]),
    "weights-folder": (lambda e: _train(e, "--weights", e.tmp / "folder"), ["is a folder", "give the .safetensors"]),
    # evaluate: flags and damaged run files
    "evaluate-bootstrap-1e8": (lambda e: ["evaluate", e.run, "--bootstrap", "1e8"],
                               ["argument --bootstrap: must be from 0 to 100000, got 100000000"]),
    "evaluate-bootstrap-negative": (lambda e: ["evaluate", e.run, "--bootstrap", "-1"], ["--bootstrap: must be"]),
    "evaluate-ensemble-0": (lambda e: ["evaluate", e.run, "--ensemble", "0"], ["--ensemble: must be from 1 to 1000"]),
    "evaluate-seed-negative": (lambda e: ["evaluate", e.run, "--seed", "-1"], ["--seed: must be from 0"]),
    "evaluate-metrics-not-json": (lambda e: ["evaluate", e.damaged("metrics.json", "{not json")],
                                  ["damaged/metrics.json: not valid JSON (line 1, column 2", NOT_JSON]),
    "evaluate-metrics-a-list": (lambda e: ["evaluate", e.damaged("metrics.json", "[1, 2]")],
                                ["metrics.json: holds a JSON list, expected a JSON object", NOT_JSON]),
    "evaluate-metrics-test-a-number": (lambda e: ["evaluate", e.damaged("metrics.json", '{"test": 5}')],
                                       ["metrics.json: 'test' holds a int, not a record of metrics", NOT_JSON]),
    "evaluate-metrics-not-utf8": (lambda e: ["evaluate", e.damaged("metrics.json", b"\xff\xfe{}")],
                                  ["metrics.json: not UTF-8 text", NOT_JSON]),
    "evaluate-metrics-a-folder": (lambda e: ["evaluate", e.damaged("metrics.json", None)],
                                  ["metrics.json: is a folder", NOT_JSON]),
    "evaluate-index-not-json": (lambda e: ["evaluate", e.damaged("checkpoints/index.json", "{{")],
                                ["checkpoints/index.json: not valid JSON", "evaluate without --ensemble"]),
    "evaluate-provenance-not-mapping": (lambda e: ["evaluate", e.damaged(
        "config.yaml", (e.run / "config.yaml").read_text().split("provenance:")[0] + "provenance: 5\n")],
        ["config.yaml: 'provenance' must be a mapping", "restore the file"]),
    "evaluate-config-not-utf8": (lambda e: ["evaluate", e.damaged("config.yaml", b"dataset: \xff\n")],
                                 ["config.yaml: not UTF-8 text", "save the config file as UTF-8"]),
    "evaluate-run-dir-is-a-file": (lambda e: ["evaluate", e.tmp / "study.yaml"],
                                   ["study.yaml is a file, not a run directory"]),
    # compare, report, card, predict, export
    "compare-bootstrap-huge": (lambda e: ["compare", e.run, e.run, "--bootstrap", str(10 ** 8)],
                               ["--bootstrap: must be from 1 to 100000"]),
    "compare-predictions-damaged": (lambda e: ["compare", e.run, e.damaged("predictions/test.csv", "a,b\nc\n")],
                                    ["predictions/test.csv: damaged predictions", "for fresh predictions in"]),
    "compare-predictions-nan": (lambda e: ["compare", e.run, e.damaged("predictions/test.csv", "0,nan,nan\n")],
                                ["predictions/test.csv: damaged predictions (expected an index and finite scores"]),
    "compare-metrics-not-json": (lambda e: ["compare", e.run, e.damaged("metrics.json", "{")],
                                 ["metrics.json: not valid JSON", NOT_JSON]),
    "report-metrics-not-json": (lambda e: ["report", e.damaged("metrics.json", "{")],
                                ["metrics.json: not valid JSON", NOT_JSON]),
    "report-history-not-utf8": (lambda e: ["report", e.damaged("history.csv", b"\xff\xfe,\n")],
                                ["history.csv: not UTF-8 text", "delete it"]),
    "card-metrics-not-json": (lambda e: ["card", e.damaged("metrics.json", "{")], ["metrics.json: not valid JSON"]),
    "predict-threshold-nan": (lambda e: ["predict", e.run, e.tmp / "study.yaml", "--out", e.tmp / "p.csv",
                                         "--threshold", "nan"], ["--threshold: must be a finite number from 0 to 1"]),
    "predict-device-bogus": (lambda e: ["predict", e.run, e.tmp / "study.yaml", "--out", e.tmp / "p.csv",
                                        "--device", "tpu"], ["--device: expected auto, cpu, cuda or cuda:N"]),
    "predict-dataset-json-damaged": (lambda e: ["predict", e.damaged("dataset.json", "{"), e.tmp / "study.yaml",
                                                "--out", e.tmp / "p.csv"],
                                     ["dataset.json: not valid JSON", "rebuilds it from the run's dataset"]),
    "export-out-is-a-folder": (lambda e: ["export", e.run, "--format", "torchscript", "--out", e.tmp / "folder"],
                               ["folder: Is a directory", "check the path"]),
    "serve-port-too-large": (lambda e: ["serve", e.run, "--port", "70000"], ["--port: must be from 0 to 65535"]),
    "serve-port-negative": (lambda e: ["serve", e.run, "--port", "-1"], ["--port: must be from 0 to 65535"]),
    "serve-no-slots": (lambda e: ["serve", e.run, "--max-concurrent", "0"], ["--max-concurrent: must be from 1"]),
    "serve-queue-timeout-nan": (lambda e: ["serve", e.run, "--queue-timeout", "nan"],
                                ["--queue-timeout: must be a finite number"]),
    "serve-metrics-not-json": (lambda e: ["serve", e.damaged("metrics.json", "{")],
                               ["metrics.json: not valid JSON", NOT_JSON]),
    # study, augment-preview, gan
    "study-workers-0": (lambda e: ["study", e.tmp / "study.yaml", "--out", e.tmp / "s", "--workers", "0"],
                        ["--workers: must be from 1 to 256"]),
    "study-cpus-nan": (lambda e: ["study", e.tmp / "study.yaml", "--out", e.tmp / "s", "--cpus-per-run", "nan"],
                       ["--cpus-per-run: must be a finite number above 0"]),
    "augment-preview-n-huge": (lambda e: ["augment-preview", "--dataset", "breastmnist", "--augment", "basic",
                                          "--out", e.tmp / "a.png", "--n", str(10 ** 9)], ["--n: must be from 1"]),
    "gan-train-lr-nan": (lambda e: ["gan", "train", "--dataset", "breastmnist", "--out", e.tmp / "g", "--lr", "nan"],
                         ["--lr: must be a finite number above 0"]),
    "gan-train-batch-1": (lambda e: ["gan", "train", "--dataset", "breastmnist", "--out", e.tmp / "g",
                                     "--batch-size", "1"], ["--batch-size: must be from 2"]),
    "gan-sample-per-class-huge": (lambda e: ["gan", "sample", e.tmp / "folder", "--per-class", str(10 ** 8),
                                             "--out", e.tmp / "x.npz"], ["--per-class: must be from 1 to 10000"]),
}


@pytest.mark.parametrize("case", list(ROWS), ids=list(ROWS))
def test_hostile_value_is_one_clear_line(env, case, capsys):
    make, fragments = ROWS[case]
    argv = [str(a) for a in make(env)]
    watched = [env.run] + ([env.tmp / "damaged"] if (env.tmp / "damaged").exists() else [])
    before = {str(w): _digest(w) for w in watched}
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(argv)
    lines = capsys.readouterr().err.splitlines() + [f"{w.category.__name__}: {w.message}" for w in caught]
    shown = "\n".join(lines)
    print(f"\nrc={code} {shown}")  # the catalogue as the user sees it (pytest -s)
    assert code == 2, shown
    assert len(lines) == 1 and lines[0].startswith("medbench: error: "), shown
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} missing from: {lines[0]}"
    assert {str(w): _digest(w) for w in watched} == before, "a file written before the command changed"
    assert not (env.tmp / "new-run").exists()


def test_undefined_auc_of_300_classes_is_one_warning():
    import numpy as np

    from medbench.metrics import UndefinedMetricWarning, compute_metrics

    y = np.arange(6).reshape(-1, 1) % 3  # 3 of 300 classes present
    s = np.full((6, 300), 1 / 300)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = compute_metrics(y, s, "multiclass")
    auc_warnings = [str(w.message) for w in caught if "AUC undefined" in str(w.message)]
    assert auc_warnings == ["AUC undefined for 297 of 300 classes (3, 4, 5, 6, 7, ...): only one class present; "
                            "reported as null"]
    assert all(issubclass(w.category, UndefinedMetricWarning) for w in caught)
    assert m["auc"] is None and m["per_class"]["299"]["auc"] is None


def test_cli_warnings_are_one_line_and_once_when_quiet(capsys):
    from medbench.cli import _warnings_one_line
    from medbench.metrics import UndefinedMetricWarning

    for quiet, expected in ((True, 1), (False, 3)):
        show = _warnings_one_line(quiet)
        for split in ("train", "val", "test"):
            show(UndefinedMetricWarning(f"AUC undefined\n  for {split}"), UndefinedMetricWarning, "x.py", 1)
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == expected and lines[0] == "medbench: warning: AUC undefined for train"


def test_internal_error_is_one_line(monkeypatch, capsys):
    import medbench.cli as cli

    def boom(args):
        raise ValueError("first line\n  second line\n\tthird")

    monkeypatch.setitem(cli.COMMANDS, "cache", boom)
    assert main(["cache", "info"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == ["medbench: internal error: ValueError: first line second line third (rerun with --debug for the "
                   "traceback)"]
