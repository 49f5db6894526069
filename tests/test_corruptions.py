"""Corruptions on uint8 batches: shape and dtype kept, severity 0 exact, deterministic per image whatever the
batching, distortion (PSNR against the clean image) growing with severity on real MedMNIST images."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from medbench.corruptions import CORRUPTIONS, MODALITY, PRESETS, SEVERITIES, corrupt, resolve_preset
from medbench.errors import MedbenchError


def _test_images(medmnist_dir, flag: str) -> torch.Tensor:
    x = torch.from_numpy(np.load(medmnist_dir / f"{flag}.npz")["test_images"])
    return x[:, None].contiguous() if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a.double() - b.double()) ** 2).mean().item()
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


@pytest.mark.parametrize("chw", [(1, 28, 28), (3, 28, 28), (3, 64, 64), (1, 20, 33), (3, 5, 7)])
def test_every_corruption_keeps_shape_and_dtype_and_severity_0_is_exact(chw):
    x = torch.randint(0, 256, (4, *chw), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    for name in CORRUPTIONS:
        same = corrupt(x, name, 0)
        assert torch.equal(same, x) and same.data_ptr() != x.data_ptr(), name
        for s in SEVERITIES:
            y = corrupt(x, name, s, seed=3)
            assert y.dtype == torch.uint8 and y.shape == x.shape, (name, s)


def test_deterministic_per_image_whatever_the_batching():
    x = torch.randint(0, 256, (10, 3, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    for name in CORRUPTIONS:
        whole = corrupt(x, name, 4, seed=7)
        assert torch.equal(whole, corrupt(x, name, 4, seed=7)), name
        parts = torch.cat([corrupt(x[:3], name, 4, seed=7), corrupt(x[3:], name, 4, seed=7, offset=3)])
        assert torch.equal(whole, parts), name
    noisy = [corrupt(x, "gaussian_noise", 3, seed=s) for s in (0, 1)]
    assert not torch.equal(*noisy)  # the seed matters for random corruptions
    # rows of one batch draw different noise (each image has its own generator)
    same = x[:1].expand(2, -1, -1, -1).contiguous()
    y = corrupt(same, "speckle_noise", 3)
    assert not torch.equal(y[0], y[1])


def test_documented_values():
    grey = torch.full((1, 1, 8, 8), 200, dtype=torch.uint8)
    assert corrupt(grey, "brightness_down", 5).unique().tolist() == [100]  # x * 0.5
    assert corrupt(grey, "brightness_up", 5).unique().tolist() == [255]  # clipped
    assert corrupt(grey, "contrast_down", 5).unique().tolist() == [200]  # a flat image has no contrast to lose
    assert corrupt(grey, "gamma_up", 5).unique().tolist() == [round(255 * (200 / 255) ** 1.6)]
    two = torch.tensor([[0, 100]], dtype=torch.uint8).repeat(8, 4)[None, None]  # columns 0,100,0,100,...
    assert corrupt(two, "contrast_down", 5).unique().tolist() == [30, 70]  # mean 50, (x - 50) * 0.4 + 50
    # pixelation at 28 px: severity 1 is 2 x 2 blocks (14 across), each the mean of its pixels
    board = (torch.arange(28)[:, None] + torch.arange(28)[None, :]) % 2 * 255
    px = corrupt(board.to(torch.uint8)[None, None], "pixelate", 1)
    assert px.unique().tolist() == [128]  # 127.5 rounded half to even
    colour = torch.tensor([255, 0, 0], dtype=torch.uint8)[None, :, None, None].expand(1, 3, 4, 4)
    g = 0.299 * 255  # the grey image's value (ITU-R 601 luma weights)
    assert corrupt(colour, "desaturate", 5)[0, :, 0, 0].tolist() == [round(g + (255 - g) * 0.1), round(g * 0.9),
                                                                     round(g * 0.9)]
    assert torch.equal(corrupt(grey, "desaturate", 5), grey)  # one channel: no colour to take away


@pytest.mark.parametrize("flag", ["breastmnist", "retinamnist"])
def test_distortion_grows_with_severity_on_real_images(medmnist_dir, flag):
    x = _test_images(medmnist_dir, flag)[:100]
    names = [n for n in CORRUPTIONS if x.shape[1] == 3 or n != "desaturate"]
    for name in names:
        psnr = [_psnr(corrupt(x, name, s), x) for s in SEVERITIES]
        assert all(a > b for a, b in zip(psnr, psnr[1:])), (name, [round(p, 2) for p in psnr])
        assert psnr[-1] < 30, (name, psnr)  # severity 5 is a visible change, not a rounding error


def test_presets_cover_the_issue_set_and_auto_follows_the_modality():
    for preset, names in PRESETS.items():
        assert set(names) <= set(CORRUPTIONS), preset
        kinds = {n.split("_")[0] for n in names}
        assert {"gaussian", "contrast", "brightness", "jpeg", "pixelate"} <= kinds, preset
        assert "gaussian_blur" in names and len(set(names)) == len(names), preset
    assert resolve_preset("auto", "breastmnist") == "ultrasound"
    assert resolve_preset("auto", "retinamnist") == "fundus"
    assert resolve_preset("auto", "pneumoniamnist") == "xray"
    assert resolve_preset("auto", "folder:/data/chest") == "default"
    assert resolve_preset("xray", "retinamnist") == "xray"
    assert set(MODALITY.values()) <= set(PRESETS)


def test_bad_input_is_one_clear_error():
    x = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    with pytest.raises(MedbenchError, match="unknown corruption preset 'mri'; valid: auto, default"):
        resolve_preset("mri", "breastmnist")
    with pytest.raises(MedbenchError, match="unknown corruption 'fog'"):
        corrupt(x, "fog", 1)
    with pytest.raises(MedbenchError, match="severity must be 0..5, got 6"):
        corrupt(x, "jpeg", 6)
    with pytest.raises(MedbenchError, match=r"uint8 \[N, C, H, W\]"):
        corrupt(x.float(), "jpeg", 1)
