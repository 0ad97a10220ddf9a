"""Does the pixel threshold keep its false-pixel rate, and what do the masks catch?

A FittedDetector is fitted on a few normal images of the synthetic data (its pixel
threshold then comes from the support images scored leave-one-out, as `trustad fit
--normal` does); on held-out good test images it prints the share of pixels the masks mark
(the realised false-pixel rate, target ``maps.DEFAULT_FALSE_PIXEL_RATE``), and on the
defective ones the share of defect pixels marked and the share of marked pixels that are
defect pixels.

Run: python benchmarks/pixel_threshold.py [--shots 8] [--resolution 224] [--root DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from trustad.backbone import load_backbone
from trustad.data import make_synthetic_dataset
from trustad.maps import DEFAULT_FALSE_PIXEL_RATE, anomaly_mask
from trustad.model import FittedDetector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shots", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--categories", nargs="+", default=["brick", "grass", "gravel"])
    parser.add_argument("--root", default=None, help="synthetic data folder (default: temp)")
    args = parser.parse_args()
    backbone = load_backbone("dinov2_vits14")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root or tmp)
        make_synthetic_dataset(root, args.categories, n_train=args.shots)
        print(f"target false-pixel rate {DEFAULT_FALSE_PIXEL_RATE}; {args.shots} normal images")
        for cat in args.categories:
            base = root / cat
            model = FittedDetector(backbone, resolution=args.resolution, rotate=True)
            model.fit(sorted((base / "train" / "good").glob("*.png")))
            t = model.pixel_threshold_
            good = sorted((base / "test" / "good").glob("*.png"))
            rates = [anomaly_mask(p.anomaly_map, t).mean() for p in model.predict(good)]
            bad = sorted(p for p in (base / "test").glob("*/*.png") if p.parent.name != "good")
            caught = marked = defect = 0
            for path, pred in zip(bad, model.predict(bad)):
                truth = base / "ground_truth" / path.parent.name / f"{path.stem}_mask.png"
                gt = np.asarray(Image.open(truth)) > 0
                mask = anomaly_mask(pred.anomaly_map, t)
                caught += (mask & gt).sum()
                marked += mask.sum()
                defect += gt.sum()
            print(
                f"{cat}: threshold {t:.4f}; {len(good)} good images: false-pixel rate mean "
                f"{np.mean(rates):.4f}, largest {np.max(rates):.4f}; {len(bad)} defective: "
                f"defect pixels marked {caught / defect:.3f}, marked pixels that are defect "
                f"{caught / max(marked, 1):.3f}"
            )


if __name__ == "__main__":
    main()
