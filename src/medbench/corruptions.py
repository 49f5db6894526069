"""Image corruptions at five severities on whole uint8 batches, for robustness evaluation (MedMNIST-C's idea).

Every corruption takes uint8 ``[N, C, H, W]`` (1 or 3 channels, any size) and returns a new tensor of the same
shape and dtype; severity 0 is the identity (an exact copy). Random corruptions draw each image's noise from its
own generator, seeded by ``(seed, corruption, severity, row)``: the result does not depend on the batch size, the
device or the order of calls. Computed on the CPU (the JPEG codec runs there; noise then matches on every machine).

The five levels of each corruption (``CORRUPTIONS[name].levels``) follow the ranges of MedMNIST-C (Di Salvo et al.,
2024), rescaled so that one table serves 28- to 224-pixel images: blur and pixelation are relative to the image
side, noise to the 0-255 range. The ``medmnistc`` package itself is not used: it corrects one PIL image at a time
at 224 pixels, needs ImageMagick's MagickWand library and pins scikit-image 0.23.2 and medmnist 3.0.1.

=================  ============================================  ===========================================
name               what                                          parameter (severities 1..5)
=================  ============================================  ===========================================
gaussian_noise     x + N(0, s * 255)                              s = 0.04 0.08 0.12 0.18 0.26
speckle_noise      x + x * N(0, s) (multiplicative, ultrasound)  s = 0.10 0.20 0.30 0.45 0.60
gaussian_blur      Gaussian filter, reflect borders              sigma = f * image side, f = .015 .025 .035 .045 .06
contrast_down      (x - mean) * f + mean (per image mean)        f = 0.9 0.8 0.7 0.6 0.4
contrast_up        as contrast_down                              f = 1.1 1.2 1.3 1.4 1.6
brightness_down    x * f                                         f = 0.9 0.8 0.7 0.6 0.5
brightness_up      x * f                                         f = 1.1 1.2 1.3 1.4 1.5
gamma_down         255 * (x / 255) ** g (brightens mid-tones)    g = 0.9 0.8 0.7 0.6 0.4
gamma_up           as gamma_down (darkens mid-tones)             g = 1.1 1.2 1.3 1.4 1.6
desaturate         blend with the grey image (3 channels only)   weight of colour = 0.8 0.6 0.4 0.25 0.1
jpeg               JPEG encode / decode                          quality = 50 30 15 10 7
pixelate           mean over k x k blocks, k = ceil(side / n)     n = 14 10 8 6 5 (k = 2..6 at 28 px)
=================  ============================================  ===========================================

Results are rounded to the nearest integer and clipped to 0-255.
"""
from __future__ import annotations

import io
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from medbench.errors import MedbenchError

SEVERITIES = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class Corruption:
    name: str
    apply: Callable  # (float images [N, C, H, W] in 0-255, level, rng per row or None) -> float images
    levels: tuple  # the parameter at severities 1..5
    parameter: str  # what the level means
    random: bool = False


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.round_().clamp_(0, 255).to(torch.uint8)


def _normal(shape, rngs: list[np.random.Generator]) -> torch.Tensor:
    return torch.from_numpy(np.stack([r.standard_normal(shape[1:], dtype=np.float32) for r in rngs]))


def _gaussian_noise(x, s, rngs):
    return x + _normal(x.shape, rngs) * (s * 255.0)


def _speckle_noise(x, s, rngs):
    return x + x * _normal(x.shape, rngs) * s


def _blur(x, f, _):
    h, w = x.shape[-2:]
    sigma = f * max(h, w)
    k = min(2 * math.ceil(3 * sigma) + 1, 2 * min(h, w) - 1)  # reflect padding needs pad < side
    k -= 1 - k % 2  # odd
    return TF.gaussian_blur(x, [k, k], [sigma, sigma]) if k >= 3 else x


def _contrast(x, f, _):
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # per image, over its channels
    return (x - mean) * f + mean


def _scale(x, f, _):
    return x * f


def _gamma(x, g, _):
    return (x / 255.0).pow(g) * 255.0


def _desaturate(x, f, _):
    if x.shape[1] != 3:
        return x
    grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)
    return grey + (x - grey) * f


def _jpeg(x, quality, _):
    out = []
    for img in _to_uint8(x.clone()).permute(0, 2, 3, 1).numpy():  # Pillow: torchvision's JPEG codec is deprecated
        buf = io.BytesIO()
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, "JPEG", quality=int(quality))
        out.append(np.asarray(Image.open(buf)).reshape(img.shape))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float()


def _pixelate(x, n, _):
    h, w = x.shape[-2:]
    k = math.ceil(max(h, w) / n)  # whole blocks: a fractional scale would add its own aliasing, not monotone
    blocks = F.avg_pool2d(x, k, k, ceil_mode=True)  # a partial edge block averages its own pixels
    return blocks.repeat_interleave(k, dim=2).repeat_interleave(k, dim=3)[..., :h, :w]


