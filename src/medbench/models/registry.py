"""Model registry in the style of timm: a name maps to a builder ``(num_classes, in_chans, img_size,
pretrained, **options)``; ``pretrained`` only tells the builder that ImageNet weights will be loaded (ResNets then
keep the ImageNet stem), the loading itself is shared. Each entry records the ``options`` (builder keyword
arguments such as ``drop_rate``, ``drop_path_rate``, ``stem``) it accepts; any other is refused in one line that
says which models take it.

``create_model`` adds what every entry shares: pretrained weights (``weights.py``), truncation of the last
stages (``truncate.py``) and input adaptation for networks that need bigger images (``adapt.py``).
"""
from __future__ import annotations

import difflib
from collections.abc import Mapping

import torch
import torch.nn as nn

from medbench.errors import MedbenchError
from medbench.models.adapt import InputAdapter
from medbench.models.entry import ModelEntry, builder_options
from medbench.models.truncate import truncate_model
from medbench.models.weights import load_pretrained

_REGISTRY: dict[str, ModelEntry] = {}
FLAGS = {"drop_rate": "--drop-rate", "drop_path_rate": "--drop-path-rate", "stem": "--stem"}  # run settings


def register_model(name: str, family: str, description: str = "", *, options: tuple[str, ...] | None = None,
                   refusals: Mapping[str, str] | None = None, **meta):
    """Register a builder. ``options``: the keyword arguments it takes beyond the common four (default: read
    from its signature); ``refusals``: option -> why this model cannot take it, shown when it is asked for."""
    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' registered twice")
        _REGISTRY[name] = ModelEntry(name, family, fn, description, options=builder_options(fn, options),
                                     refusals=dict(refusals or {}), **meta)
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise MedbenchError(f"unknown model '{name}'.{hint} Valid: {', '.join(list_models())}")
    return _REGISTRY[name]


def network_input_size(entry: ModelEntry, img_size: int, input_adapt: str = "auto",
                       input_size: int | None = None) -> int:
    """The size the network itself sees: the data's, or the adapter's target."""
    if input_adapt == "native" or (input_adapt == "auto" and input_size is None and img_size >= entry.min_size):
        if img_size < entry.min_size:
            raise MedbenchError(f"model '{entry.name}' needs inputs of at least {entry.min_size} px, the data has "
                                f"{img_size} px; use --input-adapt resize (or pad) --input-size {entry.min_size}")
        return img_size
    size = input_size or max(entry.min_size, img_size)
    if size < entry.min_size:
        raise MedbenchError(f"--input-size {size} is below the {entry.min_size} px that '{entry.name}' needs")
    if size < img_size:
        raise MedbenchError(f"--input-size {size} is smaller than the {img_size} px images; resize/pad only enlarge")
    return size


def _takers(option: str) -> str:
    """The models that take ``option``: whole families where every member does, else the models by name."""
    names, families = [], []
    for family in sorted({e.family for e in _REGISTRY.values()}):
        members = [e for e in _REGISTRY.values() if e.family == family]
        taking = [e.name for e in members if option in e.options]
        if taking and len(taking) == len(members):
            families.append(family)
        else:
            names += taking
    if families:
        listed = families[0] if len(families) == 1 else f"{', '.join(families[:-1])} and {families[-1]}"
        names.append(f"the {listed} famil{'y' if len(families) == 1 else 'ies'}")
    return ", ".join(names)


def _named(option: str) -> str:
    return f"{option} ({FLAGS[option]})" if option in FLAGS else option


def check_options(entry: ModelEntry, options: Mapping) -> None:
    """Refuse, in one line, options the entry's builder does not take: why (when the entry says), what it does
    take, and which models take the refused option."""
    refused = [k for k in options if k not in entry.options]
    if not refused:
        return
    why = "; ".join(entry.refusals[k] for k in refused if k in entry.refusals)
    takes = ", ".join(map(_named, entry.options)) or "no extra options"
    elsewhere = ". ".join(f"Models that take {k}: {_takers(k)}" if _takers(k) else f"No model takes {k}"
                          for k in refused)
    raise MedbenchError(f"model '{entry.name}' does not take {', '.join(map(_named, refused))}"
                        f"{f': {why}' if why else ''}. It takes {takes}. {elsewhere}")


