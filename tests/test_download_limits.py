"""Hostile mirrors and npz decompression bombs: downloads stop at the size cap and the deadline, leave no file,
survive SIGTERM cleanly; npz files are refused from their .npy headers before any big allocation.

Everything runs against real HTTP servers on 127.0.0.1 and real files; no mocks.
"""
from __future__ import annotations

import http.server
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from medbench.cli import main
from medbench.data import medmnist, medmnist_download
from medbench.data.medmnist import download, max_download_bytes
from medbench.errors import MedbenchError

from conftest import make_npz

CAP = max_download_bytes("breastmnist", 28)


# ---- hostile mirrors -----------------------------------------------------------------------------------------

class _Hostile(http.server.BaseHTTPRequestHandler):
    """Base: counts what it sent; every loop is bounded and ends when the client hangs up."""

    sent = 0
    seconds = None  # from the request to the end of the reply (the client hanging up ends it)

    def log_message(self, *args):
        pass

    def handle_one_request(self):
        start = time.monotonic()
        try:
            super().handle_one_request()
        finally:
            type(self).seconds = time.monotonic() - start

    def _send(self, data: bytes) -> bool:
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:  # the client gave up: what the tests want
            return False
        type(self).sent += len(data)
        return True


class _Endless(_Hostile):
    """No Content-Length and a body that never ends (bounded here at 64 MB)."""

    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        block = b"\0" * 65536
        for _ in range(1024):
            if not self._send(block):
                return


class _Drip(_Hostile):
    """Promises the right size, then sends one byte every 0.2 s (bounded at 60 s)."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "559580")
        self.end_headers()
        for _ in range(300):
            if not self._send(b"P"):
                return
            time.sleep(0.2)


class _Huge(_Hostile):
    """Declares a terabyte."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(10 ** 12))
        self.end_headers()
        for _ in range(64):
            if not self._send(b"\0" * 65536):
                return


