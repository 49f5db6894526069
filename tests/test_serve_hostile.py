"""medbench serve under hostile input: the real ``medbench serve`` process (uvicorn) on 127.0.0.1, driven over
raw sockets and httpx. Its TMPDIR is a private folder, so whatever it spools there can be measured.

Server limits here: --max-bytes 4 MiB, default --max-pixels (50 M), --max-concurrent 1, --queue-timeout 0.5.
"""
from __future__ import annotations

import io
import json
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

LIMIT = 4 * 2 ** 20
FRAMING = 64 * 1024  # the multipart framing serve allows on top of --max-bytes


@dataclass
class Server:
    url: str
    port: int
    pid: int
    tmp: Path
    log: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(chest_run, medmnist_dir, cache_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("server-tmpdir")
    log = tmp_path_factory.mktemp("server-log") / "stderr.txt"
    port = _free_port()
    env = {**os.environ, "TMPDIR": str(tmp), "MEDBENCH_DATA": str(medmnist_dir), "MEDBENCH_CACHE": str(cache_dir)}
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "medbench", "serve", str(chest_run), "--port", str(port),
                                 "--quiet", "--max-bytes", str(LIMIT), "--max-concurrent", "1",
                                 "--queue-timeout", "0.5"], env=env, stdout=subprocess.DEVNULL, stderr=err)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/model", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail(f"medbench serve did not start: {log.read_text()[-2000:]}")
    yield Server(url, port, proc.pid, tmp, log)
    proc.terminate()
    proc.wait(30)


# ---- measuring and talking to the server ---------------------------------------------------------------------
def temp_bytes(pid: int, folder: Path) -> int:
    """Bytes in the server's temp folder: named files plus unlinked ones it holds open (Python's TemporaryFile,
    which Starlette's multipart spool rolls over to, has no name in the folder)."""
    sizes: dict[tuple[int, int], int] = {}
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                st = os.stat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            sizes[(st.st_dev, st.st_ino)] = st.st_size
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            if os.readlink(f"{fd_dir}/{fd}").startswith(str(folder)):
                st = os.stat(f"{fd_dir}/{fd}")
                sizes[(st.st_dev, st.st_ino)] = st.st_size
        except (FileNotFoundError, PermissionError):
            continue
    return sum(sizes.values())


class TempWatch:
    """Polls :func:`temp_bytes` in a thread; ``peak`` is the most seen."""

    def __init__(self, server: Server):
        self.server, self.peak, self._stop = server, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, temp_bytes(self.server.pid, self.server.tmp))
            time.sleep(0.002)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)


def multipart_chunks(boundary: str, size: int, *, chunk=64 * 1024, head=b"", ctype="image/png"):
    """A multipart body with one file part of ``size`` bytes (``head`` then zeros), chunk by chunk."""
    yield (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n'
           f'Content-Type: {ctype}\r\n\r\n').encode() + head
    block, sent = b"\0" * chunk, len(head)
    while sent < size:
        yield block[:size - sent]
        sent += min(chunk, size - sent)
    yield f"\r\n--{boundary}--\r\n".encode()


def read_response(sock: socket.socket) -> tuple[int, dict, bytes]:
    """Status, headers and body of one HTTP/1.1 response (read until its Content-Length or the close)."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
        try:
            more = sock.recv(65536)
        except ConnectionResetError:
            break
        if not more:
            break
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 1 << 62


def chunked_post(port: int, path: str, chunks, *, boundary="medbench-boundary", pause=0.0, extra_headers=""):
    """POST a chunked body over a raw socket, stopping as soon as the server answers. -> (status, headers, body,
    bytes sent)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall((f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                      f"Content-Type: multipart/form-data; boundary={boundary}\r\n{extra_headers}\r\n").encode())
        try:
            for chunk in chunks:
                if select.select([sock], [], [], 0)[0]:  # answered early: stop sending
                    break
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
                if pause:
                    time.sleep(pause)
            else:
                sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        return (*read_response(sock), sent)


def assert_json_error(status: int, headers: dict, body: bytes, expected: int | tuple, text: str = "") -> dict:
    expected = (expected,) if isinstance(expected, int) else expected
    assert status in expected, (status, body[:300])
    assert headers["content-type"] == "application/json", headers
    error = json.loads(body)["error"]
    assert text in error and "/tmp" not in error, error
    return json.loads(body)


def post(server: Server, content: bytes, name="x.png", ctype="image/png", timeout=60) -> httpx.Response:
    return httpx.post(f"{server.url}/predict", files={"file": (name, content, ctype)}, timeout=timeout)


