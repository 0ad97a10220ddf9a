"""Anomaly maps in torch against the scipy definition they replace."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from trustad.detector import anomaly_map
from trustad.maps import MAP_SIGMA, anomaly_maps_torch, blur_matrix, symmetric_indices


def scipy_map(grid: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """The CPU path the torch maps replace: torch bilinear, then scipy's Gaussian filter."""
    up = F.interpolate(
        grid.float()[None, None], size=(size[1], size[0]), mode="bilinear", align_corners=False
    )
    return ndimage.gaussian_filter(up[0, 0].numpy(), sigma=MAP_SIGMA)


def test_symmetric_indices_repeat_scipy_reflect():
    # d c b a | a b c d | d c b a, and again beyond
    assert symmetric_indices(3, 4).tolist() == [2, 2, 1, 0, 0, 1, 2, 2, 1, 0, 0]
    assert symmetric_indices(1, 2).tolist() == [0] * 5


@pytest.mark.parametrize("n", [1, 2, 5, 16, 17, 40])
def test_blur_matrix_is_scipy_gaussian_filter1d(n):
    x = np.random.default_rng(n).random((n, 3))
    ref = ndimage.gaussian_filter1d(x, MAP_SIGMA, axis=0)
    np.testing.assert_allclose(blur_matrix(n) @ torch.from_numpy(x), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "grid, size", [((1, 1), (5, 3)), ((2, 3), (7, 9)), ((4, 4), (10, 30)), ((8, 6), (70, 64))]
)
def test_maps_match_scipy(torch_device, grid, size):
    d = torch.rand(3, *grid, generator=torch.Generator().manual_seed(0))
    maps = anomaly_maps_torch(d.to(torch_device), size)
    assert maps.device.type == torch_device.type
    assert maps.dtype == torch.float32 and maps.shape == (3, size[1], size[0])
    for got, grid_i in zip(maps.cpu().numpy(), d):
        np.testing.assert_allclose(got, scipy_map(grid_i, size), rtol=0, atol=1e-5)


def test_anomaly_map_is_the_batched_map():
    d = torch.rand(2, 5, 7, generator=torch.Generator().manual_seed(1))
    maps = anomaly_maps_torch(d, (40, 30))
    single = anomaly_map(d[1], (40, 30))
    assert isinstance(single, np.ndarray) and single.dtype == np.float32
    np.testing.assert_array_equal(single, maps[1].numpy())
    np.testing.assert_allclose(single, scipy_map(d[1], (40, 30)), rtol=0, atol=1e-5)


def test_maps_reject_bad_shapes():
    with pytest.raises(ValueError, match=r"\(B, h, w\)"):
        anomaly_maps_torch(torch.zeros(4, 4), (8, 8))
    with pytest.raises(ValueError, match="positive"):
        anomaly_maps_torch(torch.zeros(1, 4, 4), (0, 8))
