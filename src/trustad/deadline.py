"""A time limit on one piece of work (one request of the service), checked where the work
can stop cleanly: between the backbone's blocks. A thread cannot be killed, but work that
checks its deadline ends soon after it, and frees the model for the next request.

    with time_limit(30):
        ...  # check_time() raises TimeLimitExceeded once 30 s have passed
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

T = TypeVar("T")

# When the work of the current context must end (time.monotonic()); None: no limit.
_deadline: ContextVar[float | None] = ContextVar("trustad_deadline", default=None)


class TimeLimitExceeded(RuntimeError):
    """The work ran past its time limit and was stopped."""


class Busy(RuntimeError):
    """The model stayed busy with other work for the whole time limit."""


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Within the block, ``check_time`` raises once ``seconds`` have passed (None: never)."""
    token = _deadline.set(None if seconds is None else time.monotonic() + seconds)
    try:
        yield
    finally:
        _deadline.reset(token)


def time_left() -> float | None:
    """Seconds left before the current deadline (at least 0), or None without one."""
    deadline = _deadline.get()
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def check_time() -> None:
    """Raise ``TimeLimitExceeded`` if the current deadline has passed."""
    left = time_left()
    if left is not None and left <= 0:
        raise TimeLimitExceeded("the time limit was reached; the work was stopped")


def run_limited(lock: threading.Lock, seconds: float | None, work: Callable[[], T]) -> T:
    """``work()`` holding ``lock``, all within ``seconds``: ``Busy`` if the lock stays held
    by others that long, ``TimeLimitExceeded`` if the work itself runs past the limit."""
    with time_limit(seconds):
        left = time_left()
        if not lock.acquire(timeout=-1 if left is None else left):
            raise Busy(f"the model was busy with other requests for {seconds:g} s")
        try:
            check_time()
            return work()
        finally:
            lock.release()
