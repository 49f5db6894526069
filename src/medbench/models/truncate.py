"""Truncation as in CheXtransfer: drop the last K stages and attach global-average-pool + linear head."""
from __future__ import annotations

import torch
import torch.nn as nn

from medbench.errors import MedbenchError
from medbench.models.entry import ModelEntry


class TruncatedNet(nn.Module):
    """The kept stages of a network (a timm FeatureListNet returning one map), pooled, then a linear head."""

    def __init__(self, features: nn.Module, channels: int, num_classes: int):
        super().__init__()
        self.features = features
        self.fc = nn.Linear(channels, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x)[-1].mean((2, 3)))


def _truncate_resnet(model: nn.Module, k: int, num_classes: int) -> nn.Module:
    names = ["layer1", "layer2", "layer3", "layer4"]
    if not 0 < k < len(names):
        raise MedbenchError(f"a ResNet has {len(names)} stages: --truncate takes 1 to {len(names) - 1}, got {k}")
    for name in names[-k:]:
        setattr(model, name, nn.Identity())
    last = getattr(model, names[-k - 1])[-1]
    channels = (last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels
    model.fc = nn.Linear(channels, num_classes)
    return model


def _truncate_timm(model: nn.Module, k: int, num_classes: int) -> nn.Module:
    from timm.models import FeatureListNet

    stages = len(model.feature_info)
    if not 0 < k < stages:
        raise MedbenchError(f"this network has {stages} feature stages: --truncate takes 1 to {stages - 1}, got {k}")
    features = FeatureListNet(model, out_indices=(stages - 1 - k,), flatten_sequential=True)
    return TruncatedNet(features, features.feature_info.channels()[-1], num_classes)


def truncate_model(model: nn.Module, entry: ModelEntry, k: int, num_classes: int) -> nn.Module:
    if k < 0:
        raise MedbenchError(f"--truncate must be >= 0, got {k}")
    if not entry.truncatable:
        raise MedbenchError(f"model '{entry.name}' ({entry.family}) cannot be truncated; truncation supports the "
                            "resnet, densenet, efficientnet, mnasnet and mobilenet families")
    if entry.family == "resnet":
        return _truncate_resnet(model, k, num_classes)
    return _truncate_timm(model, k, num_classes)
