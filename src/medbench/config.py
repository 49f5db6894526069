"""The typed run configuration: every setting that changes a run's result, saved as ``config.yaml``.

Resolution order, later wins: field defaults (= the ``default`` recipe) < named recipe < config file < flags.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medbench.errors import MedbenchError

PROVENANCE_KEY = "provenance"  # written beside the config, ignored when it is read back
SEED_LIMIT = 2 ** 63  # torch and numpy take seeds below it
SK_SEED_LIMIT = 2 ** 32  # scikit-learn's random_state takes seeds below it
MAX_SIZE = 2048  # px: larger images would not fit a decoded dataset in memory
BOOTSTRAP_LIMIT = 100_000  # resamples: more only costs memory and time (CIs settle long before)


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)  # every float finite

    # data
    dataset: str = Field(min_length=1)
    size: int = Field(28, ge=1, le=MAX_SIZE, description="image size in pixels (MedMNIST: 28, 64, 128 or 224)")
    as_rgb: bool = Field(False, description="repeat grey images to 3 channels (MedMNIST benchmark parity)")
    norm_mean: float | list[float] | None = Field(
        None, description="normalise as (x/255 - mean) / std, one value or one per channel; None: the pretrained "
                          "weights' ImageNet statistics, else 0.5")
    norm_std: float | list[float] | None = None
    # own data: dataset "folder:PATH" (a class per sub-folder, optional train/val/test) or "csv:FILE"
    label_regex: str | None = Field(None, description="folder: class = first capture group of this regex on the "
                                                      "path within the split folder")
    image_col: str | None = Field(None, description="csv: the column holding image paths")
    label_cols: list[str] | None = Field(None, description="csv: one column (classes) or several (multi-label)")
    split_col: str | None = Field(None, description="csv: column holding train/val/test")
    uncertain: Literal["u-ones", "u-zeros", "u-ignore"] = Field(
        "u-ones", description="csv multi-label: -1 (uncertain) -> 1, 0, or left out of the loss and the metrics "
                              "(CheXpert policies)")
    fit: Literal["pad", "crop"] = Field("pad", description="own data: pad or centre-crop to a square, then resize")
    val_from_train: float = Field(0.0, ge=0, lt=1, description="own data: draw this share of train as val "
                                                               "(stratified; replaces a val folder)")
    test_from_train: float = Field(0.0, ge=0, lt=1, description="own data: the same for test")
    group_regex: str | None = Field(None, description="own data: keep files with the same first capture group "
                                                      "(e.g. a patient id) in one split")
    split_seed: int = Field(0, ge=0, lt=SEED_LIMIT, description="seed of drawn splits (fixed across training seeds)")
    skip_bad: bool = Field(False, description="own data: leave unreadable files out (listed in skipped.json)")
    allow_outside_root: bool = Field(False, description="csv: allow image paths outside the CSV's folder")
    # model and task
    model: str = Field("resnet18", min_length=1)
    features: Literal["pixels", "hog"] = Field("pixels", description="sk: models: flattened pixels or HOG")
    stem: Literal["auto", "small", "imagenet"] = "auto"
    pretrained: bool = Field(False, description="start from the model's ImageNet weights")
    weights: str | None = Field(None, description="start from this weights file (safetensors, or .pth tensors)")
    truncate: int = Field(0, ge=0, le=100, description="drop the last K stages (CheXtransfer truncation)")
    input_adapt: Literal["auto", "native", "resize", "pad"] = Field(
        "auto", description="how images reach the network: auto resizes only when smaller than it accepts")
    input_size: int | None = Field(None, ge=1, le=MAX_SIZE, description="resize/pad target size in pixels")
    resize_mode: Literal["bilinear", "nearest", "bicubic"] = "bilinear"
    freeze: Literal["none", "backbone"] = Field("none", description="backbone: train only the head (linear probe)")
    backbone_lr_scale: float = Field(1.0, gt=0, le=100, description="backbone lr = lr x this (head at lr)")
    drop_rate: float | None = Field(None, ge=0, lt=1, description="dropout before the classifier (cnn5, timm "
                                                                  "models); None: the model's default")
    drop_path_rate: float | None = Field(None, ge=0, lt=1, description="stochastic depth (timm models)")
    ordinal_loss: Literal["ce", "corn"] = "ce"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    # augmentation and synthetic data: the training split only
    augment: str | list[str | dict[str, Any]] = Field(
        "none", description="preset name, 'a,b', or a list of names and {name: ..., option: value} mappings "
                            "applied in order (see `medbench.augment.PRESETS`)")
    no_flip: bool = Field(False, description="never flip (anatomy where laterality matters)")
    mixup: float = Field(0.0, ge=0, le=100, description="mixup Beta(a, a) alpha; 0 = off")
    cutmix: float = Field(0.0, ge=0, le=100, description="cutmix Beta(a, a) alpha; 0 = off (with mixup: one per batch)")
    synthetic: str | None = Field(None, description="generator (`medbench gan train` output) or samples .npz "
                                                    "whose images are added to the training split")
    synthetic_ratio: float = Field(1.0, gt=0, description="synthetic images per real training image")
    synthetic_cap: float = Field(1.0, gt=0, le=100, description="largest synthetic_ratio accepted")
    synthetic_classes: Literal["match", "balance"] = Field(
        "match", description="match: the real class mix; balance: fill the rarest classes first")
    # optimisation
    recipe: str | None = None
    epochs: int = Field(100, ge=1, le=100_000)
    batch_size: int = Field(32, ge=2, le=65_536)
    eval_batch_size: int = Field(256, ge=1, le=65_536)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)  # no upper bound: a diverging lr stops at its first non-finite loss
    weight_decay: float = Field(0.0, ge=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1)
    schedule: Literal["multistep", "cosine", "onecycle", "constant"] = "cosine"
    milestones: list[float] = Field([0.5, 0.75], description="multistep: fractions of training where lr *= gamma")
    gamma: float = Field(0.1, gt=0, le=1)
    ema: float = Field(0.0, ge=0, lt=1, description="weight EMA decay per optimiser step (e.g. 0.998); the "
                                                    "averaged weights are validated, selected and saved; 0 = off")
    select_metric: Literal["auc", "acc", "loss"] = Field("auc", description="validation metric that picks the epoch")
    # evaluation of the finished run (`medbench evaluate` flags override them)
    keep_checkpoints: int = Field(0, ge=0, le=1000, description="keep the K best epochs' weights (by select_metric) in "
                                                       "checkpoints/, for ensembles")
    ensemble: int = Field(1, ge=1, le=1000, description="average the probabilities of the K best kept checkpoints")
    members: int = Field(1, ge=1, le=1000, description="deep ensemble: train K networks (seeds seed*K .. "
                                                       "seed*K+K-1) into members/ and average their "
                                                       "probabilities")
    decision: Literal["0.5", "youden"] = Field(
        "0.5", description="binary: the threshold of the headline acc/F1/confusion matrix: P(positive) > 0.5, or the "
                           "Youden threshold chosen on val (both are always reported)")
    tta: bool = Field(False, description="average each image's prediction with its horizontal flip")
    bootstrap: int = Field(0, ge=0, le=BOOTSTRAP_LIMIT, description="resamples of each split for 95 % CIs of "
                                                                      "every metric (0 = none)")
    # reproducibility and hardware
    seed: int = Field(0, ge=0, lt=SEED_LIMIT)
    deterministic: bool = False
    detect_anomaly: bool = Field(False, description="debugging: autograd anomaly detection (slow); stops at the "
                                                    "first backward step that makes NaN/inf")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d{1,4})?)$")
    checkpoint_minutes: float = Field(10.0, ge=0, le=1e6, description="also save the resume state every this many "
                                                                      "minutes within an epoch (one process; 0 = at "
                                                                      "epoch ends only)")
    memory_budget: float | None = Field(
        None, ge=0, le=1e6, description="GB of RAM the decoded images may take whole; a larger dataset is read in "
                                        "batches from a store on disk (same batches). None: half the available RAM "
                                        "(or $MEDBENCH_MEMORY_BUDGET); 0: always from disk")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA (fp16 where bf16 is missing) and on CPUs with native bf16, "
                            "else fp32")
    channels_last: bool = Field(True, description="NHWC memory layout for convolutions (faster on CPU and GPU)")
    compile: bool = Field(False, description="torch.compile the model (slow first epoch, faster after)")

    @field_validator("norm_std")
    @classmethod
    def _positive_std(cls, v):
        if v is not None and any(x <= 0 for x in ([v] if isinstance(v, (int, float)) else v)):
            raise ValueError("every norm_std value must be > 0")
        return v

    @field_validator("milestones")
    @classmethod
    def _milestones_inside(cls, v):
        if any(not 0 < x < 1 for x in v):
            raise ValueError("every milestone must be a fraction of training strictly between 0 and 1, "
                             "e.g. [0.5, 0.75]")
        return v

    @field_validator("label_cols")
    @classmethod
    def _named_columns(cls, v):
        if v is not None and (not v or any(not c.strip() for c in v)):
            raise ValueError("give at least one column name, none empty")
        return v

    @field_validator("augment")
    @classmethod
    def _known_presets(cls, v):
        from medbench.augment import parse_spec

        try:
            parse_spec(v)
        except MedbenchError as e:
            raise ValueError(str(e)) from None
        return v

    @model_validator(mode="after")
    def _ensemble_kept(self):
        if self.ensemble > 1 and self.keep_checkpoints < self.ensemble:
            raise ValueError(f"ensemble {self.ensemble} needs keep_checkpoints >= {self.ensemble} "
                             f"(got {self.keep_checkpoints}): use --keep-checkpoints {self.ensemble}")
        if self.members > 1 and self.ensemble > 1:
            raise ValueError("members (a deep ensemble) and ensemble (checkpoints of one network) are exclusive; "
                             "choose one")
        if self.tta and self.no_flip:
            raise ValueError("tta averages horizontally flipped views, but no_flip says flips are not valid here")
        return self

    @model_validator(mode="after")
    def _seeds_in_range(self):
        if self.members > 1 and self.seed * self.members + self.members > SEED_LIMIT:  # member seeds seed*K + i
            raise ValueError(f"seed {self.seed} x members {self.members} reaches 2**63; choose a smaller seed")
        if self.model.startswith("sk:") and self.seed >= SK_SEED_LIMIT:
            raise ValueError(f"seed {self.seed} is too large for scikit-learn models; choose one below 2**32")
        return self

    @model_validator(mode="after")
    def _synthetic_capped(self):
        if self.synthetic and self.synthetic_ratio > self.synthetic_cap:
            raise ValueError(f"synthetic_ratio {self.synthetic_ratio} exceeds synthetic_cap {self.synthetic_cap} "
                             f"(synthetic images would outnumber the cap); raise synthetic_cap deliberately if meant")
        return self


RECIPES: dict[str, dict[str, Any]] = {
    # The field defaults: the benchmark's optimiser with batch 32 and cosine decay, which trains well in a few
    # epochs too (BreastMNIST, ResNet-18, 3 epochs, seeds 0/1/2: test AUC 0.88/0.77/0.82 vs 0.58/0.65/0.64 with
    # medmnist-v2, whose 128-image batches give only 15 optimiser steps and whose lr drops after epoch 1).
    "default": dict(optimizer="adam", lr=1e-3, weight_decay=0.0, batch_size=32, epochs=100, schedule="cosine",
                    label_smoothing=0.0, select_metric="auc"),
    # MedMNIST v2 benchmark: Adam 1e-3, batch 128, 100 epochs, lr x0.1 at 50 % and 75 %, no augmentation,
    # normalise with mean 0.5 / std 0.5, best epoch by validation AUC.
    "medmnist-v2": dict(optimizer="adam", lr=1e-3, weight_decay=0.0, batch_size=128, epochs=100,
                        schedule="multistep", milestones=[0.5, 0.75], gamma=0.1, norm_mean=0.5, norm_std=0.5,
                        label_smoothing=0.0, select_metric="auc"),
    # Time to accuracy: the pneumonia report's 0.46 M-parameter cnn5 costs 1/57 of ResNet-18's FLOPs at
    # 28 px, and reaches the MedMNIST v2 ResNet-18 (28) test AUC/ACC on PneumoniaMNIST in 2-6 epochs and on
    # BreastMNIST in 10-15 (probes on 3 seeds each, benchmarks/time_to_accuracy.py).
    "fast": dict(model="cnn5", optimizer="adam", lr=1e-3, weight_decay=0.0, batch_size=32, epochs=30,
                 schedule="cosine", label_smoothing=0.0, select_metric="auc"),
    # Accuracy on a CPU budget (RESULTS.md): ten `fast` networks from different seeds, probabilities averaged.
    # On BreastMNIST (3 seeds) mean val AUC 0.957 -> 0.966 with 5 members; test AUC 0.894 -> 0.918.
    "small-ensemble": dict(model="cnn5", optimizer="adam", lr=1e-3, weight_decay=0.0, batch_size=32, epochs=30,
                           schedule="cosine", label_smoothing=0.0, select_metric="auc", members=10),
}


def _format_error(e: ValidationError, where: str) -> MedbenchError:
    msgs = []
    for err in e.errors():
        key = ".".join(str(p) for p in err["loc"]) or "config"
        if err["type"] == "extra_forbidden":
            msgs.append(f"unknown key '{key}' (valid keys: {', '.join(RunConfig.model_fields)})")
        elif err["type"] == "missing":
            msgs.append(f"'{key}' is required")
        elif not err["loc"]:  # a check across fields: its message names them, the input is the whole config
            msgs.append(err["msg"].removeprefix("Value error, "))
        else:
            msgs.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
    return MedbenchError(f"{where}: " + "; ".join(msgs))


def resolve_config(settings: dict[str, Any], where: str = "config") -> RunConfig:
    """Apply the named recipe (if any) under ``settings`` and validate the result."""
    recipe = settings.get("recipe")
    if recipe is not None and recipe not in RECIPES:
        raise MedbenchError(f"{where}: unknown recipe '{recipe}'; valid: {', '.join(RECIPES)}")
    merged = {**RECIPES.get(recipe, {}), **settings}
    try:
        return RunConfig(**merged)
    except ValidationError as e:
        raise _format_error(e, where) from None


def read_yaml(path: str | os.PathLike, what: str = "config file") -> Any:
    """A YAML file through the safe loader (never constructs objects); missing or invalid: one clear error."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MedbenchError(f"{what} {path} not found; check the path") from None
    except IsADirectoryError:
        raise MedbenchError(f"{path} is a folder, not a {what}; give the YAML file itself (a run's is "
                            f"RUN_DIR/config.yaml)") from None
    except UnicodeDecodeError as e:
        raise MedbenchError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); save the {what} as UTF-8") from None
    except OSError as e:
        raise MedbenchError(f"{path}: cannot read the {what} ({e.strerror or e}); check the path and its "
                            f"permissions") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise MedbenchError(f"{path}: not valid YAML{where} ({problem}); fix the syntax there") from None
    return {} if data is None else data


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML config (safe loader) into a plain dict; the provenance block is dropped."""
    path = Path(path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise MedbenchError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    data.pop(PROVENANCE_KEY, None)
    return data


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["epochs=3", "milestones=[0.5]"]`` -> settings; values are read as YAML (safe loader)."""
    settings = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise MedbenchError(f"--set expects KEY=VALUE, got '{item}'")
        try:
            settings[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            problem = " ".join(str(getattr(e, "problem", None) or e).split())
            raise MedbenchError(f"--set {item}: the value is not valid YAML ({problem}); fix or quote it, e.g. "
                                f"--set milestones=[0.5,0.75]") from None
    return settings


def load_config(path: str | os.PathLike) -> RunConfig:
    return resolve_config(read_config_file(path), where=str(path))


def dump_config(config: RunConfig, provenance: dict[str, Any] | None = None) -> str:
    text = yaml.safe_dump(config.model_dump(), sort_keys=False)
    if provenance:
        text += yaml.safe_dump({PROVENANCE_KEY: provenance}, sort_keys=False)
    return text
