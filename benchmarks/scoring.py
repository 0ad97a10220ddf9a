"""Clean scoring throughput and backbone passes of the evaluation grid.

    .venv/bin/python benchmarks/scoring.py [--images 16] [--repeats 3]

1. Images per second for AnomalyDINO scoring at 448 px (features + 1-NN + top-1% mean), fp32
   and bfloat16 autocast, with a 1-shot bank (8 rotated views).
2. The number of backbone passes of a 5-shots x 3-seeds grid on a synthetic dataset: it must
   equal the number of distinct images (test images + 8 views of each distinct support
   image), not 15 times it. Counted at --grid-resolution (default 224) to keep it short;
   the count does not depend on the resolution.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from trustad.backbone import build_model, load_backbone
from trustad.data import load_category, make_synthetic_dataset, support_paths
from trustad.detector import AnomalyDINO
from trustad.evaluation import Evaluation, EvaluationSettings


def backbone_or_random():
    try:
        return load_backbone()
    except Exception as exc:  # noqa: BLE001 - speed is the same with random weights
        print(f"note: no pretrained weights ({exc.__class__.__name__}); random weights")
        return build_model().eval().requires_grad_(False)


def throughput(backbone, root, images: int, repeats: int) -> None:
    data = load_category("folder", root, "brick")
    tests = [s.path for s in data.test][:images]
    for bf16 in (False, True):
        det = AnomalyDINO(backbone, bf16=bf16).fit(support_paths(data.train, 1, 0))
        det.score(tests[:2])  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            det.score(tests)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        name = "bf16" if bf16 else "fp32"
        print(
            f"scoring 448 px {name}: {len(tests) / med:.2f} images/s (median of {repeats}, {len(tests)} images)"
        )


def grid_passes(backbone, root, resolution: int) -> None:
    settings = EvaluationSettings(
        dataset="folder",
        root=str(root),
        categories=["brick"],
        shots=[1, 2, 4, 8, 16],
        seeds=3,
        resolution=resolution,
        pixel_metrics=False,
    )
    with tempfile.TemporaryDirectory() as out:
        run = Evaluation(settings, backbone, out, progress=False)
        t0 = time.perf_counter()
        run.run()
        elapsed = time.perf_counter() - t0
    data = load_category("folder", root, "brick")
    distinct_support = {
        p
        for k in settings.shots
        for s in range(settings.seeds)
        for p in support_paths(data.train, k, s)
    }
    distinct = len(data.test) + 8 * len(distinct_support)
    naive = len(settings.shots) * settings.seeds * (len(data.test) + 0) + 8 * sum(
        k for k in settings.shots for _ in range(settings.seeds)
    )
    print(
        f"grid 5 shots x 3 seeds ({resolution} px): {run.backbone_images} backbone image passes; "
        f"distinct images {distinct} (test {len(data.test)} + 8 views x {len(distinct_support)} support); "
        f"recomputing per cell would take {naive}; {elapsed:.0f} s"
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--grid-resolution", type=int, default=224)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    backbone = backbone_or_random()
    with tempfile.TemporaryDirectory() as tmp:
        root = make_synthetic_dataset(
            tmp, categories=("brick",), n_train=48, n_test_good=8, n_test_defect=8
        )
        throughput(backbone, root, args.images, args.repeats)
        grid_passes(backbone, root, args.grid_resolution)


if __name__ == "__main__":
    main()
