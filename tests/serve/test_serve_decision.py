"""The serve page and API say which rule decided the label: the threshold, where it came from, and the
probability it was compared with; before any upload the page shows the rule and nothing broken. A real uvicorn
server with the real chest X-ray model, over HTTP and in headless Chromium."""
from __future__ import annotations

import re
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from medbench.predict import Predictor
from medbench.rundir import read_metrics
from medbench.serve import create_app

CHROMIUM = Path("/usr/bin/chromium")
APPLIED = re.compile(r"^P\(PNEUMONIA\) (\d\.\d+) (>|≤) threshold (\d\.\d+) \(Youden, chosen on validation\) → "
                     r"(NORMAL|PNEUMONIA)$")


@pytest.fixture(scope="module")
def server(chest_run, tmp_path_factory):
    import uvicorn

    second = tmp_path_factory.mktemp("second") / "pneumonia-copy"
    shutil.copytree(chest_run, second)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app([chest_run, second]), host="127.0.0.1", port=port,
                                        log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def xrays(shared_data) -> list[Path]:
    test = shared_data / "chest_xray_subset" / "test"
    return sorted((test / "NORMAL").glob("*.jpeg"))[:3] + sorted((test / "PNEUMONIA").glob("*.jpeg"))[:3]


def _check_applied(rule: str, p_pos: float, threshold: float, label: str) -> None:
    """The rule text names the probability, the threshold and the label, and they agree with each other."""
    m = APPLIED.match(rule)
    assert m, rule
    shown_p, sign, shown_t, decided = float(m[1]), m[2], float(m[3]), m[4]
    assert abs(shown_p - p_pos) <= 0.5 * 10 ** -(len(m[1]) - 2) + 1e-12
    assert abs(shown_t - threshold) <= 0.5 * 10 ** -(len(m[3]) - 2) + 1e-12
    assert m[1] != m[3]  # never "0.670 > 0.670": digits are added until they differ
    assert sign == (">" if p_pos > threshold else "≤") and decided == label
    assert label == ("PNEUMONIA" if p_pos > threshold else "NORMAL")


def test_api_answer_carries_the_rule_that_decided(server, chest_run, xrays):
    p = Predictor(chest_run)
    youden = read_metrics(chest_run)["threshold"]["youden"]
    assert youden is not None and p.threshold == youden
    for xray in xrays:
        r = httpx.post(f"{server}/predict", files={"file": (xray.name, xray.read_bytes(), "image/jpeg")}, timeout=60)
        assert r.status_code == 200, r.text
        j = r.json()
        probs = p.probabilities(p.load_image(xray)[None])[0]
        assert j["decision"]["threshold_source"] == "Youden, chosen on validation"
        _check_applied(j["decision"]["rule"], float(probs[1]), p.threshold, j["label"])
    card = httpx.get(f"{server}/model").json()
    assert card["decision_rule"] == (f"PNEUMONIA when P(PNEUMONIA) > {p.threshold:.3f} (threshold: Youden, chosen "
                                     f"on validation), otherwise NORMAL")


def test_page_before_upload_shows_the_rule_and_nothing_broken(server, chest_run):
    html = httpx.get(f"{server}/").text
    assert not re.search(r"<img[^>]*\ssrc=", html)  # no image until there is a picture to show
    assert re.search(r'<div class="row" id="result" hidden>', html)
    threshold = Predictor(chest_run).threshold
    assert f'data-rule="PNEUMONIA when P(PNEUMONIA) &gt; {threshold:.3f} (threshold: Youden' in html


def test_browser_page_shows_threshold_rule_and_no_broken_image(server, chest_run, xrays):
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.is_file(), "Debian's chromium is needed (.ci/run installs it)"
    threshold = Predictor(chest_run).threshold
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server + "/")
            # before any upload: the rule with its threshold; no visible image, label or empty result block
            assert page.inner_text("#rule") == (f"PNEUMONIA when P(PNEUMONIA) > {threshold:.3f} (threshold: Youden, "
                                                f"chosen on validation), otherwise NORMAL")
            visible_imgs = "Array.from(document.images).filter(i => i.getClientRects().length > 0)"
            assert page.evaluate(f"{visible_imgs}.length") == 0
            assert not page.is_visible("#result") and "Prediction" not in page.inner_text("body")
            for xray in (xrays[0], xrays[-1]):
                api = httpx.post(f"{server}/predict", files={"file": (xray.name, xray.read_bytes(), "image/jpeg")},
                                 timeout=60).json()
                page.set_input_files("#file", str(xray))
                page.wait_for_function("document.getElementById('applied').textContent.length > 0 && "
                                       "!document.getElementById('result').hidden", timeout=30_000)
                assert page.inner_text("#top-label") == api["label"]
                assert page.inner_text("#applied") == api["decision"]["rule"]
                _check_applied(page.inner_text("#applied"), api["probabilities"]["PNEUMONIA"], threshold,
                               api["label"])
                page.wait_for_function("document.getElementById('cam').naturalWidth > 0", timeout=30_000)
                # every image on screen shows a picture (no broken-image icon)
                assert page.evaluate(f"{visible_imgs}.every(i => i.complete && i.naturalWidth > 0)")
                assert page.evaluate(f"{visible_imgs}.length") == 1
                page.evaluate("document.getElementById('applied').textContent = ''")  # wait for the next answer
            assert errors == []
        finally:
            browser.close()
