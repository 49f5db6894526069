"""Augmentation on whole uint8 batches on the training device, with fresh random draws for every sample.

A spec is a preset name, or a list of names and ``{name: ..., option: value}`` mappings applied in order::

    augment: basic
    augment: [basic, trivialaugment]
    augment: [{name: basic, degrees: 5, noise: 0}, randaugment]

``basic`` (the reports' flips, shifts, rotation, random resized crop, brightness/contrast jitter and Gaussian
noise) is vectorised: one affine resampling for the batch. The policy presets are torchvision.transforms.v2's own
(AutoAugment, RandAugment, TrivialAugmentWide, AugMix); v2 draws one operation per call, so they are called once
per sample. Batch-level mixing (``mixup``/``cutmix``) acts on the normalised float batch and mixes the losses.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from medbench.config.augment_spec import PRESETS, Spec, parse_spec
from medbench.errors import MedbenchError

__all__ = ["PRESETS", "BasicAugment", "BatchMix", "Compose", "PerSample", "Spec", "build_augment", "parse_spec",
           "preview"]  # the vocabulary (PRESETS, Spec, parse_spec) is config's, re-exported with what builds it


class BasicAugment:
    """Per-sample random flip, rotation, shift and resized crop as one affine map (one ``grid_sample`` for the
    batch, black fill), then brightness/contrast jitter and Gaussian noise; uint8 in, uint8 out."""

    def __init__(self, hflip: float = 0.5, vflip: float = 0.0, degrees: float = 15.0, translate: float = 0.1,
                 crop_scale: Sequence[float] = (0.8, 1.0), crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
                 brightness: float = 0.2, contrast: float = 0.2, noise: float = 0.03, noise_p: float = 0.5):
        for name, v in (("hflip", hflip), ("vflip", vflip), ("noise_p", noise_p)):
            if not 0 <= v <= 1:
                raise MedbenchError(f"augment basic: {name} is a probability, got {v}")
        if not (0 < crop_scale[0] <= crop_scale[1] <= 1) or not (0 < crop_ratio[0] <= crop_ratio[1]):
            raise MedbenchError(f"augment basic: crop_scale must lie in (0, 1] and crop_ratio be positive, got "
                                f"{list(crop_scale)} / {list(crop_ratio)}")
        if min(degrees, translate, brightness, contrast, noise) < 0:
            raise MedbenchError("augment basic: degrees, translate, brightness, contrast and noise must be >= 0")
        self.hflip, self.vflip, self.degrees, self.translate = hflip, vflip, degrees, translate
        self.crop_scale, self.crop_ratio = tuple(crop_scale), tuple(crop_ratio)
        self.brightness, self.contrast, self.noise, self.noise_p = brightness, contrast, noise, noise_p

    def _theta(self, b: int, device) -> torch.Tensor:
        """Output -> input coordinates (``affine_grid`` convention, [-1, 1]) for each sample."""
        u = torch.rand(b, 8, device=device)
        lo, hi = self.crop_scale
        area = lo + (hi - lo) * u[:, 0]
        log_r = math.log(self.crop_ratio[0]) + (math.log(self.crop_ratio[1]) - math.log(self.crop_ratio[0])) * u[:, 1]
        r = log_r.exp()
        w, h = (area * r).sqrt().clamp(max=1), (area / r).sqrt().clamp(max=1)  # crop size, 1 = whole image
        cx, cy = (1 - w) * (2 * u[:, 2] - 1), (1 - h) * (2 * u[:, 3] - 1)  # crop centre stays inside
        tx = cx + 2 * self.translate * (2 * u[:, 4] - 1)
        ty = cy + 2 * self.translate * (2 * u[:, 5] - 1)
        sx = torch.where(u[:, 6] < self.hflip, -w, w)
        sy = torch.where(u[:, 7] < self.vflip, -h, h)
        a = torch.deg2rad(self.degrees * (2 * torch.rand(b, device=device) - 1))
        cos, sin = a.cos(), a.sin()
        return torch.stack([torch.stack([cos * sx, -sin * sy, tx], 1), torch.stack([sin * sx, cos * sy, ty], 1)], 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        f = x.float()
        grid = F.affine_grid(self._theta(b, x.device), list(f.shape), align_corners=False)
        f = F.grid_sample(f, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if self.brightness or self.contrast:
            bright = 1 + self.brightness * (2 * torch.rand(b, 1, 1, 1, device=x.device) - 1)
            con = 1 + self.contrast * (2 * torch.rand(b, 1, 1, 1, device=x.device) - 1)
            f = f * bright
            mean = f.mean(dim=(1, 2, 3), keepdim=True)  # contrast blends with the image's mean grey level
            f = (f - mean) * con + mean
        if self.noise and self.noise_p:
            on = (torch.rand(b, 1, 1, 1, device=x.device) < self.noise_p).float()
            f = f + torch.randn_like(f) * (255 * self.noise) * on
        return f.round_().clamp_(0, 255).to(torch.uint8)


class PerSample:
    """Apply a torchvision v2 transform to each image separately: v2 draws one set of parameters per call."""

    def __init__(self, transform: Callable[[torch.Tensor], torch.Tensor]):
        self.transform = transform

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.transform(img) for img in x])


class Compose:
    def __init__(self, steps: Sequence[Callable[[torch.Tensor], torch.Tensor]]):
        self.steps = list(steps)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            x = step(x)
        return x


def _policy(name: str, options: dict[str, Any]):
    from torchvision.transforms import v2

    if name.startswith("autoaugment-"):
        policy = {"imagenet": v2.AutoAugmentPolicy.IMAGENET, "cifar10": v2.AutoAugmentPolicy.CIFAR10,
                  "svhn": v2.AutoAugmentPolicy.SVHN}[name.split("-", 1)[1]]
        return v2.AutoAugment(policy, **options)
    cls = {"randaugment": v2.RandAugment, "trivialaugment": v2.TrivialAugmentWide, "augmix": v2.AugMix}[name]
    return cls(**options)


def build_augment(spec: Spec | None, *, no_flip: bool = False) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A callable uint8 ``[B, C, H, W]`` -> uint8 ``[B, C, H, W]`` on the batch's device, or None for no
    augmentation. ``no_flip`` turns off every flip (for anatomy where laterality matters)."""
    steps = []
    for name, options in parse_spec(spec):
        if name == "basic":
            if no_flip:
                options = {**options, "hflip": 0.0, "vflip": 0.0}
            try:
                steps.append(BasicAugment(**options))
            except TypeError as e:
                raise MedbenchError(f"augment basic: {e}; options: hflip, vflip, degrees, translate, crop_scale, "
                                    f"crop_ratio, brightness, contrast, noise, noise_p") from None
        else:
            try:
                steps.append(PerSample(_policy(name, options)))
            except TypeError as e:
                raise MedbenchError(f"augment {name}: {e}") from None
    if not steps:
        return None
    return steps[0] if len(steps) == 1 else Compose(steps)