def png(width: int, height: int, rows: bytes | None = None) -> bytes:
    """A real 8-bit grey PNG, all black unless ``rows`` (filtered scanlines) are given: tiny on disk."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = rows if rows is not None else (b"\0" * (width + 1)) * height
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def pil_bytes(width: int, height: int, fmt: str, **kw) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, format=fmt, **kw)
    return buf.getvalue()


# ---- the body limit --------------------------------------------------------------------------------------------
def test_chunked_body_over_the_limit_is_413_json_and_never_spooled_past_it(server):
    """A chunked upload (no Content-Length) of up to 64 MiB: cut off with 413 JSON once it passes the limit; the
    server's temp folder never holds more than the limit."""
    with TempWatch(server) as watch:
        status, headers, body, sent = chunked_post(server.port, "/predict", multipart_chunks("b0", 64 * 2 ** 20),
                                                   boundary="b0", pause=0.002)
    assert_json_error(status, headers, body, 413, f"exceeds the limit of {LIMIT} bytes")
    assert headers.get("connection") == "close"
    assert sent < 16 * 2 ** 20, "the server should answer as soon as the limit is passed"
    assert 2 ** 20 <= watch.peak <= LIMIT + FRAMING, watch.peak  # it did spool to disk, never past the limit
    time.sleep(0.2)
    assert temp_bytes(server.pid, server.tmp) == 0  # the spool is gone with the request


def test_chunked_body_under_the_limit_is_served(server, shared_data):
    jpeg = sorted((shared_data / "chest_xray_subset" / "test" / "NORMAL").glob("*.jpeg"))[0].read_bytes()
    chunks = multipart_chunks("b1", len(jpeg), head=jpeg, ctype="image/jpeg")
    status, headers, body, _ = chunked_post(server.port, "/predict", chunks, boundary="b1")
    assert status == 200, body
    assert set(json.loads(body)["probabilities"]) == {"NORMAL", "PNEUMONIA"}


def test_declared_length_over_the_limit_is_413_before_reading(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: 1500000000\r\n\r\n")
        status, headers, body = read_response(sock)
    assert_json_error(status, headers, body, 413, "1500000000 bytes exceeds the limit")


# ---- the pixel limit -----------------------------------------------------------------------------------------------
def test_100000x1_png_is_cheap_and_a_longer_side_is_413(server):
    """Resized before it is padded, a 377-byte 100000x1 PNG costs a few MB (it once asked for 27.9 GiB); a side
    over the decoder's MAX_SIDE is refused from the header."""
    bomb = png(100_000, 1)
    assert len(bomb) < 1000
    for content in (bomb, png(1, 100_000)):
        r = post(server, content)
        assert r.status_code == 200 and sum(r.json()["probabilities"].values()) == pytest.approx(1), r.text
    r = post(server, png(300_000, 1))
    assert_json_error(r.status_code, r.headers, r.content, 413, "300000x1 exceeds the limit of 131072 pixels per side")
    assert _rss_peak(server.pid) < 3 * 2 ** 30


def test_7000x7000_png_is_decoded_within_bounds(server):
    """49 Mpx, under the default 50 M limit: decoded and answered (160 KB on disk); the server's RSS stays
    bounded."""
    r = post(server, png(7000, 7000))
    assert r.status_code == 200, r.text
    assert _rss_peak(server.pid) < 3 * 2 ** 30


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "GIF", "BMP", "DICOM", "deflated DICOM"])
def test_every_format_over_max_pixels_is_413(server, fmt, tmp_path):
    """8000x8000 = 64 Mpx (over 50 M) in every accepted format, each small on the wire."""
    if fmt == "PNG":
        content = png(8000, 8000)
    elif fmt == "TIFF":
        content = pil_bytes(8000, 8000, "TIFF", compression="tiff_deflate")
    elif fmt == "GIF":
        content = pil_bytes(8000, 8000, "GIF")
    elif fmt == "BMP":  # a real BMP would be 64 MB: its header alone, declaring 8000x8000
        content = pil_bytes(8000, 8000, "BMP")[:2048]
    else:
        content = _dicom(tmp_path / "big.dcm", 8000, deflated=fmt.startswith("deflated"))
    assert len(content) < LIMIT
    r = post(server, content, name="x", ctype="application/octet-stream")
    assert_json_error(r.status_code, r.headers, r.content, 413, "8000x8000")


def test_deflated_dicom_bomb_is_413_before_pydicom_inflates_it(server, tmp_path):
    """pydicom inflates a deflated DICOM whole before reading its header: 300 MB of zeros (300 KB on the wire)
    is refused while being inflated in steps."""
    small = _dicom(tmp_path / "small.dcm", 4, deflated=True)
    start = 132 + 12 + struct.unpack("<I", small[140:144])[0]  # after the file meta group
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = b"\0" * 2 ** 20
    bomb = small[:start] + b"".join(deflater.compress(block) for _ in range(300)) + deflater.flush()
    assert len(bomb) < LIMIT
    r = post(server, bomb, name="x.dcm", ctype="application/dicom")
    assert_json_error(r.status_code, r.headers, r.content, 413, "inflates to more than")


