"""Dynamic batching: images of concurrent requests scored by the model together.

One worker thread owns the model. A request hands its decoded image to :meth:`Batcher.score`
and waits; the worker takes the first waiting image, gathers more for up to ``max_wait_ms``
(at most ``max_batch`` in all), scores them in one call and hands each request the
prediction at its own position. Requests never share anything but the model call, so an
answer cannot reach the wrong request.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from PIL import Image

from ..backbone.runtime import DEFAULT_BATCH_SIZE
from ..model import FittedDetector, Prediction
from .defaults import DEFAULT_MAX_WAIT_MS


@dataclass
class Pending:
    """One request's image, whether it wants the anomaly map, and where its answer goes."""

    rgb: Image.Image
    maps: bool
    answer: Future = field(default_factory=Future)


class Batcher:
    """Scores requests' images in batches on one worker thread (see the module docstring).

    ``on_batch`` is told the size of every batch scored (for the metrics).
    """

    def __init__(
        self,
        model: FittedDetector,
        max_batch: int = DEFAULT_BATCH_SIZE,
        max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max wait must be >= 0 ms, got {max_wait_ms}")
        self.model = model
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.on_batch = on_batch
        self.waiting: queue.Queue[Pending | None] = queue.Queue()
        self.closed = False
        self.closing = threading.Lock()  # no request slips in behind the stop sign
        self.worker = threading.Thread(target=self._work, name="trustad-batcher", daemon=True)
        self.worker.start()

    def score(self, rgb: Image.Image, maps: bool) -> Prediction:
        """The prediction for ``rgb``, once its batch has been scored (blocks)."""
        pending = Pending(rgb, maps)
        with self.closing:
            if self.closed:
                raise RuntimeError("the service is shutting down")
            self.waiting.put(pending)
        return pending.answer.result()

    def close(self) -> None:
        """Score what is already waiting, then stop the worker."""
        with self.closing:
            if self.closed:
                return
            self.closed = True
            self.waiting.put(None)
        self.worker.join()

    def _gather(self, first: Pending) -> tuple[list[Pending], bool]:
        """``first`` and what arrives within the wait, up to ``max_batch``; and whether the
        worker was asked to stop meanwhile."""
        batch = [first]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                item = self.waiting.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _work(self) -> None:
        stop = False
        while not stop:
            first = self.waiting.get()
            if first is None:
                break
            batch, stop = self._gather(first)
            try:
                # One call for the batch; maps are computed when any request wants them.
                preds = self.model.predict([p.rgb for p in batch], maps=any(p.maps for p in batch))
            except Exception as exc:  # every request of the batch learns why
                for p in batch:
                    p.answer.set_exception(exc)
                continue
            if self.on_batch is not None:
                self.on_batch(len(batch))
            for p, pred in zip(batch, preds, strict=True):
                p.answer.set_result(pred)
