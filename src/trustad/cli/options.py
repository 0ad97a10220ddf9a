"""Options that several verbs share, defined once: the device, and the detector and runtime
settings that ``fit``, ``predict`` and ``serve`` offer as ``evaluate`` does (from the
settings' metadata: the same flag, help, parser and default)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..backbone.runtime import resolve_device
from ..evaluation.arguments import add_setting_options

__all__ = ["add_device_option", "add_setting_options", "device_of", "model_device"]

DEFAULT_DEVICE = "auto"


def add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default=DEFAULT_DEVICE,
        help="auto (CUDA when present), cpu, cuda or cuda:N (default %(default)s)",
    )


def device_of(args: argparse.Namespace) -> torch.device:
    """The device asked for, checked (a missing GPU is an error before any work)."""
    return resolve_device(args.device)


def model_device(device: str, model: str | Path) -> str:
    """``device`` resolved for a model file; ``auto`` is the CPU for a graph from `trustad
    export` (those run there)."""
    from ..engines.export import EXPORT_FORMATS

    if device == DEFAULT_DEVICE and Path(model).suffix in EXPORT_FORMATS.values():
        return "cpu"
    return str(resolve_device(device))
