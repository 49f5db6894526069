"""One upload -> model input, within the limits: content type, a private copy, the declared size, a slot, decoding.

Uploads are decoded from a private temporary file with a random name (never the client's), deleted right after;
errors name "the uploaded file", never the temporary path.
"""
import logging
import os
import shutil
import tempfile

from PIL import Image

from medbench.data.decode import header_size, is_dicom
from medbench.data.dicom import check_inflated_size
from medbench.errors import MedbenchError
from medbench.serve.limits import ACCEPTED, Refused, Slots, check_pixels
from medbench.serve.models import Served

log = logging.getLogger("medbench.serve")


class Uploads:
    """Where uploads go (a 0700 folder, removed with this object) and the limits each one is held to."""

    def __init__(self, max_bytes: int, max_pixels: int, max_concurrent: int, queue_timeout: float):
        self.folder = tempfile.TemporaryDirectory(prefix="medbench-serve-")
        self.max_bytes, self.max_pixels = max_bytes, max_pixels
        self.slots = Slots(max_concurrent, queue_timeout)

    def predict(self, served: Served, file, cam: bool) -> dict:
        """``file``: the multipart upload (its ``content_type`` and ``file``) -> ``served``'s answer for it."""
        ctype = (file.content_type or "application/octet-stream").split(";")[0].strip().lower()
        if ctype not in ACCEPTED:
            raise Refused(415, f"content type '{ctype}' is not accepted; send one of {', '.join(ACCEPTED)}")
        tmp = save_upload(file, self.folder.name, self.max_bytes)
        try:
            size = quick_size(tmp)  # a bomb that says so in a PNG/JPEG header is refused without waiting
            check_pixels(size, self.max_pixels)
            with self.slots.hold(size):
                return served.infer(decode_upload(served.predictor, tmp, self.max_pixels), cam)
        finally:
            os.unlink(tmp)


def save_upload(file, folder: str, max_bytes: int) -> str:
    """The upload copied into a private temporary file with a random name (its path); the spooled copy is closed
    at once, so each request holds at most one copy of at most ``max_bytes`` on disk."""
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
        raise Refused(*problem)
    return tmp


def quick_size(path: str) -> tuple[int, int] | None:
    """(width, height) if :func:`medbench.data.decode.header_size` reads it cheaply from the header, else None."""
    if is_dicom(path):  # header_size may parse DICOM with pydicom: inside a slot, after the deflate check
        return None
    try:
        size = header_size(path)
        return (int(size[0]), int(size[1])) if size is not None else None
    except Exception:  # noqa: BLE001 - an unreadable header is judged by the decoder, which names the fault
        return None


def decode_upload(predictor, tmp: str, max_pixels: int):
    """The uploaded file -> uint8 [C, S, S]; errors name 'the uploaded file', never the temporary path."""
    try:
        check_inflated_size(tmp, 4 * max_pixels + 2 ** 20)
        check_pixels(declared_size(tmp), max_pixels)
        return predictor.load_image(tmp)
    except Refused:
        raise
    except MedbenchError as e:
        message = str(e).replace(f"{tmp}: ", "").replace(tmp, "the uploaded file")
        status = 413 if "exceeds the limit" in message or "decompression bomb" in message else 400
        raise Refused(status, f"the uploaded file: {message}") from None
    except MemoryError:
        raise Refused(413, "the uploaded image is too large to decode in the memory available; send "
                           "a smaller image") from None
    except Exception as e:  # noqa: BLE001 - a decoder's own bug on odd input is still the input's problem, not a 500
        log.error("decoding an upload failed with %s: %s", type(e).__name__, e)
        raise Refused(400, f"the uploaded file: cannot decode ({type(e).__name__})") from None


def declared_size(path: str) -> tuple[int, int] | None:
    """(width, height) from the file's header, without decoding pixels; None when the header does not say.

    :func:`medbench.data.decode.header_size` first; for formats it leaves out, Pillow's lazy open (header only)
    or pydicom without pixel data (rows counted once per frame)."""
    try:
        size = header_size(path)
        if size is not None:
            return int(size[0]), int(size[1])
        if is_dicom(path):
            import pydicom  # optional: DICOM support

            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            frames = max(int(ds.get("NumberOfFrames", 1) or 1), 1)
            return int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0) * frames
        with Image.open(path) as im:
            return im.size
    except MedbenchError:
        raise
    except Exception:  # noqa: BLE001 - unreadable header: decoding will say what is wrong with the file
        return None
