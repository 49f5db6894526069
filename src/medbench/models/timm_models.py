"""The CheXtransfer ImageNet architectures (Ke et al., 2021), built by timm, plus EfficientNet-Lite0.

ResNet-18/34/50/101 of that list are the torchvision ResNets in ``resnet.py``. Minimum sizes are the smallest
inputs whose last feature map is still at least 1x1; smaller data is resized up to them by the input adapter.
"""
from __future__ import annotations

from medbench.models.registry import register_model

# registry name -> (timm name, family, description, min size, default size, truncatable)
TIMM_MODELS = {
    "densenet121": ("densenet121", "densenet", "DenseNet-121", 32, 224, True),
    "densenet169": ("densenet169", "densenet", "DenseNet-169", 32, 224, True),
    "densenet201": ("densenet201", "densenet", "DenseNet-201", 32, 224, True),
    "densenet161": ("densenet161", "densenet", "DenseNet-161 (CheXNet-era)", 32, 224, True),
    "inception_v3": ("inception_v3", "inception", "Inception-V3", 75, 299, False),
    "inception_v4": ("inception_v4", "inception", "Inception-V4", 75, 299, False),
    "mnasnet_100": ("mnasnet_100", "mnasnet", "MNASNet-B1 1.0", 28, 224, True),
    "efficientnet_b0": ("efficientnet_b0", "efficientnet", "EfficientNet-B0", 28, 224, True),
    "efficientnet_b1": ("efficientnet_b1", "efficientnet", "EfficientNet-B1", 28, 240, True),
    "efficientnet_b2": ("efficientnet_b2", "efficientnet", "EfficientNet-B2", 28, 260, True),
    "efficientnet_b3": ("efficientnet_b3", "efficientnet", "EfficientNet-B3", 28, 300, True),
    "efficientnet_b4": ("efficientnet_b4", "efficientnet", "EfficientNet-B4", 28, 380, True),
    "mobilenet_v2": ("mobilenetv2_100", "mobilenet", "MobileNet-V2 1.0", 28, 224, True),
    "mobilenet_v3_large": ("mobilenetv3_large_100", "mobilenet", "MobileNet-V3 large 1.0", 28, 224, True),
    "mobilenet_v3_small": ("mobilenetv3_small_100", "mobilenet", "MobileNet-V3 small 1.0", 28, 224, True),
    "tf_efficientnet_lite0": ("tf_efficientnet_lite0", "efficientnet", "EfficientNet-Lite0 (TF port)", 28, 224,
                              True),
    "convnext_tiny": ("convnext_tiny", "convnext", "ConvNeXt-T, a modern ImageNet baseline", 32, 224, False),
}


# families whose timm classes have no stochastic depth, and why
NO_DROP_PATH = {
    "densenet": "DenseNet's dense blocks concatenate features instead of adding a residual branch, so there is no "
                "branch to skip (timm's DenseNet has no stochastic depth)",
    "inception": "Inception-V3/V4 have no residual branches to skip",
}


def _register(name: str, timm_name: str, family: str, description: str, min_size: int, default_size: int,
              truncatable: bool) -> None:
    def build(num_classes, in_chans=3, img_size=default_size, pretrained=False, drop_rate: float = 0.0,
              **options):
        import timm

        # drop_path_rate: timm's stochastic depth, rising linearly over the blocks to at most this rate
        return timm.create_model(timm_name, pretrained=False, num_classes=num_classes, in_chans=in_chans,
                                 drop_rate=drop_rate, **options)

    build.__name__ = name
    drop_path = family not in NO_DROP_PATH
    options = ("drop_rate", "drop_path_rate") if drop_path else ("drop_rate",)
    refusals = {} if drop_path else {"drop_path_rate": NO_DROP_PATH[family]}
    register_model(name, family, f"{description} (timm '{timm_name}')", min_size=min_size,
                   default_size=default_size, pretrained=f"timm:{timm_name}", first_conv=None, classifier=None,
                   truncatable=truncatable, options=options, refusals=refusals)(build)


for _name, _spec in TIMM_MODELS.items():
    _register(_name, *_spec)
