"""MedMNIST downloads and their verification: bounded in bytes and time, MD5-checked, renamed into place whole.

A download streams into a hidden ``.NAME.*.part`` file in the data root, at most :func:`max_download_bytes` bytes
within :func:`default_deadline` seconds (each wait for data at most :data:`READ_TIMEOUT_S`), checks its MD5
against the catalogue's and is renamed onto its final name; on any failure (SIGTERM included) the part file goes.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import os
import signal
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from medbench.data.medmnist_info import data_root, expected_bytes, expected_md5, file_name, url_for
from medbench.errors import MedbenchError
from medbench.fileio import no_room, no_room_error

READ_TIMEOUT_S = 30.0  # connect, and then the longest wait for the next byte
DEADLINE_S: float | None = None  # the whole download; None: derived from the size (see default_deadline)
DEADLINE_MIN_S = 120.0
SLOWEST_RATE = 256 << 10  # bytes/s: the slowest mirror the derived deadline still waits for


@functools.lru_cache(maxsize=64)
def _md5_cached(path: str, _size: int, _mtime_ns: int) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def md5sum(path: str | os.PathLike) -> str:
    st = os.stat(path)
    return _md5_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def by_hand(name: str, size: int, dest: Path) -> str:
    return (f"Download {url_for(name, size)} by hand and save it as {dest} "
            f"(md5 {expected_md5(name, size)}), or point --data-dir / MEDBENCH_DATA at a folder that has it.")


def max_download_bytes(name: str, size: int = 28) -> int:
    """Most bytes a download may bring: the raw arrays plus room for npz/zip headers. Compressed npz is never
    much larger than its raw arrays (deflate grows incompressible data by < 0.1 %), and INFO has no file sizes."""
    raw = expected_bytes(name, size)
    return raw + raw // 16 + (64 << 10)


def default_deadline(cap: int) -> float:
    """:data:`DEADLINE_S` when set, else enough time for ``cap`` bytes at :data:`SLOWEST_RATE` (2 min at least)."""
    return DEADLINE_S if DEADLINE_S is not None else max(DEADLINE_MIN_S, cap / SLOWEST_RATE)


class _Terminated(BaseException):  # not an Exception: no handler on the way may swallow it
    pass


@contextlib.contextmanager
def _sigterm_raises():
    """While a download runs in the main thread, SIGTERM raises so that ``finally`` blocks remove the .part file;
    afterwards the signal goes again to the handler that was there before (by default: the process ends as killed
    by SIGTERM). SIGKILL cannot be caught: its hidden ``.NAME.*.part`` file is deleted by a later download once
    stale."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous in (signal.SIG_IGN, None):  # ignored (or set outside Python): leave it so
        yield
        return
    caught = []

    def handler(signum, frame):
        caught.append(signum)
        raise _Terminated()

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if caught:
            os.kill(os.getpid(), signal.SIGTERM)


def _remove_stale_parts(root: Path, name: str, deadline: float) -> None:
    """Delete ``.NAME.*.part`` files that a SIGKILLed download left: any not written to for longer than a live
    download may run (its deadline) cannot belong to one."""
    now = time.time()
    for p in root.glob(f".{name}.*.part"):
        try:
            if now - p.stat().st_mtime > deadline + READ_TIMEOUT_S:
                p.unlink()
        except OSError:
            pass


