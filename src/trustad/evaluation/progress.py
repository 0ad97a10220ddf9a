"""Progress lines on stderr: one rewritten line on a terminal, finished steps in logs."""

from __future__ import annotations

import sys


class Progress:
    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()

    def __call__(self, message: str, done: int | None = None, total: int | None = None) -> None:
        if not self.enabled:
            return
        if done is not None and total:
            message = f"{message} {done}/{total}"
        partial = done is not None and done < (total or 0)
        if self.tty:
            print(f"\r{message}\033[K", end="" if partial else "\n", file=sys.stderr, flush=True)
        elif not partial:  # logs get one line per finished step
            print(message, file=sys.stderr, flush=True)
