"""``medbench serve`` under a hostile load, over loopback: status codes, server peak RSS, bytes in its temp folder,
and a normal client's latency before and during the attack.

Starts the real server (``python -m medbench serve RUN_DIR --quiet``, default limits) with a private TMPDIR,
measures a normal client (small BreastMNIST PNGs, one at a time) alone, then again while ``--attackers`` threads
upload 7000x7000 images (PNG, deflate TIFF, deflated DICOM: small on the wire, 49 Mpx each) and 100000x1 PNGs,
and ``--chunked`` threads stream ``--chunked-gb`` GB chunked bodies from a generator (each stops when the server
answers). Everything is bounded: ``--rounds`` uploads per attacker and a ``--deadline`` in seconds.
Without RUN_DIR a cnn5 run (1 epoch, BreastMNIST) is trained first into a temporary folder.

Usage: ``python benchmarks/serve_attack.py [RUN_DIR] [--attackers 20] [--rounds 3] [--chunked 2]``; prints a table
and one JSON line, writes ``benchmarks/results/serve-attack.json``. Exits 1 if any answer is a 5xx other than 503.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import select
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from serve_load import DATA, ROOT, free_port, wait_until_up  # the sibling benchmark script


def default_run(tmp: Path) -> Path:
    from medbench.run import train

    os.environ.setdefault("MEDBENCH_DATA", str(DATA / "medmnist"))
    return train({"dataset": "breastmnist", "model": "cnn5", "epochs": 1, "seed": 0}, tmp / "run", quiet=True,
                 report=False)


# ---- payloads ----------------------------------------------------------------------------------------------------
def png(width: int, height: int) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    deflater, row = zlib.compressobj(9), b"\0" * (width + 1)
    idat = b"".join(deflater.compress(row) for _ in range(height)) + deflater.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def tiff(side: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (side, side)).save(buf, format="TIFF", compression="tiff_deflate")
    return buf.getvalue()


def deflated_dicom(side: int, folder: Path) -> bytes:
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    path = folder / "big.dcm"
    ds = FileDataset(str(path), Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(side * side)
    ds.save_as(path, enforce_file_format=True)
    return path.read_bytes()


def normal_images() -> list[bytes]:
    from PIL import Image

    images = np.load(DATA / "medmnist" / "breastmnist.npz")["test_images"][:50]
    out = []
    for img in images:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


# ---- measuring ------------------------------------------------------------------------------------------------------
def temp_bytes(pid: int, folder: Path) -> int:
    """Named files in the server's temp folder plus the unlinked ones it holds open (multipart spools)."""
    sizes = {}
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                st = os.stat(os.path.join(root, name))
                sizes[st.st_ino] = st.st_size
            except FileNotFoundError:
                pass
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(str(folder)):
                st = os.stat(f"/proc/{pid}/fd/{fd}")
                sizes[st.st_ino] = st.st_size
        except OSError:
            pass
    return sum(sizes.values())


def rss(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in bytes; psutil is not a dependency, /proc has both."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


class Monitor(threading.Thread):
    def __init__(self, pid: int, folder: Path):
        super().__init__(daemon=True)
        self.pid, self.folder, self.stop = pid, folder, threading.Event()
        self.peak_temp, self.peak_rss = 0, 0

    def run(self):
        while not self.stop.is_set():
            try:
                self.peak_temp = max(self.peak_temp, temp_bytes(self.pid, self.folder))
                self.peak_rss = max(self.peak_rss, rss(self.pid)[1])
            except (FileNotFoundError, ProcessLookupError):
                return
            time.sleep(0.005)


# ---- clients ---------------------------------------------------------------------------------------------------
def chunked_post(port: int, gigabytes: float, deadline: float) -> tuple[int, int]:
    """Stream a chunked multipart body of ``gigabytes`` from a generator; stop when the server answers.
    -> (status, bytes sent)."""
    boundary, block, sent, total = "attack", b"\0" * 2 ** 16, 0, int(gigabytes * 1e9)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall((f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nContent-Type: "
                      f"multipart/form-data; boundary={boundary}\r\n\r\n").encode())
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
                f"Content-Type: image/png\r\n\r\n").encode()
        try:
            sock.sendall(b"%x\r\n%s\r\n" % (len(head), head))
            while sent < total and time.time() < deadline and not select.select([sock], [], [], 0)[0]:
                sock.sendall(b"%x\r\n%s\r\n" % (len(block), block))
                sent += len(block)
            if sent >= total:
                tail = f"\r\n--{boundary}--\r\n".encode()
                sock.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(tail), tail))
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = b""
        try:
            while b"\r\n" not in data and (more := sock.recv(4096)):
                data += more
        except (ConnectionResetError, TimeoutError):
            pass
    status = int(data.split()[1]) if data.startswith(b"HTTP/") else 0  # 0: no answer
    return status, sent


def upload(client: httpx.Client, url: str, content: bytes, name: str, ctype: str) -> tuple[int, float]:
    t0 = time.perf_counter()
    try:
        r = client.post(f"{url}/predict", files={"file": (name, content, ctype)})
        status = r.status_code
        if status >= 400 and r.headers.get("content-type") != "application/json":
            status = -status  # a non-JSON error: counted apart
    except httpx.HTTPError:
        status = 0
    return status, time.perf_counter() - t0


