"""The ``medmnist-v2`` recipe's decisions, pinned to what MedMNIST/experiments' MedMNIST2D/train_and_eval_pytorch.py
and models.py do (the differences and measurements: docs/benchmarks.md, "Benchmark fidelity")."""
from __future__ import annotations

import math

import pytest
import torch

from medbench.build import build_dataset, build_model, build_preprocess, build_task
from medbench.config.recipes import RECIPES, resolve_config
from medbench.data.loader import iterate_batches
from medbench.engine import Precision, build_scheduler, steps_per_epoch
from medbench.errors import MedbenchError
from medbench.models import create_model


@pytest.fixture(scope="module")
def v2():
    return resolve_config({"dataset": "breastmnist", "recipe": "medmnist-v2", "as_rgb": True})


@pytest.fixture(scope="module")
def breast(v2, medmnist_dir):
    return build_dataset(v2, data_dir=medmnist_dir)  # module scope: before the per-test MEDBENCH_DATA


def _convs(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


def test_recipe_settings_are_the_official_scripts(v2):
    # lr = 0.001, gamma = 0.1, milestones 0.5 / 0.75 of the epochs, Adam without weight decay, batch 128, 100 epochs
    assert (v2.optimizer, v2.lr, v2.weight_decay, v2.batch_size, v2.epochs) == ("adam", 1e-3, 0.0, 128, 100)
    assert (v2.schedule, v2.milestones, v2.gamma) == ("multistep", [0.5, 0.75], 0.1)
    # plain cross-entropy, no augmentation, no EMA, no TTA; best epoch by validation AUC at MedMNIST's 0.5
    assert (v2.label_smoothing, v2.augment, v2.mixup, v2.cutmix, v2.ema, v2.tta) == (0.0, "none", 0.0, 0.0, 0.0, False)
    assert (v2.select_metric, v2.decision, v2.members, v2.ensemble) == ("auc", "0.5", 1, 1)
    assert (v2.init, v2.precision, v2.stem, v2.norm_mean, v2.norm_std) == ("torch-default", "fp32", "auto", 0.5, 0.5)
    assert Precision(torch.device("cpu"), v2.precision).dtype is None  # fp32 even on CPUs with native bf16
    # a flag still wins over the recipe
    assert resolve_config({"dataset": "breastmnist", "recipe": "medmnist-v2", "precision": "bf16"}).precision == "bf16"


def test_other_recipes_keep_torchvision_init_and_auto_precision():
    for name in RECIPES:
        if name != "medmnist-v2":
            cfg = resolve_config({"dataset": "breastmnist", "recipe": name})
            assert (cfg.init, cfg.precision) == ("auto", "auto"), name


def test_network_is_the_small_stem_resnet_with_pytorch_default_init(v2, breast):
    model = build_model(v2, breast, build_task(v2, breast))
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.in_channels == 3
    assert isinstance(model.maxpool, torch.nn.Identity) and model.fc.out_features == 2
    # models.py ResNet18(in_channels=3, num_classes=2): torchvision's body with a 3x3x3x64 stem and a 2-way head
    assert sum(p.numel() for p in model.parameters()) == 11_689_512 - 9408 - 513_000 + 1728 + 1026
    # nn.Conv2d's own init is Kaiming-uniform(a=sqrt(5)) over fan-in: |w| <= 1/sqrt(fan_in), std = bound/sqrt(3)
    for conv in _convs(model):
        fan_in = conv.weight[0].numel()
        assert conv.weight.abs().max() <= 1 / math.sqrt(fan_in) + 1e-7
    big = max(_convs(model), key=lambda c: c.weight.numel())
    assert big.weight.std().item() == pytest.approx(1 / math.sqrt(3 * big.weight[0].numel()), rel=0.02)
    # torchvision's Kaiming-normal over fan-out (the default elsewhere) is far wider: std sqrt(2 / fan_out)
    tv = create_model("resnet18", num_classes=2, in_chans=3)
    tv_big = max(_convs(tv), key=lambda c: c.weight.numel())
    fan_out = tv_big.out_channels * tv_big.kernel_size[0] * tv_big.kernel_size[1]
    assert tv_big.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.02)
    with pytest.raises(MedbenchError, match="unknown init"):
        create_model("resnet18", num_classes=2, init="xavier")


def test_input_is_totensor_then_normalize_half(v2, breast):
    # ToTensor (x / 255) then Normalize(0.5, 0.5), grey repeated to RGB as PIL's convert("RGB") does
    x = breast["train"].images[:4]
    got = build_preprocess(v2, breast)(x)
    want = ((x.float() / 255 - 0.5) / 0.5).expand(-1, 3, -1, -1)
    assert got.shape == (4, 3, 28, 28)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_last_partial_batch_is_trained_like_the_dataloader(breast):
    # DataLoader(shuffle=True, drop_last=False): 546 = 4 x 128 + 34, all five batches train, every image once
    train = breast["train"]
    sizes = [len(y) for _, y in iterate_batches(train, 128, shuffle=True, generator=torch.Generator().manual_seed(0))]
    assert sizes == [128, 128, 128, 128, 34] and steps_per_epoch(len(train), 128) == 5


@pytest.mark.parametrize("epochs", [12, 100])
def test_lr_per_epoch_equals_the_official_multisteplr(v2, epochs):
    steps = 5
    cfg = v2.model_copy(update={"epochs": epochs})
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = build_scheduler(cfg, opt, steps)
    ours = []
    for _ in range(epochs):
        ours.append(opt.param_groups[0]["lr"])
        for _ in range(steps):
            opt.step()
            sched.step()
    # the official: MultiStepLR(milestones=[0.5 N, 0.75 N], gamma=0.1) stepped once per epoch
    ref_opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    ref = torch.optim.lr_scheduler.MultiStepLR(ref_opt, milestones=[0.5 * epochs, 0.75 * epochs], gamma=0.1)
    theirs = []
    for _ in range(epochs):
        theirs.append(ref_opt.param_groups[0]["lr"])
        ref_opt.step()
        ref.step()
    assert ours == pytest.approx(theirs, rel=1e-12)
    assert theirs[epochs // 2] == pytest.approx(1e-4) and theirs[-1] == pytest.approx(1e-5)
