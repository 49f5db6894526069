"""``medbench serve RUN_DIR [RUN_DIR ...]``: a web page and a JSON API over trained runs (FastAPI + uvicorn).

Routes (``{name}``: the run folder's name; with one run the short routes serve it):

- ``GET /``: the page: choose an image, see the class probabilities as bars and a Grad-CAM overlay;
- ``POST /predict`` (multipart field ``file``; ``?cam=true`` adds the overlay as a PNG data URL) ->
  ``{"label", "probabilities": {class: p}, "model", "threshold"}``;
- ``GET /model``: the model card as JSON; ``GET /models``: the served runs;
- ``/models/{name}/``, ``/models/{name}/predict``, ``/models/{name}/model``: the same per run;
- ``GET /openapi.json``, ``GET /docs``: FastAPI's schema and its page.

Bad input is a JSON ``{"error": message}`` with a 4xx status, never a 500: a body over ``max_bytes`` (413), a
declared pixel count over ``max_pixels`` (413), a content type outside :data:`ACCEPTED` (415), something that
does not decode as an image (400), a missing ``file`` field (422). Uploads are decoded from a private temporary
file with a random name (never the client's), deleted right after.
"""

import base64
import io
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Sequence

from medbench.errors import MedbenchError

MAX_BYTES = 10 * 2 ** 20
MAX_PIXELS = 50_000_000
ACCEPTED = ("image/png", "image/jpeg", "image/bmp", "image/tiff", "application/dicom", "application/octet-stream")
_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class _Served:
    """One run behind the API: its predictor (one request at a time: Grad-CAM hooks are not thread-safe) and card."""

    def __init__(self, name: str, run_dir: Path, device: str):
        from medbench.predict import Predictor

        self.name, self.run_dir = name, run_dir
        self.predictor = Predictor(run_dir, device=device)
        self.lock = threading.Lock()
        self.card = self._card()

    def _card(self) -> dict:
        import json

        from medbench.card import CARD_JSON

        p = self.predictor
        path = self.run_dir / CARD_JSON
        card = {}
        if path.is_file():
            try:
                card = json.loads(path.read_text(encoding="utf-8"))
            except ValueError:
                card = {}
        if not card:  # runs from before model cards: what the run itself says, without bootstrap CIs
            card = {"model": p.cfg.model, "dataset": p.spec.name, "task": p.spec.task, "classes": p.classes,
                    "metrics": {s: {k: (p.metrics.get(s) or {}).get(k) for k in ("n", "acc", "auc", "acc_ci", "auc_ci")}
                                for s in ("val", "test") if p.metrics.get(s)},
                    "not_for_clinical_use": "Not for clinical use."}
        card.update(name=self.name, input_size=p.size, channels=p.channels,
                    threshold_used=p.threshold if p.task.name == "binary" else None)
        return card


def _names(run_dirs: Sequence[Path]) -> list[str]:
    names, seen = [], {}
    for d in run_dirs:
        base = _NAME.sub("-", d.resolve().name).strip("-") or "model"
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return names


