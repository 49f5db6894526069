"""Which parameters are the head: linear probing (``freeze=backbone``) and a smaller backbone learning rate."""
from __future__ import annotations

import torch.nn as nn

from medbench.errors import MedbenchError


def classifier_of(model: nn.Module) -> nn.Module:
    """The final classification layer: timm's ``get_classifier()``, torchvision's ``fc`` or ``classifier``."""
    if hasattr(model, "get_classifier"):
        return model.get_classifier()
    for name in ("fc", "classifier", "head"):
        layer = getattr(model, name, None)
        if isinstance(layer, nn.Module):
            return layer
    raise MedbenchError(f"cannot find the classifier of {type(model).__name__} (no get_classifier/fc/classifier)")


def param_groups(model: nn.Module, lr: float, *, freeze: str = "none", backbone_lr_scale: float = 1.0) -> list[dict]:
    """Optimiser groups: the head at ``lr``, the backbone at ``lr * backbone_lr_scale`` (or frozen)."""
    if freeze == "none" and backbone_lr_scale == 1.0:
        return [{"params": list(model.parameters()), "lr": lr}]  # any module, no head needed
    head_ids = {id(p) for p in classifier_of(model).parameters()}
    head = [p for p in model.parameters() if id(p) in head_ids]
    backbone = [p for p in model.parameters() if id(p) not in head_ids]
    if freeze == "backbone":
        for p in backbone:
            p.requires_grad_(False)
        return [{"params": head, "lr": lr}]
    if freeze != "none":
        raise MedbenchError(f"unknown --freeze '{freeze}'; valid: none, backbone")
    groups = [{"params": head, "lr": lr}]
    if backbone:
        groups.append({"params": backbone, "lr": lr * backbone_lr_scale})
    return groups


def freeze_frozen_norms(model: nn.Module) -> None:
    """Batch-norm layers whose parameters are all frozen also keep their running statistics (eval mode), so a
    linear probe sees fixed features."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                m.eval()
