"""Memory of a category's preprocessed test images: kept as uint8 (as the runner keeps
them) against the float32 tensors they are read as.

Loads one category of a synthetic MVTec-layout set with the runner's ``load_state`` and
prints the bytes of the stored images, and the resident size (RSS, from /proc) that
loading them added, then the same for the float32 tensors of every image held at once
(what the runner held before).

Run: python benchmarks/category_memory.py --data /tmp/grid-data --size 1024 --resolution 448
"""

from __future__ import annotations

import argparse
import gc
import os
from pathlib import Path

import torch

from trustad.backbone.runtime import BackboneRuntime
from trustad.data import load_category, make_synthetic_dataset
from trustad.evaluation.category import load_state
from trustad.evaluation.progress import Progress


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--test", type=int, default=40, help="test images in the category")
    ap.add_argument("--resolution", type=int, default=448)
    args = ap.parse_args()
    root = args.data / f"memory-{args.size}px-{args.test}test"
    if not (root / "dataset.json").is_file():
        good = args.test // 2
        make_synthetic_dataset(
            root,
            categories=("brick",),
            n_train=1,
            n_test_good=good,
            n_test_defect=args.test - good,
            size=args.size,
        )
    torch.set_num_threads(1)
    model = torch.nn.Linear(1, 1)  # preprocessing only: no backbone pass
    runtime = BackboneRuntime(model, resolution=args.resolution)
    data = load_category("mvtec", str(root), "brick")
    gc.collect()
    before = rss()
    st = load_state(data, runtime, Progress(False), print)
    gc.collect()
    kept = rss() - before
    stored = sum(t.nbytes for t in st.images.uint8)
    floats = list(st.images)  # every image read as float32 at once
    as_float = sum(t.nbytes for t in floats)
    float_rss = rss() - before - kept
    mb = 1 / 2**20
    print(f"{len(floats)} test images of {args.size} px at resolution {args.resolution}")
    print(f"uint8 as stored: {stored * mb:.1f} MiB (RSS +{kept * mb:.1f} MiB, masks included)")
    print(f"float32 as read: {as_float * mb:.1f} MiB (RSS +{float_rss * mb:.1f} MiB more)")


if __name__ == "__main__":
    main()
