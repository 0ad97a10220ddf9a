"""The HTTP service around a fitted detector (FastAPI).

Endpoints: ``POST /predict`` (multipart field ``file``; ``?map=none|png|base64``),
``GET /health``, ``GET /model`` (settings and provenance, no tensors), ``GET /metrics``
(Prometheus text format), ``GET /docs`` (the OpenAPI page, its assets bundled: it works
without internet) and the web page at ``/``.

With a ``token``, ``/predict``, ``/model`` and ``/metrics`` answer 401 unless the request
carries ``Authorization: Bearer <token>``. ``/health``, the web page, ``/docs`` and the API
schema stay open: they hold nothing about the model, and a browser loads them before it
can send a token (the page and ``/docs`` then send it with every call).

Concurrency: each request decodes its upload in the server's thread pool; the images of
concurrent requests are scored together by one worker thread (``serve.batching``), each
request getting the prediction of its own image. Each request has a time limit: one that
waits for the model that long answers 503, one whose batch runs past the limit of its
longest-waiting member is stopped (between backbone blocks) and answers 504, and the model
is free for the next. Every request is counted in the metrics and written as one
access-log line (``serve.monitor``). Bad input gets a 4xx JSON body ``{"error": "..."}``
naming the problem, never a 500.
"""

from __future__ import annotations

import base64
import hmac
import time
from contextlib import asynccontextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, File, Query, Request, Security, UploadFile
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from PIL import Image
from starlette.exceptions import HTTPException

from .. import __version__
from ..backbone.runtime import DEFAULT_BATCH_SIZE
from ..deadline import Busy, TimeLimitExceeded
from ..images import ImageReadError, ImageTooLargeError, NotAnImageError, read_rgb8
from ..model import FittedDetector, Prediction, json_safe, prediction_overlay_png
from .batching import Batcher
from .defaults import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_BYTES,
    DEFAULT_MAX_WAIT_MS,
    DEFAULT_REQUEST_SECONDS,
)
from .monitor import Monitor, Scored

STATIC = Path(__file__).parent / "static"
# The Authorization header, read by the token check (module-level: FastAPI resolves the
# check's annotations by name).
BEARER = HTTPBearer(auto_error=False, description="the token given to `trustad serve`")
# Multipart framing around the file (boundaries, part headers) allowed beyond the limit.
FORM_OVERHEAD_BYTES = 64 * 1024


class Unauthorized(Exception):
    """A request without the service's token."""


class MapFormat(str, Enum):
    none = "none"
    png = "png"  # the heatmap overlay as a base64 PNG
    base64 = "base64"  # the raw float32 map, row-major, base64


