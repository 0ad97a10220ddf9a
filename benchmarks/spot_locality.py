"""How far does one small spot reach? Patch distances and features of a good image with and
without a 3x3-pixel black spot, near the spot and far from it (3 or more patches away).

The normal images are crops of scikit-image's brick photograph (8 for the memory bank, a
ninth is the test image); the backbone is the resolved DINOv2 ViT-S/14. Per block of the
ViT it prints how much the far tokens moved (median relative change), which shows where
the spot's influence spreads: only attention mixes tokens.

Run: python benchmarks/spot_locality.py [--resolution 224 448] [--mask-test]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from skimage import data

from trustad.backbone import load_backbone
from trustad.backbone.dinov2 import PATCH_SIZE
from trustad.detector import AnomalyDINO

CROP, FAR = 200, 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=int, nargs="+", default=[224, 448])
    parser.add_argument("--mask-test", action="store_true")
    args = parser.parse_args()
    backbone = load_backbone("dinov2_vits14")
    photo = np.repeat(data.brick()[..., None], 3, axis=-1)
    starts = (0, 150, 300)
    crops = [photo[y : y + CROP, x : x + CROP] for y in starts for x in starts]
    good = crops[8].copy()
    spot = good.copy()
    c = CROP // 2 + 7
    spot[c - 1 : c + 2, c - 1 : c + 2] = 0
    print(f"weights: {backbone.weights_source.label} ({backbone.weights_source.sha256[:8]})")
    for res in args.resolution:
        det = AnomalyDINO(backbone, resolution=res, rotate=False, mask_test=args.mask_test)
        det.fit(crops[:8])
        tensors, _ = det.runtime.preprocess([good, spot])
        tokens: list[torch.Tensor] = []
        hooks = [
            b.register_forward_hook(lambda m, i, o, t=tokens: t.append(o)) for b in backbone.blocks
        ]
        feats = det.features(tensors)
        for h in hooks:
            h.remove()
        clean, spotted = det.distances_from_features(feats)
        p = int(c * res / CROP) // PATCH_SIZE
        yy, xx = torch.meshgrid(*(torch.arange(n) for n in clean.shape), indexing="ij")
        far = torch.maximum((yy - p).abs(), (xx - p).abs()) >= FAR
        cos = 1 - torch.nn.functional.cosine_similarity(feats[0], feats[1], dim=-1)
        s0, s1 = det.scores_from_distances([clean, spotted])
        print(
            f"\n{res} px, mask_test {args.mask_test}: score {s0:.4f} -> {s1:.4f}\n"
            f"  spot patch distance    {clean[p, p]:.4f} -> {spotted[p, p]:.4f}\n"
            f"  far patches ({int(far.sum())}): median {clean[far].median():.4f} -> "
            f"{spotted[far].median():.4f}, max {clean[far].max():.4f} -> "
            f"{spotted[far].max():.4f}, largest change "
            f"{(spotted[far] - clean[far]).abs().max():.4f}\n"
            f"  feature change 1 - cos: spot patch {cos[p, p]:.4f}, far median "
            f"{cos[far].median():.5f}, far max {cos[far].max():.5f}"
        )
        first = 1 + backbone.config.num_register_tokens
        changes = []
        for t in tokens:  # the two images' tokens after each block, batched together
            patch = t[:, first:].reshape(2, *clean.shape, -1)
            rel = (patch[1] - patch[0]).norm(dim=-1) / patch[0].norm(dim=-1)
            changes.append(f"{rel[far].median():.4f}")
        print(f"  far tokens' relative change after each block: {' '.join(changes)}")


if __name__ == "__main__":
    main()
