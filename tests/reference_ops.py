"""Reference implementations the torch versions replaced, kept as oracles for tests and
benchmarks."""

from __future__ import annotations

import numpy as np


def numpy_rotation(arr: np.ndarray, angle: float) -> np.ndarray:
    """The numpy/float64 rotation the torch one replaced (OpenCV 4's fixed point)."""
    h, w = arr.shape[:2]
    src = arr.astype(np.float32)
    cx, cy, a = w / 2.0, h / 2.0, np.deg2rad(angle)
    cos, sin = np.cos(a), np.sin(a)
    m = [cos, sin, (1 - cos) * cx - sin * cy, -sin, cos, sin * cx + (1 - cos) * cy]
    d = 1.0 / (m[0] * m[4] - m[1] * m[3])
    i00, i01, i10, i11 = m[4] * d, -m[1] * d, -m[3] * d, m[0] * d
    i02, i12 = -i00 * m[2] - i01 * m[5], -i10 * m[2] - i11 * m[5]
    xs, ys = np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64)
    col_x, col_y = np.rint(i00 * xs * 1024), np.rint(i10 * xs * 1024)
    row_x, row_y = np.rint((i01 * ys + i02) * 1024) + 16, np.rint((i11 * ys + i12) * 1024) + 16
    sx = ((row_x[:, None] + col_x[None, :]).astype(np.int64) >> 5) / 32.0
    sy = ((row_y[:, None] + col_y[None, :]).astype(np.int64) >> 5) / 32.0
    x0, y0 = np.floor(sx).astype(np.int64), np.floor(sy).astype(np.int64)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]

    def reflect101(i, n):
        if n == 1:
            return np.zeros_like(i)
        i = np.mod(i, 2 * n - 2)
        return np.where(i >= n, 2 * n - 2 - i, i)

    xa, xb, ya, yb = (
        reflect101(x0, w),
        reflect101(x0 + 1, w),
        reflect101(y0, h),
        reflect101(y0 + 1, h),
    )
    out = (
        src[ya, xa] * (1 - fx) * (1 - fy)
        + src[ya, xb] * fx * (1 - fy)
        + src[yb, xa] * (1 - fx) * fy
        + src[yb, xb] * fx * fy
    )
    return np.clip(np.round(out), 0, 255).astype(np.uint8)
