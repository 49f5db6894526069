"""Train a class-conditional DCGAN on a dataset's training split; save, load and sample its generator.

A generator directory holds ``generator.safetensors`` (weights + a JSON description in the metadata, so the file
alone can be sampled), ``losses.csv`` (one row per epoch), ``samples/epoch_NNNN.png`` (a fixed-noise grid per
checkpoint, one row per class) and ``quality.json`` (how often a classifier trained on the real images assigns
generated ones to their intended class).
"""
from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from medbench.data import ImageDataset, load_dataset
from medbench.data.store import gather, on_disk
from medbench.engine import resolve_device, seed_everything
from medbench.errors import MedbenchError
from medbench.fileio import atomic_path, save_image_grid, write_csv, write_json, write_text
from medbench.gan.model import Discriminator, Generator
from medbench.progress import console, progress_bar

GENERATOR, LOSSES, QUALITY, FORMAT = "generator.safetensors", "losses.csv", "quality.json", "medbench-dcgan-1"
SINGLE_LABEL = ("binary", "multiclass", "ordinal")


def _check_task(ds: ImageDataset) -> None:
    if ds.task not in SINGLE_LABEL:
        raise MedbenchError(f"{ds.name} is a {ds.task} dataset; the conditional GAN needs one class per image "
                            f"(binary, multi-class or ordinal datasets)")


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x.float() + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8)


def _save_generator(g: Generator, path: Path, meta: dict) -> None:
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
    except Exception as e:  # safetensors' own error types for damaged files
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
    np.savez_compressed(buf, train_images=arr, train_labels=labels.numpy().astype(np.uint8)[:, None])
    with atomic_path(out) as tmp:
        tmp.write_bytes(buf.getvalue())
    return {"path": str(out), "n": len(labels), "classes": info["class_names"], "size": info["size"],
            "channels": info["channels"]}


def train_gan(dataset: str | ImageDataset, out: str | Path, *, size: int = 28, epochs: int = 50,
              batch_size: int = 64, lr: float = 2e-4, latent_dim: int = 100, width: int = 64, seed: int = 0,
              device: str = "auto", checkpoints: int = 5, judge_epochs: int = 10, data_dir=None,
              quiet: bool = False) -> dict:
    """Train on the training split; write the generator, the loss log, sample grids and the quality summary.

    ``checkpoints`` evenly spaced epochs (and the last) save the generator and a sample grid. Returns the
    quality summary (None entries when ``judge_epochs`` is 0).
    """
    from medbench.rundir import claim_new, locked

    out = claim_new(out, "GAN", GENERATOR)
    with locked(out, "medbench gan train"):
        return _train_gan(dataset, out, size=size, epochs=epochs, batch_size=batch_size, lr=lr,
                          latent_dim=latent_dim, width=width, seed=seed, device=device, checkpoints=checkpoints,
                          judge_epochs=judge_epochs, data_dir=data_dir, quiet=quiet)