class BatchMix:
    """Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) on a float batch: returns the mixed batch, the
    partner labels and the weight of the original labels; the loss is ``lam * L(y) + (1 - lam) * L(y_partner)``,
    which works for every task (softmax, sigmoid, CORN). With both on, each batch uses one of them at random."""

    def __init__(self, mixup: float = 0.0, cutmix: float = 0.0):
        if mixup < 0 or cutmix < 0:
            raise MedbenchError("mixup and cutmix alphas must be >= 0 (0 turns them off)")
        self.mixup, self.cutmix = mixup, cutmix

    def __bool__(self) -> bool:
        return bool(self.mixup or self.cutmix)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        use_cutmix = self.cutmix > 0 and (self.mixup == 0 or torch.rand(()).item() < 0.5)
        alpha = self.cutmix if use_cutmix else self.mixup
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        perm = torch.randperm(x.shape[0], device=x.device)
        partner = x[perm]
        if use_cutmix:
            h, w = x.shape[-2:]
            ch, cw = round(h * math.sqrt(1 - lam)), round(w * math.sqrt(1 - lam))
            cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
            y0, y1 = max(cy - ch // 2, 0), min(cy + (ch + 1) // 2, h)
            x0, x1 = max(cx - cw // 2, 0), min(cx + (cw + 1) // 2, w)
            x = x.clone()
            x[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]
            lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)  # the pasted area actually kept
        else:
            x = x * lam + partner * (1 - lam)
        return x, y[perm], lam


def preview(dataset, spec: Spec, out, *, n: int = 32, per_row: int = 8, seed: int = 0, no_flip: bool = False,
            split: str = "train") -> dict:
    """A PNG of ``n`` images of ``dataset`` (an :class:`ImageDataset`): rows of originals, each followed by the
    same images augmented. Returns the picture's layout."""
    from medbench.fileio import save_image_grid

    if n < 1:
        raise MedbenchError(f"--n must be at least 1, got {n}")
    images = dataset[split].images
    gen = torch.Generator().manual_seed(seed)
    x = images[torch.randperm(len(images), generator=gen)[:n]]
    torch.manual_seed(seed)
    aug = build_augment(spec, no_flip=no_flip)
    y = aug(x) if aug is not None else x
    rows = []
    for start in range(0, len(x), per_row):
        rows += [x[start:start + per_row], y[start:start + per_row]]
        if len(rows[-1]) < per_row:  # pad a short last pair of rows so originals and augmented stay aligned
            pad = torch.full((per_row - len(rows[-1]), *x.shape[1:]), 255, dtype=torch.uint8)
            rows[-2], rows[-1] = torch.cat([rows[-2], pad]), torch.cat([rows[-1], pad])
    save_image_grid(torch.cat(rows), out, per_row=per_row)
    return {"path": str(out), "n": len(x), "rows": len(rows), "per_row": per_row}
