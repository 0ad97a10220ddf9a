"""Shared fixtures: a tiny random ViT with the DINOv2 architecture."""

from __future__ import annotations

import pytest
import torch

from trustad.backbone.dinov2 import DinoVisionTransformer, ViTConfig

TINY = ViTConfig(embed_dim=32, depth=2, num_heads=2, img_size=56)


def make_tiny_vit(seed: int = 0, config: ViTConfig = TINY) -> DinoVisionTransformer:
    """A small DINOv2-shaped ViT with random weights, frozen, in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    model = DinoVisionTransformer(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.fill_(1.0)
            elif "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.eval().requires_grad_(False)


@pytest.fixture
def tiny_vit() -> DinoVisionTransformer:
    return make_tiny_vit()
