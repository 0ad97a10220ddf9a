"""``trustad serve``: the HTTP service and web page for a model file."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from pathlib import Path

from ..backbone.runtime import DEFAULT_BATCH_SIZE
from ..serve.defaults import DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD_BYTES, DEFAULT_MAX_WAIT_MS
from .options import add_device_option, add_setting_options, device_of

TOKEN_ENV = "TRUSTAD_TOKEN"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model over HTTP, with a web page (needs trustad[serve])",
        description="POST /predict (multipart field 'file', ?map=none|png|base64), GET "
        "/health, GET /model, GET /metrics (Prometheus), GET /docs (works offline), and a "
        "web page at /. Concurrent requests are scored in batches (--max-batch, "
        "--max-wait-ms); one access-log line per request goes to standard error. To use "
        "several processes, start one `trustad serve` per port on the same model file and "
        "balance them with a reverse proxy: the model file is only read.",
    )
    p.add_argument("model", help="model file written by `trustad fit`")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; 0.0.0.0 for every network interface (default %(default)s)",
    )
    p.add_argument("--port", type=int, default=8000, help="TCP port (default %(default)s)")
    add_device_option(p)
    add_setting_options(p, ["weights"])
    p.add_argument(
        "--token-file",
        metavar="FILE",
        default=None,
        help="file holding a token that every endpoint but /health requires as "
        f"'Authorization: Bearer <token>' (default: the environment variable {TOKEN_ENV}; "
        "neither: no token)",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help="most images of concurrent requests scored together (default %(default)s)",
    )
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=DEFAULT_MAX_WAIT_MS,
        help="how long a request waits for others to join its batch (default %(default)s)",
    )
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=DEFAULT_MAX_UPLOAD_BYTES / 2**20,
        help="largest upload in MiB; larger ones get 413 (default %(default)s)",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="largest image in pixels, also once resized; larger get 413 (default %(default)s)",
    )
    p.set_defaults(func=run)


def service_token(token_file: str | None) -> str | None:
    """The token from ``token_file``, else from the environment, else None."""
    if token_file is not None:
        token = Path(token_file).read_text().strip()
        if not token:
            raise ValueError(f"token file {token_file} is empty")
        return token
    return os.environ.get(TOKEN_ENV, "").strip() or None


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def log_access_to_stderr() -> None:
    from ..serve.monitor import ACCESS_LOG

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    ACCESS_LOG.addHandler(handler)
    ACCESS_LOG.setLevel(logging.INFO)
    ACCESS_LOG.propagate = False


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..serve import create_app
    except ImportError as exc:
        raise RuntimeError(
            f"trustad serve needs the serve extra ({exc.name} is missing): "
            "pip install 'trustad[serve]'"
        ) from exc
    from ..model import FittedDetector

    token = service_token(args.token_file)
    model = FittedDetector.load(
        args.model, weights=args.weights, device=device_of(args), batch_size=args.max_batch
    )
    app = create_app(
        model,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_pixels=args.max_pixels,
        token=token,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
    )
    log_access_to_stderr()
    access = "a token" if token else "no token"
    print(f"serving {args.model} on http://{args.host}:{args.port}/ ({access})", file=sys.stderr)
    if token is None and not is_loopback(args.host):
        print(
            f"warning: {args.host} is reachable from the network and the service has no token "
            f"(--token-file or {TOKEN_ENV})",
            file=sys.stderr,
        )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0
