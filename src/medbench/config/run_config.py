"""The typed run configuration: every setting that changes a run's result, saved as ``config.yaml``.

Each field is declared once, with :func:`~medbench.config.setting.setting`: its type and checks, its help, its
argument group and how `medbench train` spells it (the flags are generated from here).
Resolution order, later wins: field defaults (= the ``default`` recipe) < named recipe < config file < flags.
"""
from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from medbench.config.augment_spec import PRESETS, parse_spec
from medbench.config.setting import setting
from medbench.config.sources import Source, missing_options, source_of, stray_options
from medbench.errors import MedbenchError

SEED_LIMIT = 2 ** 63  # torch and numpy take seeds below it
SK_SEED_LIMIT = 2 ** 32  # scikit-learn's random_state takes seeds below it
MAX_SIZE = 2048  # px: larger images would not fit a decoded dataset in memory
BOOTSTRAP_LIMIT = 100_000  # resamples: more only costs memory and time (CIs settle long before)
IMAGENET_OR_HALF = "the pretrained weights' ImageNet statistics, else 0.5"


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)  # every float finite

    # data
    dataset: str = setting(
        doc="a MedMNIST name, e.g. breastmnist (see `medbench datasets`), folder:PATH (a class per sub-folder, "
            "optional train/val/test) or csv:FILE", group="data", min_length=1)
    size: int = setting(28, doc="image size in pixels (MedMNIST: 28, 64, 128 or 224; own data: any)", group="data",
                        ge=1, le=MAX_SIZE)
    as_rgb: bool = setting(False, doc="repeat grey images to 3 channels (MedMNIST benchmark parity)", group="data")
    norm_mean: float | list[float] | None = setting(
        None, doc="normalise as (x/255 - mean) / std, one value or one per channel", group="data",
        metavar="M[,M,M]", shown_default=IMAGENET_OR_HALF)
    norm_std: float | list[float] | None = setting(None, doc="the std of that normalisation (each > 0)", group="data",
                                                   metavar="S[,S,S]", shown_default=IMAGENET_OR_HALF)
    # own data: dataset "folder:PATH" (a class per sub-folder, optional train/val/test) or "csv:FILE"
    label_regex: str | None = setting(
        None, doc="folder: class = first capture group of this regex on the path within the split folder, e.g. "
                  "'(NORMAL|bacteria|virus)'", group="own data", metavar="REGEX", shown_default="the sub-folder")
    image_col: str | None = setting(None, doc="csv: the column holding image paths", group="own data",
                                    metavar="COL")
    label_cols: list[str] | None = setting(None, doc="csv: one label column (classes) or several (multi-label)",
                                           group="own data", metavar="COL[,COL]")
    split_col: str | None = setting(None, doc="csv: column holding train/val/test", group="own data", metavar="COL",
                                    shown_default="none: train only, draw the others with --val/test-from-train")
    uncertain: Literal["u-ones", "u-zeros", "u-ignore"] = setting(
        "u-ones", doc="csv multi-label: -1 (uncertain) -> 1, 0, or left out of the loss and the metrics "
                      "(CheXpert policies)", group="own data")
    fit: Literal["pad", "crop"] = setting("pad", doc="pad or centre-crop images to a square, then resize (own data, "
                                                     "and new images in `medbench predict`)", group="own data")
    val_from_train: float = setting(0.0, doc="draw this share of train as val (stratified; replaces a val folder)",
                                    group="own data", metavar="F", ge=0, lt=1)
    test_from_train: float = setting(0.0, doc="the same for test", group="own data", metavar="F", ge=0, lt=1)
    group_regex: str | None = setting(
        None, doc="keep files with the same first capture group (e.g. a patient id) in one split, e.g. "
                  "'(person\\d+)_'", group="own data", metavar="REGEX")
    split_seed: int = setting(0, doc="seed of drawn splits (fixed across training seeds)", group="own data",
                              ge=0, lt=SEED_LIMIT)
    folds: int = setting(1, doc="k-fold cross-validation: K ordinary runs in RUN/folds/NN (stratified, grouped by "
                                "--group-regex; MedMNIST: over train+val, the official test split kept aside), "
                                "then the CV summary, out-of-fold predictions and the fold ensemble's test metrics; "
                                "1 = off", group="data", metavar="K", ge=1, le=100)
    fold: int | None = setting(None, doc="the one fold (0..K-1) of --folds K this run trains: its val split is that "
                                         "fold, its train split the others (set on each run of a CV)",
                               group="data", metavar="I", shown_default="none: all folds", ge=0, lt=100)
    skip_bad: bool = setting(False, doc="leave unreadable files out (listed in RUN_DIR/skipped.json)",
                             group="own data")
    allow_outside_root: bool = setting(False, doc="csv: allow image paths outside the CSV's folder",
                                       group="own data")
    # model and task
    model: str = setting("resnet18", doc="model name (see `medbench models`), or sk:decision_tree|random_forest|"
                                         "logreg|svm", group="model", min_length=1)
    features: Literal["pixels", "hog"] = setting("pixels", doc="sk: models: flattened pixels or HOG", group="model")
    stem: Literal["auto", "small", "imagenet"] = setting("auto", doc="ResNet stem (auto: small below 64 px)",
                                                         group="model")
    init: Literal["auto", "torchvision", "torch-default"] = setting(
        "auto", doc="ResNet weight initialisation: torchvision's (Kaiming-normal convolutions) or PyTorch's layer "
                    "defaults (the MedMNIST v2 benchmark's models.py); auto: torchvision's. Other models keep their "
                    "own", group="model")
    pretrained: bool = setting(False, doc="start from the model's ImageNet weights (cached, packaged or downloaded; "
                                          "never silently random)", group="model")
    weights: str | None = setting(None, doc="start from this weights file (.safetensors, or .pth holding tensors)",
                                  group="model", metavar="FILE")
    truncate: int = setting(0, doc="drop the last K stages (CheXtransfer truncation)", group="model", metavar="K",
                            ge=0, le=100)
    input_adapt: Literal["auto", "native", "resize", "pad"] = setting(
        "auto", doc="how images reach the network: auto resizes only images smaller than it accepts", group="model")
    input_size: int | None = setting(None, doc="resize/pad target size in pixels, e.g. 224", group="model",
                                     metavar="PX", shown_default="the larger of --size and the model's smallest",
                                     ge=1, le=MAX_SIZE)
    resize_mode: Literal["bilinear", "nearest", "bicubic"] = setting(
        "bilinear", doc="interpolation of that resize", group="model")
    freeze: Literal["none", "backbone"] = setting("none", doc="backbone: train only the head (linear probe)",
                                                  group="model")
    backbone_lr_scale: float = setting(1.0, doc="backbone lr = lr x this (head at lr)", group="model", gt=0, le=100)
    drop_rate: float | None = setting(None, doc="dropout before the classifier (cnn5, timm models)", group="model",
                                      shown_default="the model's", ge=0, lt=1)
    drop_path_rate: float | None = setting(
        None, doc="stochastic depth: residual branches skipped at random in training, at rates rising over the "
                  "blocks to this one (ResNets; timm EfficientNet, MNASNet, MobileNet, ConvNeXt); refused by networks "
                  "without residual branches (cnn2, cnn5, DenseNet, Inception; use --drop-rate) and by ConvMixer",
        group="model", shown_default="the model's", ge=0, lt=1)
    ordinal_loss: Literal["ce", "corn"] = setting("ce", doc="ordinal tasks: ce (the benchmark's) or corn",
                                                  group="model")
    loss: Literal["ce", "focal"] = setting(
        "ce", doc="training loss: cross-entropy (BCE for multi-label) or focal loss (Lin et al.: down-weights easy "
                  "examples by (1 - p_t)^gamma)", group="model")
    focal_gamma: float = setting(2.0, doc="focal: the focusing parameter gamma (0 = cross-entropy)", group="model",
                                 metavar="G", ge=0, le=20)
    class_weights: str | list[float] = setting(
        "none", doc="loss weights per class (multi-label: positive weight per label): none, balanced (inverse "
                    "frequency in train; multi-label: negatives/positives) or W1,W2,...", group="model",
        metavar="none|balanced|W[,W]")
    label_smoothing: float = setting(0.0, doc="label smoothing of the cross-entropy loss", group="model",
                                     ge=0, lt=1)
    # augmentation and synthetic data: the training split only
    augment: str | list[str | dict[str, Any]] = setting(
        "none", doc=f"augmentation presets applied in order: {', '.join(PRESETS)}; 'a,b', or in a config file a "
                    f"list of names and {{name: ..., option: value}} mappings",
        group="augmentation", metavar="PRESET[,PRESET]")
    no_flip: bool = setting(False, doc="never flip (anatomy where laterality matters)", group="augmentation")
    mixup: float = setting(0.0, doc="batch mixup with Beta(ALPHA, ALPHA); 0 = off", group="augmentation",
                           metavar="ALPHA", ge=0, le=100)
    cutmix: float = setting(0.0, doc="batch cutmix with Beta(ALPHA, ALPHA); 0 = off (with mixup: one per batch)",
                            group="augmentation", metavar="ALPHA", ge=0, le=100)
    synthetic: str | None = setting(None, doc="add generated images to the training split: a `medbench gan train` "
                                              "folder or a `gan sample` .npz", group="augmentation", metavar="G")
    synthetic_ratio: float = setting(1.0, doc="synthetic images per real training image (at most synthetic_cap)",
                                     group="augmentation", metavar="R", gt=0)
    synthetic_cap: float = setting(1.0, doc="largest synthetic_ratio accepted; raised deliberately in a config file "
                                            "or with --set", group="augmentation", cli=False, gt=0, le=100)
    synthetic_force: bool = setting(False, doc="use generated images even when their quality check (a judge's "
                                               "per-class accuracy) is below the bar", group="augmentation")
    synthetic_classes: Literal["match", "balance"] = setting(
        "match", doc="match: the real class mix; balance: fill the rarest classes first", group="augmentation")
    # optimisation
    recipe: str | None = setting(
        None, doc="named recipe under the other settings: default, medmnist-v2 (the official benchmark's "
                  "settings), fast (cnn5, 30 epochs: the time-to-accuracy recipe) or small-ensemble (10 fast "
                  "networks averaged: RESULTS.md)", group="optimisation", shown_default="none: the field defaults")
    epochs: int = setting(100, doc="training epochs", group="optimisation", ge=1, le=100_000)
    batch_size: int = setting(32, doc="training batch size", group="optimisation", ge=2, le=65_536)
    eval_batch_size: int = setting(256, doc="batch size of evaluation and prediction", group="evaluation",
                                   ge=1, le=65_536)
    optimizer: Literal["adam", "adamw", "sgd"] = setting("adam", doc="optimiser", group="optimisation")
    # no upper bound on lr: a diverging lr stops at its first non-finite loss
    lr: float = setting(1e-3, doc="learning rate (of the head when the backbone's is scaled)", group="optimisation",
                        gt=0)
    weight_decay: float = setting(0.0, doc="weight decay", group="optimisation", ge=0, le=10)
    momentum: float = setting(0.9, doc="sgd: momentum", group="optimisation", ge=0, lt=1)
    schedule: Literal["multistep", "cosine", "onecycle", "constant"] = setting(
        "cosine", doc="learning-rate schedule", group="optimisation")
    milestones: list[float] = setting([0.5, 0.75], doc="multistep: fractions of training where lr *= gamma",
                                      group="optimisation", metavar="F[,F]")
    gamma: float = setting(0.1, doc="multistep: the lr factor at each milestone", group="optimisation", gt=0, le=1)
    ema: float = setting(0.0, doc="weight EMA decay per optimiser step, e.g. 0.998; the averaged weights are "
                                  "validated, selected and saved; 0 = off", group="optimisation", metavar="DECAY",
                         ge=0, lt=1)
    sampler: Literal["shuffle", "balanced"] = setting(
        "shuffle", doc="training batches: a shuffle of train, or drawn with replacement at inverse class frequency "
                       "(each class equally often; multi-label: by each image's rarest positive label)",
        group="optimisation")
    patience: int = setting(0, doc="stop when the selection metric has not improved for N epochs (0 = never); "
                                   "recorded in history and the report", group="optimisation", metavar="N",
                            ge=0, le=100_000)
    select_metric: Literal["auc", "acc", "loss"] = setting("auc", doc="validation metric that picks the epoch",
                                                           group="optimisation")
    # evaluation of the finished run (`medbench evaluate` flags override them)
    keep_checkpoints: int = setting(0, doc="keep the K best epochs' weights (by select_metric) in checkpoints/, "
                                           "for --ensemble", group="evaluation", metavar="K", ge=0, le=1000)
    ensemble: int = setting(1, doc="evaluate the mean probabilities of the K best kept checkpoints",
                            group="evaluation", metavar="K", ge=1, le=1000)
    members: int = setting(1, doc="deep ensemble: train K networks (seeds seed*K .. seed*K+K-1) into members/ and "
                                  "average their probabilities", group="evaluation", metavar="K", ge=1, le=1000)
    decision: Literal["0.5", "youden"] = setting(
        "0.5", doc="binary: the threshold of the headline acc/F1/confusion matrix: P(positive) > 0.5, or the "
                   "Youden threshold chosen on val (both are always reported)", group="evaluation")
    positive_class: str | None = setting(
        None, doc="binary: the class whose sensitivity, precision, recall and F1 are reported (acc/auc stay "
                  "MedMNIST's)", group="evaluation", metavar="NAME", shown_default="the minority class of train",
        min_length=1)
    calibrate: Literal["none", "temperature"] = setting(
        "none", doc="temperature: fit one temperature on val after training; metrics, predictions, predict, serve "
                    "and export use the calibrated probabilities (ECE before and after recorded)", group="evaluation")
    subgroup_cols: list[str] | None = setting(
        None, doc="csv: columns whose values form subgroups (e.g. sex,age_band,site): per-subgroup metrics with "
                  "CIs and the largest gap", group="evaluation", metavar="COL[,COL]")
    subgroup_regex: str | None = setting(
        None, doc="folder or csv: NAME=REGEX on each image's path (relative to the data root); the first capture "
                  "group is its subgroup, e.g. 'site=^(\\w+)/'", group="evaluation", metavar="NAME=REGEX")
    tta: bool = setting(False, doc="average each image's prediction with its horizontal flip", group="evaluation")
    bootstrap: int = setting(0, doc="resamples of each split for 95 % CIs of every metric (0 = none)",
                             group="evaluation", metavar="B", ge=0, le=BOOTSTRAP_LIMIT)
    # reproducibility and hardware
    seed: int = setting(0, doc="training seed", group="hardware", ge=0, lt=SEED_LIMIT)
    deterministic: bool = setting(False, doc="deterministic kernels (slower; the same seed gives the same result)",
                                  group="hardware")
    detect_anomaly: bool = setting(False, doc="debugging: autograd anomaly detection (slow); stops at the first "
                                              "backward step that makes NaN/inf, naming the operation",
                                   group="hardware")
    device: str = setting("auto", doc="auto, cpu, cuda or cuda:N", group="hardware",
                          pattern=r"^(auto|cpu|cuda(:\d{1,4})?)$")
    checkpoint_minutes: float = setting(10.0, doc="also save the resume state every M minutes within an epoch (one "
                                                  "process; 0 = at epoch ends only)", group="output", metavar="M",
                                        ge=0, le=1e6)
    memory_budget: float | None = setting(
        None, doc="GB of RAM the decoded images may take whole; a larger dataset is read in batches from a store "
                  "on disk (same batches); 0: always from disk", group="hardware", metavar="GB",
        shown_default="half the available RAM, or $MEDBENCH_MEMORY_BUDGET", ge=0, le=1e6)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = setting(
        "auto", doc="auto: bf16 autocast on CUDA (fp16 where bf16 is missing) and on CPUs with native bf16, else "
                    "fp32", group="hardware")
    # config-only: on by default, and turning it off is only for measuring it (a flag could only turn it on)
    channels_last: bool = setting(True, doc="NHWC memory layout for convolutions (faster on CPU and GPU)",
                                  group="hardware", cli=False)
    compile: bool = setting(False, doc="torch.compile the model (slower first epoch, faster after)",
                            group="hardware")

    @property
    def source(self) -> Source:
        """The typed data source (MedMNIST, folder or CSV) with its own options; derived, never saved."""
        return source_of(self.__dict__)

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

    @field_validator("class_weights", mode="before")
    @classmethod
    def _weights_form(cls, v):
        """'none', 'balanced', or positive finite weights (a list, or 'W1,W2,...' from a flag)."""
        if isinstance(v, str) and v.strip() in ("none", "balanced"):
            return v.strip()
        if isinstance(v, str):
            try:
                v = [float(x) for x in v.split(",")]
            except ValueError:
                raise ValueError(f"class_weights {v!r}: none, balanced or comma-separated numbers, e.g. 1,19") \
                    from None
        if not isinstance(v, list) or not v or any(isinstance(x, bool) or not isinstance(x, (int, float))
                                                   or not (0 < x < float("inf")) for x in v):
            raise ValueError(f"class_weights {v!r}: none, balanced or positive finite numbers, one per class")
        return [float(x) for x in v]

    @model_validator(mode="after")
    def _fold_of_folds(self):
        if self.fold is not None and (self.folds < 2 or self.fold >= self.folds):
            raise ValueError(f"fold {self.fold} needs folds K > fold (got folds {self.folds}): e.g. --folds 5 "
                             f"--fold {self.fold}")
        if self.folds > 1 and self.members > 1:
            raise ValueError(f"folds {self.folds} with members {self.members} is not supported (a fold ensemble is "
                             f"made already: metrics.json's test averages the {self.folds} fold models); drop one")
        if self.folds > 1 and self.val_from_train > 0:
            raise ValueError(f"val_from_train {self.val_from_train} has no effect with folds {self.folds} (train "
                             f"and val are pooled, each fold is val in turn); drop it")
        return self

    @field_validator("subgroup_regex")
    @classmethod
    def _named_regex(cls, v):
        if v is None:
            return v
        name, eq, pattern = v.partition("=")
        if not eq or not name.strip() or not pattern:
            raise ValueError(f"subgroup_regex {v!r}: write NAME=REGEX, e.g. 'site=^(\\w+)/'")
        try:
            if re.compile(pattern).groups < 1:
                raise ValueError(f"subgroup_regex {v!r}: the regex needs a capture group (the subgroup)")
        except re.error as e:
            raise ValueError(f"subgroup_regex {v!r}: not a valid regex ({e})") from None
        return v

    @field_validator("label_cols", "subgroup_cols")
    @classmethod
    def _named_columns(cls, v):
        if v is not None and (not v or any(not c.strip() for c in v)):
            raise ValueError("give at least one column name, none empty")
        return v

    @field_validator("augment")
    @classmethod
    def _known_presets(cls, v):
        try:
            parse_spec(v)
        except MedbenchError as e:
            raise ValueError(str(e)) from None
        return v

    @model_validator(mode="after")
    def _source_options_apply(self):
        defaults = {name: info.default for name, info in type(self).model_fields.items()}
        problem = missing_options(self.dataset, self.__dict__) or stray_options(self.dataset, self.__dict__, defaults)
        if problem:
            raise ValueError(problem)
        return self

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
