"""Heatmap overlays and binary masks of anomaly maps, as PNG images.

An overlay is the image with its anomaly map blended on top, the outline of the anomalous
region (the map above the model's pixel threshold, ``trustad.maps.pixel_threshold``) in
white, and a legend below it: the score, the decision, and the colour bar with its scale.
The colour scale is the normal range (``FittedDetector.map_range_``: from the median to the
largest patch distance of the normal images, so that colour means "beyond normal") or each
image's own minimum and maximum (which always shows where the map is highest, even on a
normal image).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from ..backbone.preprocess import ImageInput, load_rgb8
from ..maps import anomaly_mask
from .state import Prediction

if TYPE_CHECKING:
    from .fitted import FittedDetector

COLORMAP = "jet"
# Blend weight of the heatmap: a floor so the colour scale stays visible, plus more where
# the map is hotter, so that normal regions keep showing the part itself.
ALPHA_MIN, ALPHA_SPAN = 0.2, 0.5
MAP_SCALES = ("normal", "image")
DEFAULT_MAP_SCALE = "normal"
# Narrower images get a wider canvas, so that the legend stays legible.
LEGEND_MIN_WIDTH = 320
WHITE, BLACK = (255, 255, 255), (0, 0, 0)
DECISION_WORDS = {True: ("anomalous", (200, 0, 0)), False: ("normal", (0, 130, 0))}
NO_DECISION = ("no decision (no calibrated threshold)", (90, 90, 90))


def normalise(amap: np.ndarray, value_range: tuple[float, float] | None) -> np.ndarray:
    """Map values to [0, 1]: by ``value_range`` (low, high; a fixed scale shared by all
    images, see ``FittedDetector.map_range_``), else by the map's own minimum and maximum."""
    lo, hi = scale_of(amap, value_range)
    if not hi > lo:
        return np.zeros_like(amap, dtype=np.float32)
    # float32: a camera-sized map stays a few bytes per pixel.
    return np.clip((amap.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)


def scale_of(amap: np.ndarray, value_range: tuple[float, float] | None) -> tuple[float, float]:
    """The (low, high) values that the colour bar's ends stand for."""
    if value_range is not None:
        return float(value_range[0]), float(value_range[1])
    return float(amap.min()), float(amap.max())


def map_value_range(
    map_range: tuple[float, float] | None, scale: str
) -> tuple[float, float] | None:
    """The fixed colour range for ``scale`` ("normal": the model's ``map_range``; "image":
    None, each image's own range). A model without a normal range gives None either way."""
    if scale not in MAP_SCALES:
        raise ValueError(f"map scale must be one of {', '.join(MAP_SCALES)}, got {scale!r}")
    return map_range if scale == "normal" else None


def outline(mask: np.ndarray, width: int) -> np.ndarray:
    """The pixels of ``mask`` within ``width`` pixels of its edge (the image border does
    not count as an edge)."""
    inner = ndimage.binary_erosion(mask, iterations=width, border_value=1)
    return mask & ~inner


def heatmap(
    image: ImageInput,
    amap: np.ndarray,
    value_range: tuple[float, float] | None = None,
    threshold: float | None = None,
) -> np.ndarray:
    """The image (H, W, 3) uint8 with its map blended on top, and where ``threshold`` is
    given the outline of the region above it."""
    rgb = np.asarray(load_rgb8(image), dtype=np.float32) / 255.0
    if rgb.shape[:2] != amap.shape:
        raise ValueError(f"map shape {amap.shape} differs from the image's {rgb.shape[:2]}")
    v = normalise(amap, value_range)
    heat = colormaps[COLORMAP](v, bytes=True)[..., :3].astype(np.float32) / 255.0
    alpha = (ALPHA_MIN + ALPHA_SPAN * v)[..., None]
    # rgb * (1 - alpha) + heat * alpha, in place: no full-size temporaries.
    heat -= rgb
    heat *= alpha
    heat += rgb
    heat *= 255
    out = np.round(heat, out=heat).astype(np.uint8)
    if threshold is not None:
        out[outline(anomaly_mask(amap, threshold), max(1, min(amap.shape) // 150))] = WHITE
    return out


def legend_geometry(width: int) -> tuple[int, int, int, int, int]:
    """(font size, margin, top of the colour bar, top of its labels, height) of the legend
    of a canvas ``width`` pixels wide."""
    size = int(np.clip(round(width / 30), 12, 32))
    pad = size // 2
    bar_top = pad + round(size * 1.5)
    labels_top = bar_top + size + 2
    return size, pad, bar_top, labels_top, labels_top + size + pad


def overlay_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) of the overlay of an image of that size."""
    canvas_width = max(width, LEGEND_MIN_WIDTH)
    return canvas_width, height + legend_geometry(canvas_width)[-1]


def _legend(
    width: int,
    lo: float,
    hi: float,
    fixed: bool,
    threshold: float | None,
    score: float | None,
    decision: bool | None,
) -> Image.Image:
    size, pad, bar_top, labels_top, height = legend_geometry(width)
    font = ImageFont.load_default(size=size)
    strip = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(strip)
    x = pad
    if score is not None:
        text = f"score {score:.4g}   "
        draw.text((x, pad), text, fill=BLACK, font=font)
        x += round(draw.textlength(text, font=font))
    word, colour = DECISION_WORDS.get(decision, NO_DECISION)
    draw.text((x, pad), word, fill=colour, font=font)
    bar_width = width - 2 * pad
    ramp = colormaps[COLORMAP](np.linspace(0.0, 1.0, bar_width))[:, :3]
    bar = np.round(np.broadcast_to(ramp, (size, bar_width, 3)) * 255).astype(np.uint8)
    strip.paste(Image.fromarray(bar), (pad, bar_top))
    if threshold is not None and hi > lo and lo < threshold < hi:
        tx = pad + round((threshold - lo) / (hi - lo) * (bar_width - 1))
        draw.rectangle((tx - 2, bar_top, tx + 2, bar_top + size - 1), fill=BLACK)
        draw.line((tx, bar_top, tx, bar_top + size - 1), fill=WHITE, width=1)
    # A fixed scale saturates: values above its top are drawn in its top colour.
    top = f"{hi:.3g}+" if fixed else f"{hi:.3g}"
    name = "normal range" if fixed else "this image's range"
    draw.text((pad, labels_top), f"{lo:.3g}", fill=BLACK, font=font)
    draw.text((width // 2, labels_top), name, fill=BLACK, font=font, anchor="ma")
    draw.text((width - pad, labels_top), top, fill=BLACK, font=font, anchor="ra")
    return strip


def overlay(
    image: ImageInput,
    amap: np.ndarray,
    value_range: tuple[float, float] | None = None,
    *,
    threshold: float | None = None,
    score: float | None = None,
    decision: bool | None = None,
) -> Image.Image:
    """The heatmap of ``amap`` (same height and width as the image) on the image, with the
    outline of the region above ``threshold`` and a legend below (score, decision, colour
    bar; the threshold marked on it). ``value_range``: see :func:`normalise`. The canvas is
    at least ``LEGEND_MIN_WIDTH`` wide; the image sits at its top left."""
    heat = heatmap(image, amap, value_range, threshold)
    h, w = heat.shape[:2]
    lo, hi = scale_of(amap, value_range)
    legend = _legend(
        max(w, LEGEND_MIN_WIDTH), lo, hi, value_range is not None, threshold, score, decision
    )
    canvas = Image.new("RGB", overlay_size(w, h), WHITE)
    canvas.paste(Image.fromarray(heat), (0, 0))
    canvas.paste(legend, (0, h))
    return canvas


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def overlay_png(
    image: ImageInput,
    amap: np.ndarray,
    value_range: tuple[float, float] | None = None,
    **legend: Any,
) -> bytes:
    """:func:`overlay` encoded as PNG bytes."""
    return _png(overlay(image, amap, value_range, **legend))


def prediction_overlay_png(
    image: ImageInput,
    prediction: Prediction,
    model: FittedDetector,
    scale: str = DEFAULT_MAP_SCALE,
) -> bytes:
    """The overlay of a ``Prediction`` (with its map) of a ``FittedDetector``: its score
    and decision, the model's pixel threshold, the colour ``scale`` (``MAP_SCALES``)."""
    return overlay_png(
        image,
        prediction.anomaly_map,
        map_value_range(model.map_range_, scale),
        threshold=model.pixel_threshold_,
        score=prediction.score,
        decision=prediction.decision,
    )


def mask_png(amap: np.ndarray, threshold: float) -> bytes:
    """The binary mask of the region above ``threshold``: 8-bit PNG, 255 anomalous, 0
    normal, at the map's (the image's) size."""
    mask = anomaly_mask(amap, threshold).astype(np.uint8) * 255
    return _png(Image.fromarray(mask))
