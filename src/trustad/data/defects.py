"""Drawn defects on texture crops, for the synthetic dataset (``synthetic.py``).

Normal images are random crops of scikit-image's bundled texture photographs (brick, grass,
gravel: CC0), tinted per category. Defects are scratches, holes, stains, cracks, colour
spots and patches of a foreign texture; each category has its own defect types
(``CATEGORY_DEFECTS``), as in MVTec-AD.

Every defect is drawn as ``out = img * (1 - alpha) + target * alpha`` with a soft ``alpha``
in [0, 1]; the mask is ``alpha > 0.25``, so it covers where the alteration is visible.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter
from scipy.spatial import cKDTree

TEXTURES = ("brick", "grass", "gravel")
DEFECT_KINDS = ("scratch", "hole", "stain", "crack", "color_spot", "foreign")
# Defect types per category, as in MVTec-AD where each category has its own. Grass and gravel
# are full of dark gaps, so dark cracks and dark scratches would vanish into them.
CATEGORY_DEFECTS: dict[str, tuple[str, ...]] = {
    "brick": DEFECT_KINDS,
    "grass": ("scratch", "hole", "stain", "color_spot", "foreign"),
    "gravel": ("scratch", "hole", "stain", "color_spot", "foreign"),
}
_NO_DARK_LINES = frozenset({"grass", "gravel"})
MASK_THRESHOLD = 0.25
GENERATOR_VERSION = 1  # bump when the drawing code changes what a seed produces

_TINTS = {
    "brick": (1.0, 0.64, 0.5),
    "grass": (0.62, 0.9, 0.42),
    "gravel": (0.96, 0.9, 0.8),
}
_TEXTURE_SIDE = 512
_CROP = 256  # texture pixels per image side, so the texture's scale does not depend on size

Drawer = Callable[[np.ndarray, np.random.Generator, str | None], tuple[np.ndarray, np.ndarray]]


@cache
def _texture(name: str) -> np.ndarray:
    """The tinted texture as a read-only float (512, 512, 3) array in [0, 1]."""
    if name not in TEXTURES:
        raise ValueError(f"unknown synthetic category {name!r}; choose from {', '.join(TEXTURES)}")
    try:
        import skimage.data

        gray = np.asarray(getattr(skimage.data, name)())
    except Exception as exc:  # a missing or download-only image surfaces as many error types
        raise RuntimeError(
            f"cannot load scikit-image's bundled texture {name!r} ({exc}); the synthetic "
            f"dataset needs the images {', '.join(TEXTURES)} that ship inside scikit-image"
        ) from exc
    if gray.shape != (_TEXTURE_SIDE, _TEXTURE_SIDE):
        raise RuntimeError(f"scikit-image texture {name!r} has unexpected shape {gray.shape}")
    rgb = (gray.astype(np.float64) / 255.0)[..., None] * np.asarray(_TINTS[name])
    rgb.setflags(write=False)
    return rgb


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def clean_image(texture: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A normal (size, size, 3) uint8 image: a random crop of the texture at a slightly
    random scale, randomly flipped, with a slight brightness jitter."""
    tex = _texture(texture)
    # The scale jitter keeps overlapping crops from repeating each other pixel for pixel.
    side = int(round(_CROP * rng.uniform(0.9, 1.1)))
    y, x = rng.integers(0, _TEXTURE_SIDE - side + 1, size=2)
    crop = tex[y : y + side, x : x + side]
    # No 90-degree turns: brick courses keep one orientation in every normal image.
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if rng.random() < 0.5:
        crop = crop[::-1]
    out = _to_uint8(crop * rng.uniform(0.93, 1.07))
    if size != side:
        out = np.asarray(Image.fromarray(out).resize((size, size), Image.BICUBIC))
    return out


# ---------------------------------------------------------------- drawing helpers


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y) of every pixel."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    return xx, yy


def _centre(rng: np.random.Generator, h: int, w: int, margin: float) -> tuple[float, float]:
    """A random point at least ``margin`` from the border (the middle if that is impossible)."""
    mx, my = min(margin, (w - 1) / 2), min(margin, (h - 1) / 2)
    return float(rng.uniform(mx, w - 1 - mx)), float(rng.uniform(my, h - 1 - my))


