"""The augmentation vocabulary of a config: preset names and the spec grammar, checked without building anything.

The presets themselves (torch) live in :mod:`medbench.augment`, which builds what :func:`parse_spec` accepts.
A spec is a preset name, ``"a,b"``, or a list of names and ``{name: ..., option: value}`` mappings, applied in order.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medbench.errors import MedbenchError

Spec = str | Sequence[str | dict[str, Any]]

# name -> description; medbench.augment's builders take the options a mapping may set
PRESETS: dict[str, str] = {
    "none": "no augmentation",
    "basic": "flips, shifts up to 10 %, rotation up to 15 deg, random resized crop (area 0.8-1), brightness and "
             "contrast jitter 0.2, Gaussian noise (std 3 % of the range, half the images); vectorised",
    "autoaugment-imagenet": "AutoAugment, ImageNet policy (torchvision v2)",
    "autoaugment-cifar10": "AutoAugment, CIFAR-10 policy (torchvision v2)",
    "autoaugment-svhn": "AutoAugment, SVHN policy (torchvision v2)",
    "randaugment": "RandAugment, 2 operations at magnitude 9 (torchvision v2)",
    "trivialaugment": "TrivialAugmentWide (torchvision v2)",
    "augmix": "AugMix, severity 3, width 3 (torchvision v2)",
}


def parse_spec(spec: Spec | None) -> list[tuple[str, dict[str, Any]]]:
    """Normalise a spec to ``[(preset, options), ...]`` without building anything; unknown names are errors."""
    if spec is None:
        return []
    items = [spec] if isinstance(spec, (str, dict)) else list(spec)
    out = []
    for item in items:
        if isinstance(item, str):
            parts = [(p.strip(), {}) for p in item.split(",") if p.strip()]  # "basic,randaugment" from the CLI
        elif isinstance(item, dict):
            options = dict(item)
            name = options.pop("name", None)
            if not isinstance(name, str):
                raise MedbenchError(f"augment step {item!r} needs a 'name' (one of: {', '.join(PRESETS)})")
            parts = [(name, options)]
        else:
            raise MedbenchError(f"augment step {item!r} must be a preset name or a mapping with 'name'")
        for name, options in parts:
            if name not in PRESETS:
                raise MedbenchError(f"unknown augmentation preset '{name}'; valid: {', '.join(PRESETS)}")
            if name == "none" and options:
                raise MedbenchError("augment preset 'none' takes no options")
            if name != "none":
                out.append((name, options))
    return out
