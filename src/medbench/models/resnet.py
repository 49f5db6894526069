"""ResNets from torchvision's builders, with the MedMNIST small-input stem for 28-px images.

MedMNIST v2's benchmark ResNets keep torchvision's body but, at 28 px, replace the 7x7/2 stem and its max-pool
by a 3x3/1 convolution, so the 28x28 map is not shrunk to 7x7 before the first block. From 64 px up they use
the ImageNet stem unchanged. The first convolution takes the data's own channel count (1 or 3).
"""
from __future__ import annotations

import torch.nn as nn
from torchvision.models import resnet

from medbench.errors import MedbenchError
from medbench.models.registry import register_model

STEMS = ("auto", "small", "imagenet")


def _resnet(builder, num_classes: int, in_chans: int, img_size: int, stem: str = "auto") -> nn.Module:
    if stem not in STEMS:
        raise MedbenchError(f"unknown stem '{stem}'; valid: {', '.join(STEMS)}")
    if stem == "auto":
        stem = "small" if img_size < 64 else "imagenet"
    model = builder(weights=None, num_classes=num_classes)
    width = model.conv1.out_channels
    if stem == "small":
        model.conv1 = nn.Conv2d(in_chans, width, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_chans != 3:
        model.conv1 = nn.Conv2d(in_chans, width, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


@register_model("resnet18", "resnet", "ResNet-18; 3x3/1 stem below 64 px (MedMNIST), ImageNet stem from 64 px")
def resnet18(num_classes, in_chans=3, img_size=28, stem="auto"):
    return _resnet(resnet.resnet18, num_classes, in_chans, img_size, stem)


@register_model("resnet50", "resnet", "ResNet-50; 3x3/1 stem below 64 px (MedMNIST), ImageNet stem from 64 px")
def resnet50(num_classes, in_chans=3, img_size=28, stem="auto"):
    return _resnet(resnet.resnet50, num_classes, in_chans, img_size, stem)
