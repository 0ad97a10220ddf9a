"""``trustad demo``: a synthetic dataset, real DINOv2 weights, a small evaluation, pictures."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..evaluation import arguments as run_arguments
from .evaluate import add_runtime_options

# The demo runs the quick protocol preset (evaluation/presets.py) on synthetic data.
DEMO_PROTOCOL = "quick"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="evaluate on a small synthetic texture dataset (a few minutes on a CPU)",
        description="Builds a synthetic MVTec-layout dataset from scikit-image's texture "
        "photographs, runs the quick protocol (clean and FGSM 8/255 at 1 and 2 shots, seed "
        "0) with real DINOv2 weights, prints the tables and writes results and report.html.",
    )
    p.add_argument("--out", default="demo-output", help="output folder (default demo-output)")
    p.add_argument("--test-good", type=int, default=8, help="normal test images per category")
    p.add_argument("--test-defect", type=int, default=8, help="defective test images per category")
    run_arguments.add_arguments(p, exclude=("dataset", "root", "categories"))
    add_runtime_options(p)
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from ..data import make_synthetic_dataset
    from .evaluate import execute, left_out

    out = Path(args.out)
    data_root = out / "data"
    t0 = time.time()
    protocol = getattr(args, "protocol", None) or DEMO_PROTOCOL
    settings = run_arguments.from_arguments(
        args, protocol=protocol, dataset="folder", root=str(data_root)
    )
    if not (data_root / "dataset.json").exists():
        print(f"building the synthetic dataset in {data_root}")
        make_synthetic_dataset(
            data_root,
            n_train=max(settings.shots),
            n_test_good=args.test_good,
            n_test_defect=args.test_defect,
            seed=0,
        )
    run = execute(
        settings, out / "results", args.device, args.quiet, args.executor, args.address, protocol
    )
    print(f"anomaly-map pictures: {out / 'results' / 'examples'}")
    print(f"demo finished in {time.time() - t0:.0f} s")
    return left_out(run)
