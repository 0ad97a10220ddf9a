"""``trustad serve``: the HTTP service and web page for a model file."""

from __future__ import annotations

import argparse
import sys

from .export import add_engine_option


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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..serve import DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD_BYTES, create_app
    except ImportError as exc:
        raise RuntimeError(
            f"trustad serve needs the serve extra ({exc.name} is missing): "
            "pip install 'trustad[serve]'"
        ) from exc
    from ..engines.runners import load_model

    model = load_model(args.model, args.engine, weights=args.weights, device=args.device)
    upload = (
        DEFAULT_MAX_UPLOAD_BYTES if args.max_upload_mb is None else int(args.max_upload_mb * 2**20)
    )
    pixels = DEFAULT_MAX_PIXELS if args.max_pixels is None else args.max_pixels
    app = create_app(model, max_upload_bytes=upload, max_pixels=pixels)
    print(f"serving {args.model} on http://{args.host}:{args.port}/", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
