import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from medbench.augment import PRESETS, BasicAugment, BatchMix, Compose, PerSample, build_augment, parse_spec
from medbench.cli import main
from medbench.config import resolve_config
from medbench.data import load_dataset
from medbench.errors import MedbenchError
from medbench.run import train

PRESET_NAMES = [p for p in PRESETS if p != "none"]
STILL = dict(degrees=0, translate=0, crop_scale=[1, 1], crop_ratio=[1, 1], brightness=0, contrast=0, noise=0)


@pytest.fixture(scope="module")
def batches(medmnist_dir):
    """Real images: BreastMNIST (grey) and RetinaMNIST (RGB)."""
    return {"grey": load_dataset("breastmnist", data_dir=medmnist_dir)["train"].images[:16],
            "rgb": load_dataset("retinamnist", data_dir=medmnist_dir)["train"].images[:16]}


@pytest.mark.parametrize("kind", ["grey", "rgb"])
@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_every_preset_returns_uint8_batches_of_the_same_shape_that_differ_per_call(batches, preset, kind):
    x = batches[kind]
    aug = build_augment(preset)
    torch.manual_seed(0)
    a, b = aug(x), aug(x)
    assert a.dtype == torch.uint8 and a.shape == x.shape and b.shape == x.shape
    assert not torch.equal(a, b)  # fresh randomness on every call
    assert not torch.equal(a, x)


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_randomness_is_per_sample_not_per_batch(batches, preset):
    x = batches["grey"][:1].expand(16, -1, -1, -1).contiguous()  # one image, 16 times
    torch.manual_seed(1)
    out = build_augment(preset)(x)
    distinct = {bytes(img.numpy()) for img in out}
    assert len(distinct) >= 8, f"{preset}: only {len(distinct)} different results for 16 copies"


def test_none_builds_nothing_and_basic_with_everything_off_is_the_identity(batches):
    x = batches["rgb"]
    assert build_augment("none") is None and build_augment(None) is None and build_augment([]) is None
    assert torch.equal(build_augment({"name": "basic", "hflip": 0, **STILL})(x), x)


def test_flip_mirrors_exactly_and_no_flip_turns_it_off(batches):
    x = batches["grey"]
    spec = {"name": "basic", "hflip": 1.0, "vflip": 1.0, **STILL}
    assert torch.equal(build_augment(spec)(x), x.flip(-1).flip(-2))
    assert torch.equal(build_augment(spec, no_flip=True)(x), x)
    torch.manual_seed(0)
    default = build_augment("basic", no_flip=True)
    assert default.hflip == 0 and default.vflip == 0


def test_rotation_and_shift_stay_in_their_bounds(batches):
    # a bright square in the centre: after at most 10 % shift it still covers the centre pixel
    x = torch.zeros(64, 1, 28, 28, dtype=torch.uint8)
    x[:, :, 8:20, 8:20] = 200
    torch.manual_seed(0)
    out = build_augment({"name": "basic", **{**STILL, "degrees": 15, "translate": 0.1}})(x)
    assert (out[:, 0, 13:15, 13:15] > 100).all()
    assert not torch.equal(out[0], out[1])
    assert (out.float().mean(dim=(1, 2, 3)) - x.float().mean()).abs().max() < 20  # area roughly kept


def test_specs_compose_in_order_from_lists_strings_and_mappings():
    assert parse_spec("basic,randaugment") == [("basic", {}), ("randaugment", {})]
    assert parse_spec(["none", {"name": "basic", "noise": 0}]) == [("basic", {"noise": 0})]
    aug = build_augment([{"name": "basic", "degrees": 5}, "trivialaugment"])
    assert isinstance(aug, Compose) and isinstance(aug.steps[0], BasicAugment) and aug.steps[0].degrees == 5
    assert isinstance(aug.steps[1], PerSample)
    # the config file form: a list with mappings survives YAML and validation
    cfg = resolve_config(yaml.safe_load("dataset: breastmnist\naugment: [{name: basic, noise: 0}, augmix]\n"))
    assert cfg.augment == [{"name": "basic", "noise": 0}, "augmix"]