def _dicom(path: Path, side: int, deflated: bool) -> bytes:
    """A DICOM declaring side x side pixels: deflated (a real, compressible file), else with only a few pixels."""
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from conftest import write_dicom

    if deflated:
        write_dicom(path, np.zeros((side, side), np.uint8))
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        ds.save_as(path, enforce_file_format=True)
    else:
        write_dicom(path, np.zeros((4, 4), np.uint8))
        ds = pydicom.dcmread(path)
        ds.Rows = ds.Columns = side
        ds.save_as(path, enforce_file_format=True)
    return path.read_bytes()


def _rss_peak(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


# ---- the concurrency bound -----------------------------------------------------------------------------------------
def test_uploads_beyond_the_concurrency_bound_get_503_json_never_500(server):
    """Six 7000x7000 PNGs at once against one slot and a 0.5 s wait: some are served, the rest 503 JSON with
    Retry-After; no 500."""
    content = png(7000, 7000)
    results: list[httpx.Response] = []

    def send():
        results.append(post(server, content))

    threads = [threading.Thread(target=send) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    codes = sorted(r.status_code for r in results)
    assert len(codes) == 6 and set(codes) <= {200, 503} and 200 in codes and 503 in codes, codes
    for r in results:
        if r.status_code == 503:
            assert_json_error(r.status_code, r.headers, r.content, 503, "busy")
            assert r.headers["retry-after"] == "1"


# ---- malformed requests ----------------------------------------------------------------------------------------
MALFORMED = {
    "bad boundary": (b"multipart/form-data; boundary=zzz", b"--other\r\nContent-Disposition: form-data; "
                     b'name="file"; filename="x"\r\n\r\nabc\r\n--other--\r\n'),
    "no boundary": (b"multipart/form-data", b"--b\r\n\r\nabc\r\n--b--\r\n"),
    "truncated multipart": (b"multipart/form-data; boundary=b", b'--b\r\nContent-Disposition: form-data; '
                            b'name="file"; filename="x"\r\n\r\nabc'),
    "garbage part headers": (b"multipart/form-data; boundary=b", b"--b\r\n\xff\xfe\x00\r\n\r\nabc\r\n--b--\r\n"),
    "no part name": (b"multipart/form-data; boundary=b", b'--b\r\nContent-Disposition: form-data; filename="x"'
                     b"\r\n\r\nabc\r\n--b--\r\n"),
    "non-UTF-8 field name": (b"multipart/form-data; boundary=b", b'--b\r\nContent-Disposition: form-data; '
                             b'name="\xff\xfe"; filename="\xc3\x28"\r\n\r\nabc\r\n--b--\r\n'),
    "non-UTF-8 filename": (b"multipart/form-data; boundary=b", b'--b\r\nContent-Disposition: form-data; '
                           b'name="file"; filename="\xc3\x28\xff"\r\nContent-Type: image/png\r\n\r\nabc\r\n--b--\r\n'),
    "non-UTF-8 text field": (b"multipart/form-data; boundary=b", b'--b\r\nContent-Disposition: form-data; '
                             b'name="file"\r\n\r\n\xff\xfe\xfd\r\n--b--\r\n'),
    "bad charset": (b"multipart/form-data; boundary=b; charset=nope", b'--b\r\nContent-Disposition: form-data; '
                    b'name="file"\r\n\r\nabc\r\n--b--\r\n'),
    "urlencoded": (b"application/x-www-form-urlencoded", b"file=%ff%fe&x"),
    "json": (b"application/json", b'{"file": '),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_multipart_is_4xx_json(server, case):
    ctype, body = MALFORMED[case]
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s"
                     % (ctype, len(body), body))
        status, headers, answer = read_response(sock)
    assert_json_error(status, headers, answer, (400, 413, 415, 422))


@pytest.mark.parametrize("raw", [
    b"GARBAGE\r\n\r\n",
    b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n",
    b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n",
], ids=["request line", "chunk size", "content length", "header name"])
def test_malformed_http_is_400_json(server, raw):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(raw)
        status, headers, body = read_response(sock)
    assert_json_error(status, headers, body, 400, "malformed HTTP request")


def test_unexpected_errors_are_json_and_logged(chest_run):
    """The last-resort handlers on the real app: MemoryError -> 503, anything else -> 400, both JSON."""
    from fastapi.testclient import TestClient

    from medbench.serve import create_app

    app = create_app([chest_run])

    @app.get("/boom/{kind}")
    def boom(kind: str):
        raise MemoryError() if kind == "memory" else RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/boom/memory")
        assert r.status_code == 503 and r.headers["content-type"] == "application/json"
        assert "memory" in r.json()["error"]
        r = client.get("/boom/bug")
        assert r.status_code == 400 and r.json()["error"].startswith("the request could not be processed")
