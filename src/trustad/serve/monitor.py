"""What the service tells its operators: one access-log line per request and the
Prometheus metrics at ``/metrics``.

Access-log line (logger ``trustad.serve.access``), fields separated by spaces::

    2026-12-05T21:04:11.532Z POST /predict 200 412.7ms image=640x480 decision=anomalous flag=no

``image``, ``decision`` and ``flag`` are ``-`` where a request scored no image;
``decision=none`` and ``flag=none`` where the model has no threshold or no flag fitted.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

from ..model import Prediction
from .defaults import MULTIPROCESS_METRICS_ENV

ACCESS_LOG = logging.getLogger("trustad.serve.access")
# Seconds; a CPU scores one image at 224 px in about 0.1-1 s, a queue adds multiples.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def decision_label(decision: bool | None) -> str:
    return "none" if decision is None else ("anomalous" if decision else "normal")


def flag_label(flag: bool | None) -> str:
    return "none" if flag is None else ("raised" if flag else "no")


@dataclass
class Scored:
    """What a request scored, for its access-log line and the metrics."""

    width: int
    height: int
    prediction: Prediction


class Monitor:
    """The service's counters (its own registry, so that several apps in one process,
    as in tests, do not mix their counts)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "trustad_requests",
            "HTTP requests answered, by method, route and status",
            ["method", "path", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "trustad_request_seconds",
            "time from receiving a request to its answer, by route",
            ["path"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.decisions = Counter(
            "trustad_decisions",
            "images scored, by decision (anomalous, normal; none: no threshold fitted)",
            ["decision"],
            registry=self.registry,
        )
        self.flags = Counter(
            "trustad_flags_raised",
            "images whose do-not-trust flag was raised",
            registry=self.registry,
        )
        self.batches = Histogram(
            "trustad_batch_size",
            "images scored together by one model call (dynamic batching)",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )

    def observe_batch(self, size: int) -> None:
        self.batches.observe(size)

    def observe(
        self,
        method: str,
        path: str,
        route: str,
        status: int,
        seconds: float,
        scored: Scored | None,
    ) -> None:
        """Count one answered request and write its access-log line. ``route`` labels the
        metrics: the path of one of the service's endpoints, or "other" (a bounded set of
        labels whatever paths clients try)."""
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        image = decision = flag = "-"
        if scored is not None:
            pred = scored.prediction
            self.decisions.labels(decision_label(pred.decision)).inc()
            if pred.flag:
                self.flags.inc()
            image = f"{scored.width}x{scored.height}"
            decision, flag = decision_label(pred.decision), flag_label(pred.flag)
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        ACCESS_LOG.info(
            f"{now.replace('+00:00', 'Z')} {method} {path} {status} {1000 * seconds:.1f}ms "
            f"image={image} decision={decision} flag={flag}"
        )

    content_type = CONTENT_TYPE_LATEST

    def exposition(self) -> bytes:
        """The metrics in the Prometheus text format; with several worker processes
        (``serve --workers``), the sums over all of them."""
        if os.environ.get(MULTIPROCESS_METRICS_ENV):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
