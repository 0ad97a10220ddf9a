"""Pixel AUROC and AUPRO in torch give the numbers of the numpy metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trustad import metrics
from trustad.pixel_metrics import aupro_torch, pixel_auroc_torch, pixel_targets


def random_set(seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A few masks with scattered pixels; maps with and without ties, float32 and float64."""
    rng = np.random.default_rng(seed)
    masks, maps = [], []
    for _ in range(int(rng.integers(1, 5))):
        h, w = (int(v) for v in rng.integers(1, 24, 2))
        mask = rng.random((h, w)) < rng.choice([0.0, 0.05, 0.3])
        amap = rng.random((h, w)) + 0.5 * mask
        if seed % 2:
            amap = np.round(amap * 5) / 5  # many ties
        masks.append(mask)
        maps.append(amap.astype(np.float32 if (seed + len(maps)) % 3 else np.float64))  # mixed
    return masks, maps


def same(a: float, b: float, tol: float = 1e-9) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("max_elements", [1 << 25, 150, 23])
def test_torch_metrics_equal_numpy(torch_device, seed, max_elements):
    masks, maps = random_set(seed)
    tmaps = [torch.from_numpy(m).to(torch_device) for m in maps]
    targets = pixel_targets(masks, torch_device)
    got = pixel_auroc_torch(targets, tmaps, max_elements=max_elements)
    assert same(got, metrics.pixel_auroc(masks, maps), 1e-12)
    for limit in (0.3, 1.0, 0.02):
        got = aupro_torch(targets, tmaps, fpr_limit=limit, max_elements=max_elements)
        assert same(got, metrics.aupro(masks, maps, fpr_limit=limit))


def test_stacked_maps_and_masks_given_directly(torch_device):
    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(4, 16, 16, generator=gen) > 0.8
    maps = torch.rand(4, 16, 16, generator=gen) + masks
    ref_auroc = metrics.pixel_auroc(list(masks.numpy()), list(maps.numpy()))
    ref_aupro = metrics.aupro(list(masks.numpy()), list(maps.numpy()))
    assert pixel_auroc_torch(masks, maps.to(torch_device)) == pytest.approx(ref_auroc, abs=1e-12)
    assert aupro_torch(masks, maps.to(torch_device)) == pytest.approx(ref_aupro, abs=1e-9)


def test_bands_of_float_neighbours_terminate():
    # Values one float apart and a large tie: the score bands must still split and end.
    base = np.float32(0.5)
    values = np.array([base, np.nextafter(base, np.float32(1)), np.float32(0.25)], np.float32)
    amap = values[np.arange(60) % 3].reshape(6, 10)
    mask = np.zeros((6, 10), bool)
    mask[:2, :3] = True
    ref = metrics.aupro([mask], [amap])
    assert aupro_torch([mask], [torch.from_numpy(amap)], max_elements=4) == pytest.approx(ref)
    ref = metrics.pixel_auroc([mask], [amap])
    assert pixel_auroc_torch([mask], [torch.from_numpy(amap)], max_elements=4) == ref


def test_one_class_gives_nan():
    maps = [torch.rand(5, 5)]
    assert math.isnan(pixel_auroc_torch([np.zeros((5, 5), bool)], maps))
    assert math.isnan(aupro_torch([np.zeros((5, 5), bool)], maps))
    assert math.isnan(pixel_auroc_torch([np.ones((5, 5), bool)], maps))
    assert math.isnan(aupro_torch([np.ones((5, 5), bool)], maps))


def test_bad_inputs_are_named():
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = True
    with pytest.raises(ValueError, match="image 0: mask"):
        pixel_auroc_torch([mask], [torch.zeros(4, 5)])
    with pytest.raises(ValueError, match="image 1: anomaly map has non-finite"):
        aupro_torch([mask, mask], [torch.zeros(4, 4), torch.full((4, 4), float("nan"))])
    with pytest.raises(ValueError, match="1 masks but 2 maps"):
        aupro_torch([mask], [torch.zeros(4, 4)] * 2)
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro_torch([mask], [torch.zeros(4, 4)], fpr_limit=0.0)
