"""Writes the inputs of benchmarks/hostile.sh into a folder: the thin strips of issue 21,
the largest images the default limits let through at resolution 448, a few plain images,
a folder dataset for `trustad evaluate`, and normal/ + cal/ for the model:

    python benchmarks/hostile_inputs.py WORKDIR
    cd WORKDIR && trustad fit --normal normal --calibration cal --out model.safetensors
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

STRIPS = [(3000, 1), (19000, 1), (20000, 26), (20000, 100)]
# Square at the 100 MP limit, and the most elongated image allowed at 448 (ratio 10).
LARGEST = [(10000, 10000), (4480, 448)]


def noisy(seed: int, defect: bool = False) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = (120 + rng.normal(0, 10, (256, 256, 3))).clip(0, 255).astype(np.uint8)
    if defect:
        arr[100:140, 100:140] = 250
    return Image.fromarray(arr)


def main(root: Path) -> None:
    folders = ["normal", "cal/good", "cal/bad", "test"]
    folders += [f"evroot/cat/{d}" for d in ("train/good", "test/good", "test/crack")]
    folders += ["evroot/cat/ground_truth/crack"]
    for d in folders:
        (root / d).mkdir(parents=True, exist_ok=True)
    for i in range(4):
        noisy(i).save(root / f"normal/n{i}.png")
        noisy(10 + i).save(root / f"cal/good/g{i}.png")
        noisy(20 + i, True).save(root / f"cal/bad/b{i}.png")
        noisy(40 + i).save(root / f"evroot/cat/train/good/t{i}.png")
    noisy(30).save(root / "test/ok.png")
    mask = np.zeros((256, 256), np.uint8)
    mask[100:140, 100:140] = 255
    for i in range(3):
        noisy(50 + i).save(root / f"evroot/cat/test/good/t{i}.png")
        noisy(60 + i, True).save(root / f"evroot/cat/test/crack/c{i}.png")
        Image.fromarray(mask).save(root / f"evroot/cat/ground_truth/crack/c{i}_mask.png")
    for w, h in STRIPS:  # black: a few dozen bytes as PNG
        Image.new("RGB", (w, h)).save(root / f"strip_{w}x{h}.png")
    for w, h in LARGEST:
        Image.new("RGB", (w, h), (90, 120, 150)).save(root / f"largest_{w}x{h}.png")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
