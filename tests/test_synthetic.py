"""The synthetic texture dataset: reproducible, loadable, with exact masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trustad.data import (
    image_size,
    list_categories,
    load_category,
    load_mask,
    make_synthetic_dataset,
    synthetic_categories,
)
from trustad.data.defects import CATEGORY_DEFECTS, DEFECT_KINDS, add_defect, clean_image

SMALL = dict(n_train=2, n_test_good=2, n_test_defect=6, size=64)


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("syn") / "a", seed=0, **SMALL)


def test_reproducible(small: Path, tmp_path: Path) -> None:
    again = make_synthetic_dataset(tmp_path / "b", seed=0, **SMALL)
    other = make_synthetic_dataset(tmp_path / "c", seed=1, **SMALL)
    a, b, c = files(small), files(again), files(other)
    assert a == b
    assert a.keys() == c.keys()
    images = [k for k in a if k.endswith(".png")]
    assert all(a[k] != c[k] for k in images if "ground_truth" not in k)
    info = json.loads(a["dataset.json"])
    assert info["seed"] == 0 and info["size"] == 64 and "CC0" in info["source"]
    # Regenerating into the same root is a no-op; other content there is refused.
    assert make_synthetic_dataset(tmp_path / "b", seed=0, **SMALL) == tmp_path / "b"
    with pytest.raises(FileExistsError) as err:
        make_synthetic_dataset(tmp_path / "b", seed=5, **SMALL)
    assert str(tmp_path / "b") in str(err.value)


def test_loads_as_mvtec_and_folder(small: Path) -> None:
    assert synthetic_categories() == ("brick", "grass", "gravel")
    for dataset in ("folder", "mvtec"):
        assert list_categories(dataset, small) == ["brick", "grass", "gravel"]
        for cat in synthetic_categories():
            data = load_category(dataset, small, cat)
            assert len(data.train) == 2 and len(data.test) == 8 and data.has_masks
            assert {s.defect for s in data.test} == {"good", *CATEGORY_DEFECTS[cat]}
            for s in data.test:
                size = image_size(s.path)
                assert size == (64, 64)
                mask = load_mask(s, size)
                assert mask.shape == (64, 64)
                if s.label:
                    assert mask.any()
                else:
                    assert s.mask_path is None and not mask.any()
            assert all(image_size(p) == (64, 64) for p in data.train)


def test_images_are_rgb_textures(small: Path) -> None:
    img = np.asarray(Image.open(small / "grass" / "train" / "good" / "000.png"))
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert img[..., 1].mean() > img[..., 0].mean()  # grass is tinted green
    assert img.std() > 10  # a texture, not a flat colour


@pytest.mark.parametrize("kind", DEFECT_KINDS)
@pytest.mark.parametrize("size", [64, 256])
def test_mask_covers_the_change(kind: str, size: int) -> None:
    for seed in range(4):
        rng = np.random.default_rng(seed)
        texture = synthetic_categories()[seed % 3]
        clean = clean_image(texture, size, rng)
        defect, mask = add_defect(clean, kind, rng, texture=texture)
        assert defect.shape == clean.shape and defect.dtype == np.uint8
        assert mask.shape == (size, size) and mask.dtype == bool
        area = mask.mean()
        assert 0 < area < 0.1
        energy = ((defect.astype(float) - clean.astype(float)) ** 2).sum(axis=-1)
        assert energy.sum() > 0
        assert energy[mask].sum() / energy.sum() > 0.9
        # Visible: a clear mean change inside the mask.
        change = np.abs(defect.astype(float) - clean.astype(float)).sum(axis=-1)
        assert change[mask].mean() > 25


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="camera"):
        make_synthetic_dataset(tmp_path, categories=["camera"])
    with pytest.raises(ValueError, match="kind"):
        add_defect(np.zeros((32, 32, 3), np.uint8), "smudge", np.random.default_rng(0))