def _train_gan(dataset: str | ImageDataset, out: Path, *, size: int, epochs: int, batch_size: int, lr: float,
               latent_dim: int, width: int, seed: int, device: str, checkpoints: int, judge_epochs: int, data_dir,
               quiet: bool) -> dict:
    if epochs < 1 or batch_size < 2:
        raise MedbenchError("gan train needs --epochs >= 1 and --batch-size >= 2")
    ds = dataset if isinstance(dataset, ImageDataset) else load_dataset(dataset, size, data_dir=data_dir,
                                                                        progress=not quiet)
    _check_task(ds)
    seed_everything(seed)
    dev = resolve_device(device)
    real = ds["train"].images  # read a batch at a time when it is a store on disk
    real = real.to(dev) if not on_disk(real) else real
    labels = ds["train"].labels[:, 0].to(dev)
    k, c, s = ds.num_classes, real.shape[1], real.shape[-1]
    g = Generator(k, c, s, latent_dim, width).to(dev)
    d = Discriminator(k, c, s, width).to(dev)
    opt_g = torch.optim.Adam(g.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=lr, betas=(0.5, 0.999))
    meta = {"dataset": ds.name, "task": ds.task, "class_names": ds.class_names, "size": s, "channels": c,
            "latent_dim": latent_dim, "width": width, "epochs": epochs, "batch_size": batch_size, "lr": lr,
            "seed": seed, "data_md5": ds.md5}
    save_at = {round(epochs * (i + 1) / max(checkpoints, 1)) for i in range(max(checkpoints, 1))} | {epochs}
    fixed_y = torch.arange(k, device=dev).repeat_interleave(8)
    fixed_z = torch.randn(len(fixed_y), latent_dim, generator=torch.Generator().manual_seed(seed)).to(dev)
    order_gen = torch.Generator().manual_seed(seed)
    n = len(real)
    steps = n // batch_size + (n % batch_size >= 2)
    rows: list[dict] = []
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "gan.json", json.dumps(meta, indent=2) + "\n")
    t0 = time.perf_counter()
    with progress_bar(f"DCGAN on {ds.name}", total=epochs * steps, enabled=not quiet) as bar:
        for epoch in range(1, epochs + 1):
            g.train(), d.train()
            sums = torch.zeros(4, device=dev)
            order = torch.randperm(n, generator=order_gen).to(dev)
            for start in range(0, n, batch_size):
                idx = order[start:start + batch_size]
                if len(idx) < 2:
                    break
                x = gather(real, idx).to(dev, non_blocking=True).float().div_(127.5).sub_(1)
                y = labels[idx]
                z = torch.randn(len(idx), latent_dim, device=dev)
                fake = g(z, y)
                # discriminator: real -> 1, fake -> 0
                d_real, d_fake = d(x, y), d(fake.detach(), y)
                loss_d = (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                          + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
                opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                opt_d.step()
                # generator: make the discriminator call its fakes real (the non-saturating loss)
                d_gen = d(fake, y)
                loss_g = F.binary_cross_entropy_with_logits(d_gen, torch.ones_like(d_gen))
                opt_g.zero_grad(set_to_none=True)
                loss_g.backward()
                opt_g.step()
                sums += torch.stack([loss_d.detach(), loss_g.detach(), torch.sigmoid(d_real).mean().detach(),
                                     torch.sigmoid(d_gen).mean().detach()])
                bar.advance(1)
            ld, lg, dx, dgz = (sums / steps).tolist()
            rows.append({"epoch": epoch, "loss_d": round(ld, 5), "loss_g": round(lg, 5), "d_real": round(dx, 4),
                         "d_fake": round(dgz, 4), "seconds": round(time.perf_counter() - t0, 2)})
            write_csv(out / LOSSES, rows)
            bar.set(f"loss D {ld:.3f} G {lg:.3f}")
            if epoch in save_at:
                g.eval()
                with torch.no_grad():
                    grid = to_uint8(g(fixed_z, fixed_y))
                save_image_grid(grid, out / "samples" / f"epoch_{epoch:04d}.png", per_row=8)
                _save_generator(g, out / GENERATOR, {**meta, "epoch": epoch})
            if not quiet:
                console.print(f"epoch {epoch}/{epochs}  loss D {ld:.3f}  G {lg:.3f}  D(x) {dx:.2f}  D(G(z)) {dgz:.2f}")
    summary = quality(out, ds, epochs=judge_epochs, seed=seed, data_dir=data_dir, quiet=quiet) if judge_epochs \
        else None
    return {"generator": str(out / GENERATOR), "epochs": epochs, "seconds": round(time.perf_counter() - t0, 1),
            "quality": summary}


def quality(generator_dir: str | Path, ds: ImageDataset, *, epochs: int = 10, per_class: int = 200, seed: int = 0,
            data_dir=None, quiet: bool = False) -> dict:
    """Train a judge (the ``fast`` recipe's cnn5, on the real training split, chosen on validation) into
    ``generator_dir/judge`` and report, per class, the share of generated images it assigns to the intended
    class beside its recall on the real test images (the ceiling that share can be read against)."""
    from medbench.run import build_task, load_run_model, train
    from medbench.config import resolve_config
    from medbench.engine import predict_logits
    from medbench.run import _preprocess

    generator_dir = Path(generator_dir)
    judge_dir = generator_dir / "judge"
    cfg = resolve_config({"dataset": ds.name, "size": ds.size, "recipe": "fast", "epochs": epochs, "seed": seed,
                          "device": "cpu" if not torch.cuda.is_available() else "auto"})
    if not (judge_dir / "config.yaml").exists():
        train(cfg, judge_dir, dataset=ds, quiet=True, data_dir=data_dir, report=False)
    g, info = load_generator(generator_dir)
    dev = resolve_device(cfg.device)
    task = build_task(cfg, ds)
    judge = load_run_model(judge_dir, cfg, ds, task, dev)
    prep = _preprocess(cfg, ds)
    k = ds.num_classes
    wanted = torch.arange(k).repeat_interleave(per_class)
    fake = generate(g.to(dev), wanted, seed=seed + 1)

    def predicted(images):
        images = images if on_disk(images) else images.to(dev)  # predict_logits copies disk batches to dev
        split = type(ds["test"])(images, torch.zeros(len(images), 1, dtype=torch.long))
        return torch.as_tensor(task.decide(task.scores(predict_logits(judge, split, prep, 256)))).flatten()

    fake_pred = predicted(fake)
    test_pred = predicted(ds["test"].images)
    test_y = ds["test"].labels[:, 0]
    per = {}
    for c, name in enumerate(ds.class_names):
        real_c = test_y == c
        per[name] = {"generated_as_intended": round(float((fake_pred[wanted == c] == c).float().mean()), 4),
                     "real_test_recall": round(float((test_pred[real_c] == c).float().mean()), 4)
                     if real_c.any() else None}
    summary = {"judge": {"run": str(judge_dir), "model": cfg.model, "epochs": epochs,
                         "test_acc": round(float((test_pred == test_y).float().mean()), 4)},
               "per_class_samples": per_class,
               "generated_as_intended_mean": round(float(np.mean([v["generated_as_intended"] for v in per.values()])),
                                                   4),
               "per_class": per}
    write_json(generator_dir / QUALITY, summary)
    if not quiet:
        console.print(f"quality: share of {per_class} generated images per class that the judge ({cfg.model}, "
                      f"test acc {summary['judge']['test_acc']:.3f}) assigns to the intended class")
        for name, v in per.items():
            recall = "n/a" if v["real_test_recall"] is None else f"{v['real_test_recall']:.3f}"
            console.print(f"  {name[:40]:<40} generated {v['generated_as_intended']:.3f}   real test recall {recall}")
    return summary


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
