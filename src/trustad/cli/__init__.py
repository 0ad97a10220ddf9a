"""The ``trustad`` command line: one module per verb group, each with ``add_parser``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__


def build_parser() -> argparse.ArgumentParser:
    from . import demo, evaluate, export, fit, predict, serve, weights

    parser = argparse.ArgumentParser(
        prog="trustad",
        description="Trustworthy few-shot anomaly detection: AnomalyDINO on DINOv2 features, "
        "adversarial attacks, calibration and uncertainty.",
    )
    parser.add_argument("--version", action="version", version=f"trustad {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    demo.add_parser(sub)
    evaluate.add_parser(sub)
    export.add_parser(sub)
    fit.add_parser(sub)
    predict.add_parser(sub)
    serve.add_parser(sub)
    weights.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; completed units are saved and a rerun resumes", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as exc:
        # Errors a user can cause (bad values, files, folders, devices): one line, status 2.
        # The run log, when there is one, holds the traceback.
        print(f"trustad {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        from ..evaluation.runlog import crash_log

        print(
            f"trustad {args.command}: unexpected error: {type(exc).__name__}: {_one_line(exc)}; "
            f"the traceback is in {crash_log(exc)}",
            file=sys.stderr,
        )
        return 1


def _one_line(exc: BaseException) -> str:
    """An error message on one line, nothing cut off."""
    return "; ".join(part.strip() for part in str(exc).splitlines() if part.strip())


if __name__ == "__main__":
    sys.exit(main())