class _Silent(_Hostile):
    """Headers, then nothing at all (bounded at 20 s)."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "559580")
        self.end_headers()
        self.wfile.flush()
        time.sleep(20)


@pytest.fixture
def hostile(mirror):
    """Start a hostile handler (counters reset) as the mirror; returns its base URL."""
    def start(handler) -> str:
        handler.sent, handler.seconds = 0, None
        return mirror(handler=handler)
    return start


def _files(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


@pytest.mark.parametrize("handler, fragment, most_s", [
    (_Endless, f"sent more than {CAP} bytes", 5),
    (_Drip, "did not finish within 2 s", 4),
    (_Huge, f"declares {10 ** 12} bytes (Content-Length), more than the {CAP}", 2),
], ids=["endless-body", "slow-drip", "huge-content-length"])
def test_hostile_mirror_stops_with_one_line(hostile, monkeypatch, tmp_path, capsys, handler, fragment, most_s):
    base = hostile(handler)
    monkeypatch.setattr(medmnist_download, "DEADLINE_S", 2.0)  # the default for this size is 2 minutes
    data, out = tmp_path / "data", tmp_path / "run"
    capsys.readouterr()
    start = time.monotonic()
    code = main(["train", "--dataset", "breastmnist", "--data-dir", str(data), "--out", str(out)])
    took = time.monotonic() - start  # includes the imports that `train` does first
    lines = capsys.readouterr().err.splitlines()
    for _ in range(100):  # the server sees the hang-up within its next write
        if handler.seconds is not None:
            break
        time.sleep(0.05)
    print(f"\n{handler.__name__}: server sent {handler.sent} bytes in {handler.seconds:.2f} s (command "
          f"{took:.2f} s): {lines}")
    assert code == 2 and len(lines) == 1 and lines[0].startswith("medbench: error: "), lines
    assert f"{base}breastmnist.npz" in lines[0] and fragment in lines[0], lines[0]
    assert "by hand and save it as" in lines[0] and str(data / "breastmnist.npz") in lines[0]
    assert _files(data) == [] and not out.exists()
    assert handler.seconds < most_s and took < 60


def test_endless_body_writes_no_more_than_the_cap(hostile, tmp_path):
    hostile(_Endless)
    root = tmp_path / "data"
    start = time.monotonic()
    with pytest.raises(MedbenchError, match=f"sent more than {CAP} bytes"):
        download("breastmnist", 28, data_dir=root, progress=False, deadline=10)
    print(f"\nendless body refused after {time.monotonic() - start:.2f} s; the server pushed {_Endless.sent} bytes")
    assert _files(root) == []
    assert _Endless.sent < 1024 * 65536  # the client hung up long before the server's own 64 MB bound


def test_silent_mirror_is_a_stall_not_a_hang(hostile, tmp_path):
    hostile(_Silent)
    start = time.monotonic()
    with pytest.raises(MedbenchError, match="stalled: no data for 1 s after 0 bytes"):
        download("breastmnist", 28, data_dir=tmp_path, progress=False, timeout=1)
    assert time.monotonic() - start < 3 and _files(tmp_path) == []


def test_deadline_defaults_from_the_size():
    assert medmnist.DEADLINE_S is None
    assert medmnist.default_deadline(CAP) == medmnist.DEADLINE_MIN_S
    assert medmnist.default_deadline(10 ** 10) == pytest.approx(10 ** 10 / medmnist.SLOWEST_RATE)
    # every real file fits its cap
    for name in ("breastmnist", "pneumoniamnist", "retinamnist"):
        assert (Path(os.environ["MEDBENCH_DATA"]) / f"{name}.npz").stat().st_size < max_download_bytes(name, 28)


_DOWNLOAD = """
import sys
from medbench.data.medmnist import download
download("breastmnist", 28, data_dir=sys.argv[1], progress=False, deadline=60)
"""


def test_sigterm_mid_download_leaves_no_part_file(hostile, tmp_path):
    base = hostile(_Drip)
    root = tmp_path / "data"
    env = {**os.environ, "MEDBENCH_MIRROR": base, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _DOWNLOAD, str(root)], env=env, stderr=subprocess.PIPE)
    try:
        for _ in range(1200):  # until the drip has started; importing torch can take a while on a busy machine
            if _Drip.sent and any(n.endswith(".part") for n in _files(root)) or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert any(n.endswith(".part") for n in _files(root)), f"the download never started: {proc.poll()}"
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
    finally:
        proc.kill()
        proc.wait()
    assert code == -signal.SIGTERM  # ended as killed by SIGTERM, after cleaning up
    assert _files(root) == []


# ---- npz decompression bombs ----------------------------------------------------------------------------------

BOMB_N = 3_900_416  # (N, 28, 28) uint8: 3.06 GB declared, ~3 MB on disk
_CHUNK = 784 * 1024


def _npy(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _zeros_member(shape: tuple[int, ...]) -> tuple[bytes, int, int]:
    """Raw deflate of a .npy of zeros of ``shape`` (uint8, a multiple of _CHUNK bytes) -> (data, size, crc).

    After a sync flush the compressor emits the same bytes for every further chunk of zeros, so one compressed
    chunk repeated makes the stream: a 3 GB member in a few ms."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": shape})
    header = buf.getvalue()
    size = int(np.prod(shape))
    assert size % _CHUNK == 0
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    zero = bytes(_CHUNK)
    first = c.compress(header) + c.compress(zero) + c.flush(zlib.Z_SYNC_FLUSH)
    again = c.compress(zero) + c.flush(zlib.Z_SYNC_FLUSH)
    data = first + again * (size // _CHUNK - 1) + c.flush()
    crc = 0  # the CRC is checked only at the member's end: a reader refusing from the header never gets there
    return data, len(header) + size, crc


def _write_zip(path: Path, members: dict[str, tuple[bytes, int, int]]) -> Path:
    """A plain (non-zip64) zip of already-deflated members: name -> (raw deflate, size, crc)."""
    local, central = bytearray(), bytearray()
    for name, (data, size, crc) in members.items():
        fn = f"{name}.npy".encode()
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0, crc, len(data), size,
                               len(fn), 0, 0, 0, 0, 0, len(local)) + fn
        local += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, len(data), size, len(fn), 0)
        local += fn + data
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(local), 0)
    path.write_bytes(bytes(local + central + end))
    return path


def _deflated(arr: np.ndarray) -> tuple[bytes, int, int]:
    raw = _npy(arr)
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(raw) + c.flush(), len(raw), zlib.crc32(raw)


def write_bomb(path: Path, key: str = "train_images") -> Path:
    """A breastmnist-layout npz whose ``key`` declares (BOMB_N, 28, 28) uint8 zeros; the rest is small."""
    members = {}
    for s, n in (("train", 546), ("val", 78), ("test", 156)):
        members[f"{s}_images"] = _deflated(np.zeros((n, 28, 28), np.uint8))
        members[f"{s}_labels"] = _deflated(np.zeros((n, 1), np.uint8))
    members[key] = _zeros_member((BOMB_N, 28, 28))
    return _write_zip(path, members)


