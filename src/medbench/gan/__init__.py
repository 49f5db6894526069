"""Class-conditional DCGAN: training, sampling, and generated images for the training split.

``train_gan`` and ``quality`` (which trains a judge run) load lazily: training imports ``synthetic`` from here, so
this package must not import the run pipeline when it is first imported."""
from __future__ import annotations

import importlib

from medbench.gan.generator import generate, load_generator, sample_to_npz
from medbench.gan.model import Discriminator, Generator
from medbench.gan.synthetic import synthetic_split

_LAZY = {"train_gan": "medbench.gan.train", "quality": "medbench.gan.quality"}
__all__ = ["Discriminator", "Generator", "generate", "load_generator", "quality", "sample_to_npz",
           "synthetic_split", "train_gan"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medbench.gan' has no attribute '{name}'")