def create_app(run_dirs: Sequence[str | os.PathLike], *, device: str = "cpu", max_bytes: int = MAX_BYTES,
               max_pixels: int = MAX_PIXELS):
    """The ASGI app over ``run_dirs`` (each loaded once, at creation)."""
    try:
        from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import HTMLResponse, JSONResponse
        from starlette.exceptions import HTTPException as StarletteHTTPException
    except ImportError:
        raise MedbenchError("medbench serve needs FastAPI and uvicorn: pip install 'medbench[serve]'") from None
    if not run_dirs:
        raise MedbenchError("medbench serve needs at least one run directory")
    dirs = [Path(d) for d in run_dirs]
    served = {n: _Served(n, d, device) for n, d in zip(_names(dirs), dirs)}
    default = next(iter(served.values()))
    upload_dir = tempfile.TemporaryDirectory(prefix="medbench-serve-")  # 0700, removed when the app goes

    app = FastAPI(title="medbench", version=_version(),
                  description="Image classifiers trained with medbench. **Not for clinical use.**")
    app.state.upload_dir = upload_dir  # keeps the folder alive as long as the app

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc):
        parts = []
        for e in exc.errors():
            where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
        message = "; ".join(parts) or "invalid request"
        if any("file" in str(e.get("loc", ())) for e in exc.errors()):
            message += " (send the image as multipart/form-data in a field named 'file')"
        return error(422, message)

    @app.middleware("http")
    async def _limit_size(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return error(400, "invalid Content-Length header")
            if int(length) > max_bytes + 64 * 1024:  # multipart framing around the file
                return error(413, f"request body of {int(length)} bytes exceeds the limit of {max_bytes} bytes")
        return await call_next(request)

    def get(name: str | None) -> _Served:
        if name is None:
            return default
        if name not in served:
            raise HTTPException(404, f"no model named '{name}'; served: {', '.join(served)}")
        return served[name]

    def predict(s: _Served, file: UploadFile, cam: bool) -> dict:
        ctype = (file.content_type or "application/octet-stream").split(";")[0].strip().lower()
        if ctype not in ACCEPTED:
            raise HTTPException(415, f"content type '{ctype}' is not accepted; send one of {', '.join(ACCEPTED)}")
        data = file.file.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise HTTPException(413, f"the file exceeds the limit of {max_bytes} bytes")
        if not data:
            raise HTTPException(400, "the uploaded file is empty")
        image = _decode(s.predictor, data, upload_dir.name, max_pixels)
        with s.lock:
            probs = s.predictor.probabilities(image[None])
            out = {"label": s.predictor.decide(probs)[0],
                   "probabilities": {c: float(p) for c, p in zip(s.predictor.classes, probs[0])},
                   "model": s.name,
                   "threshold": s.predictor.threshold if s.predictor.task.name == "binary" else None}
            if cam:
                out["cam"] = _png_data_url(s.predictor.cams(image[None], probs)[0])
        return out

    # ---- routes -------------------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, summary="the web page")
    def page():
        return _PAGE.replace("__MODELS__", _options(served)).replace("__TITLE__", "medbench")

    @app.get("/models", summary="the served models")
    def models() -> dict:
        return {"models": [{"name": n, "dataset": s.card.get("dataset"), "task": s.card.get("task"),
                            "classes": s.predictor.classes} for n, s in served.items()]}

    @app.get("/model", summary="the (first) model's card")
    def model() -> dict:
        return default.card

    @app.post("/predict", summary="class probabilities for one image (the first model)")
    def predict_default(file: UploadFile = File(..., description="PNG, JPEG, BMP, TIFF or DICOM image"),
                        cam: bool = Query(False, description="add a Grad-CAM overlay (PNG data URL)")) -> dict:
        return predict(default, file, cam)

    @app.get("/models/{name}/", response_class=HTMLResponse, summary="the web page for one model")
    def model_page(name: str):
        get(name)
        return _PAGE.replace("__MODELS__", _options({name: served[name]})).replace("__TITLE__", f"medbench: {name}")

    @app.get("/models/{name}/model", summary="a model's card")
    def named_model(name: str) -> dict:
        return get(name).card

    @app.post("/models/{name}/predict", summary="class probabilities for one image")
    def named_predict(name: str, file: UploadFile = File(..., description="PNG, JPEG, BMP, TIFF or DICOM image"),
                      cam: bool = Query(False, description="add a Grad-CAM overlay (PNG data URL)")) -> dict:
        return predict(get(name), file, cam)

    return app


def _version() -> str:
    from medbench import __version__

    return __version__


def _decode(predictor, data: bytes, folder: str, max_pixels: int):
    """Bytes -> uint8 [C, S, S] via a private temporary file; errors name 'the uploaded file', not the path."""
    from fastapi import HTTPException

    from medbench.data.decode import header_size

    fd, tmp = tempfile.mkstemp(dir=folder, prefix="upload-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        size = header_size(tmp)
        if size is not None and size[0] * size[1] > max_pixels:
            raise HTTPException(413, f"the image declares {size[0]}x{size[1]} pixels, over the limit of "
                                     f"{max_pixels} pixels")
        try:
            return predictor.load_image(tmp)
        except MedbenchError as e:
            message = str(e).replace(f"{tmp}: ", "").replace(tmp, "the uploaded file")
            status = 413 if "exceeds the limit" in message or "decompression bomb" in message else 400
            raise HTTPException(status, f"the uploaded file: {message}") from None
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def _png_data_url(rgb) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).resize((224, 224), Image.Resampling.NEAREST).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _options(served: dict) -> str:
    from html import escape

    return "".join(f'<option value="{escape(n)}">{escape(n)} ({escape(str(s.card.get("dataset")))}, '
                   f'{len(s.predictor.classes)} classes)</option>' for n, s in served.items())


def serve(run_dirs: Sequence[str | os.PathLike], *, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu",
          max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS, quiet: bool = False) -> None:
    """Run the app with uvicorn until interrupted. A port already in use is a one-line error."""
    import socket

    try:
        import uvicorn
    except ImportError:
        raise MedbenchError("medbench serve needs FastAPI and uvicorn: pip install 'medbench[serve]'") from None
    app = create_app(run_dirs, device=device, max_bytes=max_bytes, max_pixels=max_pixels)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as e:
            raise MedbenchError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port or "
                                f"stop the program using it") from None
    if not quiet:
        print(f"serving {len(run_dirs)} model(s) on http://{host}:{port}/ (API: /predict, /model, /docs); "
              f"Ctrl-C stops", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning" if quiet else "info")


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;max-width:760px;margin:2em auto;padding:0 1em;color:#222}
.warn{background:#fff3cd;border:1px solid #e0c36c;padding:.5em .8em;border-radius:4px}
.row{display:flex;gap:1.5em;align-items:flex-start;flex-wrap:wrap}
.bar{display:flex;align-items:center;margin:.25em 0}.bar span{width:11em;overflow:hidden;text-overflow:ellipsis}
.bar div{background:#4a7fc1;height:1.1em;margin:0 .5em}.bar.top div{background:#d9534f}
img{image-rendering:pixelated;border:1px solid #ccc}#error{color:#b00}
</style></head><body>
<h1>__TITLE__</h1>
<p class="warn"><b>Not for clinical use.</b> Research models; their outputs must not inform decisions about patients.</p>
<p><label>Model <select id="model">__MODELS__</select></label></p>
<p><input type="file" id="file" accept="image/*,.dcm,.dicom"></p>
<p id="status"></p><p id="error"></p>
<div class="row"><div><h3>Prediction: <span id="top-label"></span></h3><div id="bars"></div></div>
<div><h3>Grad-CAM</h3><img id="cam" alt="Grad-CAM overlay" width="224" height="224"></div></div>
<script>
const $ = id => document.getElementById(id);
$("file").addEventListener("change", async () => {
  const f = $("file").files[0]; if (!f) return;
  $("error").textContent = ""; $("status").textContent = "predicting…"; $("top-label").textContent = "";
  const body = new FormData(); body.append("file", f);
  const name = encodeURIComponent($("model").value);
  try {
    const r = await fetch(`${location.pathname.startsWith("/models/") ? "" : "models/" + name + "/"}predict?cam=true`,
                          {method: "POST", body});
    const j = await r.json();
    if (!r.ok) { $("error").textContent = j.error || r.statusText; $("status").textContent = ""; return; }
    const entries = Object.entries(j.probabilities);
    $("bars").replaceChildren(...entries.map(([c, p]) => {
      const d = document.createElement("div"); d.className = "bar" + (c === j.label ? " top" : "");
      const s = document.createElement("span"); s.textContent = c; s.title = c;
      const b = document.createElement("div"); b.style.width = (p * 250).toFixed(1) + "px";
      const v = document.createElement("em"); v.textContent = p.toFixed(3);
      d.append(s, b, v); return d; }));
    $("top-label").textContent = j.label === "" ? "(no label above 0.5)" : j.label;
    $("cam").src = j.cam; $("status").textContent = `model ${j.model}`;
  } catch (e) { $("error").textContent = String(e); $("status").textContent = ""; }
});
</script></body></html>
"""
