"""The ``trustad`` command line: one module per verb group, each with ``add_parser``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__


def build_parser() -> argparse.ArgumentParser:
    from . import demo, evaluate, fit, predict, serve, weights

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
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"trustad {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
