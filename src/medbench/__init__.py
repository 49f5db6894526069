"""medbench: train, evaluate and compare deep-learning classifiers for medical images.

The public API is imported lazily, so ``medbench --help`` does not pay for importing torch.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    "RECIPES": "medbench.config", "RunConfig": "medbench.config", "load_config": "medbench.config",
    "resolve_config": "medbench.config", "ImageDataset": "medbench.data", "list_datasets": "medbench.data",
    "load_dataset": "medbench.data", "MedbenchError": "medbench.errors", "create_model": "medbench.models",
    "list_models": "medbench.models", "evaluate": "medbench.run", "train": "medbench.run",
}
__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'medbench' has no attribute '{name}'")


def __dir__():
    return sorted(__all__)
