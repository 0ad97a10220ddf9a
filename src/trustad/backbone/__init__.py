"""DINOv2 backbone: the model, its weights and image preprocessing."""

from __future__ import annotations

import torch

from .dinov2 import CONFIGS, DEFAULT_BACKBONE, DinoVisionTransformer, build_model
from .preprocess import DEFAULT_RESOLUTION, load_rgb8, preprocess, preprocess_mask
from .weights import WeightsSource, load_weights_into, resolve_weights

__all__ = [
    "CONFIGS",
    "DEFAULT_BACKBONE",
    "DEFAULT_RESOLUTION",
    "DinoVisionTransformer",
    "WeightsSource",
    "build_model",
    "load_backbone",
    "load_rgb8",
    "load_weights_into",
    "preprocess",
    "preprocess_mask",
    "resolve_weights",
]


def load_backbone(
    name: str = DEFAULT_BACKBONE,
    weights: str | None = None,
    device: str | torch.device = "cpu",
) -> DinoVisionTransformer:
    """The named DINOv2 with pretrained weights, frozen, in eval mode on ``device``.

    ``weights`` is an explicit file (official ``.pth`` or ``.safetensors``); without it the
    weights are looked up as ``resolve_weights`` describes. The model's ``weights_source``
    attribute records where they came from and their sha256.
    """
    source = resolve_weights(name, weights)
    model = build_model(name)
    load_weights_into(model, source.path)
    model.weights_source = source
    return model.eval().requires_grad_(False).to(device)
