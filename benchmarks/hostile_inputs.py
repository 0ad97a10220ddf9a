"""Writes the inputs of benchmarks/hostile.sh into a folder: the thin strips of issue 21,
the largest images the default limits let through at resolution 448, a few plain images,
a folder dataset for `trustad evaluate`, normal/ + cal/ for the models and a --normal
folder with two bad files:

    python benchmarks/hostile_inputs.py WORKDIR
    cd WORKDIR && trustad fit --normal normal --calibration cal --out model.safetensors
    trustad fit --normal normal --calibration cal --resolution 224 --out model224.safetensors
    python benchmarks/hostile_inputs.py WORKDIR --edit   # model files edited, hashes redone
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

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
    rng = np.random.default_rng(0)  # real work for the backbone, not a flat image
    Image.fromarray(rng.integers(0, 256, (448, 4480, 3), dtype=np.uint8)).save(
        root / "rand_4480x448.png"
    )
    shutil.copytree(root / "normal", root / "normal_mixed", dirs_exist_ok=True)
    (root / "normal_mixed" / "notes.png").write_text("not an image")
    Image.new("RGB", (3000, 1)).save(root / "normal_mixed" / "strip_3000x1.png")


def edit_model(src: Path, dest: Path, edit_settings, edit_meta=lambda m: None) -> None:
    """``src`` with its settings edited and both hashes recomputed, as an attacker would."""
    from trustad.model.file import tensors_digest

    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    settings = json.loads(meta["settings"])
    edit_settings(settings)
    meta["settings"] = json.dumps(settings, sort_keys=True)
    meta["settings_sha256"] = hashlib.sha256(meta["settings"].encode()).hexdigest()
    meta["tensors_sha256"] = tensors_digest(tensors)
    edit_meta(meta)
    save_file(tensors, str(dest), metadata=meta)


def edit_models(root: Path) -> None:
    def platt_b(s):
        s["calibrator"]["params"]["b_"] = 50.0

    src = root / "model.safetensors"
    edit_model(src, root / "edited_platt_b.safetensors", platt_b)
    edit_model(src, root / "edited_no_bank.safetensors", lambda s: s.pop("memory_bank"))
    edit_model(
        src,
        root / "edited_version0.safetensors",
        lambda s: None,
        lambda m: m.update(format_version="0"),
    )
    if (root / "signed.safetensors").exists():
        edit_model(root / "signed.safetensors", root / "edited_signed.safetensors", platt_b)


if __name__ == "__main__":
    if "--edit" in sys.argv:
        edit_models(Path(sys.argv[1]))
    else:
        main(Path(sys.argv[1]))
