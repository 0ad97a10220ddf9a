"""Dynamic batching: images of concurrent requests scored by the model together.

One worker thread owns the model. A request hands its decoded image to :meth:`Batcher.score`
and waits; the worker takes the first waiting image, gathers more for up to ``max_wait_ms``
(at most ``max_batch`` in all), scores them in one call and hands each request the
prediction at its own position. Requests never share anything but the model call, so an
answer cannot reach the wrong request.

Time limits: a request that waits longer than its limit for its batch to start is taken
out of the queue and gets :class:`Busy`; a batch runs under the limit of its member with
the most time left, and one that runs past it is stopped between backbone blocks
(:class:`TimeLimitExceeded` for each of its requests).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as WaitedTooLong
from dataclasses import dataclass, field

from PIL import Image

from ..backbone.runtime import DEFAULT_BATCH_SIZE
from ..deadline import Busy, time_limit
from ..model import FittedDetector, Prediction
from .defaults import DEFAULT_MAX_WAIT_MS


@dataclass
class Pending:
    """One request's image, whether it wants the anomaly map, and where its answer goes."""

    rgb: Image.Image
    maps: bool
    deadline: float | None = None  # time.monotonic() by which it must be answered
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

    def score(self, rgb: Image.Image, maps: bool, seconds: float | None = None) -> Prediction:
        """The prediction for ``rgb``, once its batch has been scored (blocks), within
        ``seconds`` (None: no limit; see the module docstring)."""
        deadline = None if seconds is None else time.monotonic() + seconds
        pending = Pending(rgb, maps, deadline)
        with self.closing:
            if self.closed:
                raise RuntimeError("the service is shutting down")
            self.waiting.put(pending)
        try:
            return pending.answer.result(timeout=seconds)
        except WaitedTooLong:
            if pending.answer.cancel():  # still queued: the worker will skip it
                raise Busy(f"the model was busy with other requests for {seconds:g} s") from None
            return pending.answer.result()  # its batch is running, under a time limit

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
            gathered, stop = self._gather(first)
            batch = [p for p in gathered if p.answer.set_running_or_notify_cancel()]
            if not batch:
                continue
            deadlines = [p.deadline for p in batch]
            left = None if None in deadlines else max(deadlines) - time.monotonic()
            try:
                # One call for the batch; maps are computed when any request wants them.
                with time_limit(left):
                    preds = self.model.predict(
                        [p.rgb for p in batch], maps=any(p.maps for p in batch)
                    )
            except Exception as exc:  # every request of the batch learns why
                for p in batch:
                    p.answer.set_exception(exc)
                continue
            if self.on_batch is not None:
                self.on_batch(len(batch))
            for p, pred in zip(batch, preds, strict=True):
                p.answer.set_result(pred)
