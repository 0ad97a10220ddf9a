"""The per-image work between backbone calls: the CPU path against torch on a device.

Anomaly maps (bilinear + Gaussian sigma 4), pixel AUROC, AUPRO, rotation of a support
image by the 8 angles, preprocessing of a batch, and the mean L-inf/PSNR of image pairs.
The CPU path is what the evaluation used before (scipy, numpy, Pillow, one call per image;
rotation is OpenCV, as on the CPU today);
the torch path runs batched on each device given. Results must agree; times are the best
of ``--repeats`` runs after a warm-up.

Run: python benchmarks/device_ops.py [--maps 60] [--size 1024] [--device cpu cuda]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from trustad import metrics
from trustad.attacks import linf, mean_linf_psnr, psnr
from trustad.backbone.preprocess import crop_to_patches, preprocess, resized_size
from trustad.backbone.resize import preprocess_batch, resize_bicubic_uint8
from trustad.backbone.rotate import rotate_rgb8, rotate_rgb8_torch
from trustad.detector import ROTATION_ANGLES
from trustad.maps import MAP_SIGMA, anomaly_maps_torch
from trustad.pixel_metrics import aupro_torch, pixel_auroc_torch, pixel_targets


def scipy_map(grid: torch.Tensor, size: int) -> np.ndarray:
    """The former map: torch bilinear on the CPU, then scipy's Gaussian filter."""
    up = F.interpolate(grid[None, None], size=(size, size), mode="bilinear", align_corners=False)
    return ndimage.gaussian_filter(up[0, 0].numpy(), sigma=MAP_SIGMA)


def timed(fn, repeats: int, device: torch.device | None = None) -> tuple[float, object]:
    """Best wall time of ``repeats`` runs after one warm-up, and the last result."""
    value = fn()
    best = float("inf")
    for _ in range(repeats):
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        value = fn()
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best, value


def report(label: str, cpu_s: float, dev_s: float, diff: float, device: torch.device) -> None:
    print(
        f"{label:<34} cpu path {cpu_s:8.3f} s   torch {device.type:<4} {dev_s:8.3f} s   "
        f"x{cpu_s / dev_s:7.1f}   max diff {diff:.2e}"
    )


