"""Named recipes (settings applied under a config's own) and :func:`resolve_config`, which validates a config."""
from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from medbench.config.run_config import RunConfig
from medbench.errors import MedbenchError

RECIPES: dict[str, dict[str, Any]] = {
    # The field defaults: the benchmark's optimiser with batch 32 and cosine decay, which trains well in a few
    # epochs too (BreastMNIST, ResNet-18, 3 epochs, seeds 0/1/2: test AUC 0.88/0.77/0.82 vs 0.58/0.65/0.64 with
    # medmnist-v2, whose 128-image batches give only 15 optimiser steps and whose lr drops after epoch 1).
    "default": dict(optimizer="adam", lr=1e-3, weight_decay=0.0, batch_size=32, epochs=100, schedule="cosine",
                    label_smoothing=0.0, select_metric="auc"),
    # MedMNIST v2 benchmark (MedMNIST/experiments MedMNIST2D/train_and_eval_pytorch.py + models.py): Adam 1e-3,
    # batch 128, 100 epochs, lr x0.1 at 50 % and 75 %, no augmentation, normalise with mean 0.5 / std 0.5, best
    # epoch by validation AUC; its ResNets keep PyTorch's layer defaults (no torchvision Kaiming re-init) and it
    # trains in fp32 (auto picks bf16 on CUDA and on CPUs with native bf16). Every difference that remains, and the
    # measured agreement, in docs/benchmarks.md (benchmarks/fidelity.py).
    "medmnist-v2": dict(optimizer="adam", lr=1e-3, weight_decay=0.0, batch_size=128, epochs=100,
                        schedule="multistep", milestones=[0.5, 0.75], gamma=0.1, norm_mean=0.5, norm_std=0.5,
                        label_smoothing=0.0, select_metric="auc", init="torch-default", precision="fp32"),
    # Time to accuracy: the pneumonia report's 0.46 M-parameter cnn5 costs 1/57 of ResNet-18's FLOPs at
    # 28 px, and reaches the MedMNIST v2 ResNet-18 (28) test AUC/ACC on PneumoniaMNIST in 2-6 epochs and on
    # BreastMNIST in 10-15 (probes on 3 seeds each, benchmarks/time_to_accuracy.py).
    "fast": dict(model="cnn5", optimizer="adam", lr=1e-3, weight_decay=0.0, batch_size=32, epochs=30,
                 schedule="cosine", label_smoothing=0.0, select_metric="auc"),
    # Accuracy on a CPU budget (RESULTS.md): ten `fast` networks from different seeds, probabilities averaged.
    # On BreastMNIST (3 seeds) mean val AUC 0.957 -> 0.966 with 5 members; test AUC 0.894 -> 0.918.
    "small-ensemble": dict(model="cnn5", optimizer="adam", lr=1e-3, weight_decay=0.0, batch_size=32, epochs=30,
                           schedule="cosine", label_smoothing=0.0, select_metric="auc", members=10),
}


def _format_error(e: ValidationError, where: str) -> MedbenchError:
    msgs = []
    for err in e.errors():
        key = ".".join(str(p) for p in err["loc"]) or "config"
        if err["type"] == "extra_forbidden":
            msgs.append(f"unknown key '{key}' (valid keys: {', '.join(RunConfig.model_fields)})")
        elif err["type"] == "missing":
            msgs.append(f"'{key}' is required")
        elif not err["loc"]:  # a check across fields: its message names them, the input is the whole config
            msgs.append(err["msg"].removeprefix("Value error, "))
        else:
            msgs.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
    return MedbenchError(f"{where}: " + "; ".join(msgs))


def resolve_config(settings: dict[str, Any], where: str = "config") -> RunConfig:
    """Apply the named recipe (if any) under ``settings`` and validate the result."""
    recipe = settings.get("recipe")
    if recipe is not None and recipe not in RECIPES:
        raise MedbenchError(f"{where}: unknown recipe '{recipe}'; valid: {', '.join(RECIPES)}")
    merged = {**RECIPES.get(recipe, {}), **settings}
    try:
        return RunConfig(**merged)
    except ValidationError as e:
        raise _format_error(e, where) from None