CORRUPTIONS: dict[str, Corruption] = {c.name: c for c in (
    Corruption("gaussian_noise", _gaussian_noise, (0.04, 0.08, 0.12, 0.18, 0.26), "std as a fraction of 255", True),
    Corruption("speckle_noise", _speckle_noise, (0.10, 0.20, 0.30, 0.45, 0.60), "std of the multiplicative noise",
               True),
    Corruption("gaussian_blur", _blur, (0.015, 0.025, 0.035, 0.045, 0.06), "sigma as a fraction of the image side"),
    Corruption("contrast_down", _contrast, (0.9, 0.8, 0.7, 0.6, 0.4), "contrast factor"),
    Corruption("contrast_up", _contrast, (1.1, 1.2, 1.3, 1.4, 1.6), "contrast factor"),
    Corruption("brightness_down", _scale, (0.9, 0.8, 0.7, 0.6, 0.5), "brightness factor"),
    Corruption("brightness_up", _scale, (1.1, 1.2, 1.3, 1.4, 1.5), "brightness factor"),
    Corruption("gamma_down", _gamma, (0.9, 0.8, 0.7, 0.6, 0.4), "gamma"),
    Corruption("gamma_up", _gamma, (1.1, 1.2, 1.3, 1.4, 1.6), "gamma"),
    Corruption("desaturate", _desaturate, (0.8, 0.6, 0.4, 0.25, 0.1), "weight of the colour (3 channels)"),
    Corruption("jpeg", _jpeg, (50, 30, 15, 10, 7), "JPEG quality"),
    Corruption("pixelate", _pixelate, (14, 10, 8, 6, 5), "blocks across the image"),
)}

_BASE = ("gaussian_noise", "gaussian_blur", "contrast_down", "brightness_down", "brightness_up", "jpeg", "pixelate")
PRESETS: dict[str, tuple[str, ...]] = {
    "default": _BASE,
    "xray": _BASE + ("contrast_up", "gamma_down", "gamma_up"),  # exposure and windowing vary between machines
    "ct": _BASE + ("contrast_up", "gamma_down", "gamma_up"),
    "ultrasound": _BASE + ("speckle_noise",),  # speckle is ultrasound's and OCT's own noise
    "fundus": ("gaussian_noise", "speckle_noise", "gaussian_blur", "contrast_down", "brightness_down", "jpeg",
               "pixelate"),  # fundus photographs are under-, not over-exposed
    "pathology": _BASE + ("contrast_up", "desaturate"),  # stain strength varies between labs
    "dermatoscopy": _BASE + ("contrast_up", "speckle_noise", "desaturate"),
}
# MedMNIST flag -> preset; any other dataset (folder:, csv:) gets "default"
MODALITY = {"chestmnist": "xray", "pneumoniamnist": "xray", "organamnist": "ct", "organcmnist": "ct",
            "organsmnist": "ct", "breastmnist": "ultrasound", "octmnist": "ultrasound", "retinamnist": "fundus",
            "pathmnist": "pathology", "bloodmnist": "pathology", "dermamnist": "dermatoscopy"}


def resolve_preset(preset: str, dataset: str) -> str:
    """``auto`` -> the preset of the MedMNIST flag ``dataset`` (``default`` for other data); a name is checked."""
    if preset == "auto":
        return MODALITY.get(dataset.lower(), "default")
    if preset not in PRESETS:
        raise MedbenchError(f"unknown corruption preset {preset!r}; valid: auto, {', '.join(PRESETS)}")
    return preset


def _rngs(seed: int, name: str, severity: int, rows: range) -> list[np.random.Generator]:
    key = zlib.crc32(name.encode())
    return [np.random.default_rng([seed, key, severity, r]) for r in rows]


def corrupt(images: torch.Tensor, name: str, severity: int, *, seed: int = 0, offset: int = 0) -> torch.Tensor:
    """``images`` (uint8 ``[N, C, H, W]``, rows ``offset``.. of a split) under corruption ``name`` at
    ``severity`` 0-5, as a new uint8 tensor of the same shape on the same device."""
    if name not in CORRUPTIONS:
        raise MedbenchError(f"unknown corruption {name!r}; valid: {', '.join(CORRUPTIONS)}")
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise MedbenchError(f"corruptions take uint8 [N, C, H, W] images, got {images.dtype} {list(images.shape)}")
    if severity not in range(6):
        raise MedbenchError(f"severity must be 0..5, got {severity}")
    if severity == 0 or len(images) == 0:
        return images.clone()
    c = CORRUPTIONS[name]
    rngs = _rngs(seed, name, severity, range(offset, offset + len(images))) if c.random else None
    out = c.apply(images.cpu().float(), c.levels[severity - 1], rngs)
    return _to_uint8(out).to(images.device)
