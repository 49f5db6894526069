"""ConvMixer (Trockman & Kolter, "Patches are all you need?"), built with timm's ConvMixer class."""
from __future__ import annotations

import torch.nn as nn

from medbench.models.registry import register_model


def _convmixer(num_classes, in_chans, dim, depth, kernel_size, patch_size, act=nn.GELU):
    from timm.models.convmixer import ConvMixer

    return ConvMixer(dim, depth, kernel_size=kernel_size, patch_size=patch_size, in_chans=in_chans,
                     num_classes=num_classes, act_layer=act)


@register_model("convmixer_256_8", "convmixer", "ConvMixer-256/8, kernel 5, patch 2: the small-image default",
                min_size=2)
def convmixer_256_8(num_classes, in_chans=3, img_size=28, pretrained=False, kernel_size=5, patch_size=2):
    return _convmixer(num_classes, in_chans, 256, 8, kernel_size, patch_size)


@register_model("convmixer_768_32", "convmixer", "ConvMixer-768/32, kernel 7, patch 7, ReLU (paper)", min_size=7,
                default_size=224, pretrained="timm:convmixer_768_32", first_conv="stem.0", classifier="head")
def convmixer_768_32(num_classes, in_chans=3, img_size=224, pretrained=False, kernel_size=7, patch_size=7):
    return _convmixer(num_classes, in_chans, 768, 32, kernel_size, patch_size, act=nn.ReLU)


@register_model("convmixer_1536_20", "convmixer", "ConvMixer-1536/20, kernel 9, patch 7 (paper)", min_size=7,
                default_size=224, pretrained="timm:convmixer_1536_20", first_conv="stem.0", classifier="head")
def convmixer_1536_20(num_classes, in_chans=3, img_size=224, pretrained=False, kernel_size=9, patch_size=7):
    return _convmixer(num_classes, in_chans, 1536, 20, kernel_size, patch_size)
