"""Input adaptation: ImageNet-size networks on small images, by resizing or zero-padding inside the model."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from medbench.models.finetune import classifier_of

MODES = ("bilinear", "nearest", "bicubic", "pad")


class InputAdapter(nn.Module):
    """Resize (like the MedMNIST "224" baselines) or centre-pad (like MedMNIST+) a batch to ``size``, then run
    ``net``. Padding fills with ``pad_value``, the normalised value of a black pixel, per channel or shared."""

    def __init__(self, net: nn.Module, size: int, mode: str = "bilinear", pad_value: float | list[float] = 0.0):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown input adaptation mode '{mode}'; valid: {', '.join(MODES)}")
        self.net, self.size, self.mode = net, size, mode
        self.register_buffer("pad_value", torch.tensor(pad_value, dtype=torch.float32).reshape(-1, 1, 1),
                             persistent=False)

    def get_classifier(self) -> nn.Module:
        return classifier_of(self.net)

    def extra_repr(self) -> str:
        return f"size={self.size}, mode={self.mode}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if (h, w) != (self.size, self.size):
            if self.mode == "pad":
                top, left = (self.size - h) // 2, (self.size - w) // 2
                fill = self.pad_value.to(x.dtype)
                x = F.pad(x - fill, (left, self.size - w - left, top, self.size - h - top)) + fill
            else:
                x = F.interpolate(x, size=(self.size, self.size), mode=self.mode,
                                  align_corners=False if self.mode != "nearest" else None)
        return self.net(x)
