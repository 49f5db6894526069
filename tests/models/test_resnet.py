import pytest
import torch

from medbench.errors import MedbenchError
from medbench.models import create_model, list_models


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
@pytest.mark.parametrize("in_chans", [1, 3])
def test_small_stem_keeps_28px_resolution(name, in_chans):
    m = create_model(name, num_classes=5, in_chans=in_chans, img_size=28).eval()
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1) and m.conv1.in_channels == in_chans
    assert isinstance(m.maxpool, torch.nn.Identity)
    with torch.no_grad():
        assert m(torch.randn(2, in_chans, 28, 28)).shape == (2, 5)
        # the stem does not downsample: layer1 sees 28x28
        assert m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(torch.randn(1, in_chans, 28, 28)))))).shape[-1] == 28


def test_imagenet_stem_from_64px_and_explicit_override():
    m = create_model("resnet18", num_classes=2, in_chans=1, img_size=64)
    assert m.conv1.kernel_size == (7, 7) and m.conv1.stride == (2, 2) and m.conv1.in_channels == 1
    assert isinstance(m.maxpool, torch.nn.MaxPool2d)
    assert m(torch.randn(2, 1, 64, 64)).shape == (2, 2)
    small = create_model("resnet18", num_classes=2, in_chans=3, img_size=64, stem="small")
    assert small.conv1.kernel_size == (3, 3)
    with pytest.raises(MedbenchError, match="unknown stem"):
        create_model("resnet18", num_classes=2, stem="tiny")


def test_parameter_counts_match_torchvision_bodies():
    # torchvision's ImageNet count, less its 7x7x3x64 stem and 1000-way head, plus a 3x3x1x64 stem and 2-way head
    n18 = sum(p.numel() for p in create_model("resnet18", num_classes=2, in_chans=1).parameters())
    n50 = sum(p.numel() for p in create_model("resnet50", num_classes=2, in_chans=1).parameters())
    assert n18 == 11_689_512 - 7 * 7 * 3 * 64 - (512 * 1000 + 1000) + 3 * 3 * 64 + (512 * 2 + 2)
    assert n50 == 25_557_032 - 7 * 7 * 3 * 64 - (2048 * 1000 + 1000) + 3 * 3 * 64 + (2048 * 2 + 2)


def test_unknown_model_suggests_close_names():
    assert {"resnet18", "resnet50"} <= set(list_models())
    with pytest.raises(MedbenchError, match="Did you mean resnet18"):
        create_model("resnet-18", num_classes=2)
