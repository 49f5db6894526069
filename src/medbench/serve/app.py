"""The ASGI app: runs loaded once, the limits as middleware and helpers, JSON errors everywhere, small routes.

FastAPI is an optional dependency (``medbench[serve]``): it is imported when an app is created, so that a missing
install is one clear error.
"""
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from medbench import __version__
from medbench.errors import MedbenchError
from medbench.serve.limits import FRAMING, MAX_BYTES, MAX_CONCURRENT, MAX_PIXELS, QUEUE_TIMEOUT, BodyLimit, Refused
from medbench.serve.models import Served, load_runs
from medbench.serve.page import render
from medbench.serve.upload import Uploads

NEEDS_FASTAPI = "medbench serve needs FastAPI and uvicorn: pip install 'medbench[serve]'"
log = logging.getLogger("medbench.serve")


def create_app(run_dirs: Sequence[str | os.PathLike], *, device: str = "cpu", max_bytes: int = MAX_BYTES,
               max_pixels: int = MAX_PIXELS, max_concurrent: int = MAX_CONCURRENT,
               queue_timeout: float = QUEUE_TIMEOUT):
    """The ASGI app over ``run_dirs`` (each loaded once, at creation)."""
    try:
        from fastapi import FastAPI
    except ImportError:
        raise MedbenchError(NEEDS_FASTAPI) from None
    _check_settings(run_dirs, max_bytes, max_pixels, max_concurrent, queue_timeout)
    served = load_runs([Path(d) for d in run_dirs], device)
    uploads = Uploads(max_bytes, max_pixels, max_concurrent, queue_timeout)
    app = FastAPI(title="medbench", version=__version__,
                  description="Image classifiers trained with medbench. **Not for clinical use.**")
    app.state.upload_dir = uploads.folder  # keeps the folder alive as long as the app
    app.add_middleware(BodyLimit, limit=max_bytes + FRAMING, max_bytes=max_bytes)
    _add_error_handlers(app)
    _add_routes(app, served, uploads)
    return app


def _check_settings(run_dirs, max_bytes: int, max_pixels: int, max_concurrent: int, queue_timeout: float) -> None:
    if not run_dirs:
        raise MedbenchError("medbench serve needs at least one run directory")
    if max_concurrent < 1 or queue_timeout < 0 or max_bytes < 1 or max_pixels < 1:
        raise MedbenchError("--max-concurrent, --max-bytes and --max-pixels must be at least 1 and --queue-timeout "
                            "at least 0")


def _error(status: int, message: str, headers: dict | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _add_error_handlers(app) -> None:
    """Every error a JSON ``{"error": message}``: ours, the framework's, validation, memory, anything else."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(Refused)
    async def _refused(request, exc):
        return _error(exc.status, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)  # unknown routes, wrong methods
    async def _http_error(request, exc):
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc):
        return _error(422, _validation_message(exc.errors()))

    @app.exception_handler(MemoryError)
    async def _out_of_memory(request, exc):
        log.error("out of memory on %s %s", request.method, request.url.path)
        return _error(503, "the server ran out of memory for this request; retry later", {"Retry-After": "5"})

    @app.exception_handler(Exception)  # Starlette's last resort: after it answers, uvicorn logs the traceback
    async def _unexpected(request, exc):
        log.error("unexpected %s on %s %s: %s", type(exc).__name__, request.method, request.url.path, exc)
        return _error(400, f"the request could not be processed ({type(exc).__name__}); the error was logged")


def _validation_message(errors: list[dict]) -> str:
    parts = []
    for e in errors:
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
    message = "; ".join(parts) or "invalid request"
    if any("file" in str(e.get("loc", ())) for e in errors):
        message += " (send the image as multipart/form-data in a field named 'file')"
    return message


def _add_routes(app, served: dict[str, Served], uploads: Uploads) -> None:
    """``/``, ``/models``, ``/model``, ``/predict`` for the first run; ``/models/{name}/...`` for each."""
    from fastapi import File, Query, UploadFile
    from fastapi.responses import HTMLResponse

    default = next(iter(served.values()))

    def image():  # a fresh parameter for each route: FastAPI keeps state on it
        return File(..., description="PNG, JPEG, BMP, TIFF or DICOM image")

    def overlay():
        return Query(False, description="add a Grad-CAM overlay (PNG data URL)")

    def get(name: str) -> Served:
        if name not in served:
            raise Refused(404, f"no model named '{name}'; served: {', '.join(served)}")
        return served[name]

    @app.get("/", response_class=HTMLResponse, summary="the web page")
    def page():
        return render(served, "medbench")

    @app.get("/models", summary="the served models")
    def models() -> dict:
        return {"models": [{"name": n, "dataset": s.card.get("dataset"), "task": s.card.get("task"),
                            "classes": s.predictor.classes} for n, s in served.items()]}

    @app.get("/model", summary="the (first) model's card")
    def model() -> dict:
        return default.card

    @app.post("/predict", summary="class probabilities for one image (the first model)")
    def predict_default(file: UploadFile = image(), cam: bool = overlay()) -> dict:  # noqa: B008 - FastAPI's way
        return uploads.predict(default, file, cam)

    @app.get("/models/{name}/", response_class=HTMLResponse, summary="the web page for one model")
    def model_page(name: str):
        return render({name: get(name)}, f"medbench: {name}")

    @app.get("/models/{name}/model", summary="a model's card")
    def named_model(name: str) -> dict:
        return get(name).card

    @app.post("/models/{name}/predict", summary="class probabilities for one image")
    def named_predict(name: str, file: UploadFile = image(), cam: bool = overlay()) -> dict:  # noqa: B008
        return uploads.predict(get(name), file, cam)
