"""``medbench serve RUN_DIR [RUN_DIR ...]``: a web page and a JSON API over trained runs (FastAPI + uvicorn).

Routes (``{name}``: the run folder's name; with one run the short routes serve it):

- ``GET /``: the page: choose an image, see the class probabilities as bars and a Grad-CAM overlay;
- ``POST /predict`` (multipart field ``file``; ``?cam=true`` adds the overlay as a PNG data URL) ->
  ``{"label", "probabilities": {class: p}, "model", "threshold"}``;
- ``GET /model``: the model card as JSON; ``GET /models``: the served runs;
- ``/models/{name}/``, ``/models/{name}/predict``, ``/models/{name}/model``: the same per run;
- ``GET /openapi.json``, ``GET /docs``: FastAPI's schema and its page.

Every error is a JSON ``{"error": message}`` with a 4xx status, or 503 when busy; never a 500 or plain text:

- a body over ``max_bytes`` (plus 64 KiB of multipart framing) is 413, whether it declares a Content-Length or
  arrives chunked: the bytes are counted as they stream in and the request is cut off at the limit, so no more
  than the limit is ever spooled to a temporary file;
- an image whose header declares more than ``max_pixels`` pixels, in any format (PNG, JPEG, BMP, TIFF, GIF,
  DICOM), is 413 before decoding, and so is a side over the decoder's ``MAX_SIDE``; decoding resizes before it
  pads, so a 100000x1 PNG costs a few MB and is answered like any image;
- decoding and inference run in at most ``max_concurrent`` slots (and as many again for images whose PNG/JPEG
  header declares at most 4 Mpx, so a flood of large images does not starve ordinary ones); a request that waits
  ``queue_timeout`` seconds without a slot is 503 with ``Retry-After`` (memory stays bounded);
- a content type outside :data:`ACCEPTED` is 415, something that does not decode as an image 400, a missing
  ``file`` field 422, a malformed multipart body or HTTP request 400; running out of memory while decoding is
  413, during inference 503; any other unexpected error is logged and answered 400 JSON.

Uploads are decoded from a private temporary file with a random name (never the client's), deleted right after.
"""

import base64
import io
import json
import logging
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Sequence

from medbench.errors import MedbenchError

MAX_BYTES = 10 * 2 ** 20
MAX_PIXELS = 50_000_000
MAX_CONCURRENT = 2  # decodes + inferences at once: a 7000x7000 image takes hundreds of MB while it is decoded
SMALL_PIXELS = 2 ** 22  # images up to 4 Mpx (declared in a PNG/JPEG header) use their own slots
QUEUE_TIMEOUT = 5.0  # seconds a request waits for a slot before it is told 503 (busy)
FRAMING = 64 * 1024  # multipart boundaries and part headers allowed around a file of max_bytes
ACCEPTED = ("image/png", "image/jpeg", "image/bmp", "image/tiff", "application/dicom", "application/octet-stream")
_NAME = re.compile(r"[^A-Za-z0-9._-]+")
log = logging.getLogger("medbench.serve")


class _TooLarge(Exception):
    """Raised from ``receive`` once the body passes the limit; whatever the app makes of it is replaced by a 413."""


