"""Shared fixtures. Real data comes from ``$MEDBENCH_TEST_DATA`` (default: ../shared/data beside the repo).

A missing data folder is an error, not a skip: CI must never pass by testing nothing.
"""
from __future__ import annotations

import functools
import http.server
import os
import signal
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = Path(os.environ.get("MEDBENCH_TEST_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (TEST_DATA / "medmnist" / "breastmnist.npz").is_file():
        pytest.fail(f"test data not found under {TEST_DATA}: set MEDBENCH_TEST_DATA to the shared/data folder")
    return TEST_DATA


@pytest.fixture(scope="session")
def medmnist_dir(shared_data) -> Path:
    return shared_data / "medmnist"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("medbench-cache")


@pytest.fixture(autouse=True)
def _data_env(monkeypatch, medmnist_dir, cache_dir):
    """Every test sees the real MedMNIST files as its data root, a private decoded-data cache, and never the
    network."""
    monkeypatch.setenv("MEDBENCH_DATA", str(medmnist_dir))
    monkeypatch.setenv("MEDBENCH_CACHE", str(cache_dir))
    monkeypatch.setenv("MEDBENCH_MIRROR", "http://127.0.0.1:9/")  # discard port: a download fails at once


class _QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(monkeypatch):
    """Start a real HTTP server on 127.0.0.1 serving a folder (or answering with a handler class) and point
    MEDBENCH_MIRROR at it; returns ``start(folder=None, handler=None) -> base URL``. Stopped after the test."""
    started = []

    def start(folder=None, handler=None) -> str:
        handler = handler or functools.partial(_QuietFiles, directory=str(folder))
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        started.append(srv)
        base = f"http://127.0.0.1:{srv.server_address[1]}/"
        monkeypatch.setenv("MEDBENCH_MIRROR", base)
        return base

    yield start
    for srv in started:
        srv.shutdown()
        srv.server_close()


def kill_when(cmd: list[str], when, *, env=None, timeout: float = 300, poll: float = 0.02, group: bool = True,
              what: str = "the process") -> str:
    """Run ``cmd`` and SIGKILL it as soon as ``when()`` holds; return its output (stdout and stderr together).
    The test fails when the process ended before it could be killed, or ``when()`` did not hold within
    ``timeout`` seconds (the process is killed then too).

    ``group``: the command runs in its own process group and the whole group is killed (its workers too); with
    False only the process itself is, and its children must die on their own (PR_SET_PDEATHSIG).
    Output goes to a file, not a pipe, so a talkative process never blocks on a full pipe."""
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, env=env, start_new_session=group, stdout=log, stderr=subprocess.STDOUT)
        kill = (lambda: os.killpg(proc.pid, signal.SIGKILL)) if group else proc.kill
        held = False
        try:
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline:
                held = bool(when())
                if held:
                    break
                time.sleep(poll)
        finally:
            if proc.poll() is None:
                kill()
            proc.wait(timeout=60)
        log.seek(0)
        output = log.read().decode(errors="replace")
    assert proc.returncode == -signal.SIGKILL, f"{what} ended before it could be killed:\n{output}"
    assert held, f"{what} was killed after {timeout} s, before the awaited moment came:\n{output}"
    return output


def make_npz(path: Path, *, n=(60, 20, 30), size=28, channels=1, num_classes=4, multilabel=False, seed=0):
    """Write a MedMNIST-layout npz whose images encode their labels (so a model can learn them)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n):
        if multilabel:  # label i lights up horizontal band i
            labels = (rng.random((count, num_classes)) < 0.4).astype(np.uint8)
            labels[:2] = [[0] * num_classes, [1] * num_classes]  # every label has both values
            band = np.repeat(np.arange(size) * num_classes // size, size).reshape(size, size)
            level = labels[:, band] * 160.0 + 40
        else:  # mean brightness encodes the class
            labels = rng.permutation(np.arange(count) % num_classes)[:, None].astype(np.uint8)  # every class present
            level = (labels[:, 0] * (200 // max(num_classes - 1, 1)) + 20)[:, None, None]
        img = rng.normal(level, 25, (count, size, size)).clip(0, 255).astype(np.uint8)
        if channels == 3:
            img = np.repeat(img[..., None], 3, axis=-1)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = img, labels
    np.savez_compressed(path, **arrays)
    return path


@pytest.fixture(scope="session")
def breast_run(tmp_path_factory, medmnist_dir, cache_dir) -> Path:
    """A finished run (cnn5, one epoch on BreastMNIST) that no failing command may touch: the bad-input
    catalogues check it stays byte-identical."""
    from medbench.run import train

    out = tmp_path_factory.mktemp("earlier") / "breast-cnn5"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDBENCH_DATA", str(medmnist_dir))
        mp.setenv("MEDBENCH_CACHE", str(cache_dir))
        train({"dataset": "breastmnist", "model": "cnn5", "epochs": 1, "seed": 0}, out, quiet=True, report=False)
    return out


@pytest.fixture(scope="session")
def chest_run(tmp_path_factory, shared_data, medmnist_dir, cache_dir) -> Path:
    """A 2-class cnn5 run (2 epochs, 28 px) on the real chest X-ray folder: the model that predict, serve and
    export tests use."""
    from medbench.run import train

    out = tmp_path_factory.mktemp("chest-run") / "pneumonia-cnn5"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDBENCH_DATA", str(medmnist_dir))
        mp.setenv("MEDBENCH_CACHE", str(cache_dir))
        train({"dataset": f"folder:{shared_data / 'chest_xray_subset'}", "model": "cnn5", "epochs": 2, "seed": 0},
              out, quiet=True, report=False)
    return out


def write_dicom(path: Path, pixels: np.ndarray, *, photometric="MONOCHROME2", slope=None, intercept=None,
                center=None, width=None) -> Path:
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "OT", "anon"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit, ds.PixelRepresentation = bits - 1, 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if center is not None:
        ds.WindowCenter, ds.WindowWidth = center, width
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


CHROMIUM = Path("/usr/bin/chromium")  # Debian's; .ci/run installs it (playwright drives it, no browser download)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


@contextmanager
def offline_page(viewport=(1280, 900)):
    """A headless Chromium page and a list that collects its console errors, page errors and every request
    that is not file: or data: (a self-contained report makes none)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: pip install -e '.[test]'")
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} not found: apt-get install -y chromium (.ci/run installs it)")
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            page.on("request", lambda r: None if r.url.startswith(("file:", "data:"))
                    else errors.append(f"network request: {r.url}"))
            yield page, errors
        finally:
            browser.close()
