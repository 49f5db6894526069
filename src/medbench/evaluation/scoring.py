"""Scores of a run's splits: a network's (mean over members and flipped views) or a baseline's."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from medbench import baselines
from medbench.build import build_preprocess, load_run_model
from medbench.config import RunConfig
from medbench.data import ImageDataset
from medbench.engine import predict_logits


def baseline_scores(estimator, cfg: RunConfig, ds: ImageDataset, task, needed: list[str]) -> dict:
    return {s: baselines.scores(estimator, ds[s].images, task.name, task.num_classes, cfg.features) for s in needed}


def network_scores(run_dir: Path, cfg: RunConfig, ds: ImageDataset, task, device, dist, members: list[Path],
                    needed: list[str], tta: bool) -> tuple[dict, dict]:
    """Mean probabilities over networks (and flipped views) per split; the logits too when one network and one
    view make them (for the task's own loss). One network in memory at a time."""
    prep, views = build_preprocess(cfg, ds), 2 if tta else 1
    probs: dict[str, torch.Tensor] = {}
    single_logits: dict[str, torch.Tensor] = {}
    with fixed_conv_algorithms():
        for path in members:
            model = load_run_model(run_dir, cfg, ds, task, device, weights=path)
            for s in needed:
                for flip in range(views):
                    logits = predict_logits(model, ds[s], prep, cfg.eval_batch_size, dist=dist, flip=bool(flip))
                    p = task.scores(logits).double()
                    probs[s] = p if s not in probs else probs[s] + p
                    if len(members) == 1 and views == 1:
                        single_logits[s] = logits
            del model
    return {s: (p / (len(members) * views)).numpy() for s, p in probs.items()}, single_logits


@contextlib.contextmanager
def fixed_conv_algorithms():
    """cuDNN's heuristic convolution algorithms instead of benchmark mode's timed choice, so a run evaluated again
    (later, in another process) gets the same probabilities bit for bit on the same GPU; no effect on the CPU."""
    before = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before