@pytest.mark.parametrize("spec, fragment", [
    ("rotate", "unknown augmentation preset 'rotate'; valid: none, basic, autoaugment-imagenet"),
    ([{"degrees": 5}], "needs a 'name'"),
    ([{"name": "basic", "spin": 5}], "unexpected keyword argument 'spin'"),
    ([{"name": "basic", "hflip": 2}], "hflip is a probability"),
    ([{"name": "randaugment", "num_ops": 2, "wobble": 1}], "augment randaugment"),
])
def test_bad_specs_are_clear_errors(spec, fragment):
    with pytest.raises(MedbenchError, match=None) as e:
        build_augment(spec)
    assert fragment in str(e.value)


def test_config_rejects_unknown_presets_by_name():
    with pytest.raises(MedbenchError, match="augment: Value error, unknown augmentation preset 'flipz'"):
        resolve_config({"dataset": "breastmnist", "augment": "flipz"})


def test_mixup_blends_two_images_with_the_returned_weight():
    torch.manual_seed(0)
    x = torch.randn(32, 1, 8, 8)
    y = torch.arange(32)[:, None]
    out, partner, lam = BatchMix(mixup=0.4)(x, y)
    assert 0 <= lam <= 1
    assert torch.allclose(out, lam * x + (1 - lam) * x[partner[:, 0]], atol=1e-6)


def test_cutmix_pastes_a_box_whose_area_sets_the_weight():
    torch.manual_seed(3)
    x = torch.arange(16, dtype=torch.float32).repeat_interleave(28 * 28).reshape(16, 1, 28, 28)  # image i is all i
    out, partner, lam = BatchMix(cutmix=1.0)(x, torch.arange(16)[:, None])
    moved = (out != x)
    own = partner[:, 0] != torch.arange(16)
    pasted = moved[own].float().mean().item()
    assert abs(pasted - (1 - lam)) < 1e-6 and 0 < lam < 1
    assert torch.equal(out[moved], x[partner[:, 0]][moved])  # pasted pixels come from the partner


def test_training_with_augmentation_and_mixing_records_it_and_changes_the_run(tmp_path, medmnist_dir):
    base = {"dataset": "breastmnist", "model": "cnn5", "epochs": 1, "seed": 0, "deterministic": True}
    train(base, tmp_path / "plain", quiet=True, report=False)
    train({**base, "augment": "basic,trivialaugment", "mixup": 0.2, "cutmix": 1.0, "no_flip": True},
          tmp_path / "aug", quiet=True, report=False)
    saved = yaml.safe_load((tmp_path / "aug" / "config.yaml").read_text())
    assert saved["augment"] == "basic,trivialaugment" and saved["mixup"] == 0.2 and saved["no_flip"] is True
    loss = [float((tmp_path / r / "history.csv").read_text().splitlines()[1].split(",")[2]) for r in ("plain", "aug")]
    assert loss[0] != loss[1] and all(np.isfinite(loss))


def test_augment_preview_writes_originals_above_augmented(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["augment-preview", "--dataset", "breastmnist", "--augment", "autoaugment-cifar10", "--n", "10",
                 "--out", str(out), "--quiet"]) == 0
    assert "10 breastmnist training images" in capsys.readouterr().out
    img = np.asarray(Image.open(out))
    assert img.shape == (2 * (4 * 30 + 2), 2 * (8 * 30 + 2), 3)  # 4 rows (2 pairs) of 8, 28 px + 2 px gaps, x2
    top, below = img[4:60], img[64:120]  # the first 8 originals and their augmented versions
    assert top.std() > 5 and not np.array_equal(top, below)
    assert (img[-60:, -60:] == 255).all()  # the short last pair of rows is padded with white
