"""Command-line interface: a thin layer over the Python API. Errors are one line on stderr, exit code 2."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from medbench.config import BOOTSTRAP_LIMIT, MAX_SIZE, SEED_LIMIT

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of argparse's usage dump
        self.exit(EXIT_USAGE, f"medbench: error: {_one_line(message)} (see {self.prog} --help)\n")


def _one_line(text) -> str:
    return " ".join(str(text).split())




def _whole(text: str) -> int:
    """A whole number; '1e3' is read as 1000 (so '1e8' meets the range check, not a parse error)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not v.is_integer():
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(v)


def int_in(lo: int, hi: int):
    """argparse type: a whole number in [lo, hi] (hi bounds what memory or the libraries can take)."""
    def parse(text: str) -> int:
        v = _whole(text)
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be from {lo} to {hi}, got {v}")
        return v
    return parse


def float_in(lo: float, hi: float, lo_open: bool = False):
    """argparse type: a finite number in [lo, hi] ((lo, hi] with ``lo_open``); NaN and inf are refused."""
    import math

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo):
            raise argparse.ArgumentTypeError(f"must be a finite number {'above' if lo_open else 'from'} {lo} "
                                             f"{'and at most' if lo_open else 'to'} {hi}, got {text}")
        return v
    return parse


def _device(text: str) -> str:
    """argparse type: auto, cpu, cuda or cuda:N (torch's own error lists every device type it was built for)."""
    import re

    if not re.fullmatch(r"auto|cpu|cuda(:\d{1,4})?", text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    return text


def _nonempty(text: str) -> str:
    """argparse type: a non-empty name."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


SEED = int_in(0, SEED_LIMIT - 1)


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("common options")
    g.add_argument("--data-dir", help="data root (default: $MEDBENCH_DATA, else ~/.medmnist)")
    g.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    g.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return p


# (flag, RunConfig field, argparse kwargs): flags left out keep the config file's or recipe's value.
TRAIN_FLAGS = [
    ("--dataset", "dataset", dict(help="dataset name, e.g. breastmnist (see `medbench datasets`)")),
    ("--label-regex", "label_regex", dict(metavar="REGEX", help="folder: class = first capture group on the "
                                          "path within the split folder, e.g. '(NORMAL|bacteria|virus)'")),
    ("--image-col", "image_col", dict(help="csv: column of image paths")),
    ("--label-cols", "label_cols", dict(type=lambda v: [c.strip() for c in v.split(",") if c.strip()],
                                        metavar="COL[,COL]", help="csv: label column(s); several = multi-label")),
    ("--split-col", "split_col", dict(help="csv: column holding train/val/test")),
    ("--uncertain", "uncertain", dict(choices=["u-ones", "u-zeros", "u-ignore"],
                                      help="csv: CheXpert policy for -1 labels (u-ignore: left out of loss and metrics)")),
    ("--fit", "fit", dict(choices=["pad", "crop"], help="own data: pad or centre-crop to a square (default pad)")),
    ("--val-from-train", "val_from_train", dict(type=float, metavar="F",
                                                help="own data: draw a stratified share F of train as val")),
    ("--test-from-train", "test_from_train", dict(type=float, metavar="F", help="own data: the same for test")),
    ("--group-regex", "group_regex", dict(metavar="REGEX", help="own data: one split per group, e.g. "
                                          "'(person\\d+)_' keeps a patient's images together")),
    ("--model", "model", dict(help="model name (see `medbench models`), or sk:decision_tree|random_forest|logreg|"
                                   "svm; default resnet18")),
    ("--features", "features", dict(choices=["pixels", "hog"], help="sk: models: flattened pixels or HOG")),
    ("--size", "size", dict(type=int, help="image size: 28, 64, 128 or 224 (default 28)")),
    ("--epochs", "epochs", dict(type=int, help="training epochs (default 100)")),
    ("--recipe", "recipe", dict(help="named recipe: default, medmnist-v2 (the official benchmark's settings), "
                                       "fast (cnn5, 30 epochs: the time-to-accuracy recipe) or small-ensemble "
                                       "(10 fast networks averaged: RESULTS.md)")),
    ("--batch-size", "batch_size", dict(type=int)),
    ("--lr", "lr", dict(type=float)),
    ("--optimizer", "optimizer", dict(choices=["adam", "adamw", "sgd"])),
    ("--weight-decay", "weight_decay", dict(type=float)),
    ("--schedule", "schedule", dict(choices=["multistep", "cosine", "onecycle", "constant"])),
    ("--label-smoothing", "label_smoothing", dict(type=float)),
    ("--ema", "ema", dict(type=float, metavar="DECAY", help="weight EMA decay per step, e.g. 0.998 (0 = off)")),
    ("--drop-rate", "drop_rate", dict(type=float, help="dropout before the classifier (cnn5, timm models)")),
    ("--drop-path-rate", "drop_path_rate", dict(type=float, help="stochastic depth rate (timm models)")),
    ("--ordinal-loss", "ordinal_loss", dict(choices=["ce", "corn"], help="ordinal tasks: ce (benchmark) or corn")),
    ("--stem", "stem", dict(choices=["auto", "small", "imagenet"], help="ResNet stem (auto: small below 64 px)")),
    ("--weights", "weights", dict(help="initial weights file (.safetensors, or .pth holding tensors)")),
    ("--truncate", "truncate", dict(type=int, metavar="K", help="drop the last K stages (CheXtransfer)")),
    ("--input-adapt", "input_adapt", dict(choices=["auto", "native", "resize", "pad"],
                                          help="auto: resize only images smaller than the model accepts")),
    ("--input-size", "input_size", dict(type=int, help="resize/pad target, e.g. 224")),
    ("--resize-mode", "resize_mode", dict(choices=["bilinear", "nearest", "bicubic"])),
    ("--freeze", "freeze", dict(choices=["none", "backbone"], help="backbone: linear probing")),
    ("--backbone-lr-scale", "backbone_lr_scale", dict(type=float, help="backbone lr = lr x this")),
    ("--augment", "augment", dict(metavar="PRESET[,PRESET]", help="augmentation: none, basic, autoaugment-imagenet, "
                                  "autoaugment-cifar10, autoaugment-svhn, randaugment, trivialaugment, augmix; "
                                  "several apply in order")),
    ("--mixup", "mixup", dict(type=float, metavar="ALPHA", help="batch mixup with Beta(ALPHA, ALPHA); 0 = off")),
    ("--cutmix", "cutmix", dict(type=float, metavar="ALPHA", help="batch cutmix with Beta(ALPHA, ALPHA); 0 = off")),
    ("--synthetic", "synthetic", dict(metavar="G", help="add generated images to the training split: a `medbench "
                                      "gan train` folder or a `gan sample` .npz")),
    ("--synthetic-ratio", "synthetic_ratio", dict(type=float, metavar="R",
                                                  help="synthetic images per real training image (default 1, cap "
                                                       "synthetic_cap = 1)")),
    ("--keep-checkpoints", "keep_checkpoints", dict(type=int, metavar="K",
                                                    help="keep the K best epochs' weights (for --ensemble)")),
    ("--ensemble", "ensemble", dict(type=int, metavar="K", help="evaluate the mean of the K best checkpoints")),
    ("--decision", "decision", dict(choices=["0.5", "youden"], help="binary: headline acc at 0.5 or at the "
                                                                    "Youden threshold chosen on val")),
    ("--members", "members", dict(type=int, metavar="K", help="deep ensemble: train K networks, average them")),
    ("--bootstrap", "bootstrap", dict(type=int, metavar="B", help="bootstrap resamples for 95 %% CIs (0 = none)")),
    ("--seed", "seed", dict(type=int)),
    ("--device", "device", dict(help="auto, cpu, cuda or cuda:N")),
    ("--checkpoint-minutes", "checkpoint_minutes", dict(type=float, metavar="M",
                                                        help="save the resume state every M minutes within an "
                                                             "epoch too (default 10; 0 = at epoch ends only)")),
    ("--memory-budget", "memory_budget", dict(type=float, metavar="GB",
                                              help="RAM the decoded images may take whole; larger data is read in "
                                                   "batches from disk (default: half the available RAM; 0 = disk)")),
    ("--precision", "precision", dict(choices=["auto", "fp32", "bf16", "fp16"])),
]


def build_parser() -> argparse.ArgumentParser:
    from medbench import __version__

    common = _common()
    parser = _Parser(prog="medbench", description="Train, evaluate and compare classifiers for medical images.")
    parser.add_argument("--version", action="version", version=f"medbench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("datasets", parents=[common], help="list datasets, tasks, classes, sizes, cached or not")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = sub.add_parser("models", parents=[common], help="list models, or --info NAME for one model's size")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--info", metavar="NAME", type=_nonempty,
                   help="parameters and FLOPs of one model for the given input")
    p.add_argument("--size", type=int_in(1, MAX_SIZE),
                   help="--info: input size (default: the model's default size)")
    p.add_argument("--in-chans", type=int_in(1, 64), default=3, help="--info: input channels (default 3)")
    p.add_argument("--num-classes", type=int_in(1, 100_000), default=2, help="--info: outputs (default 2)")
    p.add_argument("--truncate", type=int_in(0, 100), default=0, metavar="K",
                   help="--info: also count with K stages dropped")

    p = sub.add_parser("train", parents=[common], help="train one run into a run directory")
    p.add_argument("--out", type=Path, help="run directory to create")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue a killed run from its last complete epoch (its own config; no other settings)")
    p.add_argument("--config", type=Path, help="YAML run config (e.g. a run's config.yaml); flags override it")
    for flag, field, kw in TRAIN_FLAGS:
        p.add_argument(flag, dest=field, default=None, **kw)
    p.add_argument("--pretrained", action="store_const", const=True, default=None,
                   help="start from ImageNet weights (cached, packaged or downloaded; never silently random)")
    p.add_argument("--as-rgb", dest="as_rgb", action="store_const", const=True, default=None,
                   help="repeat grey images to 3 channels")
    p.add_argument("--no-flip", dest="no_flip", action="store_const", const=True, default=None,
                   help="augmentation never flips (anatomy where laterality matters)")
    p.add_argument("--skip-bad", dest="skip_bad", action="store_const", const=True, default=None,
                   help="own data: leave unreadable files out (listed in RUN_DIR/skipped.json)")
    p.add_argument("--allow-outside-root", dest="allow_outside_root", action="store_const", const=True,
                   default=None, help="csv: allow image paths outside the CSV's folder")
    p.add_argument("--tta", action="store_const", const=True, default=None,
                   help="evaluate with horizontally flipped views averaged in")
    p.add_argument("--deterministic", action="store_const", const=True, default=None,
                   help="deterministic kernels (slower; same seed gives the same result)")
    p.add_argument("--detect-anomaly", dest="detect_anomaly", action="store_const", const=True, default=None,
                   help="debugging: stop at the first backward step that makes NaN/inf, naming the operation")
    p.add_argument("--compile", action="store_const", const=True, default=None,
                   help="torch.compile the model (slower first epoch, faster after)")
    p.add_argument("--no-report", action="store_true", help="skip report.html (and the TensorBoard figures)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="set any config field, e.g. --set milestones=[0.5,0.75] (repeatable)")

    p = sub.add_parser("evaluate", parents=[common], help="recompute a run's metrics from its saved weights")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--split", action="append", choices=["train", "val", "test"],
                   help="split(s) to evaluate (default: all)")
    p.add_argument("--bootstrap", type=int_in(0, BOOTSTRAP_LIMIT), nargs="?", const=1000, metavar="B",
                   help="95 %% percentile CIs of every metric from B resamples (default 1000 when given)")
    p.add_argument("--seed", type=SEED, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--ensemble", type=int_in(1, 1000), metavar="K", help="average the K best kept checkpoints")
    p.add_argument("--tta", action="store_true", default=None, help="average with horizontally flipped views")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")

    p = sub.add_parser("compare", parents=[common],
                       help="paired comparison of two runs on the same test set (bootstrap CI, p-value, DeLong)")
    p.add_argument("run_a", type=Path)
    p.add_argument("run_b", type=Path)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--bootstrap", type=int_in(1, BOOTSTRAP_LIMIT), default=1000, metavar="B",
                   help="paired resamples (default 1000)")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")

    p = sub.add_parser("study", parents=[common], help="run a grid of runs resumably (or: study status DIR)",
                       description="medbench study STUDY.yaml --out DIR [--workers N] | medbench study status DIR")
    p.add_argument("target", nargs="+", metavar="STUDY.yaml | status DIR")
    p.add_argument("--out", type=Path, help="study folder (runs/, study.db, results.csv)")
    p.add_argument("--workers", type=int_in(1, 256), default=1,
                   help="local worker processes (threads divided among them)")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local processes, or one Ray task per run (pip install 'medbench[ray]')")
    p.add_argument("--address", help="ray: an existing cluster's address (default: start a local instance)")
    p.add_argument("--cpus-per-run", type=float_in(0, 4096, lo_open=True),
                   help="ray: CPUs per run (default: cluster CPUs / --workers)")
    p.add_argument("--gpus-per-run", type=float_in(0, 64), help="ray: GPUs per run (default 1 if the cluster has GPUs)")
    p.add_argument("--db", help="results database URL (default sqlite:///OUT/study.db; postgresql+psycopg://...)")
    p.add_argument("--dry-run", action="store_true", help="validate the file and list its runs; train nothing")
    p.add_argument("--report", action="store_true", default=None, help="write each run's report.html")
    p.add_argument("--json", action="store_true", help="status / dry run: print JSON")

    p = sub.add_parser("cache", parents=[common], help="the decoded own-data cache: info or clear")
    p.add_argument("action", choices=["info", "clear"])
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("report", parents=[common], help="(re)write RUN_DIR/report.html, or a study's report",
                       description="medbench report RUN_DIR | medbench report STUDY_DIR [--db URL]")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR|STUDY_DIR")
    p.add_argument("--db", help="study: results database URL (default sqlite:///STUDY_DIR/study.db)")
    p.add_argument("--bootstrap", type=int_in(0, BOOTSTRAP_LIMIT), default=1000, metavar="B",
                   help="study: resamples for CIs (default 1000)")

    p = sub.add_parser("augment-preview", parents=[common], help="a picture of original vs augmented samples")
    p.add_argument("--dataset", required=True)
    p.add_argument("--augment", required=True, metavar="PRESET[,PRESET]")
    p.add_argument("--out", required=True, type=Path, help="PNG file to write")
    p.add_argument("--n", type=int_in(1, 1024), default=32, help="images to show (default 32)")
    p.add_argument("--size", type=int_in(1, MAX_SIZE), default=28)
    p.add_argument("--no-flip", action="store_true")
    p.add_argument("--seed", type=SEED, default=0)

    p = sub.add_parser("predict", parents=[common], help="predict new images with a trained run -> CSV",
                       description="medbench predict RUN_DIR INPUTS... --out preds.csv [--cam DIR] [--tta]")
    p.add_argument("run_dir", type=Path)
    p.add_argument("inputs", nargs="+", help="image files (PNG/JPEG/DICOM/...), npz files, folders or globs")
    p.add_argument("--out", required=True, type=Path, help="CSV to write: path, one column per class, label")
    p.add_argument("--cam", type=Path, metavar="DIR", help="also write Grad-CAM overlays (PNG) into DIR")
    p.add_argument("--tta", action="store_true", help="average with horizontally flipped views")
    p.add_argument("--threshold", type=float_in(0, 1), help="binary: P(positive) threshold (default: the run's Youden "
                                                   "threshold chosen on val, else 0.5)")
    p.add_argument("--skip-bad", action="store_true", help="unreadable files get an error cell instead of stopping")
    p.add_argument("--device", type=_device, default="cpu")

    p = sub.add_parser("serve", parents=[common], help="web page + JSON API over trained runs (pip install "
                                                       "'medbench[serve]')")
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int_in(0, 65535), default=8000)
    p.add_argument("--device", type=_device, default="cpu")
    p.add_argument("--max-bytes", type=int_in(1, 2 ** 31), default=10 * 2 ** 20, help="largest upload (default 10 MB)")
    p.add_argument("--max-pixels", type=int_in(1, 2 ** 28), default=50_000_000,
                   help="largest declared image (default 50 M)")
    p.add_argument("--max-concurrent", type=int_in(1, 256), default=2,
                   help="images decoded/predicted at once (default 2)")
    p.add_argument("--queue-timeout", type=float_in(0, 3600), default=5.0,
                   help="seconds a request waits for a free slot before it gets 503 (default 5)")

    p = sub.add_parser("export", parents=[common], help="RUN_DIR/model.onnx (dynamic batch) or model.ts")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    p.add_argument("--out", type=Path, help="file to write (default RUN_DIR/model.onnx or model.ts)")

    p = sub.add_parser("card", parents=[common], help="(re)write RUN_DIR/MODEL_CARD.md and model_card.json")
    p.add_argument("run_dir", type=Path)

    p = sub.add_parser("gan", help="class-conditional DCGAN: train a generator, sample images")
    gsub = p.add_subparsers(dest="gan_command", required=True, parser_class=_Parser)
    g = gsub.add_parser("train", parents=[common], help="train a generator on a dataset's training split")
    g.add_argument("--dataset", required=True)
    g.add_argument("--out", required=True, type=Path, help="folder for the generator, losses, sample grids")
    g.add_argument("--size", type=int_in(1, MAX_SIZE), default=28, help="28, 64 (also 32, 56, 112, 128, 224)")
    g.add_argument("--epochs", type=int_in(1, 100_000), default=50)
    g.add_argument("--batch-size", type=int_in(2, 65_536), default=64)
    g.add_argument("--lr", type=float_in(0, 10, lo_open=True), default=2e-4)
    g.add_argument("--checkpoints", type=int_in(0, 1000), default=5,
                   help="evenly spaced saves with a sample grid (default 5)")
    g.add_argument("--judge-epochs", type=int_in(0, 100_000), default=10,
                   help="epochs of the real-data classifier behind the quality summary (0: skip it)")
    g.add_argument("--seed", type=SEED, default=0)
    g.add_argument("--device", type=_device, default="auto")
    g = gsub.add_parser("sample", parents=[common], help="write generated images and labels to an npz")
    g.add_argument("generator", type=Path, help="a `gan train` folder or its generator.safetensors")
    g.add_argument("--per-class", type=int_in(1, 10_000), required=True)
    g.add_argument("--out", required=True, type=Path, help=".npz to write (train_images, train_labels)")
    g.add_argument("--seed", type=SEED, default=0)
    return parser


def _train_settings(args) -> dict:
    from medbench.config import parse_overrides, read_config_file
    from medbench.errors import MedbenchError

    settings = read_config_file(args.config) if args.config else {}
    for _, field, _ in TRAIN_FLAGS:
        if getattr(args, field) is not None:
            settings[field] = getattr(args, field)
    for key in ("pretrained", "as_rgb", "no_flip", "skip_bad", "allow_outside_root", "tta", "deterministic",
                "compile", "detect_anomaly"):
        if getattr(args, key) is not None:
            settings[key] = True
    settings.update(parse_overrides(args.overrides))
    if "dataset" not in settings:
        raise MedbenchError("no dataset given: use --dataset NAME (see `medbench datasets`) or --config FILE")
    return settings


# a run directory's JSON files: what to do when one is damaged
_RUN_JSON = {
    "metrics.json": "delete it and run `medbench evaluate {run}` to recompute it",
    "dataset.json": "delete it: medbench rebuilds it from the run's dataset",
    "checkpoints/index.json": "restore it from a backup, or evaluate without --ensemble",
    "model_card.json": "run `medbench card {run}` to rewrite it",
}


def check_run_dir(run_dir: Path) -> None:
    """Read a run directory's own files before any work, so a damaged or hostile one is one line naming the file
    and the fix (instead of a traceback from deep inside evaluate, report, predict or export)."""
    from medbench.config import PROVENANCE_KEY, load_config, read_yaml
    from medbench.errors import MedbenchError
    from medbench.fileio import read_json, read_text

    config = run_dir / "config.yaml"
    if run_dir.is_file():
        raise MedbenchError(f"{run_dir} is a file, not a run directory; give the folder `medbench train --out` made")
    if not config.is_file():
        raise MedbenchError(f"{run_dir} is not a run directory (config.yaml missing); give the folder "
                            f"`medbench train --out` made")
    raw = read_yaml(config)
    provenance = raw.get(PROVENANCE_KEY) if isinstance(raw, dict) else None
    if provenance is not None and not isinstance(provenance, dict):
        raise MedbenchError(f"{config}: '{PROVENANCE_KEY}' must be a mapping, got {type(provenance).__name__}; "
                            f"restore the file `medbench train` wrote")
    load_config(config)
    for rel, fix in _RUN_JSON.items():
        if not (run_dir / rel).exists():
            continue
        fix = fix.format(run=run_dir)
        data = read_json(run_dir / rel, rel, fix, kind=list if rel.endswith("index.json") else dict)
        bad = [s for s in ("train", "val", "test") if rel == "metrics.json" and not isinstance(data.get(s, {}), dict)]
        if bad:
            raise MedbenchError(f"{run_dir / rel}: '{bad[0]}' holds a {type(data[bad[0]]).__name__}, not a record "
                                f"of metrics; {fix}")
    if (run_dir / "history.csv").exists():
        read_text(run_dir / "history.csv", "history.csv", "delete it (the report then leaves out the curves)")


def _print_table(table, width: int) -> None:
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=width)  # piped output: rich would otherwise cut names at 80 columns
    console.print(table)


def _cmd_datasets(args) -> None:
    from rich.table import Table

    from medbench.data import data_root, list_datasets

    rows = list_datasets(args.data_dir)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    t = Table(title=f"MedMNIST 2D datasets (data root: {data_root(args.data_dir)})")
    for col in ("name", "task", "channels", "classes", "train / val / test", "sizes on disk"):
        t.add_column(col, no_wrap=True)
    for r in rows:
        n = r["n_samples"]
        t.add_row(r["name"], r["task"], str(r["n_channels"]), str(len(r["classes"])),
                  f"{n['train']} / {n['val']} / {n['test']}", ", ".join(map(str, r["cached_sizes"])) or "-")
    _print_table(t, width=120)


def _cmd_models(args) -> None:
    from rich.table import Table

    from medbench.models import catalogue, model_info

    if args.info:
        info = model_info(args.info, num_classes=args.num_classes, in_chans=args.in_chans, img_size=args.size,
                          truncate=args.truncate)
        if args.json:
            print(json.dumps(info, indent=2))
            return
        print(f"{info['name']} ({info['family']}): {info['description']}")
        print(f"input {info['in_chans']} x {info['img_size']} px (default {info['default_size']}, minimum "
              f"{info['min_size']}), {info['num_classes']} outputs")
        print(f"parameters {info['params']:,} ({info['params'] / 1e6:.2f} M), forward FLOPs per image "
              f"{info['flops'] / 1e9:.3f} G")
        if args.truncate:
            print(f"truncated by {args.truncate}: parameters {info['params_truncated']:,} "
                  f"({info['params_truncated'] / 1e6:.2f} M), FLOPs {info['flops_truncated'] / 1e9:.3f} G")
        print(f"ImageNet weights: {'yes' if info['pretrained_available'] else 'no'}; truncation: "
              f"{'yes' if info['truncatable'] else 'no'}")
        return
    rows = catalogue()
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    t = Table("name", "family", "params (M)", "ImageNet", "truncate", "sizes (px)", "description",
              title="params at the default size, 3 channels, 1000 classes")
    for r in rows:
        t.add_row(r["name"], r["family"], f"{r['params'] / 1e6:.1f}", "yes" if r["pretrained_available"] else "-",
                  "yes" if r["truncatable"] else "-", f"{r['min_size']}+ ({r['default_size']})", r["description"])
    _print_table(t, width=160)


def _cmd_train(args) -> None:
    from medbench.config import resolve_config
    from medbench.run import METRICS, train

    from medbench.errors import MedbenchError

    if args.resume is not None:
        from medbench.config import load_config
        from medbench.run import CONFIG

        given = [f for f in ("out", "config", "overrides") if getattr(args, f, None)]
        given += [field for _, field, _ in TRAIN_FLAGS if getattr(args, field) is not None]
        if given:
            raise MedbenchError(f"--resume continues the run with its own config.yaml; drop "
                                f"{', '.join('--' + g.replace('_', '-') for g in given)}")
        if not (args.resume / CONFIG).is_file():
            raise MedbenchError(f"{args.resume} is not a run directory ({CONFIG} missing); nothing to resume")
        out = train(load_config(args.resume / CONFIG), args.resume, data_dir=args.data_dir, quiet=args.quiet,
                    report=not args.no_report, resume=True)
    else:
        if args.out is None:
            raise MedbenchError("medbench train needs --out RUN_DIR (or --resume RUN_DIR)")
        cfg = resolve_config(_train_settings(args), where="train")
        out = train(cfg, args.out, data_dir=args.data_dir, quiet=args.quiet, report=not args.no_report)
    from medbench.distributed import is_main_process

    if not is_main_process():
        return  # one summary line per run, from rank 0
    test = json.loads((out / METRICS).read_text())["test"]
    auc = "n/a" if test["auc"] is None else f"{test['auc']:.4f}"
    files = ", ".join(f for f in ("metrics.json", "report.html", "MODEL_CARD.md", "predictions/", "history.csv", "tb/")
                      if (out / f).exists())
    acc = "n/a" if test["acc"] is None else f"{test['acc']:.4f}"
    print(f"results in {out}: test auc {auc}, acc {acc} ({files})")


def _with_ci(rec: dict, key: str) -> str:
    v, ci = rec.get(key), rec.get(f"{key}_ci")
    text = "n/a" if v is None else f"{v:.4f}"
    return text + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")


def _cmd_evaluate(args) -> None:
    from medbench.run import SPLITS, evaluate

    check_run_dir(args.run_dir)
    metrics = evaluate(args.run_dir, args.split, data_dir=args.data_dir, quiet=args.quiet, ensemble=args.ensemble,
                       tta=args.tta, bootstrap=args.bootstrap, seed=args.seed)
    from medbench.distributed import is_main_process

    if not is_main_process():
        return
    if args.json:
        print(json.dumps(metrics, indent=2))
        return
    for split in SPLITS:
        rec = metrics.get(split)
        if rec is None or (args.split and split not in args.split):
            continue
        line = f"{split:<6} acc {_with_ci(rec, 'acc')}  auc {_with_ci(rec, 'auc')}  f1 {_with_ci(rec, 'f1_macro')}"
        if "at_youden" in rec:
            line += f"  (acc {rec['at_youden']['acc']:.4f} at threshold {rec['at_youden']['threshold']:.3f})"
        print(line + f"  n {rec['n']}")
    if metrics.get("gap"):
        gap = metrics["gap"]
        print("gap    train - test: acc " + ("n/a" if gap["acc"] is None else f"{gap['acc']:+.4f}")
              + "  auc " + ("n/a" if gap["auc"] is None else f"{gap['auc']:+.4f}"))
    ev = metrics["evaluation"]
    print(f"updated {args.run_dir / 'metrics.json'} (ensemble {ev['ensemble']}, tta {'on' if ev['tta'] else 'off'}, "
          f"bootstrap {ev['bootstrap'] or 'off'})")


def _cmd_compare(args) -> None:
    from medbench.compare import compare_runs

    check_run_dir(args.run_a)
    check_run_dir(args.run_b)
    res = compare_runs(args.run_a, args.run_b, split=args.split, replicates=args.bootstrap, seed=args.seed,
                       data_dir=args.data_dir)
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"{res['run_a']} vs {res['run_b']} on {res['dataset']} {res['split']} (n {res['n']}, "
          f"{res['replicates']} paired resamples)")
    for key in ("auc", "acc"):
        r = res[key]
        if r["diff"] is None:
            print(f"{key}: undefined")
            continue
        p = f"< {1 / res['replicates']:.2g}" if r["p_value"] == 0 else f"{r['p_value']:.4g}"  # none crossed 0
        print(f"{key}  A {r['value_a']:.4f}  B {r['value_b']:.4f}  A - B {r['diff']:+.4f} "
              f"[{r['diff_ci'][0]:+.4f}, {r['diff_ci'][1]:+.4f}]  p {p}")
    if res.get("delong"):
        d = res["delong"]
        z = "n/a (zero variance)" if d["z"] is None else f"{d['z']:.3f}"
        print(f"DeLong: AUC difference {d['diff']:+.4f}, z {z}, p {d['p_value']:.4g}")


def _cmd_study(args) -> int:
    from medbench.errors import MedbenchError
    from medbench.study import load_study, run_study, study_status

    if args.target[0] == "status":
        if len(args.target) != 2:
            raise MedbenchError("usage: medbench study status DIR")
        counts = study_status(args.db or args.target[1])
        print(json.dumps(counts) if args.json else "  ".join(f"{k} {v}" for k, v in counts.items()))
        return 0
    if len(args.target) != 1:
        raise MedbenchError("usage: medbench study STUDY.yaml --out DIR (or: medbench study status DIR)")
    study = load_study(args.target[0])
    if args.dry_run:
        rows = [{"id": r.id, **r.axes} for r in study.runs]
        if args.json:
            print(json.dumps({"name": study.name, "runs": rows}, indent=2))
        else:
            print(f"{study.name}: {len(rows)} runs")
            for r in rows:
                print("  " + "  ".join(f"{k}={v}" for k, v in r.items()))
        return 0
    if args.out is None:
        raise MedbenchError("medbench study needs --out DIR")
    counts = run_study(study, args.out, workers=args.workers, db_url=args.db, executor=args.executor,
                       quiet=args.quiet, report=args.report, data_dir=args.data_dir, address=args.address,
                       cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run)
    print(f"{counts['done']}/{counts['total']} done, {counts['failed']} failed, {counts['running']} running, "
          f"{counts['pending']} pending; results: {args.out / 'results.csv'}")
    return 0 if counts["failed"] == 0 else 1


def _cmd_cache(args) -> None:
    from medbench.data.cache import cache_clear, cache_info, default_cache_dir

    if args.action == "clear":
        print(f"removed {cache_clear()} entry(ies) from {default_cache_dir()}")
        return
    rows = cache_info()
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{len(rows)} cached dataset(s) in {default_cache_dir()}")
    for r in rows:
        print("  " + "  ".join(f"{k} {v}" for k, v in r.items() if not isinstance(v, (list, dict))))


def _cmd_report(args) -> None:
    from medbench.study.store import DB_NAME

    if args.db or (args.run_dir / DB_NAME).is_file():
        from medbench.study import write_study_report

        paths = write_study_report(args.run_dir, db_url=args.db, data_dir=args.data_dir, replicates=args.bootstrap)
        print(f"wrote {paths['html']}, {paths['markdown']} and {paths['summary']}")
        return
    from medbench.report import write_run_report

    check_run_dir(args.run_dir)
    path = write_run_report(args.run_dir, data_dir=args.data_dir, quiet=True)
    print(f"wrote {path}")


def _cmd_augment_preview(args) -> None:
    from medbench.augment import preview
    from medbench.data import load_dataset

    ds = load_dataset(args.dataset, args.size, data_dir=args.data_dir, progress=not args.quiet)
    info = preview(ds, args.augment, args.out, n=args.n, seed=args.seed, no_flip=args.no_flip)
    print(f"wrote {info['path']}: {info['n']} {ds.name} training images, originals above their "
          f"'{args.augment}' versions")


def _cmd_gan(args) -> None:
    from medbench.gan import sample_to_npz, train_gan

    if args.gan_command == "sample":
        info = sample_to_npz(args.generator, args.per_class, args.out, seed=args.seed)
        print(f"wrote {info['path']}: {info['n']} images ({args.per_class} per class: {', '.join(info['classes'])}), "
              f"{info['channels']} x {info['size']} px, keys train_images / train_labels")
        return
    res = train_gan(args.dataset, args.out, size=args.size, epochs=args.epochs, batch_size=args.batch_size,
                    lr=args.lr, seed=args.seed, device=args.device, checkpoints=args.checkpoints,
                    judge_epochs=args.judge_epochs, data_dir=args.data_dir, quiet=args.quiet)
    q = res["quality"]
    tail = "" if q is None else (f"; generated images classified as intended: {q['generated_as_intended_mean']:.3f} "
                                 f"(judge test acc {q['judge']['test_acc']:.3f}, quality.json)")
    print(f"generator in {res['generator']} after {res['epochs']} epochs ({res['seconds']:.0f} s); samples/, "
          f"losses.csv{tail}")


def _cmd_predict(args) -> None:
    from medbench.predict import predict_files

    check_run_dir(args.run_dir)
    info = predict_files(args.run_dir, args.inputs, args.out, cam_dir=args.cam, tta=args.tta,
                         threshold=args.threshold, skip_bad=args.skip_bad, device=args.device)
    extra = f", {info['skipped']} unreadable (error column)" if info["skipped"] else ""
    cams = f"; Grad-CAM overlays in {info['cam_dir']}" if info["cam_dir"] else ""
    print(f"wrote {info['out']}: {info['images']} images{extra}{cams}")


def _cmd_serve(args) -> None:
    from medbench.serve import serve

    for run_dir in args.run_dirs:
        check_run_dir(run_dir)
    serve(args.run_dirs, host=args.host, port=args.port, device=args.device, max_bytes=args.max_bytes,
          max_pixels=args.max_pixels, max_concurrent=args.max_concurrent, queue_timeout=args.queue_timeout,
          quiet=args.quiet)


def _cmd_export(args) -> None:
    from medbench.export import export_run

    check_run_dir(args.run_dir)
    path = export_run(args.run_dir, args.format, args.out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): uint8 images [N, C, S, S] -> probabilities [N, K]")


def _cmd_card(args) -> None:
    from medbench.card import CARD_MD, write_model_card

    check_run_dir(args.run_dir)
    write_model_card(args.run_dir, data_dir=args.data_dir)
    print(f"wrote {args.run_dir / CARD_MD} and model_card.json")


COMMANDS = {"datasets": _cmd_datasets, "models": _cmd_models, "train": _cmd_train, "evaluate": _cmd_evaluate,
            "compare": _cmd_compare, "report": _cmd_report, "cache": _cmd_cache, "study": _cmd_study,
            "augment-preview": _cmd_augment_preview, "gan": _cmd_gan, "predict": _cmd_predict,
            "serve": _cmd_serve, "export": _cmd_export, "card": _cmd_card}


def _out_of_memory(e: BaseException) -> bool:
    """An allocation the machine cannot make: the values asked for are too large (torch raises RuntimeError)."""
    text = str(e)
    return isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text.lower()))


def _warnings_one_line(quiet: bool):
    """A showwarning that prints each warning as one line; with ``quiet``, undefined-metric warnings only once
    (the first says what and where; the rest repeat it for other splits, epochs or resamples)."""
    from medbench.metrics import UndefinedMetricWarning

    seen: set = set()

    def show(message, category, filename, lineno, file=None, line=None):
        if quiet and issubclass(category, UndefinedMetricWarning):
            if UndefinedMetricWarning in seen:
                return
            seen.add(UndefinedMetricWarning)
        print(f"medbench: warning: {_one_line(message)}", file=file or sys.stderr)

    return show


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # a usage error (one line, exit 2), or --help / --version (exit 0)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    import warnings

    from medbench.errors import MedbenchError

    shown = warnings.showwarning
    warnings.showwarning = _warnings_one_line(args.quiet)
    try:
        code = COMMANDS[args.command](args)
    except MedbenchError as e:
        if args.debug:
            raise
        print(f"medbench: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except (MemoryError, RuntimeError) as e:
        if args.debug or not _out_of_memory(e):
            return _internal(e, args.debug)
        print(f"medbench: error: out of memory ({_one_line(e)[:200]}); the values asked for need more memory than "
              f"this machine has: use a smaller --size, --batch-size, --bootstrap or other count", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:  # a path the user gave: a folder for a file, no such folder, no permission
        if args.debug:
            raise
        where = e.filename if e.filename2 is None else e.filename2
        print(f"medbench: error: cannot use {where}: {e.strerror or _one_line(e)}; check the path (a file, not a "
              f"folder, in a folder that exists) and its permissions", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("medbench: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not bad input: still one line unless --debug
        return _internal(e, args.debug)
    finally:
        warnings.showwarning = shown
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return code or 0


def _internal(e: Exception, debug: bool) -> int:
    if debug:
        raise e
    print(f"medbench: internal error: {type(e).__name__}: {_one_line(e)} (rerun with --debug for the traceback)",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
