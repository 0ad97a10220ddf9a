"""How far does one small spot reach? Patch distances of a good image with and without a
spot, at the spot and far from it (3 or more patches away), and where the spot's influence
comes from: how much attention the far patches' queries pay to the spot's patch.

The normal images are 200x200 crops of scikit-image's brick photograph (4 for the memory
bank, a ninth crop is the test image); the backbone is the resolved DINOv2 ViT-S/14. Spots
of several sizes and colours are painted at the same place.

Run: python benchmarks/spot_locality.py [--resolution 224 448] [--synthetic grass brick]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy import ndimage
from skimage import data

from trustad.backbone import load_backbone
from trustad.backbone.dinov2 import PATCH_SIZE
from trustad.data.defects import add_defect, clean_image
from trustad.data.synthetic import CATEGORY_DEFECTS
from trustad.detector import AnomalyDINO

CROP, FAR = 200, 3
SPOTS = [  # (side in pixels, RGB)
    (3, (0, 0, 0)),
    (3, (255, 0, 0)),
    (3, (255, 255, 255)),
    (11, (0, 0, 0)),
    (11, (255, 0, 0)),
    (11, (255, 255, 255)),
]


def attention_on(backbone, x: torch.Tensor, far: torch.Tensor, target: torch.Tensor) -> list:
    """Per block, the attention mass the far patches' queries put on the ``target``
    patches (a boolean grid; mean over heads and far queries), for each image of the
    batch ``x``: (blocks, B)."""
    first = 1 + backbone.config.num_register_tokens
    out: list[torch.Tensor] = []

    def hook(module, inputs, _output):
        tokens = inputs[0]
        b, n, d = tokens.shape
        qkv = module.qkv(tokens).reshape(b, n, 3, module.num_heads, d // module.num_heads)
        q, k, _ = qkv.permute(2, 0, 3, 1, 4)
        weights = (q @ k.transpose(-1, -2) * (d // module.num_heads) ** -0.5).softmax(-1)
        patches = weights[:, :, first:, first:]
        on_target = patches[:, :, far.flatten()][..., target.flatten()].sum(-1)
        out.append(on_target.mean(dim=(1, 2)))

    hooks = [block.attn.register_forward_hook(hook) for block in backbone.blocks]
    try:
        with torch.no_grad():
            backbone.patch_features(x)
    finally:
        for h in hooks:
            h.remove()
    return torch.stack(out).tolist()


def synthetic_twins(backbone, category: str, resolution: int) -> None:
    """Each defect kind of the synthetic data against its own clean image (the pixels
    differ only under the defect and a few pixels around it)."""
    rng = np.random.default_rng(0)
    size = resolution  # no resizing: the defect mask maps onto patches exactly
    det = AnomalyDINO(backbone, resolution=resolution, rotate=False)
    det.fit([clean_image(category, size, rng) for _ in range(8)])
    print(f"\nsynthetic {category}, {resolution} px, 8 normal images; each defect on its twin")
    print("defect | far median | far largest change | attention on the defect's patches")
    for kind in CATEGORY_DEFECTS[category]:
        clean = clean_image(category, size, rng)
        bad, mask = add_defect(clean, kind, rng, texture=category)
        tensors, _ = det.runtime.preprocess([clean, bad])
        d0, d1 = det.distances_from_features(det.features(tensors))
        pool = torch.nn.functional.max_pool2d
        grow = torch.from_numpy(ndimage.binary_dilation(mask, iterations=FAR * PATCH_SIZE))
        near = pool(grow[None, None].float(), PATCH_SIZE)[0, 0] > 0
        on = pool(torch.from_numpy(mask)[None, None].float(), PATCH_SIZE)[0, 0] > 0
        att = attention_on(backbone, torch.stack(tensors), ~near, on)
        block = max(range(len(att)), key=lambda k: att[k][1])
        print(
            f"{kind} ({int(on.sum())} patches) | {d0[~near].median():.4f} -> "
            f"{d1[~near].median():.4f} | {(d1[~near] - d0[~near]).abs().max():.4f} | "
            f"block {block}: {att[block][0]:.4f} -> {att[block][1]:.4f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=int, nargs="+", default=[224])
    parser.add_argument("--synthetic", nargs="*", default=[], metavar="CATEGORY")
    args = parser.parse_args()
    backbone = load_backbone("dinov2_vits14")
    photo = np.repeat(data.brick()[..., None], 3, axis=-1)
    starts = (0, 150, 300)
    crops = [photo[y : y + CROP, x : x + CROP] for y in starts for x in starts]
    good = crops[8].copy()
    c = CROP // 2 + 7  # the spot's centre, well inside one patch after resizing
    print(f"weights: {backbone.weights_source.label} ({backbone.weights_source.sha256[:8]})")
    for res in args.resolution:
        det = AnomalyDINO(backbone, resolution=res, rotate=False).fit(crops[:4])
        p = int(c * res / CROP) // PATCH_SIZE
        print(f"\n{res} px; far = {FAR}+ patches from the spot's patch ({p}, {p})")
        print("spot | spot patch distance | far median | far largest change | attention on spot")
        for side, colour in SPOTS:
            spotted = good.copy()
            lo = c - side // 2
            spotted[lo : lo + side, lo : lo + side] = colour
            tensors, _ = det.runtime.preprocess([good, spotted])
            clean, dist = det.distances_from_features(det.features(tensors))
            yy, xx = torch.meshgrid(*(torch.arange(n) for n in clean.shape), indexing="ij")
            far = torch.maximum((yy - p).abs(), (xx - p).abs()) >= FAR
            at_spot = (yy == p) & (xx == p)
            att = attention_on(backbone, torch.stack(tensors), far, at_spot)
            block = max(range(len(att)), key=lambda k: att[k][1])
            print(
                f"{side}x{side} {colour} | {clean[p, p]:.4f} -> {dist[p, p]:.4f} | "
                f"{clean[far].median():.4f} -> {dist[far].median():.4f} | "
                f"{(dist[far] - clean[far]).abs().max():.4f} | "
                f"block {block}: {att[block][0]:.4f} -> {att[block][1]:.4f}"
            )
        for category in args.synthetic:
            synthetic_twins(backbone, category, res)


if __name__ == "__main__":
    main()
