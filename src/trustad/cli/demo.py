"""``trustad demo``: a synthetic dataset, real DINOv2 weights, a small evaluation, pictures."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .evaluate import add_run_options


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="evaluate on a small synthetic texture dataset (a few minutes on a CPU)",
        description="Builds a synthetic MVTec-layout dataset from scikit-image's texture "
        "photographs, runs clean and FGSM evaluation at 1 and 2 shots with real DINOv2 "
        "weights, prints the tables and writes results, a report and anomaly-map pictures.",
    )
    p.add_argument("--out", default="demo-output", help="output folder (default demo-output)")
    p.add_argument("--shots", nargs="+", type=int, default=[1, 2])
    p.add_argument(
        "--attack", nargs="+", default=["fgsm"], help="attacks besides clean (default fgsm)"
    )
    p.add_argument("--test-good", type=int, default=8, help="normal test images per category")
    p.add_argument("--test-defect", type=int, default=8, help="defective test images per category")
    add_run_options(p)
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from ..data import make_synthetic_dataset
    from ..protocol import EvaluationSettings
    from .evaluate import execute

    out = Path(args.out)
    data_root = out / "data"
    t0 = time.time()
    if not (data_root / "dataset.json").exists():
        print(f"building the synthetic dataset in {data_root}")
        make_synthetic_dataset(
            data_root,
            n_train=max(args.shots),
            n_test_good=args.test_good,
            n_test_defect=args.test_defect,
            seed=0,
        )
    settings = EvaluationSettings(
        dataset="folder",
        root=str(data_root),
        shots=sorted(set(args.shots)),
        seeds=1,
        resolution=args.resolution,
        backbone=args.backbone,
        weights=args.weights,
        batch_size=args.batch_size,
        bf16=args.bf16,
        attack_bf16=args.attack_bf16,
        attacks=list(dict.fromkeys(args.attack)),
        save_examples=2,
    )
    execute(settings, out / "results", args.device, args.quiet)
    print(f"anomaly-map pictures: {out / 'results' / 'examples'}")
    print(f"demo finished in {time.time() - t0:.0f} s")
    return 0
