"""``trustad export``: a model file as one ONNX or OpenVINO graph, checked for parity."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

from ..backbone.preprocess import load_rgb8
from .inputs import add_verify_key, collect_images


def image_size(text: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` -> (width, height)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected WIDTHxHEIGHT, e.g. 640x480, got {text!r}"
        ) from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"width and height must be positive, got {text!r}")
    return width, height


def add_engine_option(p: argparse.ArgumentParser) -> None:
    """``--engine`` of the verbs that run a model; by default the file's kind decides."""
    from ..engines import ENGINES

    p.add_argument(
        "--engine",
        choices=ENGINES,
        default=None,
        help="torch runs a .safetensors model file; onnx (onnxruntime) or openvino run a file "
        "from `trustad export` (default: torch for model files, else the fastest installed "
        "of openvino and onnx)",
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..engines.export import EXPORT_FORMATS, PRECISIONS

    p = sub.add_parser(
        "export",
        help="export a model file as one ONNX or OpenVINO graph for predict/serve",
        description="Writes the whole fitted detector (backbone, memory bank, 1-NN distances, "
        "image score) as one graph with a fixed input size, the model's calibration, "
        "threshold, flag and provenance as metadata, so that the exported file alone "
        "serves `trustad predict` and `trustad serve`. Then runs it beside the torch model "
        "and prints the largest score and map changes (float32: within 1e-5 and 1e-4, else "
        "exit status 1).",
    )
    p.add_argument("model", help="model file written by `trustad fit`")
    p.add_argument(
        "--format",
        choices=tuple(EXPORT_FORMATS),
        required=True,
        dest="fmt",
        help="onnx (one .onnx file: onnxruntime or OpenVINO) or openvino (IR: .xml and .bin)",
    )
    p.add_argument("--out", required=True, help="file to write (.onnx, or .xml plus its .bin)")
    p.add_argument(
        "--image-size",
        type=image_size,
        default=None,
        metavar="WIDTHxHEIGHT",
        help="size of the original images the graph takes (default: square images)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="precision the engines run at by default; bf16 (OpenVINO, CPUs with native "
        "bfloat16) is faster and changes the scores slightly: the change is measured and "
        "printed (default: fp32)",
    )
    p.add_argument(
        "--check",
        nargs="+",
        default=None,
        metavar="PATH",
        help="images to measure the parity on (default: synthetic parts and photographs)",
    )
    p.add_argument(
        "--weights",
        default=None,
        help="the backbone weights file (default: the recorded backbone's, as `trustad "
        "weights show` finds them)",
    )
    add_verify_key(p)
    p.set_defaults(func=run)


def check_images(model: Any, args: argparse.Namespace) -> list[np.ndarray]:
    """The --check images, else synthetic parts and photograph crops at the graph's size."""
    from ..engines.parity import photo_images, synthetic_images

    if args.check:
        return [np.asarray(load_rgb8(p)) for p in collect_images(args.check)]
    size = args.image_size or (model.detector.resolution,) * 2
    crops = photo_images((min(size[1], 512), min(size[0], 512)))
    return [np.asarray(load_rgb8(img).resize(size)) for img in synthetic_images(256) + crops]


def run(args: argparse.Namespace) -> int:
    from ..engines.export import export_model
    from ..engines.parity import keeps_parity, parity
    from ..engines.runners import load_exported
    from ..model import FittedDetector

    model = FittedDetector.load(args.model, weights=args.weights, verify_key=args.verify_key)
    out = export_model(model, args.out, args.fmt, args.image_size, args.precision)
    exported = load_exported(out)
    change = parity(model, exported, check_images(model, args))
    print(
        f"exported {args.model} -> {out} ({args.fmt}, input {exported.engine.shape}, "
        f"engine {exported.engine.name}, {args.precision})\n"
        f"change from torch fp32 over {change['images']} image(s): score {change['score']:.2e}, "
        f"map {change['map']:.2e}"
    )
    if args.precision == "fp32" and not keeps_parity(change):
        print("parity FAILED: the limits are 1e-5 (score) and 1e-4 (map)", file=sys.stderr)
        return 1
    return 0
