"""Known categories and their per-category detector defaults (PROTOCOL section 2).

The table ``_KNOWN`` is the only place where the per-category facts live.
"""

from __future__ import annotations

from dataclasses import dataclass

DATASETS = ("mvtec", "visa", "folder")
PREPROCESSING = ("agnostic", "informed", "none")


@dataclass(frozen=True)
class CategoryDefaults:
    rotate: bool  # rotation augmentation of support images
    mask_test: bool  # zero-shot background masking of test images


# (dataset, category) -> (mask_test, rotate under "informed").
# Under "agnostic" every category is rotated; under "none" nothing is rotated or masked.
_KNOWN: dict[tuple[str, str], tuple[bool, bool]] = {
    ("mvtec", "bottle"): (False, False),
    ("mvtec", "cable"): (False, False),
    ("mvtec", "capsule"): (True, False),
    ("mvtec", "carpet"): (False, False),
    ("mvtec", "grid"): (False, False),
    ("mvtec", "hazelnut"): (True, True),
    ("mvtec", "leather"): (False, False),
    ("mvtec", "metal_nut"): (False, False),
    ("mvtec", "pill"): (True, False),
    ("mvtec", "screw"): (True, True),
    ("mvtec", "tile"): (False, False),
    ("mvtec", "toothbrush"): (True, False),
    ("mvtec", "transistor"): (False, False),
    ("mvtec", "wood"): (False, False),
    ("mvtec", "zipper"): (False, False),
    ("visa", "candle"): (True, False),
    ("visa", "capsules"): (True, False),
    ("visa", "cashew"): (True, False),
    ("visa", "chewinggum"): (True, False),
    ("visa", "fryum"): (True, False),
    ("visa", "macaroni1"): (True, False),
    ("visa", "macaroni2"): (True, False),
    ("visa", "pcb1"): (True, False),
    ("visa", "pcb2"): (True, False),
    ("visa", "pcb3"): (True, False),
    ("visa", "pcb4"): (True, False),
    ("visa", "pipe_fryum"): (True, False),
}

MVTEC_CATEGORIES: tuple[str, ...] = tuple(c for d, c in _KNOWN if d == "mvtec")
VISA_CATEGORIES: tuple[str, ...] = tuple(c for d, c in _KNOWN if d == "visa")

# Folder datasets and unknown categories: no masking (a per-run setting elsewhere).
_UNKNOWN = (False, False)


def category_defaults(
    dataset: str, category: str, preprocessing: str = "agnostic"
) -> CategoryDefaults:
    """Rotation and test-masking defaults for one category under a preprocessing mode."""
    if preprocessing not in PREPROCESSING:
        raise ValueError(
            f"unknown preprocessing {preprocessing!r}; choose one of {', '.join(PREPROCESSING)}"
        )
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if preprocessing == "none":
        return CategoryDefaults(rotate=False, mask_test=False)
    mask_test, informed_rotate = _KNOWN.get((dataset, category), _UNKNOWN)
    rotate = True if preprocessing == "agnostic" else informed_rotate
    return CategoryDefaults(rotate=rotate, mask_test=mask_test)
