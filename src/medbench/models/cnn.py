"""The source reports' small CNN baselines, sized for any input from 28 px up."""
from __future__ import annotations

import torch.nn as nn

from medbench.models.registry import register_model


class SmallCNN(nn.Module):
    """Convolutional blocks, flatten, a dense head; ``get_classifier`` is the last linear layer."""

    def __init__(self, features: nn.Sequential, head: nn.Sequential):
        super().__init__()
        self.features, self.head = features, head

    def get_classifier(self) -> nn.Module:
        return self.head[-1]

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


# stochastic depth (drop_path_rate) skips residual branches at random: these plain stacks have none to skip
NO_RESIDUAL = {"drop_path_rate": "stochastic depth skips residual branches at random, and this plain stack of "
                                 "convolution blocks has none"}


def _pooled(size: int, times: int) -> int:
    for _ in range(times):
        size = -(-size // 2)  # max-pool with ceil_mode: 28 -> 14 -> 7 -> 4 -> 2 -> 1
    return size


@register_model("cnn2", "cnn", "two conv(3x3)+ReLU+max-pool blocks (32, 64 channels) and a linear head "
                "(the fundus report's first baseline)", min_size=4, refusals=NO_RESIDUAL)
def cnn2(num_classes, in_chans=3, img_size=28, pretrained=False):
    features = nn.Sequential(
        nn.Conv2d(in_chans, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2, ceil_mode=True))
    return SmallCNN(features, nn.Sequential(nn.Linear(64 * _pooled(img_size, 2) ** 2, num_classes)))


@register_model("cnn5", "cnn", "five conv blocks (32-64-64-128-256) with batch-norm, dropout and max-pool, "
                "a 128-unit dense layer with dropout (the pneumonia report's CNN)", min_size=16, refusals=NO_RESIDUAL)
def cnn5(num_classes, in_chans=3, img_size=28, pretrained=False, drop_rate: float = 0.2):
    layers, c_in = [], in_chans
    for c_out, drop in [(32, False), (64, True), (64, False), (128, True), (256, True)]:
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True)]
        layers += [nn.Dropout(drop_rate)] if drop else []
        layers += [nn.BatchNorm2d(c_out), nn.MaxPool2d(2, ceil_mode=True)]
        c_in = c_out
    head = nn.Sequential(nn.Linear(256 * _pooled(img_size, 5) ** 2, 128), nn.ReLU(inplace=True),
                         nn.Dropout(drop_rate), nn.Linear(128, num_classes))
    return SmallCNN(nn.Sequential(*layers), head)
