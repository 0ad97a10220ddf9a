"""Backbone speed: seconds per image for ``patch_features``, fp32 and bfloat16 autocast.

Also reports how closely bfloat16 features agree with fp32 ones (mean cosine per patch).

    python benchmarks/backbone.py --repeats 5 --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from trustad.backbone import build_model, load_backbone
from trustad.backbone.weights import WeightsNotFoundError


def smooth_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [0, 1]; white noise would be far from real photographs."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 12, 12, generator=gen)
    fine = torch.rand(n, 3, size, size, generator=gen)
    smooth = F.interpolate(coarse, size=(size, size), mode="bilinear")
    return (0.85 * smooth + 0.15 * fine).clamp(0, 1)


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: first calls allocate and pick kernels
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.inference_mode()
def time_batch(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> tuple:
    """Seconds per image in fp32 and bf16 autocast, and the per-patch cosine between them."""

    def fp32() -> torch.Tensor:
        return model.patch_features(x)

    def bf16() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model.patch_features(x)

    t32 = median_seconds(fp32, repeats) / len(x)
    t16 = median_seconds(bf16, repeats) / len(x)
    return t32, t16, F.cosine_similarity(fp32(), bf16().float(), dim=-1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--weights", default=None, help="weights file (default: resolved)")
    parser.add_argument("--backbone", default="dinov2_vits14")
    parser.add_argument("--resolution", type=int, default=448)
    parser.add_argument("--batch-sizes", default="1,8", help="comma-separated")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    try:
        model = load_backbone(args.backbone, args.weights)
        src = model.weights_source
        print(f"weights: {src.path} ({src.label}, sha256 {src.sha256[:12]})")
    except (WeightsNotFoundError, FileNotFoundError, ValueError) as exc:
        print(f"note: no real weights ({str(exc).splitlines()[0]}); timing random weights")
        model = build_model(args.backbone).eval().requires_grad_(False)

    res = args.resolution
    # The CPU's vector capability decides whether bfloat16 has native kernels, and the load
    # average shows whether other work shared the machine during the timing.
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"capability {torch.backends.cpu.get_cpu_capability()}, "
        f"native bf16 {torch.ops.mkldnn._is_mkldnn_bf16_supported()}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{args.backbone} patch_features at {res}x{res}, median of {args.repeats} runs")
    print(
        f"{'batch':>5} {'fp32 s/img':>11} {'bf16 s/img':>11} {'speed-up':>9} {'cos mean':>9} {'cos min':>8}"
    )
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        t32, t16, cos = time_batch(model, smooth_images(batch, res), args.repeats)
        print(
            f"{batch:>5} {t32:>11.3f} {t16:>11.3f} {t32 / t16:>8.2f}x "
            f"{cos.mean().item():>9.5f} {cos.min().item():>8.5f}"
        )
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
