"""Load on ``medbench serve`` over loopback: requests/s and p50/p99 latency of single-image POST /predict.

Starts the real server (``python -m medbench serve RUN_DIR --quiet``) in its own process, waits for /model,
then sends ``--requests`` uploads of real chest X-ray JPEGs (cycling over the files) from ``--concurrency``
client threads, each with its own HTTP connection, for every concurrency given. Without RUN_DIR a 2-class
cnn5 run (2 epochs) on the chest X-ray folder is trained first into a temporary folder.

Usage: ``python benchmarks/serve_load.py [RUN_DIR] [--requests 300] [--concurrency 1 4] [--cam]``; writes
``benchmarks/results/serve-load.json`` and prints one table line per concurrency.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDBENCH_TEST_DATA", ROOT.parent / "shared" / "data"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, server: subprocess.Popen, seconds: float = 120) -> None:
    """Poll ``GET /model`` until the server answers; its stderr (when piped) in the error otherwise."""
    deadline = time.time() + seconds
    while time.time() < deadline and server.poll() is None:
        try:
            if httpx.get(f"{url}/model", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    said = server.stderr.read().decode()[-2000:] if server.stderr and server.poll() is not None else ""
    raise SystemExit(f"server did not start: {said}")


def default_run(tmp: Path) -> Path:
    from medbench.run import train

    return train({"dataset": f"folder:{DATA / 'chest_xray_subset'}", "model": "cnn5", "epochs": 2, "seed": 0},
                 tmp / "run", quiet=True, report=False)


def load(url: str, payloads: list[bytes], requests: int, concurrency: int, cam: bool) -> dict:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    counter = iter(range(requests))

    def client():
        nonlocal errors
        with httpx.Client(timeout=120) as c:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                r = c.post(f"{url}/predict", params={"cam": "true"} if cam else None,
                           files={"file": ("x.jpeg", payloads[i % len(payloads)], "image/jpeg")})
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
                    errors += r.status_code != 200

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = sorted(latencies)
    q = statistics.quantiles(lat, n=100, method="inclusive")
    return {"concurrency": concurrency, "requests": len(lat), "errors": errors, "wall_s": round(wall, 3),
            "requests_per_s": round(len(lat) / wall, 1), "p50_ms": round(q[49] * 1000, 2),
            "p99_ms": round(q[98] * 1000, 2), "max_ms": round(lat[-1] * 1000, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", nargs="?", type=Path)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--cam", action="store_true", help="ask for the Grad-CAM overlay too")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve-load.json")
    args = ap.parse_args()
    files = sorted((DATA / "chest_xray_subset" / "test").rglob("*.jpeg"))
    payloads = [f.read_bytes() for f in files]
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run_dir or default_run(Path(tmp))
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "medbench", "serve", str(run_dir), "--port", str(port),
                                   "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_up(url, server)
            load(url, payloads, 20, 1, args.cam)  # warm-up
            rows = [load(url, payloads, args.requests, c, args.cam) for c in args.concurrency]
        finally:
            server.terminate()
            server.wait(30)
    mean_kb = sum(map(len, payloads)) / len(payloads) / 1024
    result = {"benchmark": "serve-load", "cam": args.cam, "images": len(payloads), "mean_upload_kb": round(mean_kb, 1),
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
              "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for r in rows:
        print(f"concurrency {r['concurrency']}: {r['requests_per_s']} req/s, p50 {r['p50_ms']} ms, "
              f"p99 {r['p99_ms']} ms, errors {r['errors']} ({r['requests']} requests)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
