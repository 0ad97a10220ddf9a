"""The HTTP service and web page (needs the ``serve`` extra: FastAPI, uvicorn,
python-multipart, fastapi-offline, prometheus-client).

The app is imported on first use, so that ``serve.defaults`` can be read without the extra.
"""

from typing import Any

from .defaults import DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD_BYTES, DEFAULT_REQUEST_SECONDS

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_UPLOAD_BYTES",
    "DEFAULT_REQUEST_SECONDS",
    "create_app",
    "decode_image",
]


def __getattr__(name: str) -> Any:
    if name in ("create_app", "decode_image"):
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
