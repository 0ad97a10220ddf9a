"""Heatmap overlays of anomaly maps, as PNG images."""

from __future__ import annotations

import io

import numpy as np
from matplotlib import colormaps
from PIL import Image

from ..backbone.preprocess import ImageInput, load_rgb8

COLORMAP = "jet"
# Blend weight of the heatmap: a floor so the colour scale stays visible, plus more where
# the map is hotter, so that normal regions keep showing the part itself.
ALPHA_MIN, ALPHA_SPAN = 0.2, 0.5


def normalise(amap: np.ndarray, value_range: tuple[float, float] | None) -> np.ndarray:
    """Map values to [0, 1]: by ``value_range`` (low, high; a fixed scale shared by all
    images, see ``FittedDetector.map_range_``), else by the map's own minimum and maximum."""
    lo, hi = value_range if value_range is not None else (float(amap.min()), float(amap.max()))
    if not hi > lo:
        return np.zeros_like(amap, dtype=np.float64)
    return np.clip((amap.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0)


def overlay(
    image: ImageInput, amap: np.ndarray, value_range: tuple[float, float] | None = None
) -> Image.Image:
    """The image with its anomaly map (same height and width) blended on top as a heatmap."""
    rgb = np.asarray(load_rgb8(image), dtype=np.float64) / 255.0
    if rgb.shape[:2] != amap.shape:
        raise ValueError(f"map shape {amap.shape} differs from the image's {rgb.shape[:2]}")
    v = normalise(amap, value_range)
    heat = colormaps[COLORMAP](v)[..., :3]
    alpha = (ALPHA_MIN + ALPHA_SPAN * v)[..., None]
    out = rgb * (1 - alpha) + heat * alpha
    return Image.fromarray(np.round(out * 255).astype(np.uint8))


def overlay_png(
    image: ImageInput, amap: np.ndarray, value_range: tuple[float, float] | None = None
) -> bytes:
    """:func:`overlay` encoded as PNG bytes."""
    buf = io.BytesIO()
    overlay(image, amap, value_range).save(buf, format="PNG")
    return buf.getvalue()
