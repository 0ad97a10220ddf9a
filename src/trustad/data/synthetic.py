"""A small synthetic anomaly-detection dataset in the MVTec layout, built offline from
the textures and drawn defects of ``defects.py``, with exact masks."""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .defects import CATEGORY_DEFECTS, GENERATOR_VERSION, TEXTURES, add_defect, clean_image


def synthetic_categories() -> tuple[str, ...]:
    """Category names the synthetic dataset can make (one per bundled texture)."""
    return TEXTURES


# ---------------------------------------------------------------- the dataset


def _rng(seed: int, category: str, stream: int) -> np.random.Generator:
    # Keyed by the category name, so each category is the same whichever others are made;
    # one stream per split, so changing n_train leaves the test images unchanged.
    return np.random.default_rng([seed, zlib.crc32(category.encode()), stream])


def _save_png(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG")


def _defect_counts(n: int, kinds: Sequence[str]) -> dict[str, int]:
    """``n`` defect images spread round-robin over ``kinds``."""
    k = len(kinds)
    counts = {kind: n // k + (i < n % k) for i, kind in enumerate(kinds)}
    return {kind: c for kind, c in counts.items() if c}


def make_synthetic_dataset(
    root: str | Path,
    categories: Sequence[str] = ("brick", "grass", "gravel"),
    n_train: int = 16,
    n_test_good: int = 10,
    n_test_defect: int = 10,
    size: int = 256,
    seed: int = 0,
) -> Path:
    """Write a synthetic dataset in the MVTec layout under ``root`` and return ``root``.

    ``n_test_defect`` is the number of defective test images per category, spread
    round-robin over the category's defect kinds (``CATEGORY_DEFECTS``; each kind is a test
    sub-folder). The same arguments
    give byte-identical files. If ``root`` already holds the dataset these arguments make
    (same ``dataset.json``), nothing is written; other existing content is an error.
    """
    root = Path(root)
    categories = list(categories)
    if not categories:
        raise ValueError("no categories asked for")
    unknown = [c for c in categories if c not in TEXTURES]
    if unknown:
        raise ValueError(
            f"unknown synthetic categor{'y' if len(unknown) == 1 else 'ies'} "
            f"{', '.join(unknown)}; choose from {', '.join(TEXTURES)}"
        )
    if len(set(categories)) != len(categories):
        raise ValueError(f"repeated categories in {categories}")
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    if n_train < 1 or n_test_good < 0 or n_test_defect < 0 or n_test_good + n_test_defect < 1:
        raise ValueError(
            "need n_train >= 1, n_test_good >= 0, n_test_defect >= 0 and at least one test "
            f"image; got {n_train}, {n_test_good}, {n_test_defect}"
        )

    counts = {cat: _defect_counts(n_test_defect, CATEGORY_DEFECTS[cat]) for cat in categories}
    info = {
        "name": "trustad synthetic textures",
        "description": (
            "Anomaly detection dataset in the MVTec-AD layout. Normal images are random "
            "crops (scale-jittered, flipped, brightness-jittered, tinted per category) of "
            "scikit-image's "
            "bundled texture photographs; defective test images carry one drawn defect each, "
            "with an exact mask (alpha > 0.25 of the defect's soft shape)."
        ),
        "source": "scikit-image skimage.data brick, grass, gravel; CC0 1.0 (public domain)",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "size": size,
        "categories": categories,
        "n_train": n_train,
        "n_test_good": n_test_good,
        "n_test_defect": n_test_defect,
        "defects_per_kind": counts,
    }
    text = json.dumps(info, indent=2, sort_keys=True) + "\n"
    info_path = root / "dataset.json"
    if info_path.is_file() and info_path.read_text(encoding="utf-8") == text:
        return root
    for cat in categories:
        if (root / cat).exists() and any((root / cat).iterdir()):
            raise FileExistsError(
                f"{root / cat} already exists and is not empty; choose another root or "
                "delete it first"
            )

    for cat in categories:
        base = root / cat
        rng = _rng(seed, cat, 0)
        for i in range(n_train):
            _save_png(clean_image(cat, size, rng), base / "train" / "good" / f"{i:03d}.png")
        rng = _rng(seed, cat, 1)
        for i in range(n_test_good):
            _save_png(clean_image(cat, size, rng), base / "test" / "good" / f"{i:03d}.png")
        rng = _rng(seed, cat, 2)
        for kind, n in counts[cat].items():
            for i in range(n):
                image, mask = add_defect(clean_image(cat, size, rng), kind, rng, texture=cat)
                _save_png(image, base / "test" / kind / f"{i:03d}.png")
                mask_u8 = mask.astype(np.uint8) * 255
                _save_png(mask_u8, base / "ground_truth" / kind / f"{i:03d}_mask.png")
    root.mkdir(parents=True, exist_ok=True)
    info_path.write_text(text, encoding="utf-8")
    return root
