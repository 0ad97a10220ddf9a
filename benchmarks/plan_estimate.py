"""How far `trustad evaluate --plan`'s time estimate is from the real time of the run.

Builds a synthetic dataset, prints the plan (with its short backbone timing), runs the same
grid with real weights and prints the real time next to the estimate. Any evaluate option
can be given after the folders; the defaults are the demo's grid.

    python benchmarks/plan_estimate.py DATA OUT [--n-train 2] -- --shots 1 2 --attack fgsm
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from trustad.cli import main
from trustad.data import make_synthetic_dataset


def run(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--n-train", type=int, default=2)
    parser.add_argument("--n-test", type=int, default=8, help="per class (good, defect)")
    parser.add_argument("evaluate", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    data = Path(args.data)
    if not (data / "dataset.json").exists():
        make_synthetic_dataset(
            data, n_train=args.n_train, n_test_good=args.n_test, n_test_defect=args.n_test, seed=0
        )
    extra = [a for a in args.evaluate if a != "--"]
    base = ["evaluate", "--dataset", "folder", "--root", str(data), "--out", args.out, *extra]
    t0 = time.perf_counter()
    if main([*base, "--plan"]) != 0:
        sys.exit("the plan failed")
    planning = time.perf_counter() - t0
    t0 = time.perf_counter()
    status = main([*base, "--quiet"])
    real = time.perf_counter() - t0
    print(f"plan took {planning:.1f} s; the run took {real:.1f} s (exit status {status})")


if __name__ == "__main__":
    run(sys.argv[1:])
