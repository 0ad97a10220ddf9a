"""Timing of the pixel-level metrics on 100 synthetic anomaly maps.

Run: python benchmarks/metrics.py [--size 256] [--images 100]
(--size 1024 is the scale of full-resolution MVTec-AD maps.)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage

from trustad.metrics import aupro, pixel_auroc


def synthetic(n: int = 100, size: int = 256, seed: int = 0) -> tuple[list, list]:
    """Half the images carry one or two blob defects; maps are blurred noise plus defects."""
    rng = np.random.default_rng(seed)
    masks, maps = [], []
    for i in range(n):
        mask = np.zeros((size, size), bool)
        for _ in range(i % 2 * rng.integers(1, 3)):
            r, c = rng.integers(0, size - 40, 2)
            h, w = rng.integers(4, 40, 2)
            mask[r : r + h, c : c + w] = True
        noise = ndimage.gaussian_filter(rng.random((size, size)), 4)
        amap = noise + 0.05 * ndimage.gaussian_filter(mask.astype(float), 4)
        masks.append(mask)
        maps.append(amap.astype(np.float32))
    return masks, maps


def timed(label: str, fn, repeats: int = 3) -> None:
    best, value = float("inf"), float("nan")
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    print(f"{label:<32} {value:.4f}  best of {repeats}: {best:.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=256, help="map side in pixels")
    parser.add_argument("--images", type=int, default=100)
    args = parser.parse_args()
    masks, maps = synthetic(args.images, args.size)
    print(f"{args.images} maps of {args.size}x{args.size} px")
    timed("aupro exact, FPR <= 0.3", lambda: aupro(masks, maps))
    timed("aupro exact, FPR <= 1.0", lambda: aupro(masks, maps, fpr_limit=1.0))
    timed("aupro 1000 thresholds", lambda: aupro(masks, maps, num_thresholds=1000))
    timed("pixel auroc", lambda: pixel_auroc(masks, maps))


if __name__ == "__main__":
    main()
