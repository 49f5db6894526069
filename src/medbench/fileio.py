"""Atomic file writes: a reader sees the old file or the new one, never a half-written one."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces ``path`` (fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files; results should be as readable as any other file
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_csv(path: str | os.PathLike, rows: list[dict]) -> None:
    """Rows of equal keys -> a CSV file with a header, atomically."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def save_image_grid(images, path: str | os.PathLike, per_row: int, scale: int = 2) -> None:
    """uint8 ``[N, C, H, W]`` -> a PNG grid (``per_row`` images a row, white gaps, enlarged ``scale`` times)."""
    from PIL import Image
    from torchvision.utils import make_grid

    grid = make_grid(images.cpu(), nrow=per_row, padding=2, pad_value=255)
    if scale > 1:
        grid = grid.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    with atomic_path(path) as tmp:
        Image.fromarray(grid.permute(1, 2, 0).contiguous().numpy()).save(tmp, format="PNG")