async def _answer(send, status: int, message: str, *, close: bool = False, retry_after: int | None = None) -> None:
    """A JSON error straight onto the ASGI ``send`` (for the layers below FastAPI's exception handlers)."""
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:  # the rest of an over-limit body is not worth reading: drop the connection after the answer
        headers.append((b"connection", b"close"))
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _BodyLimit:
    """Pure ASGI middleware: the request body may not pass ``limit`` bytes, declared (Content-Length) or not
    (chunked). Bytes are counted as they stream in; the chunk that passes the limit is never handed to the app,
    so the multipart parser never spools more than ``limit`` bytes, and the client gets 413 JSON at once."""

    def __init__(self, app, limit: int, max_bytes: int):
        self.app, self.limit, self.max_bytes = app, limit, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return await _answer(send, 400, "invalid Content-Length header", close=True)
            if int(length) > self.limit:
                return await _answer(send, 413, f"request body of {int(length)} bytes exceeds the limit of "
                                                f"{self.max_bytes} bytes", close=True)
        seen, over, started = 0, False, False

        async def counted():
            nonlocal seen, over
            if over:
                raise _TooLarge()
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    over = True
                    raise _TooLarge()
            return message

        async def guarded(message):
            nonlocal started
            if over:  # the app's answer to a cut-off body (FastAPI makes it a 400) is replaced below
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not over:
                raise
        if over and not started:
            await _answer(send, 413, f"request body exceeds the limit of {self.max_bytes} bytes (cut off after "
                                     f"{seen} bytes)", close=True)


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
               max_pixels: int = MAX_PIXELS, max_concurrent: int = MAX_CONCURRENT,
               queue_timeout: float = QUEUE_TIMEOUT):
    """The ASGI app over ``run_dirs`` (each loaded once, at creation)."""
    try:
        from fastapi import FastAPI, File, HTTPException, Query, UploadFile
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import HTMLResponse, JSONResponse
        from starlette.exceptions import HTTPException as StarletteHTTPException
    except ImportError:
        raise MedbenchError("medbench serve needs FastAPI and uvicorn: pip install 'medbench[serve]'") from None
    if not run_dirs:
        raise MedbenchError("medbench serve needs at least one run directory")
    if max_concurrent < 1 or queue_timeout < 0 or max_bytes < 1 or max_pixels < 1:
        raise MedbenchError("--max-concurrent, --max-bytes and --max-pixels must be at least 1 and --queue-timeout "
                            "at least 0")
    dirs = [Path(d) for d in run_dirs]
    served = {n: _Served(n, d, device) for n, d in zip(_names(dirs), dirs)}
    default = next(iter(served.values()))
    upload_dir = tempfile.TemporaryDirectory(prefix="medbench-serve-")  # 0700, removed when the app goes
    # routes are sync (FastAPI's thread pool): threading semaphores bound the decodes; small images have their
    # own slots, so a flood of large ones does not starve ordinary requests
    large, small = threading.BoundedSemaphore(max_concurrent), threading.BoundedSemaphore(max_concurrent)

    app = FastAPI(title="medbench", version=_version(),
                  description="Image classifiers trained with medbench. **Not for clinical use.**")
    app.state.upload_dir = upload_dir  # keeps the folder alive as long as the app
    app.add_middleware(_BodyLimit, limit=max_bytes + FRAMING, max_bytes=max_bytes)

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

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

    @app.exception_handler(MemoryError)
    async def _out_of_memory(request, exc):
        log.error("out of memory on %s %s", request.method, request.url.path)
        return error(503, "the server ran out of memory for this request; retry later", {"Retry-After": "5"})

    @app.exception_handler(Exception)  # Starlette's last resort: after it answers, uvicorn logs the traceback
    async def _unexpected(request, exc):
        log.error("unexpected %s on %s %s: %s", type(exc).__name__, request.method, request.url.path, exc)
        return error(400, f"the request could not be processed ({type(exc).__name__}); the error was logged")

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
        tmp = _save_upload(file, upload_dir.name, max_bytes)
        try:
            size = _quick_size(tmp)  # a bomb that says so in a PNG/JPEG header is refused without waiting
            _check_pixels(size, max_pixels)
            lane = small if size is not None and size[0] * size[1] <= SMALL_PIXELS else large
            if not lane.acquire(timeout=queue_timeout):
                raise HTTPException(503, f"busy: {max_concurrent} images are being processed and none finished "
                                         f"within {queue_timeout:g} s; retry shortly", headers={"Retry-After": "1"})
            try:
                return _infer(s, _decode(s.predictor, tmp, max_pixels), cam)
            finally:
                lane.release()
        finally:
            os.unlink(tmp)

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


def _save_upload(file, folder: str, max_bytes: int) -> str:
    """The upload copied into a private temporary file with a random name (its path); the spooled copy is closed
    at once, so each request holds at most one copy of at most ``max_bytes`` on disk."""
    import shutil

    from fastapi import HTTPException

    fd, tmp = tempfile.mkstemp(dir=folder, prefix="upload-")
    try:
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(file.file, out, 2 ** 20)
            n = out.tell()
    except BaseException:
        os.unlink(tmp)
        raise
    finally:
        file.file.close()
    problem = (413, f"the file exceeds the limit of {max_bytes} bytes") if n > max_bytes else \
        (400, "the uploaded file is empty") if n == 0 else None
    if problem:
        os.unlink(tmp)
        raise HTTPException(*problem)
    return tmp


def _quick_size(path: str) -> tuple[int, int] | None:
    """(width, height) if :func:`medbench.data.decode.header_size` reads it cheaply from the header, else None."""
    from medbench.data.decode import header_size, is_dicom

    if is_dicom(path):  # header_size may parse DICOM with pydicom: inside a slot, after the deflate check
        return None
    try:
        size = header_size(path)
        return (int(size[0]), int(size[1])) if size is not None else None
    except Exception:
        return None