def _rotated(
    xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, phi: float
) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.cos(phi), np.sin(phi)
    return (xx - cx) * c + (yy - cy) * s, -(xx - cx) * s + (yy - cy) * c


def _edge_alpha(signed_px: np.ndarray, soft_px: float) -> np.ndarray:
    """Alpha from a signed distance in pixels (positive inside), ramping over ``soft_px``."""
    return np.clip(signed_px / soft_px + 0.5, 0.0, 1.0)


def _densify(vertices: np.ndarray, half_widths: np.ndarray, spacing: float = 0.25):
    """Points every ``spacing`` pixels along a polyline, with interpolated half-widths."""
    seg = np.linalg.norm(np.diff(vertices, axis=0), axis=1)
    t = np.concatenate([[0.0], np.cumsum(seg)])
    s = np.linspace(0.0, t[-1], max(2, int(np.ceil(t[-1] / spacing)) + 1))
    pts = np.stack([np.interp(s, t, vertices[:, 0]), np.interp(s, t, vertices[:, 1])], axis=1)
    return pts, np.interp(s, t, half_widths)


def _line_alpha(h: int, w: int, points: np.ndarray, half_widths: np.ndarray) -> np.ndarray:
    """Anti-aliased alpha of a line of varying half-width through dense (x, y) points."""
    alpha = np.zeros((h, w))
    pad = float(half_widths.max()) + 2.0
    x0 = int(max(0, np.floor(points[:, 0].min() - pad)))
    x1 = int(min(w, np.ceil(points[:, 0].max() + pad) + 1))
    y0 = int(max(0, np.floor(points[:, 1].min() - pad)))
    y1 = int(min(h, np.ceil(points[:, 1].max() + pad) + 1))
    if x0 >= x1 or y0 >= y1:
        return alpha
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    dist, idx = cKDTree(points).query(np.stack([xx.ravel(), yy.ravel()], axis=1))
    a = np.clip(half_widths[idx] + 0.5 - dist, 0.0, 1.0)
    alpha[y0:y1, x0:x1] = a.reshape(yy.shape)
    return alpha


def _pick_unlike(
    colours: np.ndarray, img: np.ndarray, min_dist: float, rng: np.random.Generator
) -> np.ndarray:
    """A random colour among those at least ``min_dist`` from the image's mean colour
    (compared at the palette's own scale), so the defect does not vanish into the texture."""
    mean = img.reshape(-1, 3).mean(axis=0)
    mean = mean * colours.mean() / max(mean.mean(), 1e-6)
    far = colours[np.linalg.norm(colours - mean, axis=1) >= min_dist]
    choices = far if len(far) else colours
    return choices[rng.integers(len(choices))]


def _px(img: np.ndarray) -> float:
    """Pixels per pixel of a 256-pixel image: line widths scale with the image."""
    return min(img.shape[:2]) / 256.0


# ---------------------------------------------------------------- defects
# Each drawer returns (alpha, target): the soft shape and the fully altered image.


def _scratch(img: np.ndarray, rng: np.random.Generator, texture: str | None):
    h, w = img.shape[:2]
    side = min(h, w)
    length = side * rng.uniform(0.12, 0.3)
    cx, cy = _centre(rng, h, w, length / 2 + 2)
    theta = rng.uniform(0, np.pi)
    d = np.array([np.cos(theta), np.sin(theta)])
    normal = np.array([-d[1], d[0]])
    c = np.array([cx, cy])
    p0, p2 = c - d * length / 2, c + d * length / 2
    p1 = c + normal * length * rng.uniform(-0.35, 0.35)
    t = np.linspace(0, 1, 64)[:, None]
    curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    hw = max(0.5, _px(img) * rng.uniform(0.8, 1.6)) * (0.35 + 0.65 * np.sin(np.pi * t[:, 0]) ** 0.5)
    alpha = _line_alpha(h, w, *_densify(curve, hw))
    bright = texture in _NO_DARK_LINES or rng.random() < 0.5
    level = rng.uniform(0.85, 0.97) if bright else rng.uniform(0.03, 0.12)
    target = img + rng.uniform(0.75, 0.95) * (level - img)
    return alpha, target


