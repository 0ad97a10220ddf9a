"""The service's default limits, apart from FastAPI so that the command line can show them
without the ``serve`` extra."""

DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000
# Time limit of one request, waiting for the model included (503 busy, 504 over).
DEFAULT_REQUEST_SECONDS = 60.0
# How long a request waits for others to join its batch: small beside a backbone pass.
DEFAULT_MAX_WAIT_MS = 10.0
# prometheus_client's multiprocess mode: where worker processes keep their counts.
MULTIPROCESS_METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
