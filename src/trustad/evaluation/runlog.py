"""run.log beside the results, the terminal's share of the same records, the closing
summary that is always printed, and where an unexpected error's traceback goes."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .progress import LOGGER, ConsoleHandler

LOG_NAME = "run.log"
FILE_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"


def check_output_folder(out: str | Path) -> Path:
    """Raise ValueError unless ``out`` is, or can be made, a folder this process can write
    in. Creates nothing: a file is created and removed in the nearest existing folder, which
    is the only check that holds for root too (permission bits do not stop root; read-only
    mounts do)."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"output folder {path} is a file, not a folder")
    existing = next((p for p in (path, *path.parents) if p.exists()), Path.cwd())
    if not existing.is_dir():
        raise ValueError(f"output folder {path} cannot be created: {existing} is a file")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ValueError(f"output folder {path} is not writable ({existing}: {reason})") from exc
    return path


@contextlib.contextmanager
def run_logging(out: str | Path | None, quiet: bool) -> Iterator[Path | None]:
    """Route the ``trustad`` logger (and Python warnings) to the terminal (unless ``quiet``)
    and to ``out``/run.log at debug level (when ``out`` is given; the folder is created).
    An exception that ends the block is written to the log with its traceback, and the log's
    path is attached to it as ``log_path``."""
    handlers: list[logging.Handler] = [logging.NullHandler()]
    if not quiet:
        console = ConsoleHandler(bars=sys.stderr.isatty())
        console.setLevel(logging.INFO)
        console.setFormatter(logging.Formatter("%(message)s"))
        handlers.append(console)
    path = None
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        path = Path(out) / LOG_NAME
        file = logging.FileHandler(path, encoding="utf-8")
        file.setLevel(logging.DEBUG)
        file.setFormatter(logging.Formatter(FILE_FORMAT))
        handlers.append(file)
    warnings_logger = logging.getLogger("py.warnings")
    old_level = LOGGER.level
    LOGGER.setLevel(logging.DEBUG)
    logging.captureWarnings(True)
    for h in handlers:
        LOGGER.addHandler(h)
        warnings_logger.addHandler(h)
    try:
        yield path
    except BaseException as exc:
        LOGGER.debug("stopped by %s", type(exc).__name__, exc_info=True)
        if path is not None:
            with contextlib.suppress(AttributeError):
                exc.log_path = path  # type: ignore[attr-defined]
        raise
    finally:
        logging.captureWarnings(False)
        for h in handlers:
            LOGGER.removeHandler(h)
            warnings_logger.removeHandler(h)
            h.close()
        LOGGER.setLevel(old_level)


def always(text: str, quiet: bool) -> None:
    """Log ``text``, and print it to stderr even with ``quiet`` (where the terminal gets
    no records)."""
    LOGGER.info(text)
    if quiet:
        print(text, file=sys.stderr, flush=True)


def crash_log(exc: BaseException) -> Path:
    """The file holding ``exc``'s traceback: the run log it was written to, else a new
    temporary file."""
    path = getattr(exc, "log_path", None)
    if path is not None:
        return Path(path)
    fd, name = tempfile.mkstemp(prefix="trustad-error-", suffix=".log")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    return Path(name)


@dataclass
class RunSummary:
    """What a run did: units computed and found done, skipped (with why), failed categories."""

    computed: int = 0
    already_done: int = 0
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def text(self) -> str:
        lines = [
            f"summary: {self.computed} results computed, {self.already_done} already done, "
            f"{len(self.skipped)} skipped, {len(self.failed)} categories failed, "
            f"in {format_seconds(self.seconds)}"
        ]
        lines += [f"  skipped: {s}" for s in self.skipped]
        lines += [f"  failed: {c}: {msg}" for c, msg in self.failed.items()]
        return "\n".join(lines)


def format_seconds(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
