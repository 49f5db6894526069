"""Export a run for deployment: ONNX (dynamic batch) or TorchScript, preprocessing and output scores included.

The exported graph takes what medbench's datasets hold, uint8 images ``[N, C, S, S]`` (already fitted to the
run's size and channels, e.g. by :meth:`medbench.predict.Predictor.load_image`), and returns float32 class
probabilities ``[N, K]`` (softmax; sigmoid per label for multi-label runs; CORN class probabilities for ordinal
CORN runs), so a runtime needs no medbench code. Files: ``RUN_DIR/model.onnx`` or ``RUN_DIR/model.ts``.

A calibrated run (``calibration.json``, ``--calibrate temperature``) exports its calibrated probabilities: the
temperature is in the graph, as :class:`~medbench.predict.Predictor` applies it: ``softmax(log p / T)`` (binary
and multi-label ``sigmoid(logit p / T)``) on the averaged probabilities in float64, so the file gives what
Predictor gives (not ``softmax(z / T)`` on one network's logits: equal in exact arithmetic, but float32
probabilities saturate at 1, and medbench's metrics are computed from them).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from medbench.errors import MedbenchError
from medbench.metrics.calibration import PROB_FLOOR

FORMATS = {"onnx": "model.onnx", "torchscript": "model.ts"}
ONNX_OPSET = 18


class Deployable(nn.Module):
    """uint8 images -> probabilities: the run's normalisation, network(s) and output scores in one module; several
    networks (an ensemble run) are averaged in probability, as in the run's metrics."""

    def __init__(self, models: list[nn.Module], mean, std, to_rgb: bool, task: str, num_classes: int, corn: bool,
                 temperature: float | None = None):
        super().__init__()
        self.temperature = None if temperature is None or temperature == 1.0 else float(temperature)
        self.models = nn.ModuleList(models)
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)))
        self.register_buffer("shift", (torch.tensor(mean, dtype=torch.float32) /
                                       torch.tensor(std, dtype=torch.float32)).reshape(1, -1, 1, 1))
        self.to_rgb, self.task, self.corn = to_rgb, task, corn

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.to(torch.float32)
        if self.to_rgb:
            x = x.expand(-1, 3, -1, -1)
        x = x * self.scale - self.shift
        probs = [self.scores(m(x).float()) for m in self.models]
        if self.temperature is None:
            return probs[0] if len(probs) == 1 else torch.stack(probs).mean(0)
        # as Predictor: the float32 probabilities averaged and re-scaled in float64 (near 1, float32 would lose
        # 1 - p, the whole of what a temperature acts on)
        return self.calibrated(torch.stack(probs).double().mean(0), self.temperature).float()

    def calibrated(self, p: torch.Tensor, t: float) -> torch.Tensor:
        """medbench.metrics.calibration.apply_temperature, the same formulas (float64 in, float64 out)."""
        if self.task in ("multilabel", "binary"):  # binary: from P(positive) alone, as the AUC ranks it
            q = p if self.task == "multilabel" else p[:, -1:]
            q = torch.sigmoid((torch.log(q) - torch.log(1 - q)) / t)  # 0 and 1 stay 0 and 1 (+-inf logits)
            return q if self.task == "multilabel" else torch.cat([1 - q, q], 1)
        return torch.softmax(torch.log(p.clamp_min(PROB_FLOOR)) / t, dim=1)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        if self.task == "multilabel":
            return torch.sigmoid(logits)
        if self.corn:  # P(y > k) = prod sigmoid; as exp(cumsum(logsigmoid)): ONNX has CumSum, not CumProd
            above = torch.exp(torch.cumsum(nn.functional.logsigmoid(logits), dim=1))
            ones, zeros = torch.ones_like(above[:, :1]), torch.zeros_like(above[:, :1])
            return torch.cat([ones, above], 1) - torch.cat([above, zeros], 1)
        return torch.softmax(logits, dim=1)


def deployable(predictor) -> Deployable:
    from medbench.tasks import CornTask

    p = predictor.prep
    models = [m.to("cpu").to(memory_format=torch.contiguous_format).eval() for m in predictor.models]
    return Deployable(models, p.mean, p.std, bool(p.to_rgb and predictor.channels == 1), predictor.task.name,
                      predictor.task.num_classes, isinstance(predictor.task, CornTask),
                      predictor.temperature).eval()


def export_run(run_dir: str | os.PathLike, fmt: str = "onnx", out: str | os.PathLike | None = None) -> Path:
    """Write the run's deployable model; returns the file. ONNX has a dynamic batch axis named ``batch``."""
    from medbench.fileio import atomic_path
    from medbench.predict import Predictor

    if fmt not in FORMATS:
        raise MedbenchError(f"unknown export format '{fmt}'; valid: {', '.join(FORMATS)}")
    predictor = Predictor(run_dir, device="cpu")
    module = deployable(predictor)
    example = torch.zeros(2, predictor.channels, predictor.size, predictor.size, dtype=torch.uint8)
    path = Path(out) if out else Path(run_dir) / FORMATS[fmt]
    if fmt == "torchscript":
        with torch.no_grad(), warnings.catch_warnings(), atomic_path(path) as tmp:
            warnings.simplefilter("ignore")  # TorchScript's deprecation notice: the file still loads with torch
            torch.jit.save(torch.jit.trace(module, example), str(tmp))
        return path
    from importlib.util import find_spec

    if find_spec("onnx") is None or find_spec("onnxscript") is None:
        raise MedbenchError("ONNX export needs onnx and onnxscript: pip install 'medbench[export]'")
    with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (example,), dynamo=True, input_names=["image"],
                                    output_names=["probabilities"], opset_version=ONNX_OPSET,
                                    dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
        program.save(str(tmp))
    return path
