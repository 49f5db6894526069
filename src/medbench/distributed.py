"""Data-parallel runs under ``torchrun``: which rank am I, which samples are mine, and gathering predictions.

One process is the common case: then every helper here is a no-op.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def block(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` samples (shares differ by at most one)."""
        per, extra = divmod(n, self.world)
        start = self.rank * per + min(self.rank, extra)
        return slice(start, start + per + (self.rank < extra))

    def gather_rows(self, t: torch.Tensor, n: int) -> torch.Tensor:
        """Concatenate every rank's ``block`` of rows, in rank order: the full ``n`` rows on every rank."""
        if not self.active:
            return t
        width = -(-n // self.world)  # blocks padded to the largest so all_gather sees equal shapes
        padded = t.new_zeros((width, *t.shape[1:]))
        padded[: len(t)] = t
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        return torch.cat([p[: self._len(r, n)] for r, p in enumerate(parts)])

    def _len(self, rank: int, n: int) -> int:
        per, extra = divmod(n, self.world)
        return per + (rank < extra)

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.active:
            dist.all_reduce(t)
        return t


def is_main_process() -> bool:
    """Rank 0 of a ``torchrun`` job (or a plain process), known before :func:`setup` joins the group."""
    return int(os.environ.get("RANK", "0")) == 0


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group that ``torchrun`` describes in the environment (gloo on CPU, NCCL on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local_rank), device
