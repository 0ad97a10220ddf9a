"""A small anomaly set built offline from real photographs bundled with scikit-image.

Normal images are random crops of one photograph per category (a Hubble deep field, an
immunohistochemistry slide, a retina fundus): real, not synthetic, image statistics.
Defective images carry one region replaced by the same place in another bundled photograph
(astronaut, coffee, rocket, cat) or a locally blurred region, with a soft elliptical edge;
the mask is where that region's weight exceeds 0.25. None of these photographs is used by
the synthetic texture set (brick, grass, gravel).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

PHOTO_CATEGORIES = ("hubble", "ihc", "retina")
_SOURCES = {
    "hubble": "hubble_deep_field",
    "ihc": "immunohistochemistry",
    "retina": "retina",
}
_FOREIGN = ("astronaut", "coffee", "rocket", "cat")
_MASK_THRESHOLD = 0.25


@dataclass
class PhotoCategory:
    name: str
    train: list[np.ndarray]  # normal (size, size, 3) uint8
    test: list[np.ndarray]
    masks: list[np.ndarray]  # bool (size, size); all False for normal images
    labels: np.ndarray


def _photo(name: str) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, name)()
    if name == "retina":  # the fundus sits in a black disc: keep its central square
        h, w = img.shape[:2]
        img = img[int(0.3 * h) : int(0.7 * h), int(0.3 * w) : int(0.7 * w)]
    return img[..., :3].astype(np.float64) / 255.0


def _crop(photo: np.ndarray, side: int, size: int, rng: np.random.Generator) -> np.ndarray:
    h, w = photo.shape[:2]
    side = min(side, h, w)
    y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    crop = photo[y : y + side, x : x + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    crop = np.clip(crop * rng.uniform(0.95, 1.05), 0, 1)
    out = Image.fromarray(np.round(crop * 255).astype(np.uint8))
    return np.asarray(out.resize((size, size), Image.BICUBIC))


def _defect(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    r = size * rng.uniform(0.08, 0.14)
    cy, cx = rng.uniform(r + 2, size - r - 2, size=2)
    yy, xx = np.mgrid[0:size, 0:size]
    rho = np.hypot((yy - cy) / r, (xx - cx) / (r * rng.uniform(0.7, 1.3)))
    alpha = np.clip((1.0 - rho) * r / 2.0, 0.0, 1.0)[..., None]
    base = img.astype(np.float64) / 255.0
    if rng.random() < 0.7:
        other = _photo(_FOREIGN[rng.integers(len(_FOREIGN))])
        target = _crop(other, min(other.shape[:2]), size, rng).astype(np.float64) / 255.0
    else:
        target = gaussian_filter(base, sigma=(size / 60, size / 60, 0))
    out = base * (1 - alpha) + target * alpha
    return np.round(out * 255).astype(np.uint8), alpha[..., 0] > _MASK_THRESHOLD


def make_photo_category(
    name: str, n_train: int, n_good: int, n_defect: int, size: int, seed: int
) -> PhotoCategory:
    """Normal training crops, then ``n_good`` normal and ``n_defect`` defective test images."""
    if name not in _SOURCES:
        raise ValueError(f"unknown photo category {name!r}; choose from {PHOTO_CATEGORIES}")
    photo = _photo(_SOURCES[name])
    side = min(photo.shape[:2]) // 2
    rng = np.random.default_rng([seed, PHOTO_CATEGORIES.index(name)])
    train = [_crop(photo, side, size, rng) for _ in range(n_train)]
    test, masks = [], []
    for i in range(n_good + n_defect):
        img = _crop(photo, side, size, rng)
        mask = np.zeros((size, size), dtype=bool)
        if i >= n_good:
            img, mask = _defect(img, rng)
        test.append(img)
        masks.append(mask)
    labels = np.array([0] * n_good + [1] * n_defect)
    return PhotoCategory(name, train, test, masks, labels)
