"""medbench serve: a real uvicorn server on 127.0.0.1 with the real chest X-ray model, driven over HTTP, by
schemathesis from its OpenAPI schema, and through its web page in headless Chromium."""
from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from medbench.predict import Predictor
from medbench.serve import create_app

CHROMIUM = Path("/usr/bin/chromium")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def base_url(chest_run, tmp_path_factory):
    import uvicorn

    second = tmp_path_factory.mktemp("second") / "pneumonia-copy"
    shutil.copytree(chest_run, second)
    app = create_app([chest_run, second])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=_free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{server.config.port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def xrays(shared_data) -> list[Path]:
    test = shared_data / "chest_xray_subset" / "test"
    return [sorted((test / "NORMAL").glob("*.jpeg"))[0], sorted((test / "PNEUMONIA").glob("*.jpeg"))[0]]


def _post(url: str, content: bytes, name="x.jpeg", ctype="image/jpeg", field="file", **params) -> httpx.Response:
    return httpx.post(url, files={field: (name, content, ctype)}, params=params, timeout=60)


def test_predict_answers_a_real_xray_like_the_predictor(base_url, chest_run, xrays):
    p = Predictor(chest_run)
    for xray in xrays:
        r = _post(f"{base_url}/predict", xray.read_bytes())
        assert r.status_code == 200, r.text
        j = r.json()
        assert set(j) == {"label", "probabilities", "model", "threshold", "decision"} and j["model"] == "pneumonia-cnn5"
        assert list(j["probabilities"]) == ["NORMAL", "PNEUMONIA"]
        assert sum(j["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
        expected = p.probabilities(p.load_image(xray)[None])[0]
        assert [j["probabilities"][c] for c in p.classes] == pytest.approx(expected.tolist(), abs=1e-6)
        assert j["label"] == p.decide(expected[None])[0] and j["threshold"] == p.threshold
    j = _post(f"{base_url}/models/pneumonia-copy/predict", xrays[0].read_bytes(), cam="true").json()
    assert j["model"] == "pneumonia-copy" and j["cam"].startswith("data:image/png;base64,")


def test_model_card_and_model_list(base_url, chest_run):
    card = httpx.get(f"{base_url}/model").json()
    assert card["dataset"] == "folder:chest_xray_subset" and card["classes"] == ["NORMAL", "PNEUMONIA"]
    assert card["input_size"] == 28 and card["channels"] == 1 and card["task"] == "binary"
    test = card["metrics"]["test"]
    assert test["auc_ci"][0] <= test["auc"] <= test["auc_ci"][1]
    assert "Not for clinical use" in card["not_for_clinical_use"]
    names = [m["name"] for m in httpx.get(f"{base_url}/models").json()["models"]]
    assert names == ["pneumonia-cnn5", "pneumonia-copy"]
    assert httpx.get(f"{base_url}/models/pneumonia-copy/model").json()["name"] == "pneumonia-copy"
    schema = httpx.get(f"{base_url}/openapi.json").json()
    assert {"/predict", "/model", "/models/{name}/predict"} <= set(schema["paths"])


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_bad_inputs_are_4xx_json_never_500(base_url, xrays):
    jpeg = xrays[0].read_bytes()
    cases = {
        "not an image": (_post(f"{base_url}/predict", b"hello, world", name="x.png", ctype="image/png"), 400,
                         "cannot decode"),
        "truncated JPEG": (_post(f"{base_url}/predict", jpeg[:len(jpeg) // 2]), 400, "cannot decode"),
        "50000x50000 PNG header": (_post(f"{base_url}/predict", _png_header(50_000, 50_000), name="big.png",
                                         ctype="image/png"), 413, "50000x50000"),
        "empty file": (_post(f"{base_url}/predict", b""), 400, "empty"),
        "empty body": (httpx.post(f"{base_url}/predict", timeout=30), 422, "field named 'file'"),
        "wrong field name": (_post(f"{base_url}/predict", jpeg, field="image"), 422, "field named 'file'"),
        "wrong content type": (_post(f"{base_url}/predict", jpeg, ctype="text/plain"), 415, "text/plain"),
        "too large": (_post(f"{base_url}/predict", b"\0" * (11 * 2 ** 20)), 413, "exceeds the limit"),
        "unknown model": (_post(f"{base_url}/models/nope/predict", jpeg), 404, "no model named 'nope'"),
        "unknown path": (httpx.get(f"{base_url}/nothing-here"), 404, "Not Found"),
    }
    for what, (r, status, text) in cases.items():
        assert r.status_code == status, (what, r.status_code, r.text)
        assert r.headers["content-type"] == "application/json" and text in r.json()["error"], (what, r.text)
        assert "/tmp" not in r.json()["error"], what  # never the server's temporary path


def test_schemathesis_finds_no_server_error(base_url):
    """Requests generated from the OpenAPI schema for every operation (30 each): no 5xx, and every error is JSON
    with a message."""
    from hypothesis import given

    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 7
    seen: dict[int, int] = {}
    for op in operations:
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=op.as_strategy())
        def check(case):
            r = case.call(timeout=60)
            seen[r.status_code] = seen.get(r.status_code, 0) + 1
            assert r.status_code < 500, (case.method, case.formatted_path, r.status_code, r.text)
            if r.status_code >= 400:
                assert r.json()["error"]

        check()
    assert sum(seen.values()) >= 50 and any(s >= 400 for s in seen) and 200 in seen


def test_browser_page_shows_the_apis_top_class(base_url, xrays):
    """Acceptance: headless Chromium uploads a real X-ray through the page; the top class it shows equals the API's."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.is_file(), "Debian's chromium is needed (.ci/run installs it)"
    for xray in xrays:
        api_label = _post(f"{base_url}/predict", xray.read_bytes()).json()["label"]
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            try:
                page = browser.new_page()
                page.goto(base_url + "/")
                assert "Not for clinical use" in page.inner_text("body")
                page.set_input_files("#file", str(xray))
                page.wait_for_function("document.getElementById('top-label').textContent.length > 0", timeout=30_000)
                assert page.inner_text("#top-label") == api_label
                assert page.evaluate("document.querySelectorAll('#bars .bar').length") == 2
                assert page.inner_text("#bars .bar.top span") == api_label
                page.wait_for_function("document.getElementById('cam').naturalWidth > 0", timeout=30_000)
                page.goto(base_url + "/models/pneumonia-copy/")
                page.set_input_files("#file", str(xray))
                page.wait_for_function("document.getElementById('top-label').textContent.length > 0", timeout=30_000)
                assert page.inner_text("#top-label") == api_label and "pneumonia-copy" in page.inner_text("#status")
            finally:
                browser.close()


def test_port_in_use_is_one_clear_line(chest_run):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "medbench", "serve", str(chest_run), "--port", str(port)],
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr and "--port" in r.stderr
