"""Heatmap overlays (colour bar, score, decision, outline), masks and the pixel threshold."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image

from trustad.maps import anomaly_maps_grouped, anomaly_mask, pixel_threshold
from trustad.model.overlay import (
    COLORMAP,
    LEGEND_MIN_WIDTH,
    WHITE,
    heatmap,
    legend_geometry,
    map_value_range,
    mask_png,
    overlay,
    overlay_size,
)


def test_pixel_threshold_keeps_the_false_pixel_rate():
    gen = torch.Generator().manual_seed(0)
    grids = [torch.rand(4, 5, generator=gen), torch.rand(6, 3, generator=gen) * 2]
    maps = anomaly_maps_grouped(grids, [(5 * 14, 4 * 14), (3 * 14, 6 * 14)], "cpu")
    values = np.sort(np.concatenate([m.numpy().ravel() for m in maps]))
    for rate in (0.001, 0.01, 0.1, 0.5):
        t = pixel_threshold(grids, rate)
        assert (values > t).mean() <= rate
        # the next smaller map value would let more than ``rate`` through
        below = values[values < t]
        assert (values > below.max()).mean() > rate
    assert pixel_threshold(grids, 0.01) > pixel_threshold(grids, 0.1)


def test_pixel_threshold_refuses_bad_input():
    grid = [torch.zeros(2, 2)]
    for rate in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="false-pixel rate"):
            pixel_threshold(grid, rate)
    with pytest.raises(ValueError, match="at least one normal image"):
        pixel_threshold([], 0.01)
    with pytest.raises(ValueError, match="non-finite"):
        pixel_threshold([torch.tensor([[0.0, float("nan")]])], 0.01)


def spot_map(h: int = 60, w: int = 64) -> np.ndarray:
    amap = np.full((h, w), 0.1, dtype=np.float32)
    amap[20:35, 30:45] = 0.9
    return amap


def image(h: int = 60, w: int = 64) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_mask_marks_the_region_above_the_threshold():
    amap = spot_map()
    mask = np.asarray(Image.open(io.BytesIO(mask_png(amap, 0.5))))
    assert mask.dtype == np.uint8 and mask.shape == amap.shape
    assert set(np.unique(mask)) == {0, 255}
    np.testing.assert_array_equal(mask == 255, anomaly_mask(amap, 0.5))
    assert (mask == 255).sum() == 15 * 15


def test_outline_surrounds_the_region_and_nothing_else():
    amap, rgb = spot_map(), image()
    plain = heatmap(rgb, amap)
    outlined = heatmap(rgb, amap, threshold=0.5)
    changed = (outlined != plain).any(axis=-1)
    assert (outlined[changed] == WHITE).all()
    region = anomaly_mask(amap, 0.5)
    assert changed[region].any() and not changed[~region].any()
    assert not changed[25:30, 35:40].any()  # the inside stays a heatmap
    np.testing.assert_array_equal(heatmap(rgb, amap, threshold=2.0), plain)


def test_overlay_has_the_image_on_top_and_the_legend_below():
    amap, rgb = spot_map(), image()
    img = overlay(rgb, amap, (0.0, 1.0), threshold=0.5, score=0.42, decision=True)
    assert img.size == overlay_size(64, 60) == (LEGEND_MIN_WIDTH, 60 + img.size[1] - 60)
    arr = np.asarray(img)
    np.testing.assert_array_equal(arr[:60, :64], heatmap(rgb, amap, (0.0, 1.0), 0.5))
    assert (arr[:60, 64:] == WHITE).all()
    # the colour bar runs from the colour map's low end to its high end
    _, pad, bar_top, _, _ = legend_geometry(img.width)
    row = arr[60 + bar_top + 2]
    ends = np.round(colormaps[COLORMAP]([0.0, 1.0])[:, :3] * 255)
    np.testing.assert_allclose(row[pad], ends[0], atol=1)
    np.testing.assert_allclose(row[img.width - pad - 1], ends[1], atol=1)
    # score and decision are written: other words, other pixels
    other = np.asarray(overlay(rgb, amap, (0.0, 1.0), threshold=0.5, score=0.42, decision=False))
    assert (other[60:] != arr[60:]).any() and (other[:60] == arr[:60]).all()


def test_a_wide_image_keeps_its_width():
    amap = np.zeros((30, 500), np.float32)
    img = overlay(np.zeros((30, 500, 3), np.uint8), amap)
    assert img.size == overlay_size(500, 30) and img.width == 500


def test_map_scale_normal_or_image():
    assert map_value_range((0.1, 0.3), "normal") == (0.1, 0.3)
    assert map_value_range((0.1, 0.3), "image") is None
    assert map_value_range(None, "normal") is None
    with pytest.raises(ValueError, match="normal, image"):
        map_value_range((0.1, 0.3), "global")
    amap, rgb = spot_map(), image()
    # on the normal scale a map below its low end shows no heat; on its own scale it does
    low = amap * 0.01
    assert (heatmap(rgb, low, (0.5, 1.0)) == heatmap(rgb, np.zeros_like(low), (0.5, 1.0))).all()
    assert (heatmap(rgb, low) != heatmap(rgb, np.zeros_like(low), (0.5, 1.0))).any()