def synthetic(n: int, size: int, grid: int, seed: int = 0) -> tuple[torch.Tensor, list]:
    """Patch-distance grids and masks: every other image has one or two rectangles."""
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    grids = torch.rand(n, grid, grid, generator=gen)
    masks = []
    for i in range(n):
        mask = np.zeros((size, size), bool)
        for _ in range(i % 2 * int(rng.integers(1, 3))):
            r, c = rng.integers(0, size - size // 8, 2)
            h, w = rng.integers(size // 64 + 1, size // 8, 2)
            mask[r : r + h, c : c + w] = True
            g0, g1 = r * grid // size, c * grid // size
            grids[i, g0 : g0 + max(1, h * grid // size), g1 : g1 + max(1, w * grid // size)] += 0.5
        masks.append(mask)
    return grids, masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--maps", type=int, default=60, help="maps (and masks) per run")
    parser.add_argument("--size", type=int, default=1024, help="map and image side in pixels")
    parser.add_argument("--grid", type=int, default=32, help="patch grid side")
    parser.add_argument("--images", type=int, default=16, help="images per preprocessing batch")
    parser.add_argument("--resolution", type=int, default=448)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--device",
        nargs="+",
        default=["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"],
    )
    args = parser.parse_args()
    n, size = args.maps, args.size
    print(
        f"{n} maps {args.grid}x{args.grid} -> {size}x{size}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads"
    )
    grids, masks = synthetic(n, size, args.grid)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    images = [
        rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8) for _ in range(args.images)
    ]
    adv = [torch.from_numpy(im).permute(2, 0, 1).float() / 255 for im in images]
    clean = [(a + 0.03 * torch.randn(a.shape)).clamp(0, 1) for a in adv]

    cpu_maps_s, ref_maps = timed(lambda: [scipy_map(g, size) for g in grids], args.repeats)
    cpu_auroc_s, ref_auroc = timed(lambda: metrics.pixel_auroc(masks, ref_maps), args.repeats)
    cpu_aupro_s, ref_aupro = timed(lambda: metrics.aupro(masks, ref_maps), args.repeats)
    cpu_rot_s, ref_rot = timed(
        lambda: rotate_rgb8(torch.from_numpy(image).permute(2, 0, 1), ROTATION_ANGLES),
        args.repeats,
    )
    cpu_pre_s, ref_pre = timed(
        lambda: torch.stack([preprocess(Image.fromarray(im), args.resolution) for im in images]),
        args.repeats,
    )

    def per_pair() -> tuple[float, float]:
        pairs = [(a[None], b[None]) for a, b in zip(clean, adv)]
        return (
            float(np.mean([float(linf(a, b)[0]) for a, b in pairs])),
            float(np.mean([float(psnr(a, b)[0]) for a, b in pairs])),
        )

    cpu_dist_s, ref_dist = timed(per_pair, args.repeats)

    resized = resized_size(size, size, args.resolution)
    for name in args.device:
        device = torch.device(name)
        d = grids.to(device)
        maps_s, maps = timed(lambda d=d: anomaly_maps_torch(d, (size, size)), args.repeats, device)
        diff = float(max(np.abs(m.cpu().numpy() - r).max() for m, r in zip(maps, ref_maps)))
        report(f"maps ({n})", cpu_maps_s, maps_s, diff, device)
        start = time.perf_counter()
        targets = pixel_targets(masks, device)
        print(f"{'  regions, once per category':<34} {time.perf_counter() - start:8.3f} s")
        # The metrics are compared on the same (former) maps; end to end below.
        same = torch.from_numpy(np.stack(ref_maps)).to(device)
        auroc_s, auroc = timed(
            lambda t=targets, m=same: pixel_auroc_torch(t, m), args.repeats, device
        )
        report("pixel AUROC", cpu_auroc_s, auroc_s, abs(auroc - ref_auroc), device)
        aupro_s, aupro = timed(lambda t=targets, m=same: aupro_torch(t, m), args.repeats, device)
        report("AUPRO (FPR <= 0.3)", cpu_aupro_s, aupro_s, abs(aupro - ref_aupro), device)
        end_auroc = abs(pixel_auroc_torch(targets, maps) - ref_auroc)
        end_aupro = abs(aupro_torch(targets, maps) - ref_aupro)
        print(f"  end to end (torch maps): pixel AUROC diff {end_auroc:.2e}, AUPRO {end_aupro:.2e}")
        x = torch.from_numpy(image).permute(2, 0, 1).contiguous().to(device)
        rot_s, rot = timed(lambda x=x: rotate_rgb8_torch(x, ROTATION_ANGLES), args.repeats, device)
        diff = (rot.cpu().int() - ref_rot.int()).abs().max().item()
        report("rotation (8 angles)", cpu_rot_s, rot_s, diff, device)
        batch = [torch.from_numpy(im).to(device) for im in images]
        pre_s, pre = timed(
            lambda b=batch: preprocess_batch(b, args.resolution), args.repeats, device
        )
        diff = float((pre.cpu() - ref_pre).abs().max())
        report(f"preprocessing ({args.images} images)", cpu_pre_s, pre_s, diff, device)
        # The torch resampling itself (what preprocess_batch runs on accelerators).
        x = torch.stack(batch).permute(0, 3, 1, 2)
        bic_s, bic = timed(
            lambda x=x: crop_to_patches(resize_bicubic_uint8(x, resized).float() / 255.0),
            args.repeats,
            device,
        )
        diff = float((bic.cpu() - ref_pre).abs().max())
        report("  torch bicubic only", cpu_pre_s, bic_s, diff, device)
        c, a = [t.to(device) for t in clean], [t.to(device) for t in adv]
        dist_s, dist = timed(lambda c=c, a=a: mean_linf_psnr(c, a), args.repeats, device)
        diff = max(abs(float(dist[0]) - ref_dist[0]), abs(float(dist[1]) - ref_dist[1]))
        report(f"mean L-inf + PSNR ({args.images} pairs)", cpu_dist_s, dist_s, diff, device)


if __name__ == "__main__":
    main()
