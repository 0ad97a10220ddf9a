"""The HTTP service and web page (needs the ``serve`` extra: FastAPI, uvicorn,
python-multipart)."""

from .app import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_BYTES,
    DEFAULT_REQUEST_SECONDS,
    create_app,
    decode_image,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_UPLOAD_BYTES",
    "DEFAULT_REQUEST_SECONDS",
    "create_app",
    "decode_image",
]