def _hole(img: np.ndarray, rng: np.random.Generator, texture: str | None):
    h, w = img.shape[:2]
    side = min(h, w)
    rx, ry = np.maximum(1.5, side * rng.uniform(0.03, 0.065, size=2))
    cx, cy = _centre(rng, h, w, max(rx, ry) + 2)
    u, v = _rotated(*_grid(h, w), cx, cy, rng.uniform(0, np.pi))
    rho = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)
    r = min(rx, ry)
    alpha = _edge_alpha((1 - rho) * r, max(1.0, 0.2 * r))
    # A shaded cavity (dark, lighter towards one side) inside a raised, lighter lip.
    shade = 0.1 + 0.25 * np.clip(rho, 0, 1) ** 2 + 0.08 * np.clip(u / rx, -1, 1)
    cavity = img * np.clip(shade, 0.04, 0.6)[..., None]
    lip = np.clip(img * rng.uniform(1.15, 1.35) + 0.1, 0, 1)
    t = np.clip((rho - 0.68) / 0.14, 0, 1)[..., None]
    weight = t * t * (3 - 2 * t)
    target = cavity * (1 - weight) + lip * weight
    return alpha, target


def _stain(img: np.ndarray, rng: np.random.Generator, texture: str | None):
    h, w = img.shape[:2]
    side = min(h, w)
    radius = max(2.0, side * rng.uniform(0.04, 0.09))
    cx, cy = _centre(rng, h, w, radius)
    u, v = _rotated(*_grid(h, w), cx, cy, rng.uniform(0, np.pi))
    aspect = rng.uniform(0.7, 1.3)
    rho = np.sqrt((u / radius) ** 2 + (v * aspect / radius) ** 2)
    noise = gaussian_filter(rng.standard_normal((h, w)), sigma=max(1.0, radius / 2.5))
    noise /= noise.std() + 1e-12
    # A smooth random radius gives an irregular outline; smoothstep gives soft edges.
    shape = 1 - rho * (1 + 0.25 * np.clip(noise, -2, 2))
    x = np.clip(shape / 0.35, 0, 1)
    alpha = x * x * (3 - 2 * x)
    colours = np.array(
        [
            (0.55, 0.38, 0.2),
            (0.75, 0.65, 0.25),
            (0.35, 0.4, 0.55),
            (0.4, 0.3, 0.35),
            (0.3, 0.3, 0.3),
        ]
    )
    colour = _pick_unlike(colours / colours.mean(axis=1, keepdims=True), img, 0.45, rng)
    lum = img.mean(axis=-1, keepdims=True)
    stained = lum * colour * rng.uniform(0.55, 0.75)
    target = img + rng.uniform(0.6, 0.85) * (stained - img)
    return alpha, target


def _crack(img: np.ndarray, rng: np.random.Generator, texture: str | None):
    h, w = img.shape[:2]
    side = min(h, w)
    px = _px(img)
    extent = side * rng.uniform(0.1, 0.25)
    step = max(0.5, px)
    cx, cy = _centre(rng, h, w, extent / 2 + 2)
    theta = rng.uniform(0, 2 * np.pi)
    start = np.array([cx, cy]) - extent / 2 * np.array([np.cos(theta), np.sin(theta)])
    hw0 = max(0.5, px * rng.uniform(1.3, 2.2))
    points, widths = [], []
    # Branching random walk: (start, direction, steps, start half-width, depth).
    walks = [(start, theta, int(extent / step), hw0, 0)]
    while walks:
        pos, heading, n, hw, depth = walks.pop()
        verts, ang = [pos], heading
        for i in range(n):
            # Jagged but directed: the turn is pulled back towards the walk's heading.
            ang = heading + 0.75 * (ang - heading) + rng.normal(0, 0.3)
            pos = pos + step * np.array([np.cos(ang), np.sin(ang)])
            verts.append(pos)
            if depth < 2 and len(walks) < 4 and rng.random() < 0.06 and n - i > 4:
                branch_ang = ang + rng.choice([-1, 1]) * rng.uniform(0.4, 1.1)
                branch_len = int((n - i) * rng.uniform(0.3, 0.6))
                branch_hw = hw * 0.7 * (1 - i / n)  # as thin as the trunk is at this point
                walks.append((pos, branch_ang, branch_len, branch_hw, depth + 1))
        verts_arr = np.array(verts)
        taper = np.linspace(1.0, 0.5, len(verts_arr))
        p, wd = _densify(verts_arr, np.maximum(0.5, hw * taper))
        points.append(p)
        widths.append(wd)
    alpha = _line_alpha(h, w, np.concatenate(points), np.concatenate(widths))
    target = img * rng.uniform(0.08, 0.25)
    return alpha, target


