"""Parity of an engine with the torch detector in float32: the largest changes of image
scores and anomaly maps over two image sets, synthetic parts and real photographs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..data.defects import CATEGORY_DEFECTS, TEXTURES, add_defect, clean_image
from ..model import FittedDetector, Prediction

# The limits an fp32 engine must keep (issue: scores within 1e-5, maps within 1e-4).
SCORE_TOLERANCE = 1e-5
MAP_TOLERANCE = 1e-4


def synthetic_images(size: int, per_texture: int = 2, seed: int = 0) -> list[np.ndarray]:
    """Synthetic parts (uint8 (size, size, 3)): per texture a clean one and defective ones."""
    rng = np.random.default_rng(seed)
    out = []
    for texture in TEXTURES:
        out.append(clean_image(texture, size, rng))
        for i in range(per_texture - 1):
            kind = CATEGORY_DEFECTS[texture][i % len(CATEGORY_DEFECTS[texture])]
            out.append(add_defect(clean_image(texture, size, rng), kind, rng, texture)[0])
    return out


def photo_images(size: tuple[int, int], per_photo: int = 2) -> list[np.ndarray]:
    """Crops (height, width) of scikit-image's bundled photographs brick, grass and gravel
    (grey, as RGB), from the top-left and the bottom-right corners."""
    import skimage.data

    h, w = size
    out = []
    for name in TEXTURES:
        gray = np.asarray(getattr(skimage.data, name)())
        corners = [(0, 0), (gray.shape[0] - h, gray.shape[1] - w)][:per_photo]
        out += [np.repeat(gray[y : y + h, x : x + w, None], 3, axis=2) for y, x in corners]
    return out


def parity(
    reference: FittedDetector, other: FittedDetector, images: Sequence[np.ndarray]
) -> dict[str, float]:
    """The largest absolute change of the image score and of the anomaly map from
    ``reference`` to ``other`` over ``images``."""
    return changes(reference.predict(list(images)), other.predict(list(images)))


def changes(ref: Sequence[Prediction], got: Sequence[Prediction]) -> dict[str, float]:
    """``parity`` of predictions made already (with maps)."""
    return {
        "images": len(ref),
        "score": max(abs(a.score - b.score) for a, b in zip(ref, got)),
        "map": max(float(np.abs(a.anomaly_map - b.anomaly_map).max()) for a, b in zip(ref, got)),
    }


def keeps_parity(change: dict[str, float]) -> bool:
    return change["score"] <= SCORE_TOLERANCE and change["map"] <= MAP_TOLERANCE
