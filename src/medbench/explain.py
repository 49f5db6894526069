"""Grad-CAM (Selvaraju et al., 2017) heatmaps for any convolutional model, via captum's ``LayerGradCam``.

``gradcam`` explains chosen outputs of a network at a convolutional layer (the last one with a spatial
output, found automatically) and upsamples the maps to the input size; ``overlay`` blends a map onto the
original uint8 image for display.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from medbench.errors import MedbenchError


def find_target_layer(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """The last ``nn.Conv2d`` run in a forward pass of ``x`` whose output is larger than 1x1.

    The order is the order of execution (found with forward hooks), not of registration, so shortcut
    convolutions declared after a block's main path do not win by accident.
    """
    seen: list[tuple[nn.Module, tuple[int, ...]]] = []

    def hook(module, inputs, output):
        if isinstance(output, torch.Tensor) and output.dim() == 4:
            seen.append((module, tuple(output.shape)))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    spatial = [m for m, shape in seen if shape[-1] * shape[-2] > 1]
    if not spatial:
        what = "no Conv2d layer" if not seen else "every Conv2d output is 1x1"
        raise MedbenchError(f"Grad-CAM needs a convolution with a spatial output, but {type(model).__name__} has "
                            f"{what} for {tuple(x.shape[-2:])} inputs; pass layer= explicitly")
    return spatial[-1]


def gradcam(model: nn.Module, x_float: torch.Tensor, target_classes: int | Sequence[int] | torch.Tensor,
            layer: nn.Module | None = None, *,
            output_fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Grad-CAM heatmaps ``[B, H, W]`` in ``[0, 1]`` (float32, on the CPU) for the model input ``x_float``.

    ``target_classes``: one output index for the batch or one per image (the class, or the label of a
    multi-label model, to explain). ``layer``: the convolution to explain at; by default the last one
    with a spatial output (:func:`find_target_layer`). ``output_fn`` maps the model's outputs before the
    target is taken (e.g. log class probabilities for CORN ordinal heads, whose outputs are not classes).

    Each map is the ReLU of the gradient-weighted channel sum, upsampled bilinearly to the input size and
    divided by its maximum; a map with no positive evidence is all zeros. The model runs in eval mode
    for the call and gets its previous mode back.
    """
    from captum.attr import LayerAttribution, LayerGradCam

    if x_float.dim() != 4:
        raise MedbenchError(f"gradcam expects a batch [B, C, H, W], got shape {tuple(x_float.shape)}")
    b, h, w = x_float.shape[0], x_float.shape[-2], x_float.shape[-1]
    if isinstance(target_classes, torch.Tensor):
        targets = [int(t) for t in target_classes.reshape(-1).tolist()]
    elif isinstance(target_classes, (int, np.integer)):
        targets = [int(target_classes)] * b
    else:
        targets = [int(t) for t in target_classes]
    if len(targets) != b:
        raise MedbenchError(f"gradcam got {len(targets)} target classes for {b} images")

    was_training = model.training
    model.eval()
    try:
        if layer is None:
            layer = find_target_layer(model, x_float)

        def forward(inp):
            out = model(inp)
            return output_fn(out) if output_fn is not None else out

        with torch.enable_grad():
            attr = LayerGradCam(forward, layer).attribute(x_float, target=targets, relu_attributions=True)
        attr = LayerAttribution.interpolate(attr.detach().float(), (h, w), interpolate_mode="bilinear")
    finally:
        model.train(was_training)
    cam = attr[:, 0].cpu().clamp_min(0)
    peak = cam.flatten(1).amax(1).reshape(-1, 1, 1)
    cam = torch.where(peak > 0, cam / peak.clamp_min(1e-12), torch.zeros_like(cam))
    return cam.clamp(0, 1).contiguous()


def overlay(image_uint8, heatmap, alpha: float = 0.45, cmap: str = "jet") -> np.ndarray:
    """Blend ``heatmap`` (``[H, W]`` in [0, 1]) in a jet colour map over ``image_uint8`` (``[C, H, W]``, 1 or 3
    channels) -> uint8 RGB ``[H, W, 3]``. A heatmap of another size is resized bilinearly to the image."""
    from matplotlib import colormaps

    img = torch.as_tensor(np.asarray(image_uint8)).cpu()
    if img.dim() == 2:
        img = img[None]
    if img.dim() != 3 or img.shape[0] not in (1, 3):
        raise MedbenchError(f"overlay expects an image [C, H, W] with 1 or 3 channels, got {tuple(img.shape)}")
    rgb = img.expand(3, -1, -1).permute(1, 2, 0).float().numpy()  # [H, W, 3], 0..255
    heat = torch.as_tensor(np.asarray(heatmap, dtype=np.float32))
    if heat.shape != rgb.shape[:2]:
        heat = F.interpolate(heat[None, None], size=rgb.shape[:2], mode="bilinear", align_corners=False)[0, 0]
    heat = heat.clamp(0, 1).numpy()
    colour = colormaps[cmap](heat)[..., :3] * 255.0
    out = (1.0 - alpha) * rgb + alpha * colour
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
