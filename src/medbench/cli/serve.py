"""`medbench serve`: a web page and a JSON API over trained runs."""
from __future__ import annotations

from pathlib import Path

from medbench.cli.checks import check_run_dir
from medbench.cli.types import device, float_in, int_in


def add_serve(sub, common) -> None:
    p = sub.add_parser("serve", parents=[common], help="web page + JSON API over trained runs (pip install "
                                                       "'medbench[serve]')")
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int_in(0, 65535), default=8000)
    p.add_argument("--device", type=device, default="cpu")
    p.add_argument("--max-bytes", type=int_in(1, 2 ** 31), default=10 * 2 ** 20, help="largest upload (default 10 MB)")
    p.add_argument("--max-pixels", type=int_in(1, 2 ** 28), default=50_000_000,
                   help="largest declared image (default 50 M)")
    p.add_argument("--max-concurrent", type=int_in(1, 256), default=2,
                   help="images decoded/predicted at once (default 2)")
    p.add_argument("--queue-timeout", type=float_in(0, 3600), default=5.0,
                   help="seconds a request waits for a free slot before it gets 503 (default 5)")


def cmd_serve(args) -> None:
    from medbench.serve import serve  # an optional dependency (fastapi, uvicorn)

    for run_dir in args.run_dirs:
        check_run_dir(run_dir)
    serve(args.run_dirs, host=args.host, port=args.port, device=args.device, max_bytes=args.max_bytes,
          max_pixels=args.max_pixels, max_concurrent=args.max_concurrent, queue_timeout=args.queue_timeout,
          quiet=args.quiet)
