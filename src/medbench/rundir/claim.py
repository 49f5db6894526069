"""Who may write into an output folder: ownership checks and a lock held for a writer's whole life.

A writer (``train``, ``evaluate``, ``gan train``) only writes into a new or empty folder, or into the kind of
folder it made itself (a run directory to resume or re-evaluate). While it writes, it holds ``.medbench.lock``
there: an advisory ``flock`` that the kernel releases on any exit, SIGKILL included, so a lock left by a dead
process never blocks; the file names the holder (pid, host, command) for the error a second writer gets.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from medbench.errors import MedbenchError

LOCK = ".medbench.lock"
_held: dict[Path, int] = {}  # folder -> depth: train holds the lock while its own evaluate runs


def claim_new(out: str | os.PathLike, what: str, marker: str, flag: str = "--out", resumable: bool = False) -> Path:
    """Check that ``out`` may receive a new ``what`` (e.g. "run"): absent, or an empty writable folder.
    ``marker`` is the file that says the folder already holds one (refused; ``resumable``: with the way to
    continue it)."""
    out = Path(out)
    if (out / marker).exists():
        more = f", or continue a killed {what} with --resume {out}" if resumable else ""
        raise MedbenchError(f"{out} already holds a {what} ({marker} exists); choose another {flag} or delete "
                            f"it{more}")
    return claim(out, what, flag=flag)


def claim(out: str | os.PathLike, what: str, ours: tuple[str, ...] = (), flag: str = "--out") -> Path:
    """``out`` if it is absent, an empty folder, or a folder that holds one of ``ours`` (a ``what`` medbench
    made, to continue); anything else, a user's folder above all, is refused untouched."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MedbenchError(f"{out} is a file, not a folder; give {flag} a new or empty folder")
    if out.is_dir() and not any((out / m).exists() for m in ours):
        entries = sorted(p.name for p in out.iterdir() if p.name != LOCK)
        if entries:
            shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
            raise MedbenchError(f"{out} is not empty and is not a medbench {what} (it holds {shown}); medbench "
                                f"writes only into a new or empty folder: choose another {flag}")
    _check_writable(out, flag)
    return out


def _check_writable(out: Path, flag: str) -> None:
    parent = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not parent.is_dir():
        raise MedbenchError(f"{parent} is a file, so {out} cannot be created; give {flag} a folder path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MedbenchError(f"cannot write to {parent} (permission denied or read-only); give {flag} a writable "
                            f"folder")


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
        return f"{info.get('command', 'another medbench command')} (pid {info.get('pid')} on {info.get('host')})"
    except (OSError, ValueError):
        return "another medbench command"


@contextmanager
def locked(folder: str | os.PathLike, command: str) -> Iterator[Path]:
    """Hold the folder's lock (creating the folder if needed) for the block; a folder this call created and that
    holds nothing but the lock afterwards (a writer that failed early) is removed again."""
    folder = Path(folder).absolute()
    if folder in _held:
        _held[folder] += 1
        try:
            yield folder
        finally:
            _held[folder] -= 1
        return
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = _acquire(folder / LOCK)
    except OSError as e:
        if created:
            _remove_if_bare(folder)
        raise MedbenchError(f"cannot write to {folder} ({e.strerror}); choose a writable folder") from None
    except MedbenchError:
        if created:
            _remove_if_bare(folder)
        raise
    try:
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                                 "since": time.strftime("%Y-%m-%dT%H:%M:%S")}).encode())
        remove_stale_temporaries(folder)
        _held[folder] = 1
        try:
            yield folder
        finally:
            del _held[folder]
            (folder / LOCK).unlink(missing_ok=True)  # before unlocking: a waiter re-checks the inode
    finally:
        os.close(fd)  # releases the flock
        if created:
            _remove_if_bare(folder)


def _acquire(path: Path) -> int:
    """An open, exclusively flocked descriptor of ``path``, emptied. The holder unlinks the file before it
    unlocks, so a lock taken on a file that is no longer at ``path`` is stale: try again with the new one."""
    import fcntl

    for _ in range(10):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            raise MedbenchError(f"{path.parent} is in use by {_holder(path)}; wait for it to finish (or stop "
                                f"it) before writing there") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            return fd
        os.close(fd)
    raise MedbenchError(f"{path.parent}: cannot take its lock (another writer keeps replacing {path.name}); "
                        f"try again")


def _remove_if_bare(folder: Path) -> None:
    try:
        if folder.is_dir() and not any(p.name != LOCK for p in folder.iterdir()):
            (folder / LOCK).unlink(missing_ok=True)
            folder.rmdir()
    except OSError:
        pass


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the ``.NAME.*.tmp`` files that atomic writes of a killed process left (only under the lock, when no
    other writer can own them)."""
    gone = []
    for p in folder.rglob(".*.tmp"):
        try:
            p.unlink()
            gone.append(p)
        except OSError:
            pass
    return gone
