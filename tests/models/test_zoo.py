import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from medbench.cli import main
from medbench.errors import MedbenchError
from medbench.models import catalogue, create_model, list_models, model_entry, model_info
from medbench.models.registry import num_params

ISSUE_NAMES = {"cnn2", "cnn5", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet50_g32",
               "resnext50_32x4d", "convmixer_256_8", "convmixer_768_32", "convmixer_1536_20", "densenet121",
               "densenet169", "densenet201", "inception_v3", "inception_v4", "mnasnet_100", "efficientnet_b0",
               "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "mobilenet_v2", "mobilenet_v3_large",
               "mobilenet_v3_small", "tf_efficientnet_lite0"}


def test_models_json_lists_every_architecture(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = {r["name"] for r in rows}
    assert len(rows) >= 30 and ISSUE_NAMES <= names
    by = {r["name"]: r for r in rows}
    assert {"name", "family", "params", "pretrained_available"} <= set(by["resnet18"])
    assert by["densenet121"]["params"] == 7_978_856  # timm's ImageNet DenseNet-121, 1000 classes
    assert by["tf_efficientnet_lite0"]["pretrained_available"] and not by["cnn5"]["pretrained_available"]


def test_reference_parameter_counts():
    # the MedMNIST reference ResNet-18 (3x3 stem, 3 channels, 9 classes: PathMNIST)
    assert num_params(create_model("resnet18", num_classes=9, in_chans=3, img_size=28)) == 11_173_449
    g32 = num_params(create_model("resnet50_g32", num_classes=2, in_chans=3, img_size=28))
    r50 = num_params(create_model("resnet50", num_classes=2, in_chans=3, img_size=28))
    assert 12.4e6 < g32 < 12.7e6 and 23.4e6 < r50 < 23.6e6
    assert model_entry("resnext50_32x4d").family == "resnet"


# the largest networks take 2.5-7 s each on 2 CPU cores: full suite only
LARGE = {"resnext101_32x8d", "wide_resnet50_2", "resnet152", "resnet101", "convmixer_1536_20", "inception_v4",
         "densenet161", "inception_v3"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in LARGE else n for n in list_models()])
def test_every_model_trains_a_step_at_its_smallest_size(name):
    size = model_entry(name).min_size
    torch.manual_seed(0)
    for in_chans in (1, 3):
        for classes in (2, 5, 14):
            model = create_model(name, num_classes=classes, in_chans=in_chans, img_size=size)
            out = model(torch.randn(2, in_chans, size, size))
            assert out.shape == (2, classes)
            out.square().mean().backward()
            assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_small_images_are_resized_up_for_networks_that_need_more():
    m = create_model("inception_v3", num_classes=3, in_chans=1, img_size=28)  # auto: 28 -> its 75-px minimum
    assert m.size == 75 and m.mode == "bilinear"
    assert m.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 3)
    with pytest.raises(MedbenchError, match="at least 75 px.*--input-adapt resize"):
        create_model("inception_v3", num_classes=3, img_size=28, input_adapt="native")
    big = create_model("resnet18", num_classes=2, in_chans=1, img_size=28, input_adapt="resize", input_size=64)
    assert big.size == 64 and big.net.conv1.kernel_size == (7, 7)  # the stem follows what the network sees


def test_pad_fills_with_black_in_normalised_units():
    seen = {}

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen["x"] = x
            return x.mean((1, 2, 3))[:, None]

    from medbench.models.adapt import InputAdapter

    InputAdapter(Probe(), 32, "pad", pad_value=[-1.0])(torch.full((1, 1, 28, 28), 0.25))
    x = seen["x"]
    assert x.shape == (1, 1, 32, 32)
    assert torch.equal(x[0, 0, 2:30, 2:30], torch.full((28, 28), 0.25))
    assert x[0, 0, :2].eq(-1).all() and x[0, 0, :, 30:].eq(-1).all()


def _imagenet_top(model, image: np.ndarray) -> int:
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        return int(model.eval()((x - 0.5) / 0.5).argmax())  # tf_efficientnet_lite0 expects mean = std = 0.5


def test_pretrained_efficientnet_lite0_recognises_a_cat_and_an_espresso():
    from skimage import data

    model = create_model("tf_efficientnet_lite0", num_classes=1000, in_chans=3, img_size=224, pretrained=True)
    assert model.weights_source.endswith("efficientnet-lite0-57934424.pth")  # the lukemelas-layout package
    assert 281 <= _imagenet_top(model, data.chelsea()) <= 285
    assert _imagenet_top(model, data.coffee()) in (967, 968)


