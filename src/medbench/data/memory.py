"""The memory budget that decides whether a dataset is held whole in memory or read from a store on disk.

Auto: half of the RAM the kernel reports available (``MemAvailable``) when the data is loaded, leaving the rest to
the model, the optimiser, batches and the page cache; on CUDA a split is moved to the GPU only when it takes at most
half of the GPU's free memory. ``MEDBENCH_MEMORY_BUDGET`` (GB, e.g. ``4`` or ``0.5``; ``0`` = always stream) or a
run's ``memory_budget`` setting replaces the automatic figure.
"""
from __future__ import annotations

import os

import torch

from medbench.errors import MedbenchError

BUDGET_ENV = "MEDBENCH_MEMORY_BUDGET"
RAM_SHARE = 0.5
GPU_SHARE = 0.5
GB = 1 << 30


def available_ram() -> int:
    """Bytes of RAM available to new allocations (``MemAvailable``; total RAM where /proc is missing)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_budget(gb: float | None = None) -> int:
    """Bytes a dataset's decoded pixels may take in RAM: ``gb`` when given, else ``$MEDBENCH_MEMORY_BUDGET``, else
    :data:`RAM_SHARE` of the available RAM."""
    if gb is None:
        text = os.environ.get(BUDGET_ENV, "").strip()
        if text:
            try:
                gb = float(text)
            except ValueError:
                gb = -1.0
            if not gb >= 0:
                raise MedbenchError(f"{BUDGET_ENV}={text!r} is not a size in GB (e.g. 4 or 0.5; 0 streams every "
                                    f"dataset from disk); fix or unset it")
    if gb is not None:
        return int(gb * GB)
    return int(RAM_SHARE * available_ram())


def fits_in_memory(nbytes: int, gb: float | None = None) -> bool:
    return nbytes <= memory_budget(gb)


def fits_on_device(nbytes: int, device: torch.device) -> bool:
    """Whether data of ``nbytes`` may live on ``device`` whole (the CPU: already decided by the RAM budget)."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= GPU_SHARE * free
