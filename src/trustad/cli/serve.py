"""``trustad serve``: the HTTP service and web page for a model file."""

from __future__ import annotations

import argparse
import socket
import sys

from .export import add_engine_option
from .inputs import add_verify_key

# After SIGTERM, requests in progress get this long before the server stops anyway.
SHUTDOWN_SECONDS = 3


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model over HTTP, with a web page (needs trustad[serve])",
        description="POST /predict (multipart field 'file', ?map=none|png|base64), GET "
        "/health, GET /model, GET /docs, and a web page at /. Requests are served one at a "
        "time by the model.",
    )
    p.add_argument(
        "model", help="model file written by `trustad fit`, or a file from `trustad export`"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--weights", default=None, help="the backbone weights file to use")
    add_engine_option(p)
    p.add_argument("--max-upload-mb", type=float, default=None, help="default 20")
    p.add_argument("--max-pixels", type=int, default=None, help="default 40 million")
    p.add_argument(
        "--request-seconds",
        type=float,
        default=None,
        help="time limit of one request, waiting for the model included (503 when the model "
        "stays busy, 504 when its own work runs over); default 60, 0 for none",
    )
    add_verify_key(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..serve import (
            DEFAULT_MAX_PIXELS,
            DEFAULT_MAX_UPLOAD_BYTES,
            DEFAULT_REQUEST_SECONDS,
            create_app,
        )
    except ImportError as exc:
        raise RuntimeError(
            f"trustad serve needs the serve extra ({exc.name} is missing): "
            "pip install 'trustad[serve]'"
        ) from exc
    from ..engines.runners import load_model

    model = load_model(
        args.model,
        args.engine,
        weights=args.weights,
        device=args.device,
        verify_key=args.verify_key,
    )
    upload = (
        DEFAULT_MAX_UPLOAD_BYTES if args.max_upload_mb is None else int(args.max_upload_mb * 2**20)
    )
    pixels = DEFAULT_MAX_PIXELS if args.max_pixels is None else args.max_pixels
    seconds = DEFAULT_REQUEST_SECONDS if args.request_seconds is None else args.request_seconds
    app = create_app(
        model, max_upload_bytes=upload, max_pixels=pixels, request_seconds=seconds or None
    )
    sock = bind(args.host, args.port)  # before saying "serving": a taken port fails here
    print(f"serving {args.model} on http://{args.host}:{args.port}/", file=sys.stderr)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=SHUTDOWN_SECONDS)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port``, or an error naming the address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(
            exc.errno, f"cannot serve on {host}:{port}: {exc.strerror} (is another server on it?)"
        ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock
