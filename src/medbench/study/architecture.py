"""Architecture facts the study report sets against test AUC: parameter counts (of the model as a run builds it)
and the ImageNet-1k top-1 accuracy of the weights ``--pretrained`` loads."""
from __future__ import annotations

from functools import cache

import torch
import torchvision.models as tvm

from medbench.build import build_task, input_channels
from medbench.config import resolve_config
from medbench.errors import MedbenchError
from medbench.models import create_model, model_entry
from medbench.models.registry import num_params
from medbench.study import published as P


@cache
def _count_params_cached(model: str, num_classes: int, in_chans: int, img_size: int, pretrained: bool,
                         truncate: int, extra: tuple) -> int | None:
    kwargs = dict(extra)
    for device in ("meta", "cpu"):  # meta: no memory, no initialisation; cpu if a builder cannot run on meta
        try:
            with torch.device(device), torch.no_grad():
                net = create_model(model, num_classes=num_classes, in_chans=in_chans, img_size=img_size,
                                   pretrained=pretrained, truncate=truncate, load_weights=False, **kwargs)
            return int(num_params(net))
        except Exception:  # noqa: BLE001 - an unbuildable model has no count; the report says n/a
            continue
    return None


def count_params(model: str, *, num_classes: int = 2, in_chans: int = 3, img_size: int = 28,
                 pretrained: bool = False, truncate: int = 0, **kwargs) -> int | None:
    """Trainable-parameter count of a registry model as a run builds it (built once per distinct setting, on the
    meta device, without weights). None for models the registry cannot build (e.g. scikit-learn baselines)."""
    return _count_params_cached(model, int(num_classes), int(in_chans), int(img_size), bool(pretrained),
                                int(truncate), tuple(sorted(kwargs.items())))


def config_params(config: dict, ds) -> int | None:
    """Parameter count of the network a run with ``config`` (a RunConfig as JSON) builds on dataset ``ds``;
    None when the config does not resolve or the model cannot be built."""
    try:
        cfg = resolve_config({**config, "seed": 0})
        task = build_task(cfg, ds)
        extra = {"input_adapt": cfg.input_adapt, "input_size": cfg.input_size}
        if cfg.stem != "auto":
            extra["stem"] = cfg.stem
        return count_params(cfg.model, num_classes=task.num_outputs, in_chans=input_channels(cfg, ds),
                            img_size=cfg.size, pretrained=bool(cfg.pretrained or cfg.weights),
                            truncate=cfg.truncate, **extra)
    except Exception:  # noqa: BLE001 - n/a in the report
        return None


def imagenet_top1(model: str) -> dict:
    """ImageNet-1k top-1 accuracy (%) of the weights ``--pretrained`` loads for ``model``: {"top1", "source"}.

    torchvision weights: their metadata (``meta["_metrics"]["ImageNet-1K"]["acc@1"]``). timm weights: the table in
    :mod:`medbench.study.published` (timm's results-imagenet.csv) for timm's default pretrained tag. None (with
    the reason in ``source``) for architectures without ImageNet weights or without a published value.
    """
    try:
        spec = model_entry(model).pretrained
    except MedbenchError:
        return {"top1": None, "source": f"'{model}' is not a registry model"}
    if not spec:
        return {"top1": None, "source": "no ImageNet weights for this architecture"}
    kind, ref = spec.split(":", 1)
    if kind == "torchvision":
        return _torchvision_top1(ref)
    if kind == "timm":
        return _timm_top1(ref)
    return {"top1": None, "source": f"unknown weights source '{spec}'"}


def _torchvision_top1(ref: str) -> dict:
    enum_name, member = ref.split(".", 1)
    try:
        weights = getattr(getattr(tvm, enum_name), member)
        value = weights.meta["_metrics"]["ImageNet-1K"]["acc@1"]
    except (AttributeError, KeyError) as e:
        return {"top1": None, "source": f"torchvision {ref}: no accuracy metadata ({e})"}
    return {"top1": float(value), "source": f"torchvision {ref} metadata (acc@1)"}


def _timm_top1(ref: str) -> dict:
    try:
        import timm  # only for timm weights: importing timm takes a while

        cfg = timm.models.get_pretrained_cfg(ref)
        tag = getattr(cfg, "tag", None) if cfg is not None else None
    except Exception:  # noqa: BLE001 - an old timm without the name: look up the bare name
        tag = None
    key = f"{ref}.{tag}" if tag else ref
    hit = P.TIMM_IMAGENET_TOP1.get(key)
    if hit is None:
        return {"top1": None, "source": f"timm {key}: not in timm's results-imagenet.csv as shipped"}
    return {"top1": float(hit[0]), "source": f"timm results-imagenet.csv, {key} at {hit[1]} px"}