def download(name: str, size: int = 28, data_dir=None, *, progress: bool = True, timeout: float = READ_TIMEOUT_S,
             deadline: float | None = None) -> Path:
    """Fetch ``name`` at ``size`` into the data root: temp file, MD5 check, atomic rename.

    At most :func:`max_download_bytes` are accepted (a larger Content-Length is refused before the body);
    ``timeout`` bounds the connect and every wait for data, ``deadline`` (default :func:`default_deadline`) the
    whole download. The .part file is removed on every failure, SIGTERM included.
    """
    md5 = expected_md5(name, size)
    root = data_root(data_dir)
    dest = root / file_name(name, size)
    url = url_for(name, size)
    cap = max_download_bytes(name, size)
    deadline = default_deadline(cap) if deadline is None else deadline

    def fail(what: str) -> MedbenchError:
        return MedbenchError(f"download of {url} {what}. {by_hand(name, size, dest)}")

    with _sigterm_raises():
        try:
            root.mkdir(parents=True, exist_ok=True)
            _remove_stale_parts(root, dest.name, deadline)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=root)
        except OSError as e:
            raise MedbenchError(f"cannot write to data folder {root} ({e.strerror}); use --data-dir or MEDBENCH_DATA "
                                f"to choose a writable one") from e
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                digest = _fetch(url, out, cap, timeout, deadline, fail, progress, dest.name)
                out.flush()
                os.fsync(out.fileno())
            if digest != md5:
                raise fail(f"is corrupted: md5 {digest}, expected {md5}")
            os.replace(tmp, dest)
        except OSError as e:
            code = no_room(e)
            if code is None:
                raise
            raise no_room_error(dest, code) from e
        finally:
            tmp.unlink(missing_ok=True)
    return dest


def _set_read_timeout(resp, seconds: float) -> None:
    # urllib exposes no way to change the socket timeout after urlopen; without it a slow drip could overrun
    # the deadline by up to one read timeout
    sock = getattr(getattr(resp.fp, "raw", None), "_sock", None)
    if sock is not None:
        sock.settimeout(max(seconds, 0.01))


def _fetch(url: str, out, cap: int, timeout: float, deadline: float, fail, progress: bool, label: str) -> str:
    """Stream ``url`` into ``out`` within ``cap`` bytes and ``deadline`` seconds -> the body's MD5."""
    end = time.monotonic() + deadline
    try:
        resp = urllib.request.urlopen(url, timeout=min(timeout, deadline))
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        reason = f"HTTP {e.code} {e.reason}" if isinstance(e, urllib.error.HTTPError) else (
            f"not an HTTP reply: {e!r}" if not isinstance(e, (OSError, ValueError)) else
            getattr(e, "reason", None) or e)
        if isinstance(reason, TimeoutError) or isinstance(e, TimeoutError):
            reason = f"no reply within {min(timeout, deadline):g} s"
        raise fail(f"failed ({reason})") from e
    h, got = hashlib.md5(), 0
    with resp:
        total = resp.length  # Content-Length (None when absent or not a number)
        if total is not None and total > cap:
            raise fail(f"declares {total} bytes (Content-Length), more than the {cap} this file can take")
        from medbench.progress import progress_bar  # rich: imported only when a download runs

        with progress_bar(f"download {label}", total=total, enabled=progress, unit="bytes") as bar:
            while chunk := _read_some(resp, end, timeout, deadline, got, fail):
                got += len(chunk)
                if got > cap:
                    raise fail(f"sent more than {cap} bytes, more than this file can take")
                out.write(chunk)
                h.update(chunk)
                bar.advance(len(chunk))
    if total is not None and got != total:
        raise fail(f"is truncated: {got} of {total} bytes")
    return h.hexdigest()


def _read_some(resp, end: float, timeout: float, deadline: float, got: int, fail) -> bytes:
    """The next bytes that arrive (b"" at the end), within the read timeout and the overall deadline."""
    left = end - time.monotonic()
    if left <= 0:
        raise fail(f"did not finish within {deadline:g} s ({got} bytes arrived)")
    _set_read_timeout(resp, min(timeout, left))
    try:
        return resp.read1(1 << 20)  # read() would wait for a whole chunk, past any deadline
    except TimeoutError as e:
        if time.monotonic() >= end - 0.01:
            raise fail(f"did not finish within {deadline:g} s ({got} bytes arrived)") from e
        raise fail(f"stalled: no data for {timeout:g} s after {got} bytes") from e
    except (OSError, urllib.error.URLError, http.client.HTTPException) as e:
        if no_room(e) is not None:
            raise
        raise fail(f"broke off after {got} bytes ({e})") from e