class UploadError(Exception):
    """Bad input from a client: an HTTP status and a message naming the problem."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def decode_image(
    data: bytes, max_pixels: int, name: str = "upload", resolution: int | None = None
) -> Image.Image:
    """The uploaded bytes as 8-bit RGB, or :class:`UploadError` (415 not an image, 413 too
    many pixels or too elongated, also once resized to ``resolution``, checked on the
    header as every reader does; 400 empty, truncated or corrupt)."""
    try:
        return read_rgb8(data, max_pixels=max_pixels, resolution=resolution)
    except ImageTooLargeError as exc:
        raise UploadError(413, f"{name}: {exc.reason}") from exc
    except NotAnImageError as exc:
        raise UploadError(415, f"{name}: {exc.reason} (PNG, JPEG, BMP, TIFF, WebP, ...)") from exc
    except ImageReadError as exc:
        raise UploadError(400, f"{name}: unreadable, truncated or corrupt: {exc.reason}") from exc


def map_payload(rgb: Image.Image, pred: Prediction, fmt: MapFormat, model: FittedDetector):
    if fmt is MapFormat.png:
        data = prediction_overlay_png(rgb, pred, model)
        return {"format": "png", "data": base64.b64encode(data).decode()}
    raw = np.ascontiguousarray(pred.anomaly_map, dtype="<f4")
    return {"format": "float32", "shape": list(raw.shape), "data": base64.b64encode(raw).decode()}


def create_app(
    model: FittedDetector,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    token: str | None = None,
    max_batch: int = DEFAULT_BATCH_SIZE,
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
    request_seconds: float | None = DEFAULT_REQUEST_SECONDS,
) -> FastAPI:
    """The service for ``model``: the limits answer 413 beyond them; ``token`` (if any)
    is required by ``/predict``, ``/model`` and ``/metrics``; up to ``max_batch``
    concurrent images are scored together, waiting at most ``max_wait_ms`` for the batch
    to fill; the time limit per request (None: none) answers 503 or 504."""
    if token is not None and not token.strip():
        raise ValueError("the service token is empty")
    monitor = Monitor()
    batcher = Batcher(model, max_batch, max_wait_ms, on_batch=monitor.observe_batch)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        batcher.close()  # answers the requests already waiting

    # FastAPIOffline serves the Swagger UI and ReDoc assets from its own package.
    app = FastAPIOffline(
        title="trustad",
        version=__version__,
        description="Few-shot anomaly detection with a calibrated probability, a conformal "
        "threshold and a do-not-trust flag. Concurrent requests are scored in batches."
        + (" /predict, /model and /metrics need the service's token (Authorize)." if token else ""),
        lifespan=lifespan,
    )
    limits = {
        "max_upload_bytes": max_upload_bytes,
        "max_pixels": max_pixels,
        "request_seconds": request_seconds,
    }

    def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)],
    ) -> None:
        if credentials is None:
            raise Unauthorized("this service needs a token: send 'Authorization: Bearer <token>'")
        if not hmac.compare_digest(credentials.credentials.encode(), token.encode()):
            raise Unauthorized("wrong token")

    guarded = [Security(require_token)] if token is not None else []

    @app.exception_handler(Unauthorized)
    async def unauthorized(request: Request, exc: Unauthorized) -> JSONResponse:
        return JSONResponse(
            {"error": str(exc)}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
        )

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, exc: UploadError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        # e.g. a multipart form the parser refuses: the same {"error": ...} body as the rest
        return JSONResponse(
            {"error": str(exc.detail), "detail": exc.detail},
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for e in exc.errors():
            where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            problems.append(f"{where}: {e.get('msg', 'invalid')}")
        message = "; ".join(problems)
        if any(e.get("type") == "missing" for e in exc.errors()):
            message += " (send the image as a multipart form field named 'file')"
        return JSONResponse(
            {"error": message, "detail": jsonable_encoder(exc.errors())}, status_code=422
        )

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit():
            if int(length) > max_upload_bytes + FORM_OVERHEAD_BYTES:
                return JSONResponse(
                    {"error": f"upload of {length} bytes exceeds the limit {max_upload_bytes}"},
                    status_code=413,
                )
        return await call_next(request)

    routes = {"/health", "/model", "/predict", "/metrics", "/docs", "/openapi.json", "/"}

    @app.middleware("http")  # added last: the outermost, so it sees every answer
    async def count_and_log(request: Request, call_next):
        start = time.perf_counter()
        status = 500  # unless an answer comes back
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            # The path as sent (still percent-encoded): a client cannot break the line.
            path = request.scope.get("raw_path", b"").decode("latin-1") or request.url.path
            monitor.observe(
                request.method,
                path,
                path if path in routes else "other",
                status,
                time.perf_counter() - start,
                getattr(request.state, "scored", None),
            )

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    @app.get("/model", dependencies=guarded)
    def describe() -> dict[str, Any]:
        return {**model.describe(), "limits": limits}

    @app.get("/metrics", dependencies=guarded)
    def metrics() -> Response:
        return Response(monitor.exposition(), media_type=monitor.content_type)

    @app.post("/predict", dependencies=guarded)
    def predict(
        request: Request,
        file: Annotated[list[UploadFile], File(description="the image to score (one)")],
        map_format: Annotated[
            MapFormat, Query(alias="map", description="none, png overlay or raw float32 map")
        ] = MapFormat.none,
    ) -> dict[str, Any]:
        if len(file) != 1:
            names = ", ".join(f.filename or "upload" for f in file)
            raise UploadError(422, f"send one image per request, got {len(file)}: {names}")
        (file,) = file
        name = file.filename or "upload"
        data = file.file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise UploadError(413, f"{name}: larger than the upload limit {max_upload_bytes}")
        rgb = decode_image(data, max_pixels, name, model.detector.resolution)
        try:
            pred = batcher.score(rgb, map_format is not MapFormat.none, request_seconds)
        except Busy as exc:
            raise UploadError(503, f"{name}: {exc}; try again later") from exc
        except TimeLimitExceeded as exc:
            raise UploadError(
                504, f"{name}: not scored within the time limit of {request_seconds:g} s"
            ) from exc
        request.state.scored = Scored(rgb.width, rgb.height, pred)
        out: dict[str, Any] = {
            "filename": name,
            "width": rgb.width,
            "height": rgb.height,
            **pred.to_dict(),
            "decision_rule": model.decision_rule_,
        }
        if map_format is not MapFormat.none:
            out["map"] = map_payload(rgb, pred, map_format, model)
        return json_safe(out)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
