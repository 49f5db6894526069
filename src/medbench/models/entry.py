"""What the registry records about a model (:class:`ModelEntry`), in a module of its own so that the registry,
pretrained loading (``weights.py``) and truncation (``truncate.py``) all read it without importing each other."""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch.nn as nn

COMMON_ARGS = ("num_classes", "in_chans", "img_size", "pretrained")  # every builder takes these


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str
    builder: Callable[..., nn.Module]
    description: str = ""
    min_size: int = 28  # smallest input (px) the network accepts; smaller data is resized up to it
    default_size: int = 28  # the input size the architecture was designed for
    pretrained: str | None = None  # where ImageNet weights come from: "torchvision:<Weights.ENUM>" or "timm:<name>"
    first_conv: str | None = "conv1"  # module names that pretrained loading adapts / replaces (None: timm's cfg)
    classifier: str | None = "fc"
    truncatable: bool = False
    options: tuple[str, ...] = ()  # builder keyword arguments beyond COMMON_ARGS (drop_rate, stem, ...)
    # option -> why this model cannot take it, for the refusal (e.g. no residual branch for stochastic depth)
    refusals: Mapping[str, str] = field(default_factory=dict, compare=False)


def builder_options(builder: Callable[..., nn.Module], declared: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """The keyword arguments a builder takes beyond :data:`COMMON_ARGS`: its signature's, or ``declared`` (which
    a builder taking ``**options`` must give, and which must otherwise be in its signature)."""
    params = inspect.signature(builder).parameters.values()
    named = tuple(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                  and p.name not in COMMON_ARGS)
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params)
    if declared is None:
        if takes_any:
            raise ValueError(f"builder {builder.__name__} takes **kwargs: declare its options")
        return named
    extra = sorted(set(declared) - set(named))
    if extra and not takes_any:
        raise ValueError(f"builder {builder.__name__} does not take the declared options {extra}")
    return tuple(declared)