def _decode(predictor, tmp: str, max_pixels: int):
    """The uploaded file -> uint8 [C, S, S]; errors name 'the uploaded file', never the temporary path."""
    from fastapi import HTTPException

    from medbench.data.dicom import check_inflated_size

    try:
        check_inflated_size(tmp, 4 * max_pixels + 2 ** 20)
        _check_pixels(_declared_size(tmp), max_pixels)
        return predictor.load_image(tmp)
    except HTTPException:
        raise
    except MedbenchError as e:
        message = str(e).replace(f"{tmp}: ", "").replace(tmp, "the uploaded file")
        status = 413 if "exceeds the limit" in message or "decompression bomb" in message else 400
        raise HTTPException(status, f"the uploaded file: {message}") from None
    except MemoryError:
        raise HTTPException(413, "the uploaded image is too large to decode in the memory available; send "
                                 "a smaller image") from None
    except Exception as e:  # a decoder's own bug on odd input is still the input's problem, not a 500
        log.error("decoding an upload failed with %s: %s", type(e).__name__, e)
        raise HTTPException(400, f"the uploaded file: cannot decode ({type(e).__name__})") from None


def _declared_size(path: str) -> tuple[int, int] | None:
    """(width, height) from the file's header, without decoding pixels; None when the header does not say.

    :func:`medbench.data.decode.header_size` first; for formats it leaves out, Pillow's lazy open (header only)
    or pydicom without pixel data (rows counted once per frame)."""
    from medbench.data.decode import header_size, is_dicom

    try:
        size = header_size(path)
        if size is not None:
            return int(size[0]), int(size[1])
        if is_dicom(path):
            import pydicom

            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            frames = max(int(ds.get("NumberOfFrames", 1) or 1), 1)
            return int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0) * frames
        from PIL import Image

        with Image.open(path) as im:
            return im.size
    except MedbenchError:
        raise
    except Exception:  # unreadable header: decoding will say what is wrong with the file
        return None


def _check_pixels(size: tuple[int, int] | None, max_pixels: int) -> None:
    """413 when the image declares more than ``max_pixels`` (the decoder refuses a side over its ``MAX_SIDE``)."""
    from fastapi import HTTPException

    if size is None:
        return
    w, h = size
    if w * h > max_pixels:
        raise HTTPException(413, f"the image declares {w}x{h} pixels, over the limit of {max_pixels} pixels")


def _infer(s: _Served, image, cam: bool) -> dict:
    from fastapi import HTTPException

    try:
        with s.lock:
            probs = s.predictor.probabilities(image[None])
            out = {"label": s.predictor.decide(probs)[0],
                   "probabilities": {c: float(p) for c, p in zip(s.predictor.classes, probs[0])},
                   "model": s.name,
                   "threshold": s.predictor.threshold if s.predictor.task.name == "binary" else None}
            if cam:
                out["cam"] = _png_data_url(s.predictor.cams(image[None], probs)[0])
        return out
    except MemoryError:
        raise HTTPException(503, "the server ran out of memory for this request; retry later",
                            headers={"Retry-After": "5"}) from None


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
          max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS, max_concurrent: int = MAX_CONCURRENT,
          queue_timeout: float = QUEUE_TIMEOUT, quiet: bool = False) -> None:
    """Run the app with uvicorn until interrupted. A port already in use is a one-line error."""
    import socket

    try:
        import uvicorn
    except ImportError:
        raise MedbenchError("medbench serve needs FastAPI and uvicorn: pip install 'medbench[serve]'") from None
    app = create_app(run_dirs, device=device, max_bytes=max_bytes, max_pixels=max_pixels,
                     max_concurrent=max_concurrent, queue_timeout=queue_timeout)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as e:
            raise MedbenchError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port or "
                                f"stop the program using it") from None
    if not quiet:
        print(f"serving {len(run_dirs)} model(s) on http://{host}:{port}/ (API: /predict, /model, /docs); "
              f"Ctrl-C stops", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning" if quiet else "info", http=_json_http_protocol())


def _json_http_protocol():
    """uvicorn's h11 protocol, except that a request it cannot parse (bad request line, header or chunk framing)
    is answered 400 JSON like every other error instead of its plain-text one."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class JsonErrorsH11(H11Protocol):
        def send_400_response(self, msg: str) -> None:
            body = json.dumps({"error": f"malformed HTTP request: {msg}"}).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                       (b"connection", b"close")]
            try:
                for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                              h11.Data(data=body), h11.EndOfMessage()):
                    self.transport.write(self.conn.send(event))
            except h11.LocalProtocolError:  # a response was already under way: nothing sensible to add
                pass
            self.transport.close()

    return JsonErrorsH11


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
