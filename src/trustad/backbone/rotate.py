"""Rotation of 8-bit images in torch, batched, on any device.

The same sampling as ``preprocess.rotate_rgb8`` (OpenCV 4's ``warpAffine`` with
``INTER_LINEAR`` and a reflect-101 border, as the AnomalyDINO reference code calls it, about
(w/2, h/2), size kept): source coordinates in OpenCV's fixed point (1/1024 steps, then 1/32
of a pixel). The bilinear weights are multiples of 1/1024 and the samples 8-bit integers,
so the float32 sums are exact and the results equal ``rotate_rgb8``'s bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def _fixed_point_axes(h: int, w: int, angle: float) -> tuple[np.ndarray, ...]:
    """Row and column terms of the source coordinates, in OpenCV's 1/1024 fixed point."""
    cx, cy = w / 2.0, h / 2.0
    a = np.deg2rad(angle)
    cos, sin = np.cos(a), np.sin(a)
    # getRotationMatrix2D maps source to destination; warpAffine inverts it to sample.
    m = [cos, sin, (1 - cos) * cx - sin * cy, -sin, cos, sin * cx + (1 - cos) * cy]
    d = 1.0 / (m[0] * m[4] - m[1] * m[3])
    i00, i01, i10, i11 = m[4] * d, -m[1] * d, -m[3] * d, m[0] * d
    i02, i12 = -i00 * m[2] - i01 * m[5], -i10 * m[2] - i11 * m[5]
    xs, ys = np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64)
    col_x, col_y = np.rint(i00 * xs * 1024), np.rint(i10 * xs * 1024)
    # Half a 1/32 step is added before the truncation to 1/32.
    row_x, row_y = np.rint((i01 * ys + i02) * 1024) + 16, np.rint((i11 * ys + i12) * 1024) + 16
    return tuple(v.astype(np.int64) for v in (row_x, col_x, row_y, col_y))


def _reflect101(i: Tensor, n: int) -> Tensor:
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * n - 2
    i = torch.remainder(i, period)
    return torch.where(i >= n, period - i, i)


def _sampling(h: int, w: int, angle: float, device: torch.device) -> tuple[Tensor, ...]:
    """Flat indices of the four neighbours (h*w each) and their float32 weights."""
    row_x, col_x, row_y, col_y = (
        torch.from_numpy(v).to(device) for v in _fixed_point_axes(h, w, angle)
    )
    fixed_x = (row_x[:, None] + col_x[None, :]) >> 5  # 1/32 of a pixel
    fixed_y = (row_y[:, None] + col_y[None, :]) >> 5
    x0, y0 = fixed_x >> 5, fixed_y >> 5
    fx = ((fixed_x & 31).float() / 32).reshape(-1)
    fy = ((fixed_y & 31).float() / 32).reshape(-1)
    xa, xb = _reflect101(x0, w).reshape(-1), _reflect101(x0 + 1, w).reshape(-1)
    ya, yb = _reflect101(y0, h).reshape(-1) * w, _reflect101(y0 + 1, h).reshape(-1) * w
    idx = (ya + xa, ya + xb, yb + xa, yb + xb)
    weights = ((1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy)
    return idx + weights


def rotate_rgb8_torch(images: Tensor, angles: Sequence[float]) -> Tensor:
    """Every image (B, C, H, W) uint8 rotated by every angle (degrees, counter-clockwise):
    (B, A, C, H, W) uint8 on the images' device; a single image (C, H, W) gives (A, C, H, W).
    """
    single = images.ndim == 3
    x = images[None] if single else images
    if x.ndim != 4 or x.dtype != torch.uint8:
        raise ValueError(
            f"expected uint8 images (B, C, H, W) or (C, H, W), got {x.dtype} {tuple(images.shape)}"
        )
    b, c, h, w = x.shape
    flat = x.reshape(b, c, h * w)
    views = []
    for angle in angles:
        if angle % 360 == 0:
            views.append(x.clone())
            continue
        i00, i01, i10, i11, w00, w01, w10, w11 = _sampling(h, w, float(angle), x.device)
        out = (
            flat[..., i00].float() * w00
            + flat[..., i01].float() * w01
            + flat[..., i10].float() * w10
            + flat[..., i11].float() * w11
        )
        views.append(out.round_().clamp_(0, 255).to(torch.uint8).reshape(b, c, h, w))
    out = torch.stack(views, dim=1)
    return out[0] if single else out
