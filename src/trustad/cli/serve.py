"""``trustad serve``: the HTTP service and web page for a model file."""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..backbone.runtime import DEFAULT_BATCH_SIZE
from ..serve.defaults import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_BYTES,
    DEFAULT_MAX_WAIT_MS,
    DEFAULT_REQUEST_SECONDS,
    MULTIPROCESS_METRICS_ENV,
)
from .export import add_engine_option
from .inputs import add_verify_key
from .options import add_device_option, add_setting_options, model_device

TOKEN_ENV = "TRUSTAD_TOKEN"
# How `serve --workers N` hands its options to the worker processes.
WORKER_OPTIONS_ENV = "TRUSTAD_SERVE_OPTIONS"
WORKER_OPTIONS = (
    "model",
    "engine",
    "weights",
    "device",
    "token_file",
    "max_batch",
    "max_wait_ms",
    "max_upload_mb",
    "max_pixels",
    "request_seconds",
    "verify_key",
)
# After SIGTERM, requests in progress get this long before the server stops anyway.
SHUTDOWN_SECONDS = 3


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model over HTTP, with a web page (needs trustad[serve])",
        description="POST /predict (multipart field 'file', ?map=none|png|base64), GET "
        "/health, GET /model, GET /metrics (Prometheus), GET /docs (works offline), and a "
        "web page at /. Concurrent requests are scored in batches (--max-batch, "
        "--max-wait-ms); one access-log line per request goes to standard error. --workers N "
        "runs N processes on one port.",
    )
    p.add_argument(
        "model", help="model file written by `trustad fit`, or a file from `trustad export`"
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; 0.0.0.0 for every network interface (default %(default)s)",
    )
    p.add_argument("--port", type=int, default=8000, help="TCP port (default %(default)s)")
    add_device_option(p)
    add_setting_options(p, ["weights"])
    add_engine_option(p)
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
        "--workers",
        type=int,
        default=1,
        help="processes serving the model on the same port, each with its own copy of the "
        "model and a share of the CPU threads; /metrics sums their counts (default %(default)s)",
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
    p.add_argument(
        "--request-seconds",
        type=float,
        default=DEFAULT_REQUEST_SECONDS,
        help="time limit of one request, waiting for the model included (503 when the model "
        "stays busy, 504 when its own work runs over); 0 for none (default %(default)s)",
    )
    add_verify_key(p)
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


def load_model(options: dict[str, Any]) -> Any:
    from ..engines.runners import load_model as load

    key = options["verify_key"]
    return load(
        options["model"],
        options["engine"],
        weights=options["weights"],
        device=model_device(options["device"], options["model"]),
        batch_size=options["max_batch"],
        verify_key=None if key is None else bytes.fromhex(key),
    )


def build_app(options: dict[str, Any], model: Any) -> Any:
    """The service for the options of ``trustad serve`` (a dict, so that worker processes
    can get them from the environment)."""
    from ..serve import create_app

    return create_app(
        model,
        max_upload_bytes=int(options["max_upload_mb"] * 2**20),
        max_pixels=options["max_pixels"],
        token=service_token(options["token_file"]),
        max_batch=options["max_batch"],
        max_wait_ms=options["max_wait_ms"],
        request_seconds=options["request_seconds"] or None,
    )


def worker_app() -> Any:
    """The app of one worker process of ``serve --workers N`` (a uvicorn factory)."""
    options = json.loads(os.environ[WORKER_OPTIONS_ENV])
    torch.set_num_threads(options["threads"])
    log_access_to_stderr()
    return build_app(options, load_model(options))


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..serve import create_app  # noqa: F401 (the extra is there)
    except ImportError as exc:
        raise RuntimeError(
            f"trustad serve needs the serve extra ({exc.name} is missing): "
            "pip install 'trustad[serve]'"
        ) from exc
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    options = {name: getattr(args, name) for name in WORKER_OPTIONS}
    if args.verify_key is not None:  # JSON for the workers
        options["verify_key"] = args.verify_key.hex()
    token = service_token(args.token_file)
    # Loaded here in every case, so that a bad model or weights file is one clear error
    # before any worker starts.
    model = load_model(options)
    sock = bind(args.host, args.port)  # before saying "serving": a taken port fails here
    log_access_to_stderr()
    access = "a token" if token else "no token"
    workers = f", {args.workers} worker processes" if args.workers > 1 else ""
    print(
        f"serving {args.model} on http://{args.host}:{args.port}/ ({access}{workers})",
        file=sys.stderr,
    )
    if token is None and not is_loopback(args.host):
        print(
            f"warning: {args.host} is reachable from the network and the service has no token "
            f"(--token-file or {TOKEN_ENV})",
            file=sys.stderr,
        )
    common = dict(log_level="warning", access_log=False, timeout_graceful_shutdown=SHUTDOWN_SECONDS)
    if args.workers == 1:
        uvicorn.Server(uvicorn.Config(build_app(options, model), **common)).run(sockets=[sock])
        return 0
    del model  # each worker loads its own
    # Each worker loads the model and splits the CPU threads; their counters are summed
    # through files in a private folder (prometheus_client's multiprocess mode).
    threads = max(1, torch.get_num_threads() // args.workers)
    os.environ[WORKER_OPTIONS_ENV] = json.dumps({**options, "threads": threads})
    metrics = tempfile.mkdtemp(prefix="trustad-metrics-")
    os.environ[MULTIPROCESS_METRICS_ENV] = metrics
    try:
        uvicorn.run(
            f"{__name__}:worker_app",
            factory=True,
            workers=args.workers,
            fd=sock.fileno(),
            **common,
        )
    finally:
        shutil.rmtree(metrics, ignore_errors=True)
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
