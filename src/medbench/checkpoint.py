"""Checkpointing: the selected weights, the K best epochs, and the full training state to resume from.

``save_resume`` writes everything needed to continue exactly (weights, optimizer, scheduler, gradient scaler, every
RNG, history, best-so-far; within an epoch the loader's position and the epoch's sums) as one safetensors file,
atomically; ``load_resume`` checks it against the run's config and ``restore`` puts it back.
"""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from medbench.config import RunConfig
from medbench.engine import WeightEMA
from medbench.errors import MedbenchError
from medbench.fileio import atomic_path, write_json
from medbench.rundir import CHECKPOINT_INDEX, CHECKPOINTS, CONFIG, METRICS, RESUME


def save_weights(model: torch.nn.Module, path: Path, cfg: RunConfig, epoch: int) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp),
                  metadata={"model": cfg.model, "epoch": str(epoch)})


class KeptCheckpoints:
    """The K best epochs' weights by validation score in ``checkpoints/``, listed best first in index.json.

    A new file is written and the index updated before a displaced file is deleted, so the index never names
    a missing file."""

    def __init__(self, run_dir: Path, k: int):
        self.folder, self.k, self.entries = Path(run_dir) / CHECKPOINTS, k, []

    def offer(self, model: torch.nn.Module, cfg: RunConfig, epoch: int, score: float) -> None:
        if self.k == 0 or (len(self.entries) == self.k and score <= self.entries[-1]["_score"]):
            return
        name = f"epoch_{epoch:04d}.safetensors"
        save_weights(model, self.folder / name, cfg, epoch)
        self.entries.append({"epoch": epoch, "file": name, "_score": score,
                             f"val_{cfg.select_metric}": None if not math.isfinite(score) else
                             (-score if cfg.select_metric == "loss" else score)})
        self.entries.sort(key=lambda e: (-e["_score"], e["epoch"]))
        dropped = self.entries[self.k:]
        self.entries = self.entries[:self.k]
        write_json(self.folder / CHECKPOINT_INDEX, [{k: v for k, v in e.items() if k != "_score"}
                                                    for e in self.entries])
        for e in dropped:
            (self.folder / e["file"]).unlink(missing_ok=True)


def save_resume(out: Path, model, opt, sched, precision, gen: torch.Generator, device: torch.device,
                 info: dict, ema: WeightEMA | None = None, partial: dict | None = None,
                 batches_state: torch.Tensor | None = None) -> None:
    """Everything needed to continue after epoch ``info["epoch"]`` exactly: weights, optimizer, scheduler,
    gradient scaler, every RNG, history and best-so-far. One safetensors file (tensors; the rest as JSON in its
    metadata), written atomically: a crash leaves the previous file.

    Within an epoch, ``partial`` (:func:`medbench.engine.epoch_state`, plus the ``epoch`` in progress) is the
    loader's position and the epoch's sums so far, and ``batches_state`` the batch-order generator at the epoch's
    start, from which the same order is drawn again."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.module.state_dict().items()})
    osd = opt.state_dict()
    plain: dict = {}
    for pid, st in osd["state"].items():
        for name, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{pid}.{name}"] = v.detach().cpu().contiguous()
            else:
                plain.setdefault(str(pid), {})[name] = v
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.batches"] = gen.get_state() if batches_state is None else batches_state
    if partial is not None:
        tensors["partial.scores"] = partial["scores"].contiguous()
        tensors["partial.labels"] = partial["labels"].contiguous()
        info = {**info, "partial": {k: v for k, v in partial.items() if k not in ("scores", "labels")}}
    if device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    np_state = np.random.get_state()
    state = {**info, "optimizer": {"param_groups": osd["param_groups"], "state": plain, "entries": len(osd["state"])},
             "scheduler": sched.state_dict(),
             "scaler": precision.scaler.state_dict() if precision.scaler is not None else None,
             "rng_numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]], "rng_python": random.getstate()}
    with atomic_path(out / RESUME) as tmp:
        save_file(tensors, str(tmp), metadata={"medbench_resume": json.dumps(state)})


def load_resume(out: Path, cfg: RunConfig) -> tuple[dict, dict]:
    """(tensors, state) of ``out/resume.safetensors``; a clear error when missing, damaged or from other settings."""
    from safetensors import safe_open

    path = out / RESUME
    if not path.is_file():
        done = (out / METRICS).is_file()
        raise MedbenchError(f"{out}: nothing to resume ({RESUME} missing): "
                            + ("the run already finished" if done else
                               "it was killed before its first epoch ended; delete the folder and train again"))
    try:
        with safe_open(str(path), framework="pt") as f:
            state = json.loads(f.metadata()["medbench_resume"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors' own error types for truncated or corrupt files
        raise MedbenchError(f"{path}: damaged resume state ({type(e).__name__}: {e}); delete it and retrain") from None
    if state.get("config") != cfg.model_dump(mode="json"):
        raise MedbenchError(f"{path} was saved with other settings than {out / CONFIG}; refusing to mix them")
    missing = [k for k in ("epoch", "best", "best_epoch", "history", "kept", "train_seconds", "optimizer",
                           "scheduler", "rng_numpy", "rng_python") if k not in state]
    missing += [k for k in ("rng.torch", "rng.batches") if k not in tensors]
    if state.get("partial"):
        missing += [k for k in ("partial.scores", "partial.labels") if k not in tensors]
        missing += [f"partial.{k}" for k in ("epoch", "step", "lr", "loss_sum", "seen", "first_bad", "seconds")
                    if k not in state["partial"]]
    opt = state.get("optimizer") or {}
    saved = len({k.split(".")[1] for k in tensors if k.startswith("optim.")} | set(opt.get("state") or {}))
    if not missing and saved != opt.get("entries", saved):
        missing.append(f"optimizer state of {opt['entries'] - saved} of {opt['entries']} parameters")
    if missing:
        raise MedbenchError(f"{path} is incomplete (missing {', '.join(missing[:4])}): resuming would not continue "
                            f"the same training; delete {RESUME} and the run, and train again")
    return tensors, state


def restore(tensors: dict, state: dict, model, opt, sched, precision, gen: torch.Generator,
             device: torch.device) -> None:
    try:
        model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    except RuntimeError as e:  # missing or mis-shaped weights in the resume file
        raise MedbenchError(f"{RESUME}: its model weights do not fit the run's model "
                            f"({' '.join(str(e).split())[:200]}); delete it and the run, and train again") from None
    groups = state["optimizer"]["param_groups"]
    for g in groups:
        for key, v in g.items():
            if isinstance(v, list) and key != "params":
                g[key] = tuple(v)  # JSON turned tuples (betas) into lists
    ostate: dict = {int(pid): dict(v) for pid, v in state["optimizer"]["state"].items()}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, name = k.split(".", 2)
            ostate.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": ostate, "param_groups": groups})
    for group in opt.param_groups:  # moments in the parameter's memory layout (channels_last), as Adam made them
        for param in group["params"]:
            st = opt.state.get(param, {})
            for name, v in st.items():
                if torch.is_tensor(v) and v.shape == param.shape and v.stride() != param.stride():
                    st[name] = torch.empty_like(param).copy_(v)
    sched.load_state_dict(state["scheduler"])
    if precision.scaler is not None and state.get("scaler"):
        precision.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(tensors["rng.torch"])
    gen.set_state(tensors["rng.batches"])
    if device.type == "cuda" and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)
    name, keys, *rest = state["rng_numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    version, internal, gauss = state["rng_python"]
    random.setstate((version, tuple(internal), gauss))

