"""A saved generator: ``generator.safetensors`` (weights + a JSON description in the metadata, so the file alone can
be sampled), loading it, sampling it, and writing samples as a MedMNIST-layout .npz."""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from medbench.errors import MedbenchError
from medbench.fileio import atomic_path
from medbench.gan.model import Generator

GENERATOR, FORMAT = "generator.safetensors", "medbench-dcgan-1"
QUALITY = "quality.json"  # beside the generator: the judge's per-class check (medbench.gan.quality)
QUALITY_KEY = "medbench_quality"  # the npz member `gan sample` copies it into (JSON as uint8 bytes)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x.float() + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8)


def save_generator(g: Generator, path: Path, meta: dict) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in g.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT, "config": json.dumps(meta)})


def _resolve_generator_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / GENERATOR
    if not path.is_file():
        raise MedbenchError(f"{path} not found: pass a `medbench gan train` output folder or its {GENERATOR}")
    return path


def load_generator(path: str | Path, device="cpu") -> tuple[Generator, dict]:
    """The generator and its description (dataset, size, channels, classes, ...) from a folder or file."""
    path = _resolve_generator_file(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors' own error types for damaged files
        raise MedbenchError(f"{path}: cannot read the generator ({e}); retrain it with `medbench gan train`") from None
    if meta.get("format") != FORMAT:
        raise MedbenchError(f"{path} is not a medbench generator (no '{FORMAT}' metadata)")
    info = json.loads(meta["config"])
    g = Generator(len(info["class_names"]), info["channels"], info["size"], info["latent_dim"], info["width"])
    g.load_state_dict(state)
    return g.to(device).eval(), info


@torch.no_grad()
def generate(g: Generator, labels: torch.Tensor, *, seed: int = 0, batch_size: int = 512) -> torch.Tensor:
    """uint8 images ``[N, C, H, W]`` for the class indices ``labels``, reproducible for a seed."""
    device = next(g.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, len(labels), batch_size):
        y = labels[start:start + batch_size].to(device)
        z = torch.randn(len(y), g.latent_dim, generator=gen).to(device)
        out.append(to_uint8(g(z, y)).cpu())
    return torch.cat(out) if out else torch.empty(0, g.channels, g.size, g.size, dtype=torch.uint8)


def sample_to_npz(generator: str | Path, per_class: int, out: str | Path, *, seed: int = 0) -> dict:
    """``per_class`` images of every class into a MedMNIST-layout npz (``train_images`` [N, H, W] or
    [N, H, W, 3], ``train_labels`` [N, 1], uint8). Returns a summary."""
    if per_class < 1:
        raise MedbenchError(f"--per-class must be at least 1, got {per_class}")
    g, info = load_generator(generator)
    k = len(info["class_names"])
    labels = torch.arange(k).repeat_interleave(per_class)
    images = generate(g, labels, seed=seed)
    arr = images.permute(0, 2, 3, 1).numpy()
    arr = arr[..., 0] if arr.shape[-1] == 1 else arr
    out = Path(out)
    buf = io.BytesIO()
    # the generator's quality.json travels with its samples, so `train --synthetic FILE.npz` can check them
    file = _resolve_generator_file(generator)
    record = {"generator_sha256": file_sha256(file), "quality": _quality_for(file)}
    np.savez_compressed(buf, train_images=arr, train_labels=labels.numpy().astype(np.uint8)[:, None],
                        **{QUALITY_KEY: np.frombuffer(json.dumps(record).encode(), np.uint8)})
    with atomic_path(out) as tmp:
        tmp.write_bytes(buf.getvalue())
    return {"path": str(out), "n": len(labels), "classes": info["class_names"], "size": info["size"],
            "channels": info["channels"], "quality": record["quality"] is not None}


def _quality_for(file: Path) -> dict | None:
    """quality.json beside the generator when it judged these very weights (its sha256 matches), else None."""
    try:
        quality = json.loads((file.parent / QUALITY).read_text())
    except (OSError, ValueError):
        return None
    judged = quality.get("generator_sha256") if isinstance(quality, dict) else None
    return quality if isinstance(quality, dict) and judged in (None, file_sha256(file)) else None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
