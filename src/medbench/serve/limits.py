"""What ``medbench serve`` accepts, and how it refuses the rest: always a JSON ``{"error": message}``.

- :class:`Refused`: a request answered with a 4xx (or 503) status and a message, raised anywhere below the routes;
- :class:`BodyLimit`: a body over ``max_bytes`` (plus :data:`FRAMING`) is 413, declared or chunked, counted as it
  streams in, so no more than the limit is ever spooled to a temporary file;
- :func:`check_pixels`: an image that declares more than ``max_pixels`` pixels is 413 before decoding;
- :class:`Slots`: decoding and inference run in at most ``max_concurrent`` slots (and as many again for images
  that declare at most :data:`SMALL_PIXELS`); a request that waits ``queue_timeout`` s is 503 with Retry-After;
- :func:`json_http_protocol`: a request uvicorn cannot parse is 400 JSON too, not its plain-text answer.
"""
import json
import threading
from contextlib import contextmanager

MAX_BYTES = 10 * 2 ** 20
MAX_PIXELS = 50_000_000
MAX_CONCURRENT = 2  # decodes + inferences at once: a 7000x7000 image takes hundreds of MB while it is decoded
SMALL_PIXELS = 2 ** 22  # images up to 4 Mpx (declared in a PNG/JPEG header) use their own slots
QUEUE_TIMEOUT = 5.0  # seconds a request waits for a slot before it is told 503 (busy)
FRAMING = 64 * 1024  # multipart boundaries and part headers allowed around a file of max_bytes
ACCEPTED = ("image/png", "image/jpeg", "image/bmp", "image/tiff", "application/dicom", "application/octet-stream")


class Refused(Exception):
    """A request refused with ``status`` and ``message`` (and response ``headers``); the app answers it as JSON."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def check_pixels(size: tuple[int, int] | None, max_pixels: int) -> None:
    """413 when the image declares more than ``max_pixels`` (the decoder refuses a side over its ``MAX_SIDE``)."""
    if size is None:
        return
    w, h = size
    if w * h > max_pixels:
        raise Refused(413, f"the image declares {w}x{h} pixels, over the limit of {max_pixels} pixels")


class Slots:
    """Decodes and inferences at once. Routes are sync (FastAPI's thread pool), so threading semaphores bound
    them; small images have their own slots, so a flood of large ones does not starve ordinary requests."""

    def __init__(self, n: int, timeout: float):
        self.n, self.timeout = n, timeout
        self.large, self.small = threading.BoundedSemaphore(n), threading.BoundedSemaphore(n)

    @contextmanager
    def hold(self, size: tuple[int, int] | None):
        """A slot for an image of declared ``size`` (None: unknown, a large one's), or 503 after the timeout."""
        lane = self.small if size is not None and size[0] * size[1] <= SMALL_PIXELS else self.large
        if not lane.acquire(timeout=self.timeout):
            raise Refused(503, f"busy: {self.n} images are being processed and none finished within "
                               f"{self.timeout:g} s; retry shortly", {"Retry-After": "1"})
        try:
            yield
        finally:
            lane.release()


async def answer(send, status: int, message: str, *, close: bool = False, retry_after: int | None = None) -> None:
    """A JSON error straight onto the ASGI ``send`` (for the layers below FastAPI's exception handlers)."""
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:  # the rest of an over-limit body is not worth reading: drop the connection after the answer
        headers.append((b"connection", b"close"))
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    """Raised from ``receive`` once the body passes the limit; whatever the app makes of it is replaced by a 413."""


class BodyLimit:
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
                return await answer(send, 400, "invalid Content-Length header", close=True)
            if int(length) > self.limit:
                return await answer(send, 413, f"request body of {int(length)} bytes exceeds the limit of "
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
            await answer(send, 413, f"request body exceeds the limit of {self.max_bytes} bytes (cut off after "
                                    f"{seen} bytes)", close=True)


def json_http_protocol():
    """uvicorn's h11 protocol, except that a request it cannot parse (bad request line, header or chunk framing)
    is answered 400 JSON like every other error instead of its plain-text one."""
    import h11  # uvicorn's own dependencies: medbench[serve]
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