def test_grey_pretrained_sums_rgb_filters_and_replaces_the_head():
    rgb = create_model("tf_efficientnet_lite0", num_classes=1000, in_chans=3, img_size=224, pretrained=True)
    grey = create_model("tf_efficientnet_lite0", num_classes=2, in_chans=1, img_size=28, pretrained=True)
    torch.testing.assert_close(grey.conv_stem.weight, rgb.conv_stem.weight.sum(1, keepdim=True))
    torch.testing.assert_close(grey.blocks[3][0].conv_pw.weight, rgb.blocks[3][0].conv_pw.weight)
    assert grey.classifier.out_features == 2


def test_weights_files_load_safely(tmp_path):
    src = create_model("cnn5", num_classes=3, in_chans=1, img_size=28)
    save_file(src.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": src.state_dict()}, tmp_path / "w.pth")
    for f in ("w.safetensors", "w.pth"):
        m = create_model("cnn5", num_classes=3, in_chans=1, img_size=28, weights=str(tmp_path / f))
        torch.testing.assert_close(m.state_dict(), src.state_dict())
    # a pickle that would run code on load is refused, not executed
    torch.save({"weights": src.state_dict(), "hook": np.random.default_rng}, tmp_path / "evil.pth")
    with pytest.raises(MedbenchError, match=r"evil.pth: refused: it holds code or objects") as err:
        create_model("cnn5", num_classes=3, in_chans=1, weights=str(tmp_path / "evil.pth"))
    assert "weights_only=False" not in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(MedbenchError, match=r"weights of another architecture: \d+ missing, \d+ unexpected, "
                                            r"\d+ shape mismatches for model 'cnn2', e\.g\. "):
        create_model("cnn2", num_classes=3, in_chans=1, weights=str(tmp_path / "w.safetensors"))
    with pytest.raises(MedbenchError, match="not found"):
        create_model("cnn5", num_classes=3, weights=str(tmp_path / "missing.safetensors"))


def test_pretrained_offline_fails_naming_the_expected_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MedbenchError, match=r"resnet18-f37072fd.pth.*put the file at .*torch/hub/checkpoints"):
        create_model("resnet18", num_classes=2, pretrained=True)
    with pytest.raises(MedbenchError, match="has no ImageNet weights"):
        create_model("cnn5", num_classes=2, pretrained=True)
    # a cached file is found and used
    assert not list((tmp_path / "torch/hub/checkpoints").glob("*"))  # no partial download left behind
    (tmp_path / "torch/hub/checkpoints").mkdir(parents=True, exist_ok=True)
    ref = create_model("resnet18", num_classes=1000, in_chans=3, img_size=224)
    torch.save(ref.state_dict(), tmp_path / "torch/hub/checkpoints/resnet18-f37072fd.pth")
    m = create_model("resnet18", num_classes=2, in_chans=3, img_size=28, pretrained=True)
    assert m.conv1.kernel_size == (7, 7)  # ImageNet weights keep the ImageNet stem even at 28 px
    torch.testing.assert_close(m.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)


def test_truncation_cuts_parameters_and_still_runs():
    info = model_info("resnet50", num_classes=2, in_chans=1, img_size=28, truncate=1)
    assert info["params_truncated"] <= 0.5 * info["params"]
    assert info["flops_truncated"] < info["flops"]
    for name in ("densenet121", "efficientnet_b0", "mobilenet_v3_small", "resnet18"):
        size = model_entry(name).min_size
        full = create_model(name, num_classes=2, in_chans=3, img_size=size)
        cut = create_model(name, num_classes=2, in_chans=3, img_size=size, truncate=2)
        assert num_params(cut) < num_params(full)
        cut(torch.randn(2, 3, size, size)).sum().backward()
    with pytest.raises(MedbenchError, match="cannot be truncated"):
        create_model("inception_v3", num_classes=2, img_size=75, truncate=1)
    with pytest.raises(MedbenchError, match="takes 1 to 3"):
        create_model("resnet18", num_classes=2, truncate=4)


def test_models_info_cli(capsys):
    assert main(["models", "--info", "resnet50", "--size", "28", "--in-chans", "1", "--truncate", "1",
                 "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == 23_503_298 and info["params_truncated"] == 8_536_514
    assert 2.0e9 < info["flops"] < 2.2e9  # 2 FLOPs per multiply-add
    assert main(["models", "--info", "resnt50"]) == 2
    assert "Did you mean resnet50" in capsys.readouterr().err


def test_catalogue_agrees_with_real_builds():
    by = {r["name"]: r for r in catalogue()}
    for name in ("resnet18", "cnn5", "mobilenet_v3_small"):
        e = model_entry(name)
        assert by[name]["params"] == num_params(create_model(name, num_classes=1000, img_size=e.default_size))
