"""Objects assembled from a RunConfig: the dataset, the task, the network, the preprocessing.

Training, evaluation, prediction, reports and studies all build through these functions, so a run is rebuilt the
same way wherever it is used.
"""
from __future__ import annotations

from pathlib import Path

import torch

from medbench.config import RunConfig
from medbench.data import ImageDataset, load_dataset
from medbench.data.folds import fold_of_config
from medbench.data.loader import Preprocess
from medbench.errors import MedbenchError
from medbench.losses import class_weights
from medbench.models import create_model, model_entry
from medbench.models.weights import check_fits, imagenet_stats
from medbench.tasks import Task, make_task


def source_options(cfg: RunConfig) -> dict:
    """The config's settings for a folder: or csv: dataset, as loader keyword arguments ({} for MedMNIST)."""
    return cfg.source.loader_options()


def build_dataset(cfg: RunConfig, data_dir=None, quiet: bool = True) -> ImageDataset:
    """The run's dataset, loaded (MedMNIST) or decoded / read from the cache (own data); a fold run (--folds K
    --fold I) gets its fold's view (:mod:`medbench.data.folds`), so evaluate and report rebuild what it trained on."""
    return fold_of_config(load_dataset(cfg.dataset, cfg.size, data_dir=data_dir, progress=not quiet,
                                       memory_budget=cfg.memory_budget, **source_options(cfg)), cfg)


def dataset_or_build(cfg: RunConfig, dataset: ImageDataset | None, data_dir=None, quiet: bool = True) -> ImageDataset:
    """``dataset`` when the caller built it already, else :func:`build_dataset`."""
    return dataset if dataset is not None else build_dataset(cfg, data_dir, quiet)


def build_task(cfg: RunConfig, ds) -> Task:
    """The run's task for scores, decisions and metrics: its loss is the unweighted cross-entropy (metrics.json's
    ``loss``), whatever the training objective (:func:`build_training_task`)."""
    return make_task(ds.task, ds.num_classes, ordinal_loss=cfg.ordinal_loss, label_smoothing=cfg.label_smoothing)


def build_training_task(cfg: RunConfig, ds, train_labels) -> tuple[Task, dict]:
    """The task with the run's training objective (``loss``, ``focal_gamma``, ``class_weights`` from
    ``train_labels``: the training split as trained, generated images included), and what config.yaml's provenance
    records about it: the weights actually used, by class ({} without weights)."""
    weights = class_weights(cfg.class_weights, ds.task, train_labels, ds.class_names)
    task = make_task(ds.task, ds.num_classes, ordinal_loss=cfg.ordinal_loss, label_smoothing=cfg.label_smoothing,
                     loss=cfg.loss, focal_gamma=cfg.focal_gamma, weights=weights)
    if weights is None:
        return task, {}
    how = (f"balanced over {len(train_labels)} training images" if cfg.class_weights == "balanced" else "given")
    key = "positive_weight_per_label" if ds.task == "multilabel" else "weight_per_class"
    return task, {"class_weights": {"from": how, key: {str(c): round(w, 6) for c, w in zip(ds.class_names,
                                                                                           weights)}}}


def input_channels(cfg: RunConfig, ds) -> int:
    return 3 if cfg.as_rgb else ds.in_chans


def normalization(cfg: RunConfig, in_chans: int) -> tuple[list[float], list[float]]:
    """Per-channel mean/std: the config's, else the pretrained weights' ImageNet statistics (averaged for grey
    input, whose first convolution sums the RGB filters), else 0.5 / 0.5."""
    stats = imagenet_stats(model_entry(cfg.model)) if cfg.pretrained or cfg.weights else None
    mean, std = stats or ([0.5], [0.5])
    mean = mean if cfg.norm_mean is None else cfg.norm_mean
    std = std if cfg.norm_std is None else cfg.norm_std
    out = []
    for name, v in (("norm_mean", mean), ("norm_std", std)):
        v = [float(v)] if isinstance(v, (int, float)) else [float(x) for x in v]
        if len(v) == 3 and in_chans == 1:
            v = [sum(v) / 3]
        if len(v) not in (1, in_chans):
            raise MedbenchError(f"{name} has {len(v)} values; the model takes {in_chans} channels (give 1 or "
                                f"{in_chans})")
        out.append(v * in_chans if len(v) == 1 else v)
    return out[0], out[1]


def build_preprocess(cfg: RunConfig, ds) -> Preprocess:
    """uint8 batches -> normalised float input, in the run's channels and memory layout."""
    mean, std = normalization(cfg, input_channels(cfg, ds))
    return Preprocess(mean, std, to_rgb=cfg.as_rgb, channels_last=cfg.channels_last)


def build_model(cfg: RunConfig, ds, task: Task, load_weights: bool = True) -> torch.nn.Module:
    """The run's network; ``load_weights=False`` skips pretrained loading (the run's own weights follow)."""
    kwargs = {} if cfg.stem == "auto" else {"stem": cfg.stem}
    kwargs.update({k: v for k in ("drop_rate", "drop_path_rate") if (v := getattr(cfg, k)) is not None})
    if cfg.init != "auto" and "init" in model_entry(cfg.model).options:  # ResNets; other models keep their own
        kwargs["init"] = cfg.init
    in_chans = input_channels(cfg, ds)
    mean, std = normalization(cfg, in_chans)
    return create_model(cfg.model, num_classes=task.num_outputs, in_chans=in_chans, img_size=cfg.size,
                        pretrained=cfg.pretrained, weights=cfg.weights, truncate=cfg.truncate,
                        input_adapt=cfg.input_adapt, input_size=cfg.input_size, resize_mode=cfg.resize_mode,
                        pad_value=[-m / s for m, s in zip(mean, std)], load_weights=load_weights, **kwargs)


def place_model(model: torch.nn.Module, cfg: RunConfig, device) -> torch.nn.Module:
    return model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)


def load_trained_model(path: Path, cfg: RunConfig, ds, task: Task, device) -> torch.nn.Module:
    """The run's network with the weights of ``path`` (a run's model.safetensors, a kept checkpoint, a member's),
    on ``device``."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise MedbenchError(f"{path} not found: the run has no saved weights (did training finish an epoch?)")
    model = build_model(cfg, ds, task, load_weights=False)
    try:
        state = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for truncated/corrupt files
        raise MedbenchError(f"{path}: cannot read weights ({e}); the file is damaged, retrain the run") from None
    check_fits(state, model.state_dict(), str(path), cfg.model)
    model.load_state_dict(state)
    return place_model(model, cfg, device)


def load_run_model(run_dir, cfg: RunConfig, ds, task: Task, device, weights: Path | None = None) -> torch.nn.Module:
    """The run's network with its best weights (a deep ensemble: its first member's; or the given file)."""
    from medbench.rundir import model_weights

    return load_trained_model(weights or model_weights(run_dir, cfg, 1)[0], cfg, ds, task, device)


def run_data_spec(run_dir, cfg: RunConfig, data_dir=None):
    """The run's :class:`~medbench.rundir.DataSpec`: its dataset.json, or (runs from before it existed) the spec of
    the run's dataset, loaded once."""
    from medbench.rundir import data_spec, read_data_spec

    spec = read_data_spec(run_dir)
    return spec if spec is not None else data_spec(build_dataset(cfg, data_dir))