def quantiles(latencies: list[float]) -> dict:
    if len(latencies) < 2:
        return {"n": len(latencies)}
    q = statistics.quantiles(sorted(latencies), n=100, method="inclusive")
    return {"n": len(latencies), "p50_ms": round(q[49] * 1000, 1), "p99_ms": round(q[98] * 1000, 1),
            "max_ms": round(max(latencies) * 1000, 1)}


def attack(url: str, port: int, args, payloads: dict, normal: list[bytes]) -> tuple[dict, list[float], Counter]:
    counts: dict[str, Counter] = {kind: Counter() for kind in [*payloads, "chunked"]}
    lock, done, deadline = threading.Lock(), threading.Event(), time.time() + args.deadline
    chunked_sent: list[int] = []

    def attacker(i: int):
        kinds = list(payloads)
        with httpx.Client(timeout=120) as client:
            for r in range(args.rounds):
                if time.time() > deadline:
                    return
                kind = kinds[(i + r) % len(kinds)]
                status, _ = upload(client, url, payloads[kind], "x", "application/octet-stream")
                with lock:
                    counts[kind][status] += 1

    def chunker():
        status, sent = chunked_post(port, args.chunked_gb, deadline)
        with lock:
            counts["chunked"][status] += 1
            chunked_sent.append(sent)

    latencies, normal_counts = [], Counter()

    def normal_client():
        with httpx.Client(timeout=120) as client:
            i = 0
            while not done.is_set() and time.time() < deadline:
                status, dt = upload(client, url, normal[i % len(normal)], "x.png", "image/png")
                normal_counts[status] += 1
                if status == 200:
                    latencies.append(dt)
                i += 1

    threads = [threading.Thread(target=attacker, args=(i,)) for i in range(args.attackers)]
    threads += [threading.Thread(target=chunker) for _ in range(args.chunked)]
    watcher = threading.Thread(target=normal_client)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    watcher.join()
    out = {kind: dict(sorted(c.items())) for kind, c in counts.items()}
    out["chunked_bytes_sent"] = chunked_sent
    return out, latencies, normal_counts


def baseline(url: str, normal: list[bytes], n: int) -> list[float]:
    with httpx.Client(timeout=60) as client:
        for content in normal[:10]:  # warm-up
            upload(client, url, content, "x.png", "image/png")
        return [upload(client, url, normal[i % len(normal)], "x.png", "image/png")[1] for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", nargs="?", type=Path)
    ap.add_argument("--attackers", type=int, default=20, help="threads uploading large images (default 20)")
    ap.add_argument("--rounds", type=int, default=3, help="uploads per attacker (default 3)")
    ap.add_argument("--chunked", type=int, default=2, help="threads streaming a huge chunked body (default 2)")
    ap.add_argument("--chunked-gb", type=float, default=1.5, help="size of each chunked body (default 1.5 GB)")
    ap.add_argument("--deadline", type=float, default=240, help="seconds after which the attack stops")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve-attack.json")
    args = ap.parse_args()
    normal = normal_images()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run_dir = args.run_dir or default_run(tmp)
        payloads = {"png_7000": png(7000, 7000), "tiff_7000": tiff(7000),
                    "dicom_7000_deflated": deflated_dicom(7000, tmp), "png_100000x1": png(100_000, 1)}
        server_tmp = tmp / "server-tmp"
        server_tmp.mkdir()
        port = free_port()
        env = {**os.environ, "TMPDIR": str(server_tmp)}
        server = subprocess.Popen([sys.executable, "-m", "medbench", "serve", str(run_dir), "--port", str(port),
                                   "--quiet"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_up(url, server)
            before = baseline(url, normal, 50)
            rss_before = rss(server.pid)[1]
            monitor = Monitor(server.pid, server_tmp)
            monitor.start()
            t0 = time.time()
            counts, during, normal_counts = attack(url, port, args, payloads, normal)
            wall = time.time() - t0
            monitor.stop.set()
            monitor.join()
        finally:
            server.terminate()
            server.wait(30)
    counts["normal"] = dict(sorted(normal_counts.items()))
    bad = sum(n for c in counts.values() if isinstance(c, dict) for s, n in c.items()
              if (s >= 500 and s != 503) or s < 0)
    result = {"benchmark": "serve-attack", "attackers": args.attackers, "rounds": args.rounds,
              "chunked": args.chunked, "chunked_gb": args.chunked_gb, "wall_s": round(wall, 1),
              "payload_bytes": {k: len(v) for k, v in payloads.items()}, "status_counts": counts,
              "bad_answers": bad, "server_peak_rss_mb": round(monitor.peak_rss / 2 ** 20),
              "server_rss_before_attack_mb": round(rss_before / 2 ** 20),
              "server_peak_temp_bytes": monitor.peak_temp,
              "normal_latency_before": quantiles(before), "normal_latency_during": quantiles(during),
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'kind':<22}{'status counts (0 = no answer, negative = non-JSON error)'}")
    for kind, c in counts.items():
        print(f"{kind:<22}{c}")
    b, d = result["normal_latency_before"], result["normal_latency_during"]
    print(f"server peak RSS {result['server_peak_rss_mb']} MB "
          f"(before the attack {result['server_rss_before_attack_mb']} MB); peak temp {monitor.peak_temp} bytes; "
          f"normal p50/p99 before {b.get('p50_ms')}/{b.get('p99_ms')} ms, "
          f"during {d.get('p50_ms')}/{d.get('p99_ms')} ms; {bad} bad answers; {wall:.0f} s")
    print(json.dumps(result))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
