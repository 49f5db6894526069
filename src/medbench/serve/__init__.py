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

Modules: :mod:`~medbench.serve.limits` (the limits and the JSON refusals), :mod:`~medbench.serve.upload` (one
upload -> model input), :mod:`~medbench.serve.models` (the served runs), :mod:`~medbench.serve.page` (the web
page), :mod:`~medbench.serve.app` (the ASGI app) and :mod:`~medbench.serve.server` (uvicorn).
"""
from medbench.serve.app import create_app
from medbench.serve.limits import ACCEPTED, FRAMING, MAX_BYTES, MAX_CONCURRENT, MAX_PIXELS, QUEUE_TIMEOUT, SMALL_PIXELS
from medbench.serve.server import serve

__all__ = ["serve", "create_app", "ACCEPTED", "FRAMING", "MAX_BYTES", "MAX_CONCURRENT", "MAX_PIXELS",
           "QUEUE_TIMEOUT", "SMALL_PIXELS"]
