"""Train a class-conditional DCGAN on a dataset's training split; save, load and sample its generator.

A generator directory holds ``generator.safetensors`` (weights + a JSON description in the metadata, so the file
alone can be sampled), ``losses.csv`` (one row per epoch), ``samples/epoch_NNNN.png`` (a fixed-noise grid per
checkpoint, one row per class) and ``quality.json`` (how often a classifier trained on the real images assigns
generated ones to their intended class).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from medbench.data import ImageDataset, load_dataset
from medbench.data.store import gather, on_disk
from medbench.engine import resolve_device, seed_everything
from medbench.errors import MedbenchError
from medbench.fileio import save_image_grid, write_csv, write_text
from medbench.gan.generator import GENERATOR, save_generator, to_uint8
from medbench.gan.model import Discriminator, Generator
from medbench.gan.quality import quality
from medbench.progress import console, progress_bar
from medbench.rundir import claim_new, locked

LOSSES = "losses.csv"
SINGLE_LABEL = ("binary", "multiclass", "ordinal")


def _check_task(ds: ImageDataset) -> None:
    if ds.task not in SINGLE_LABEL:
        raise MedbenchError(f"{ds.name} is a {ds.task} dataset; the conditional GAN needs one class per image "
                            f"(binary, multi-class or ordinal datasets)")


def train_gan(dataset: str | ImageDataset, out: str | Path, *, size: int = 28, epochs: int = 50,
              batch_size: int = 64, lr: float = 2e-4, latent_dim: int = 100, width: int = 64, seed: int = 0,
              device: str = "auto", checkpoints: int = 5, judge_epochs: int = 10, data_dir=None,
              quiet: bool = False) -> dict:
    """Train on the training split; write the generator, the loss log, sample grids and the quality summary.

    ``checkpoints`` evenly spaced epochs (and the last) save the generator and a sample grid. Returns the
    quality summary (None entries when ``judge_epochs`` is 0).
    """
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
                save_generator(g, out / GENERATOR, {**meta, "epoch": epoch})
            if not quiet:
                console.print(f"epoch {epoch}/{epochs}  loss D {ld:.3f}  G {lg:.3f}  D(x) {dx:.2f}  D(G(z)) {dgz:.2f}")
    summary = quality(out, ds, epochs=judge_epochs, seed=seed, data_dir=data_dir, quiet=quiet) if judge_epochs \
        else None
    return {"generator": str(out / GENERATOR), "epochs": epochs, "seconds": round(time.perf_counter() - t0, 1),
            "quality": summary}
