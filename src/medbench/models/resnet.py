"""ResNets and ResNeXts from torchvision's builders, with the MedMNIST small-input stem for small images.

MedMNIST v2's benchmark ResNets keep torchvision's body but, at 28 px, replace the 7x7/2 stem and its max-pool
by a 3x3/1 convolution, so the 28x28 map is not shrunk to 7x7 before the first block. From 64 px up (and
whenever ImageNet weights are loaded) they use the ImageNet stem. The first convolution takes the data's own
channel count (1 or 3).

``init`` picks the weight initialisation: ``torchvision`` (the default: torchvision's builders draw convolutions
Kaiming-normal over fan-out, BatchNorm 1/0) or ``torch-default`` (every layer's own PyTorch default: convolutions
and the classifier Kaiming-uniform with a = sqrt(5) over fan-in, about a sixth of the variance). The MedMNIST v2
benchmark's ResNets (MedMNIST/experiments ``models.py``, after kuangliu/pytorch-cifar) never re-initialise, so
the ``medmnist-v2`` recipe asks for ``torch-default``. Pretrained weights replace either.

``drop_path_rate`` adds stochastic depth (Huang et al., 2016): in training, each residual block's branch is
dropped for a random subset of the samples (timm's ``DropPath``, survivors scaled by 1 / keep), with rates rising
linearly from 0 at the first block to ``drop_path_rate`` at the last, as timm's ResNets do. Parameters and
state-dict names are unchanged, so weights load the same with or without it; evaluation is unaffected.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.models import resnet

from medbench.errors import MedbenchError
from medbench.models.registry import register_model

STEMS = ("auto", "small", "imagenet")
INITS = ("torchvision", "torch-default")


def _branch(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The residual branch of a torchvision BasicBlock or Bottleneck (its forward, less the sum)."""
    out = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x)))))
    if isinstance(block, resnet.Bottleneck):
        out = block.bn3(block.conv3(block.relu(out)))
    return out


class DropPathBasicBlock(resnet.BasicBlock):
    """A BasicBlock whose residual branch passes through ``self.drop_path`` before the sum."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.drop_path(_branch(self, x)) + identity)


class DropPathBottleneck(resnet.Bottleneck):
    """A Bottleneck whose residual branch passes through ``self.drop_path`` before the sum."""

    forward = DropPathBasicBlock.forward


def add_stochastic_depth(model: resnet.ResNet, rate: float) -> None:
    """Give block i of N (over all stages) ``DropPath(rate * i / (N - 1))``; the first block (rate 0) stays."""
    from timm.layers import DropPath  # timm's import costs seconds; only runs that ask for it pay

    blocks = [b for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for b in stage]
    for i, block in enumerate(blocks[1:], start=1):
        # the same parameters and names, a forward with the drop: swap the class rather than rebuild the block
        block.__class__ = DropPathBottleneck if isinstance(block, resnet.Bottleneck) else DropPathBasicBlock
        block.drop_path = DropPath(rate * i / (len(blocks) - 1))


def reset_to_torch_defaults(model: nn.Module) -> None:
    """Give every layer PyTorch's own initialisation (each module's ``reset_parameters``), undoing torchvision's
    Kaiming-normal convolutions: what a ResNet written from plain ``nn`` layers starts from."""
    for m in model.modules():
        if m is not model and hasattr(m, "reset_parameters"):
            m.reset_parameters()


def _resnet(builder, num_classes: int, in_chans: int, img_size: int, pretrained: bool = False,
            stem: str = "auto", drop_path_rate: float = 0.0, init: str = "torchvision") -> nn.Module:
    if stem not in STEMS:
        raise MedbenchError(f"unknown stem '{stem}'; valid: {', '.join(STEMS)}")
    if init not in INITS:
        raise MedbenchError(f"unknown init '{init}'; valid: {', '.join(INITS)}")
    if stem == "auto":
        stem = "imagenet" if pretrained or img_size >= 64 else "small"
    elif stem == "small" and pretrained:
        raise MedbenchError("ImageNet weights need the ImageNet stem (7x7/2 + max-pool): drop --stem small, and "
                            "consider --input-adapt resize --input-size 224 for small images")
    model = builder(weights=None, num_classes=num_classes)
    width = model.conv1.out_channels
    if stem == "small":
        model.conv1 = nn.Conv2d(in_chans, width, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_chans != 3:
        model.conv1 = nn.Conv2d(in_chans, width, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    if init == "torch-default":
        reset_to_torch_defaults(model)
    if drop_path_rate:
        add_stochastic_depth(model, drop_path_rate)
    return model


def _register(name: str, builder, weights: str | None, description: str) -> None:
    def build(num_classes, in_chans=3, img_size=28, pretrained=False, stem="auto", drop_path_rate: float = 0.0,
              init: str = "torchvision"):
        return _resnet(builder, num_classes, in_chans, img_size, pretrained, stem, drop_path_rate, init)

    build.__name__ = name
    register_model(name, "resnet", description + "; 3x3/1 stem below 64 px (MedMNIST), ImageNet stem from 64 px",
                   min_size=8, default_size=28, pretrained=weights, truncatable=True)(build)


for _depth, _w in [(18, "ResNet18_Weights.IMAGENET1K_V1"), (34, "ResNet34_Weights.IMAGENET1K_V1"),
                   (50, "ResNet50_Weights.IMAGENET1K_V1"), (101, "ResNet101_Weights.IMAGENET1K_V1"),
                   (152, "ResNet152_Weights.IMAGENET1K_V1")]:
    _register(f"resnet{_depth}", getattr(resnet, f"resnet{_depth}"), f"torchvision:{_w}", f"ResNet-{_depth}")

# ResNet-50 with every bottleneck's 3x3 convolution split into 32 groups at ResNet-50's own widths
# (width_per_group 2 x 32 groups = 64 channels in stage 1): about half the parameters of ResNet-50.
def _resnet50_g32(weights=None, num_classes=1000):
    return resnet.ResNet(resnet.Bottleneck, [3, 4, 6, 3], num_classes=num_classes, groups=32, width_per_group=2)


_register("resnet50_g32", _resnet50_g32, None, "ResNet-50 with 32-group 3x3 convolutions at ResNet-50 widths")
_register("wide_resnet50_2", resnet.wide_resnet50_2, "torchvision:Wide_ResNet50_2_Weights.IMAGENET1K_V1",
          "Wide ResNet-50-2")
_register("resnext101_32x8d", resnet.resnext101_32x8d, "torchvision:ResNeXt101_32X8D_Weights.IMAGENET1K_V1",
          "ResNeXt-101 32x8d")
_register("resnext50_32x4d", resnet.resnext50_32x4d, "torchvision:ResNeXt50_32X4D_Weights.IMAGENET1K_V1",
          "ResNeXt-50 32x4d")
