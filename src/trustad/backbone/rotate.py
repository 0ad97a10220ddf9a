"""Rotation of 8-bit images exactly as the AnomalyDINO reference code rotates support images.

The reference calls ``cv2.warpAffine(image, cv2.getRotationMatrix2D((w/2, h/2), angle, 1),
(w, h), INTER_LINEAR, BORDER_DEFAULT)`` (reflect-101 border). On the CPU that call is made
as it is. On another device the same sampling runs in torch, equal to it bit for bit
(tests/test_device_ops.py checks every angle on random images): OpenCV 4 truncates the
source coordinates to 1/32 of a pixel after a 1/1024 fixed point, so each bilinear weight
is a multiple of 1/1024 and every float32 sum of 8-bit samples is exact; OpenCV then
rounds halves up.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch import Tensor


def rotation_matrix(h: int, w: int, angle: float) -> np.ndarray:
    """The reference code's 2x3 matrix (source -> destination): ``angle`` degrees
    counter-clockwise about (w/2, h/2)."""
    return cv2.getRotationMatrix2D((w / 2.0, h / 2.0), float(angle), 1.0)


def rotate_rgb8_opencv(image: np.ndarray, angle: float) -> np.ndarray:
    """One (H, W, C) uint8 image rotated by ``angle`` degrees, size kept: the reference call."""
    h, w = image.shape[:2]
    return cv2.warpAffine(
        image,
        rotation_matrix(h, w, angle),
        (w, h),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT_101,
    )


def _fixed_point_axes(h: int, w: int, angle: float) -> tuple[np.ndarray, ...]:
    """Row and column terms of the source coordinates in 1/1024 steps, as warpAffine
    computes them from the inverse of ``rotation_matrix``."""
    inv = cv2.invertAffineTransform(rotation_matrix(h, w, angle)).reshape(-1)
    i00, i01, i02, i10, i11, i12 = inv
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


def _checked(images: Tensor) -> Tensor:
    x = images[None] if images.ndim == 3 else images
    if x.ndim != 4 or x.dtype != torch.uint8:
        raise ValueError(
            f"expected uint8 images (B, C, H, W) or (C, H, W), got {x.dtype} {tuple(images.shape)}"
        )
    return x


def rotate_rgb8_torch(images: Tensor, angles: Sequence[float]) -> Tensor:
    """``rotate_rgb8``'s result computed in torch on the images' device (any device)."""
    x = _checked(images)
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
        # The sums are exact multiples of 1/1024; OpenCV rounds their halves up.
        views.append(out.add_(0.5).floor_().clamp_(0, 255).to(torch.uint8).reshape(b, c, h, w))
    out = torch.stack(views, dim=1)
    return out[0] if images.ndim == 3 else out


def rotate_rgb8(images: Tensor, angles: Sequence[float]) -> Tensor:
    """Every image (B, C, H, W) uint8 rotated by every angle (degrees, counter-clockwise,
    about (w/2, h/2), size kept): (B, A, C, H, W) uint8 on the images' device; a single image
    (C, H, W) gives (A, C, H, W). OpenCV on the CPU, torch elsewhere; the same values."""
    x = _checked(images)
    if x.device.type != "cpu":
        return rotate_rgb8_torch(images, angles)
    hwc = x.permute(0, 2, 3, 1).numpy()
    out = np.stack(
        [
            np.stack([img.copy() if a % 360 == 0 else rotate_rgb8_opencv(img, a) for a in angles])
            for img in hwc
        ]
    )
    out = torch.from_numpy(out.reshape(*out.shape[:4], -1)).permute(0, 1, 4, 2, 3).contiguous()
    return out[0] if images.ndim == 3 else out