def create_model(name: str, *, num_classes: int, in_chans: int = 3, img_size: int = 28, pretrained: bool = False,
                 weights: str | None = None, truncate: int = 0, input_adapt: str = "auto",
                 input_size: int | None = None, resize_mode: str = "bilinear", pad_value: float | list = 0.0,
                 load_weights: bool = True, **kwargs) -> nn.Module:
    """Build a registered model with ``num_classes`` outputs for ``in_chans`` x ``img_size`` input.

    ``pretrained`` loads the entry's ImageNet weights, ``weights`` a file (safetensors, or .pth read with
    ``weights_only=True``); the first convolution is adapted to ``in_chans`` and the classifier replaced.
    ``truncate=K`` drops the last K stages. Inputs smaller than the network needs (or ``input_adapt`` resize/pad
    with ``input_size``) pass through an :class:`~medbench.models.adapt.InputAdapter`. ``load_weights=False``
    builds the architecture that pretrained/weights imply without loading them (to reload a trained run).
    """
    entry = model_entry(name)
    check_options(entry, kwargs)
    if input_adapt not in ("auto", "native", "resize", "pad"):
        raise MedbenchError(f"unknown input adaptation '{input_adapt}'; valid: auto, native, resize, pad")
    net_size = network_input_size(entry, img_size, input_adapt, input_size)
    use_weights = pretrained or weights is not None
    model = entry.builder(num_classes=num_classes, in_chans=in_chans, img_size=net_size, pretrained=use_weights,
                          **kwargs)
    source = load_pretrained(model, entry, in_chans=in_chans, weights=weights) if use_weights and load_weights else None
    if truncate:
        model = truncate_model(model, entry, truncate, num_classes)
    if net_size != img_size:
        mode = "pad" if input_adapt == "pad" else resize_mode
        model = InputAdapter(model, net_size, mode, pad_value)
    model.weights_source = source  # recorded in the run's provenance
    return model


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, in_chans: int, img_size: int) -> int:
    """Forward FLOPs for one image (torch.utils.flop_counter: 2 per multiply-add, convolutions and matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, in_chans, img_size, img_size))
    model.train(was_training)
    return int(counter.get_total_flops())


def model_info(name: str, *, num_classes: int = 2, in_chans: int = 3, img_size: int | None = None,
               truncate: int = 0, flops: bool = True, **kwargs) -> dict:
    """Parameters (and FLOPs per image) of ``name`` built for the given data, before and after truncation."""
    entry = model_entry(name)
    size = img_size or entry.default_size
    meta = {"name": name, "family": entry.family, "description": entry.description,
            "pretrained_available": entry.pretrained is not None, "truncatable": entry.truncatable,
            "default_size": entry.default_size, "min_size": entry.min_size, "options": list(entry.options),
            "img_size": size, "in_chans": in_chans, "num_classes": num_classes}
    model = create_model(name, num_classes=num_classes, in_chans=in_chans, img_size=size, **kwargs)
    meta["params"] = num_params(model)
    if flops:
        meta["flops"] = count_flops(model, in_chans, size)
    if truncate:
        cut = create_model(name, num_classes=num_classes, in_chans=in_chans, img_size=size, truncate=truncate,
                           **kwargs)
        meta.update(truncate=truncate, params_truncated=num_params(cut))
        if flops:
            meta["flops_truncated"] = count_flops(cut, in_chans, size)
    return meta


def catalogue() -> list[dict]:
    """Every registered model with its parameter count at its default size (3 channels, 1000 classes), cheaply:
    built on the meta device, so no memory is allocated and no weights are initialised."""
    rows = []
    for name in list_models():
        entry = _REGISTRY[name]
        with torch.device("meta"):
            model = entry.builder(num_classes=1000, in_chans=3, img_size=entry.default_size)
        rows.append({"name": name, "family": entry.family, "params": num_params(model),
                     "pretrained_available": entry.pretrained is not None, "truncatable": entry.truncatable,
                     "default_size": entry.default_size, "min_size": entry.min_size,
                     "options": list(entry.options), "description": entry.description})
    return rows
