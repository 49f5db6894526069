"""`medbench train`'s flags are generated from RunConfig: one flag per field (or deliberately none), grouped, with
every default shown, and None in argparse so a flag left out keeps the config file's value."""
import argparse
import subprocess
import sys

import pytest

from medbench.cli import build_parser, main
from medbench.cli.flags import CONFIG_ONLY, TRAIN_FLAGS, flag_settings
from medbench.cli.train import train_settings
from medbench.config import GROUPS, RunConfig

# train flags that are not config fields: where the run goes, where its settings come from, and common options
NOT_CONFIG = {"-h", "--help", "--data-dir", "--quiet", "--debug", "--out", "--resume", "--config", "--set",
              "--no-report", "--dry-run", "--track"}
# every config flag `medbench train` took before the flags were generated: none may disappear or change spelling
EARLIER_FLAGS = """--dataset --label-regex --image-col --label-cols --split-col --uncertain --fit --val-from-train
    --test-from-train --group-regex --model --features --size --epochs --recipe --batch-size --lr --optimizer
    --weight-decay --schedule --label-smoothing --ema --drop-rate --drop-path-rate --ordinal-loss --stem --weights
    --truncate --input-adapt --input-size --resize-mode --freeze --backbone-lr-scale --augment --mixup --cutmix
    --synthetic --synthetic-ratio --keep-checkpoints --ensemble --decision --members --bootstrap --seed --device
    --checkpoint-minutes --memory-budget --precision --pretrained --as-rgb --no-flip --skip-bad --allow-outside-root
    --tta --deterministic --detect-anomaly --compile""".split()


def _train_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def _flag_actions() -> list[argparse.Action]:
    return [a for a in _train_parser()._actions if a.option_strings]


def test_every_field_has_exactly_one_flag_or_is_config_only():
    dests = [a.dest for a in _flag_actions() if a.dest in RunConfig.model_fields]
    assert len(dests) == len(set(dests)), "a field with two flags"
    assert set(dests).isdisjoint(CONFIG_ONLY), "a config-only field with a flag"
    assert set(dests) | set(CONFIG_ONLY) == set(RunConfig.model_fields)
    assert set(CONFIG_ONLY) == {"synthetic_cap", "channels_last"}  # a new field without a flag is a decision


def test_every_flag_maps_to_one_field_or_is_a_known_other():
    for action in _flag_actions():
        if action.dest in RunConfig.model_fields:
            assert len(action.option_strings) == 1, action.option_strings
        else:
            assert set(action.option_strings) <= NOT_CONFIG, action.option_strings


def test_earlier_flag_spellings_all_remain():
    flags = {s for a in _flag_actions() for s in a.option_strings}
    assert set(EARLIER_FLAGS) <= flags, sorted(set(EARLIER_FLAGS) - flags)


def test_config_flags_default_to_none_and_show_the_field_default():
    fields = RunConfig.model_fields
    for action in _flag_actions():
        if action.dest not in fields:
            continue
        assert action.default is None, action.dest  # left out: the config file's / recipe's value stays
        assert "(default: " in action.help or fields[action.dest].is_required(), action.dest
    by_dest = {a.dest: a for a in _flag_actions()}
    assert "(default: 0.5,0.75)" in by_dest["milestones"].help and "(default: off)" in by_dest["tta"].help
    assert "(default: 100)" in by_dest["epochs"].help and "(default: half the available RAM" in \
        by_dest["memory_budget"].help


def test_flags_sit_in_their_argument_groups(capsys):
    titles = [g.title for g in _train_parser()._action_groups]
    assert [t for t in titles if t in GROUPS.values()] == list(GROUPS.values())
    for group in _train_parser()._action_groups:
        keys = [k for k, t in GROUPS.items() if t == group.title]
        for action in group._group_actions:
            if action.dest in RunConfig.model_fields:
                assert keys and next(f.group for f in TRAIN_FLAGS if f.field == action.dest) == keys[0]
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "optimisation:" in out and "--lr LR" in out and "(default: 0.001)" in out and "own data" in out


def test_flag_values_reach_the_settings_typed():
    args = build_parser().parse_args(["train", "--dataset", "breastmnist", "--epochs", "3", "--milestones",
                                      "0.3,0.6", "--norm-mean", "0.5,0.4,0.3", "--norm-std", "0.2", "--pretrained",
                                      "--label-cols", " a,,b ", "--decision", "youden", "--split-seed", "4"])
    assert flag_settings(args) == {"dataset": "breastmnist", "epochs": 3, "milestones": [0.3, 0.6],
                                   "norm_mean": [0.5, 0.4, 0.3], "norm_std": 0.2, "pretrained": True,
                                   "label_cols": ["a", "b"], "decision": "youden", "split_seed": 4}


def test_flags_left_out_keep_the_config_files_values(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dataset: breastmnist\nepochs: 7\npretrained: true\nmilestones: [0.2]\n")
    args = build_parser().parse_args(["train", "--config", str(cfg), "--lr", "0.01", "--set", "gamma=0.5"])
    assert train_settings(args) == {"dataset": "breastmnist", "epochs": 7, "pretrained": True, "milestones": [0.2],
                                    "lr": 0.01, "gamma": 0.5}


@pytest.mark.parametrize("argv, fragment", [
    (["--epochs", "three"], "argument --epochs: invalid int value: 'three'"),
    (["--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
    (["--optimizer", "lamb"], "argument --optimizer: invalid choice: 'lamb' (choose from"),
    (["--milestones", "0.5,x"], "argument --milestones: expected numbers separated by commas"),
    (["--norm-mean", "grey"], "argument --norm-mean: expected a number, or one per channel"),
])
def test_bad_flag_values_are_one_usage_line(argv, fragment, capsys):
    assert main(["train", "--dataset", "breastmnist", "--out", "x", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("medbench: error: ") and fragment in err[0], err


def test_resume_refuses_every_config_flag(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path), "--pretrained", "--momentum", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "drop --momentum, --pretrained" in err or "drop --pretrained, --momentum" in err, err


def test_python_dash_m_medbench_runs_the_cli():
    r = subprocess.run([sys.executable, "-m", "medbench", "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("medbench "), r.stderr
