"""``medbench serve``: the app under uvicorn until interrupted."""
import os
import socket
from collections.abc import Sequence

from medbench.errors import MedbenchError
from medbench.serve.app import NEEDS_FASTAPI, create_app
from medbench.serve.limits import MAX_BYTES, MAX_CONCURRENT, MAX_PIXELS, QUEUE_TIMEOUT, json_http_protocol


def serve(run_dirs: Sequence[str | os.PathLike], *, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu",
          max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS, max_concurrent: int = MAX_CONCURRENT,
          queue_timeout: float = QUEUE_TIMEOUT, quiet: bool = False) -> None:
    """Run the app with uvicorn until interrupted. A port already in use is a one-line error."""
    try:
        import uvicorn  # optional: medbench[serve]
    except ImportError:
        raise MedbenchError(NEEDS_FASTAPI) from None
    app = create_app(run_dirs, device=device, max_bytes=max_bytes, max_pixels=max_pixels,
                     max_concurrent=max_concurrent, queue_timeout=queue_timeout)
    _check_port(host, port)
    if not quiet:
        print(f"serving {len(run_dirs)} model(s) on http://{host}:{port}/ (API: /predict, /model, /docs); "
              f"Ctrl-C stops", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning" if quiet else "info", http=json_http_protocol())


def _check_port(host: str, port: int) -> None:
    """Bind once to see that ``host:port`` is free: uvicorn's own failure is a traceback."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as e:
            raise MedbenchError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port or "
                                f"stop the program using it") from None