_MEASURE = """
import json, resource, sys
from pathlib import Path
import numpy as np
import medbench.data.medmnist as m
from medbench.errors import MedbenchError
from medbench.predict import _npz_images
from medbench.gan.synthetic import _from_npz
bomb, md5_dir, small = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
real = m.read_npz(small, "breastmnist", 28)
cases = {
    "read_npz": lambda: m.read_npz(bomb, "breastmnist", 28),
    "wrong_md5": lambda: m.load_medmnist("breastmnist", data_dir=md5_dir, progress=False),
    "predict": lambda: list(_npz_images(bomb)),
    "synthetic": lambda: _from_npz(bomb, real),
}
if len(sys.argv) > 4:  # what np.load (the reader before) does with the same file
    cases = {"np.load": lambda: np.load(bomb)["train_images"]}
out = {}
for name, call in cases.items():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        call()
        msg = None
    except MedbenchError as e:
        msg = str(e)
    except Exception as e:
        msg = f"{type(e).__name__}: {e}"
    out[name] = [msg, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def bomb_results(tmp_path_factory):
    """Each reader on the bomb, in one process: its refusal and its peak RSS growth in MiB."""
    tmp = tmp_path_factory.mktemp("bombs")
    bomb = write_bomb(tmp / "bomb.npz")
    assert bomb.stat().st_size < 4 << 20
    (tmp / "md5").mkdir()
    write_bomb(tmp / "md5" / "breastmnist.npz")  # where the data root expects the official file
    small = make_npz(tmp / "small.npz", num_classes=2)
    run = subprocess.run([sys.executable, "-c", _MEASURE, str(bomb), str(tmp / "md5"), str(small)],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr
    return bomb, tmp / "md5" / "breastmnist.npz", json.loads(run.stdout.splitlines()[-1])


@pytest.mark.parametrize("case", ["read_npz", "wrong_md5", "predict", "synthetic"])
def test_npz_bomb_is_refused_from_its_header(bomb_results, case):
    bomb, md5_bomb, results = bomb_results
    msg, grew_mib = results[case]
    print(f"\n{case}: peak RSS +{grew_mib} MiB: {msg}")
    assert msg is not None and "\n" not in msg, msg
    assert msg.startswith(str(md5_bomb if case == "wrong_md5" else bomb)), msg
    assert "train_images declares 3,057,926,144 bytes" in msg, msg
    assert grew_mib < 200


def test_wrong_md5_bomb_names_the_md5(bomb_results):
    _, md5_bomb, results = bomb_results
    msg = results["wrong_md5"][0]
    assert "it is not the official file either (md5" in msg and "not used" in msg and "save it as" in msg, msg
    assert md5_bomb.exists()  # reported, not deleted


def test_object_arrays_are_refused(tmp_path):
    path = make_npz(tmp_path / "breastmnist.npz", num_classes=2)
    arrays = dict(np.load(path))
    arrays["train_labels"] = np.array([{"a": 1}] * 60, dtype=object)[:, None]
    np.savez(path, **arrays)
    with pytest.raises(MedbenchError) as err:
        medmnist.read_npz(path, "breastmnist", 28)
    assert str(err.value).startswith(f"{path}: train_labels holds Python objects (dtype object)")


def test_budget_refuses_plausible_but_oversized_arrays(tmp_path):
    """Right dtype and image size, but more images than the catalogue allows: refused from the headers."""
    members = {}
    for s, n in (("train", 546), ("val", 78), ("test", 156)):
        members[f"{s}_images"] = _deflated(np.zeros((n, 28, 28), np.uint8))
        members[f"{s}_labels"] = _deflated(np.zeros((n, 1), np.uint8))
    members["train_images"] = _zeros_member((2048, 28, 28))
    members["train_labels"] = _deflated(np.zeros((2048, 1), np.uint8))
    path = _write_zip(tmp_path / "breastmnist.npz", members)
    with pytest.raises(MedbenchError, match="its arrays declare 1,791,370 bytes, more than the 1,000,000 a "
                                            "breastmnist file at 28 px can hold"):
        medmnist.read_npz(path, "breastmnist", 28, budget=1_000_000)


def test_a_sigkilled_downloads_part_file_is_removed_once_stale(tmp_path):
    """SIGKILL cannot be caught: the next download deletes a .part file older than any live download."""
    stale, fresh = tmp_path / ".breastmnist.npz.old1.part", tmp_path / ".breastmnist.npz.new1.part"
    for p in (stale, fresh):
        p.write_bytes(b"half a file")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    with pytest.raises(MedbenchError, match="download of .*breastmnist.npz failed"):
        download("breastmnist", data_dir=tmp_path, progress=False, deadline=60)  # the conftest's dead mirror
    assert not stale.exists() and fresh.exists()
