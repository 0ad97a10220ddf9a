"""How far a small local change reaches in the patch distances.

One spot on a good image, and the patches far from it (3 or more patches away). Without
attention (a ViT of depth 0) the whole pipeline (resize, patch features, 1-NN distances)
is local, bit for bit; the attention blocks are the only way a spot reaches far patches.
With the real weights a dark 3x3 spot stays local, a bright 11x11 one raises the far
distances several-fold (it becomes an attention sink).
"""

from __future__ import annotations

import numpy as np
import torch
from conftest import TINY, make_tiny_vit

from trustad.backbone.dinov2 import PATCH_SIZE, ViTConfig
from trustad.detector import AnomalyDINO

FAR = 3  # patches (Chebyshev distance) from the spot's patch


def distances_with_and_without_a_spot(
    backbone, resolution: int, support, good, side: int = 3, colour=(0, 0, 0)
):
    det = AnomalyDINO(backbone, resolution=resolution, rotate=False).fit(support)
    spot = good.copy()
    size = good.shape[0]  # square images: resized by resolution / size
    c = size // 2 + 7  # a spot well inside one patch after resizing
    spot[c - side // 2 : c - side // 2 + side, c - side // 2 : c - side // 2 + side] = colour
    tensors, _ = det.runtime.preprocess([good, spot])
    clean, spotted = det.distances_from_features(det.features(tensors))
    p = int(c * resolution / size) // PATCH_SIZE
    yy, xx = torch.meshgrid(*(torch.arange(n) for n in clean.shape), indexing="ij")
    far = torch.maximum((yy - p).abs(), (xx - p).abs()) >= FAR
    return clean, spotted, (p, p), far


def texture(seed: int, size: int = 168) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 8 * np.pi, size)
    base = 128 + 60 * np.sin(x)[None, :, None] + rng.normal(0, 8, (size, size, 3))
    return base.clip(0, 255).astype(np.uint8)


def test_without_attention_a_spot_changes_only_its_neighbourhood():
    flat = make_tiny_vit(config=ViTConfig(embed_dim=32, depth=0, num_heads=2, img_size=56))
    support = [texture(i) for i in range(2)]
    clean, spotted, spot, far = distances_with_and_without_a_spot(flat, 168, support, texture(9))
    assert spotted[spot] > clean[spot]
    torch.testing.assert_close(spotted[far], clean[far], rtol=0, atol=0)


def test_attention_is_what_carries_a_spot_to_far_patches():
    support = [texture(i) for i in range(2)]
    deep = make_tiny_vit(config=TINY)
    clean, spotted, _, far = distances_with_and_without_a_spot(deep, 168, support, texture(9))
    assert (spotted[far] - clean[far]).abs().max() > 0


def brick_crops() -> list[np.ndarray]:
    from skimage import data

    photo = np.repeat(data.brick()[..., None], 3, axis=-1)  # 512x512 grey brick wall
    return [photo[y : y + 200, x : x + 200] for y in (0, 150, 300) for x in (0, 150, 300)]


def test_real_weights_keep_a_dark_spot_local(real_backbone):
    crops = brick_crops()
    clean, spotted, spot, far = distances_with_and_without_a_spot(
        real_backbone, 224, crops[:4], crops[8].copy()
    )
    rise = float(spotted[spot] - clean[spot])
    assert spotted[spot] > 3 * clean[spot]
    # far away the distances stay within a few percent of the spot's own rise
    assert float((spotted[far].median() - clean[far].median()).abs()) < 0.05 * rise
    assert float((spotted[far] - clean[far]).abs().max()) < 0.25 * rise


def test_real_weights_spread_a_bright_spot_through_attention(real_backbone):
    # A salient spot draws the late blocks' attention (benchmarks/results/spot_locality.md):
    # the far patches' distances rise several-fold, pixels there unchanged.
    crops = brick_crops()
    clean, spotted, _, far = distances_with_and_without_a_spot(
        real_backbone, 224, crops[:4], crops[8].copy(), side=11, colour=(255, 255, 255)
    )
    assert float(spotted[far].median()) > 2 * float(clean[far].median())
