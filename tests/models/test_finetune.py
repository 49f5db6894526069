"""Pretrained, frozen and truncated networks through a whole run on BreastMNIST."""
import dataclasses
import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from medbench.config import resolve_config
from medbench.data import Split, load_dataset
from medbench.engine import build_optimizer
from medbench.models import create_model
from medbench.run import evaluate, train


@pytest.mark.slow
def test_linear_probe_keeps_the_pretrained_backbone(tmp_path):
    out = train({"dataset": "breastmnist", "model": "tf_efficientnet_lite0", "pretrained": True,
                 "freeze": "backbone", "epochs": 1, "lr": 0.01}, tmp_path / "probe", quiet=True)
    saved = load_file(str(out / "model.safetensors"))
    ref = create_model("tf_efficientnet_lite0", num_classes=2, in_chans=1, img_size=28, pretrained=True)
    ref_state = ref.state_dict()
    backbone = [k for k in saved if not k.startswith("classifier.")]
    assert len(backbone) > 200
    for k in backbone:  # weights and batch-norm running statistics untouched
        assert torch.equal(saved[k], ref_state[k]), k
    assert not torch.equal(saved["classifier.weight"], ref_state["classifier.weight"])
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["provenance"]["weights_source"].endswith("efficientnet-lite0-57934424.pth")
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.5 < metrics["test"]["auc"] <= 1
    assert evaluate(out, quiet=True) == metrics  # reload builds the same network without re-fetching weights


def test_backbone_learning_rate_scale():
    cfg = resolve_config({"dataset": "breastmnist", "model": "cnn5", "lr": 0.01, "backbone_lr_scale": 0.1,
                          "schedule": "onecycle"})
    model = create_model("cnn5", num_classes=2, in_chans=1)
    opt = build_optimizer(cfg, model)
    head, backbone = opt.param_groups
    assert head["lr"] == pytest.approx(0.01) and backbone["lr"] == pytest.approx(0.001)
    assert {id(p) for p in head["params"]} == {id(p) for p in model.get_classifier().parameters()}
    assert len(head["params"]) + len(backbone["params"]) == len(list(model.parameters()))


@pytest.mark.slow
def test_truncated_resnet50_trains(tmp_path):
    full = load_dataset("breastmnist")  # the first 160 / 48 / 48 images: the network is the subject here
    ds = dataclasses.replace(full, splits={s: Split(sp.images[:n], sp.labels[:n]) for (s, sp), n in
                                           zip(full.splits.items(), (160, 48, 48))}, md5=None)
    out = train({"dataset": "breastmnist", "model": "resnet50", "truncate": 1, "epochs": 2}, tmp_path / "cut",
                quiet=True, dataset=ds)
    saved = load_file(str(out / "model.safetensors"))
    assert not any(k.startswith("layer4.") for k in saved) and saved["fc.weight"].shape == (2, 1024)
    metrics = json.loads((out / "metrics.json").read_text())
    history = (out / "history.csv").read_text().splitlines()
    assert len(history) == 3 and metrics["test"]["auc"] is not None
    assert evaluate(out, quiet=True, dataset=ds) == metrics
