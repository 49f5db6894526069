"""Builder options: each model declares the keyword arguments it takes; --drop-path-rate reaches the networks with
residual branches (timm's stochastic depth, and the medbench ResNets) and is refused, with the reason, elsewhere."""
import ast
import json
from pathlib import Path

import pytest
import torch
import yaml

from medbench.cli import main
from medbench.errors import MedbenchError
from medbench.models import catalogue, create_model, list_models, model_entry, model_info, register_model
from medbench.models.resnet import DropPathBasicBlock, DropPathBottleneck


def _drop_paths(model) -> list[float]:
    from timm.layers import DropPath

    return [m.drop_prob for m in model.modules() if isinstance(m, DropPath)]


def _train_mode_outputs_differ(model, x) -> bool:
    model.train()
    torch.manual_seed(0)
    a = model(x)
    b = model(x)
    return not torch.equal(a, b)


def test_every_model_declares_its_options_and_the_catalogue_lists_them(capsys):
    assert model_entry("tf_efficientnet_lite0").options == ("drop_rate", "drop_path_rate")
    assert model_entry("cnn5").options == ("drop_rate",) and model_entry("cnn2").options == ()
    assert model_entry("densenet121").options == ("drop_rate",)
    assert set(model_entry("resnet50").options) == {"stem", "drop_path_rate", "init"}
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(list_models())
    assert all(r["options"] == list(model_entry(n).options) for n, r in rows.items())
    assert {r["name"]: r["options"] for r in catalogue()}["cnn5"] == ["drop_rate"]
    assert model_info("cnn2", flops=False)["options"] == []


def test_drop_path_rate_gives_tf_efficientnet_lite0_stochastic_depth():
    torch.manual_seed(0)
    plain = create_model("tf_efficientnet_lite0", num_classes=2, in_chans=1, img_size=28)
    model = create_model("tf_efficientnet_lite0", num_classes=2, in_chans=1, img_size=28, drop_path_rate=0.1)
    assert _drop_paths(plain) == []
    # timm's rule: block i of 16 drops with 0.1 * i / 16 (block 0 has none), so every rate is at most 0.1
    assert _drop_paths(model) == pytest.approx([0.1 * i / 16 for i in range(1, 16)])
    assert model.state_dict().keys() == plain.state_dict().keys()  # the same weights, trained differently
    x = torch.randn(8, 1, 28, 28)
    assert _train_mode_outputs_differ(model, x) and not _train_mode_outputs_differ(plain, x)
    # one training step
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1] * 4))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name, block", [("resnet18", DropPathBasicBlock), ("resnet50", DropPathBottleneck)])
def test_resnets_get_real_stochastic_depth_on_their_residual_branches(name, block):
    torch.manual_seed(0)
    plain = create_model(name, num_classes=3, in_chans=1, img_size=28)
    model = create_model(name, num_classes=3, in_chans=1, img_size=28, drop_path_rate=0.2)
    blocks = [b for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for b in stage]
    n = len(blocks)
    # linear from 0 (the first block, left as torchvision builds it) to 0.2 at the last
    assert _drop_paths(model) == pytest.approx([0.2 * i / (n - 1) for i in range(1, n)])
    assert type(blocks[0]) is not block and all(type(b) is block for b in blocks[1:])
    # the same parameters under the same names: a plain model's weights load as they are
    model.load_state_dict(plain.state_dict(), strict=True)
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), plain.eval()(x))  # evaluation is unaffected
    assert _train_mode_outputs_differ(model, x) and not _train_mode_outputs_differ(plain, x)
    model(x).square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_truncated_resnet_keeps_its_stochastic_depth():
    cut = create_model("resnet18", num_classes=2, in_chans=1, img_size=28, drop_path_rate=0.1, truncate=1)
    assert len(_drop_paths(cut)) == 5  # layer4's two blocks are cut away with their drop paths
    cut(torch.randn(2, 1, 28, 28)).sum().backward()


def test_networks_without_residual_branches_refuse_drop_path_rate_and_say_why():
    with pytest.raises(MedbenchError, match=r"model 'cnn5' does not take drop_path_rate \(--drop-path-rate\): "
                                            r"stochastic depth skips residual branches.*has none\. "
                                            r"It takes drop_rate \(--drop-rate\)\. Models that take "
                                            r"drop_path_rate: the .*efficientnet.* and resnet families") as err:
        create_model("cnn5", num_classes=2, drop_path_rate=0.1)
    assert "\n" not in str(err.value)
    with pytest.raises(MedbenchError, match=r"'cnn2' does not take drop_path_rate.*It takes no extra options"):
        create_model("cnn2", num_classes=2, drop_path_rate=0.1)
    with pytest.raises(MedbenchError, match=r"'densenet121' does not take drop_path_rate.*concatenate"):
        create_model("densenet121", num_classes=2, img_size=32, drop_path_rate=0.1)
    with pytest.raises(MedbenchError, match=r"Models that take drop_rate: cnn5, the convnext, densenet"):
        create_model("cnn2", num_classes=2, drop_rate=0.1)
    with pytest.raises(MedbenchError, match=r"'resnet18' does not take dropout\. It takes stem \(--stem\), "
                                            r"drop_path_rate \(--drop-path-rate\), init( \(--init\))?\. "
                                            r"No model takes dropout"):
        create_model("resnet18", num_classes=2, dropout=0.1)


def test_register_model_reads_or_checks_the_declared_options():
    def sig(num_classes, in_chans=3, img_size=28, pretrained=False, width=8):
        return torch.nn.Linear(1, num_classes)

    def any_kw(num_classes, in_chans=3, img_size=28, pretrained=False, **options):
        return torch.nn.Linear(1, num_classes)

    with pytest.raises(ValueError, match="takes \\*\\*kwargs: declare its options"):
        register_model("_test_any_kw", "test")(any_kw)
    with pytest.raises(ValueError, match="does not take the declared options \\['depth'\\]"):
        register_model("_test_sig", "test", options=("depth",))(sig)
    assert "_test_any_kw" not in list_models() and "_test_sig" not in list_models()


def test_models_package_has_no_import_circle():
    """registry imports weights/truncate/adapt; they read ModelEntry from entry.py, never the registry."""
    import medbench.models as pkg

    folder = Path(pkg.__file__).parent
    edges = {}
    for path in folder.glob("*.py"):
        tree = ast.parse(path.read_text())
        edges[path.stem] = {node.module.rsplit(".", 1)[-1] for node in ast.walk(tree)
                            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("medbench.models.")}

    def reaches(start, goal, seen=()):
        return any(n == goal or (n not in seen and reaches(n, goal, (*seen, n))) for n in edges.get(start, ()))

    assert not [m for m in edges if reaches(m, m)]
    assert "registry" not in edges["weights"] | edges["truncate"] | edges["adapt"]


@pytest.mark.slow
def test_train_tf_efficientnet_lite0_with_drop_path_rate(tmp_path):
    out = tmp_path / "lite0"
    assert main(["train", "--dataset", "breastmnist", "--model", "tf_efficientnet_lite0", "--size", "28",
                 "--epochs", "1", "--drop-path-rate", "0.1", "--out", str(out), "--quiet"]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["drop_path_rate"] == 0.1
    assert json.loads((out / "metrics.json").read_text())["test"]["auc"] is not None