def _color_spot(img: np.ndarray, rng: np.random.Generator, texture: str | None):
    h, w = img.shape[:2]
    side = min(h, w)
    r = max(1.2, side * rng.uniform(0.015, 0.035))
    cx, cy = _centre(rng, h, w, r + 1)
    u, v = _rotated(*_grid(h, w), cx, cy, rng.uniform(0, np.pi))
    aspect = rng.uniform(0.75, 1.25)
    rho = np.sqrt((u / r) ** 2 + (v * aspect / r) ** 2)
    alpha = _edge_alpha((1 - rho) * r, 1.0)
    palette = np.array(
        [
            (0.85, 0.12, 0.1),
            (0.12, 0.25, 0.85),
            (0.92, 0.8, 0.1),
            (0.95, 0.95, 0.95),
            (0.6, 0.1, 0.7),
        ]
    )
    colour = _pick_unlike(palette, img, 0.35, rng)
    lum = img.mean(axis=-1, keepdims=True)
    paint = np.clip(colour * (0.75 + 0.5 * lum), 0, 1)
    target = img + rng.uniform(0.6, 1.0) * (paint - img)  # some spots are translucent
    return alpha, target


def _foreign(img: np.ndarray, rng: np.random.Generator, texture: str | None):
    h, w = img.shape[:2]
    side = min(h, w)
    others = [t for t in TEXTURES if t != texture]
    other = others[rng.integers(len(others))]
    patch = clean_image(other, max(h, w), rng)[:h, :w].astype(np.float64) / 255.0
    rx = max(2.0, side * rng.uniform(0.05, 0.1))
    ry = rx * rng.uniform(0.7, 1.3)
    cx, cy = _centre(rng, h, w, max(rx, ry) + 2)
    u, v = _rotated(*_grid(h, w), cx, cy, rng.uniform(0, np.pi))
    rho = (np.abs(u / rx) ** 4 + np.abs(v / ry) ** 4) ** 0.25  # a rounded rectangle
    alpha = _edge_alpha((1 - rho) * min(rx, ry), max(1.0, 1.5 * _px(img)))
    return alpha, patch


_DRAWERS: dict[str, Drawer] = {
    "scratch": _scratch,
    "hole": _hole,
    "stain": _stain,
    "crack": _crack,
    "color_spot": _color_spot,
    "foreign": _foreign,
}


def add_defect(
    image: np.ndarray, kind: str, rng: np.random.Generator, texture: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one defect of ``kind`` onto a uint8 (H, W, 3) image.

    Returns the altered uint8 image and its boolean (H, W) mask. ``texture`` is the
    image's own texture, which a ``foreign`` patch avoids.
    """
    if kind not in _DRAWERS:
        raise ValueError(f"unknown defect kind {kind!r}; choose from {', '.join(DEFECT_KINDS)}")
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    img = image.astype(np.float64) / 255.0
    for _ in range(20):  # a defect drawn mostly off a tiny image can miss every pixel
        alpha, target = _DRAWERS[kind](img, rng, texture)
        alpha = np.where(alpha < 0.02, 0.0, alpha)  # no faint changes far from the defect
        mask = alpha > MASK_THRESHOLD
        if mask.any():
            out = img * (1 - alpha[..., None]) + np.clip(target, 0, 1) * alpha[..., None]
            return _to_uint8(out), mask
    raise RuntimeError(
        f"could not place a {kind} defect on a {image.shape[1]}x{image.shape[0]} image"
    )
