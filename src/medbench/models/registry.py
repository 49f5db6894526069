"""Model registry in the style of timm: a name maps to a builder ``(num_classes, in_chans, img_size, **kw)``."""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from medbench.errors import MedbenchError


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str
    builder: Callable[..., nn.Module]
    description: str = ""


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, family: str, description: str = ""):
    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' registered twice")
        _REGISTRY[name] = ModelEntry(name, family, fn, description)
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


def create_model(name: str, *, num_classes: int, in_chans: int = 3, img_size: int = 28, **kwargs) -> nn.Module:
    """Build a registered model with ``num_classes`` outputs for ``in_chans`` x ``img_size`` input."""
    return model_entry(name).builder(num_classes=num_classes, in_chans=in_chans, img_size=img_size, **kwargs)
