"""Progress of a run: tqdm bars on a terminal, bounded plain lines anywhere else.

Every message and every progress line is a record of the ``trustad`` logger, so that the
run log (``runlog``) receives what the terminal shows. On a terminal the bars are drawn by
tqdm and their records are kept out of the terminal; elsewhere (CI, a log file, a Ray
worker) a bar writes a start line, at most one line per ``interval`` seconds, and an end
line, each with its rate and time estimate.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator

from tqdm import tqdm

LOGGER = logging.getLogger("trustad")
LINE_INTERVAL = 30.0  # seconds between two plain lines of one bar
BAR_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}]"
PROGRESS = "progress"  # attribute set on progress records: terminals with bars drop them


class Bar:
    """One step with a known amount of work; use through ``Progress.bar``."""

    def __init__(self, owner: Progress, desc: str, total: int, unit: str, position: int) -> None:
        self.owner, self.desc, self.total, self.unit = owner, desc, max(int(total), 0), unit
        self.n = 0
        self.start = self.last_line = owner.clock()
        self.tqdm = None
        if owner.draw_bars:
            self.tqdm = tqdm(
                total=self.total,
                desc=desc,
                unit=unit,
                file=sys.stderr,
                position=position,
                leave=position == 0,
                dynamic_ncols=True,
                smoothing=0 if position == 0 else 0.3,
            )
        self._line()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.tqdm is not None:
            self.tqdm.update(n)
        now = self.owner.clock()
        if now - self.last_line >= self.owner.interval and self.n < self.total:
            self.last_line = now
            self._line()

    def close(self) -> None:
        if self.tqdm is not None:
            self.tqdm.close()
        self._line()

    def _line(self) -> None:
        elapsed = self.owner.clock() - self.start
        text = tqdm.format_meter(
            self.n, self.total, elapsed, unit=self.unit, prefix=self.desc, bar_format=BAR_FORMAT
        )
        self.owner.logger.info(" ".join(text.split()), extra={PROGRESS: True})


class Progress:
    """Messages and bars of one run. ``enabled`` False draws no bars (``--quiet``; the
    messages still reach the run log); ``tty`` None asks stderr."""

    def __init__(
        self,
        enabled: bool = True,
        *,
        tty: bool | None = None,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger = LOGGER,
    ) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.interval = LINE_INTERVAL if interval is None else interval
        self.clock = clock
        self.logger = logger
        self.depth = 0

    @property
    def draw_bars(self) -> bool:
        return self.enabled and self.tty

    def __call__(self, message: str) -> None:
        self.logger.info(message)

    def debug(self, message: str) -> None:
        self.logger.debug(message)

    @contextlib.contextmanager
    def bar(self, desc: str, total: int, unit: str = "img") -> Iterator[Bar]:
        """A bar for ``total`` units of work; the outermost one stays on screen."""
        b = Bar(self, desc, total, unit, self.depth)
        self.depth += 1
        try:
            yield b
        finally:
            self.depth -= 1
            b.close()


class Stopwatch:
    """Seconds spent per kind of work since the last ``take``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, what: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[what] += time.perf_counter() - t0

    def take(self) -> dict[str, float]:
        out = dict(self.seconds)
        self.seconds.clear()
        return out


def is_progress(record: logging.LogRecord) -> bool:
    return bool(getattr(record, PROGRESS, False))


class ConsoleHandler(logging.StreamHandler):
    """stderr; writes through tqdm so that messages do not tear the bars, and leaves progress
    records out when bars are drawn (the bars show them)."""

    def __init__(self, bars: bool) -> None:
        super().__init__(sys.stderr)
        self.bars = bars

    def emit(self, record: logging.LogRecord) -> None:
        if self.bars and is_progress(record):
            return
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # logging must never end a run
            self.handleError(record)
