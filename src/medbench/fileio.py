"""Atomic file writes: a reader sees the old file or the new one, never a half-written one."""
from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medbench.errors import MedbenchError


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# errno values that mean "no room": a full disk, a file-size limit (ulimit -f), a disk quota
_NO_ROOM = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


def no_room(e: BaseException) -> int | None:
    """The errno when ``e`` says the disk (or a size limit or quota) is full: an ``OSError``, or another library's
    error that carries the OS error in its text (safetensors: "... File too large (os error 27)")."""
    if isinstance(e, OSError) and e.errno in _NO_ROOM:
        return e.errno
    m = re.search(r"\(os error (\d+)\)", str(e))
    return int(m.group(1)) if m and int(m.group(1)) in _NO_ROOM else None


def no_room_error(path: str | os.PathLike, code: int) -> MedbenchError:
    return MedbenchError(f"cannot write {path}: {os.strerror(code)} (the disk, a disk quota or the file-size limit "
                         f"is full); free some space and run again (the previous {Path(path).name}, if any, is "
                         f"unchanged)")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces ``path`` (fsync + rename).

    On any failure the temporary file is removed and ``path`` keeps its old content (or stays absent); a full disk
    (or file-size limit, or quota) becomes one :class:`MedbenchError` naming ``path``.
    """
    path = Path(path)
    mode = 0o666 & ~_umask()  # mkstemp makes 0600 files; results should be as readable as any other file
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(name)
        os.close(fd)
        yield tmp
        os.chmod(tmp, mode)  # again: some writers (safetensors) replace the file they were given
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as e:
        code = no_room(e)
        if code is not None:
            raise no_room_error(path, code) from e
        raise
    finally:
        if tmp is not None and tmp.exists():
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


# ---- reading a run directory's own files: damaged or hostile content is one clear line, never a traceback ----

def read_text(path: str | os.PathLike, what: str, fix: str) -> str:
    """The UTF-8 text of ``path``; missing, a folder, unreadable or not UTF-8: a :class:`MedbenchError` that
    names the file, the problem and ``fix`` (what the user should do)."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        problem = "not found"
    except IsADirectoryError:
        problem = f"is a folder, not the {what}"
    except UnicodeDecodeError as e:
        problem = f"not UTF-8 text (byte {e.start}: {e.reason})"
    except OSError as e:
        problem = f"cannot be read ({e.strerror or e})"
    raise MedbenchError(f"{path}: {problem}; {fix}")


def read_json(path: str | os.PathLike, what: str, fix: str, kind: type = dict) -> Any:
    """A JSON file whose top level must be ``kind``; a damaged one is one :class:`MedbenchError` naming the file,
    where it breaks and ``fix``."""
    text = read_text(path, what, fix)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise MedbenchError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); {fix}") from None
    except RecursionError:  # [[[[... nested deeper than the parser's stack
        raise MedbenchError(f"{path}: nested too deeply to read; {fix}") from None
    if not isinstance(data, kind):
        raise MedbenchError(f"{path}: holds a JSON {type(data).__name__}, expected a JSON "
                            f"{'object' if kind is dict else kind.__name__}; {fix}")
    return data
