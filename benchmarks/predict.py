"""Prediction cost of a fitted model on the CPU against the bare backbone, in one run.

For each shot count: fit (rotation as `trustad fit` does by default), save the model file
(its size), then time ``FittedDetector.predict`` on image files (decode, preprocess,
backbone, kNN, calibration, anomaly maps at the original size) against the backbone's
``patch_features`` alone on the same preprocessed images. Also the process's peak memory.
Real DINOv2 ViT-S/14 weights (``trustad.load_backbone()``), fp32.

    python benchmarks/predict.py --shots 1 4 16 --images 4 --repeats 2 --threads 2
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from trustad import load_backbone
from trustad.backbone.preprocess import preprocess
from trustad.model import FittedDetector


def part_image(path: Path, seed: int, size: int, defect: bool = False) -> Path:
    """A smooth textured 'part' (white noise would be far from real photographs)."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((12, 12, 3))
    img = Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    arr = np.asarray(img, dtype=np.float64) / 255 * 0.85 + rng.random((size, size, 3)) * 0.15
    if defect:
        arr[size // 3 : size // 3 + size // 10, size // 2 : size // 2 + size // 10] = [1, 0, 0]
    Image.fromarray((arr * 255).astype(np.uint8)).save(path)
    return path


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--images", type=int, default=4, help="test images per timing")
    parser.add_argument("--size", type=int, default=512, help="test image edge in pixels")
    parser.add_argument("--resolution", type=int, default=448)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-rotate", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    backbone = load_backbone()
    src = backbone.weights_source
    print(f"backbone: {src.name} ({src.label}), sha256 {src.sha256[:12]}")
    print(f"CPU threads: {torch.get_num_threads()}, resolution {args.resolution}, fp32")
    tmp = Path(tempfile.mkdtemp(prefix="trustad_bench_"))
    n_support = max(args.shots)
    support = [part_image(tmp / f"good{i:02d}.png", i, args.size) for i in range(n_support)]
    cal = [part_image(tmp / f"cal{i:02d}.png", 100 + i, args.size) for i in range(4)]
    cal += [part_image(tmp / f"bad{i:02d}.png", 200 + i, args.size, True) for i in range(4)]
    labels = [0] * 4 + [1] * 4
    test = [
        part_image(tmp / f"test{i:02d}.png", 300 + i, args.size, i % 2 == 1)
        for i in range(args.images)
    ]
    tensors = torch.stack([preprocess(p, args.resolution) for p in test])

    def bare() -> object:
        with torch.inference_mode():
            return backbone.patch_features(tensors)

    print(
        f"{len(test)} test images of {args.size}px, batch {len(test)}; the bare backbone is "
        "timed right before each predict timing (the machine may be shared)"
    )
    print(f"peak memory after loading the backbone: {peak_mb():.0f} MB")
    print(
        "| shots | bank patches | model file MB | fit s | backbone s/image | "
        "predict s/image | predict / backbone | peak memory MB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for k in args.shots:
        start = time.perf_counter()
        model = FittedDetector(
            backbone,
            resolution=args.resolution,
            rotate=not args.no_rotate,
            batch_size=len(test),
            conformal_alpha=0.2,
        ).fit(support[:k], cal, labels)
        t_fit = time.perf_counter() - start
        path = model.save(tmp / f"model_{k}.safetensors")
        size_mb = path.stat().st_size / 1e6
        t_bare = median_seconds(bare, args.repeats) / len(test)
        t_pred = median_seconds(lambda m=model: m.predict(test), args.repeats) / len(test)
        print(
            f"| {k} | {model.detector.memory_bank_.shape[0]} | {size_mb:.1f} | {t_fit:.1f} | "
            f"{t_bare:.3f} | {t_pred:.3f} | {t_pred / t_bare:.2f}x | {peak_mb():.0f} |"
        )


if __name__ == "__main__":
    main()
