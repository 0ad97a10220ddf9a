"""Anomaly maps in torch, batched, on any device.

A patch-score grid (h, w) becomes a map at the image's size: bilinear upsampling
(``align_corners=False``), then a Gaussian blur with sigma 4. The blur is the one of
``scipy.ndimage.gaussian_filter`` by definition: a separable kernel of radius
``int(4 * sigma + 0.5)`` normalised to sum 1, with scipy's ``reflect`` border (the edge
sample repeated: ``d c b a | a b c d | d c b a``, which is not torch's ``reflect`` pad),
reflected again and again where a map is smaller than the radius.

Both steps are linear and separable, so each axis is one (out, in) matrix, built once per
size in float64: map = A @ grid @ B.T with A = blur(H) @ upsample(h -> H). That costs two
small matrix products per map instead of a 33-tap convolution of every output pixel, and is
computed in float64 (immune to TF32; needs a device with float64, i.e. not MPS).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .backbone.dinov2 import PATCH_SIZE

MAP_SIGMA = 4.0
# scipy.ndimage.gaussian_filter's default: the kernel reaches 4 standard deviations.
GAUSSIAN_TRUNCATE = 4.0
# Maps computed per matrix product: bounds the float64 intermediate memory.
MAP_CHUNK = 16


def gaussian_kernel(sigma: float = MAP_SIGMA) -> Tensor:
    """scipy's 1-D Gaussian weights (float64), length 2 * int(4 sigma + 0.5) + 1, sum 1."""
    radius = int(GAUSSIAN_TRUNCATE * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    phi = torch.exp(-0.5 / (sigma * sigma) * x * x)
    return phi / phi.sum()


def symmetric_indices(n: int, radius: int) -> Tensor:
    """Indices of a length-``n`` axis padded by ``radius`` on both sides with scipy's
    ``reflect`` (half-sample symmetric) rule, repeated for any ``radius``."""
    i = torch.arange(-radius, n + radius) % (2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)


def blur_matrix(n: int, sigma: float = MAP_SIGMA) -> Tensor:
    """(n, n) float64 matrix G with G @ x = ``scipy.ndimage.gaussian_filter1d(x, sigma)``."""
    k = gaussian_kernel(sigma)
    width = len(k)
    src = symmetric_indices(n, (width - 1) // 2)
    cols = src[torch.arange(n)[:, None] + torch.arange(width)[None, :]]  # (n, width)
    g = torch.zeros(n, n, dtype=torch.float64)
    return g.scatter_add_(1, cols, k.expand(n, width).contiguous())


def upsample_matrix(n_in: int, n_out: int) -> Tensor:
    """(n_out, n_in) float64 matrix of torch's linear interpolation, align_corners=False."""
    eye = torch.eye(n_in, dtype=torch.float64)[:, None, :]  # (n_in, 1, n_in)
    cols = F.interpolate(eye, size=n_out, mode="linear", align_corners=False)
    return cols[:, 0, :].T.contiguous()


@functools.lru_cache(maxsize=32)
def _axis_operator(n_in: int, n_out: int, sigma: float, device: str) -> Tensor:
    op = blur_matrix(n_out, sigma) @ upsample_matrix(n_in, n_out)
    return op.to(device)


def anomaly_maps_torch(
    distances: Tensor, size: tuple[int, int], sigma: float = MAP_SIGMA
) -> Tensor:
    """Maps (B, H, W), float32, on the device of the patch-score grids (B, h, w).

    ``size`` is (width, height), as in ``detector.anomaly_map``; bilinear upsampling, then
    scipy's Gaussian blur with ``sigma``.
    """
    if distances.ndim != 3:
        raise ValueError(f"expected distances of shape (B, h, w), got {tuple(distances.shape)}")
    width, height = size
    if width < 1 or height < 1:
        raise ValueError(f"map size must be positive (width, height), got {size}")
    _, h, w = distances.shape
    device = str(distances.device)
    rows = _axis_operator(h, height, float(sigma), device)  # (H, h)
    cols = _axis_operator(w, width, float(sigma), device)  # (W, w)
    # The float32 cast first: the maps are those of the float32 grid, as before.
    grid = distances.detach().float().double()
    out = torch.empty((len(grid), height, width), dtype=torch.float32, device=grid.device)
    for start in range(0, len(grid), MAP_CHUNK):
        out[start : start + MAP_CHUNK] = rows @ grid[start : start + MAP_CHUNK] @ cols.T
    return out


def anomaly_maps_grouped(
    distances: Sequence[Tensor], sizes: Sequence[tuple[int, int]], device: torch.device | str
) -> list[Tensor]:
    """Maps of grids of any shapes and sizes, in one batched call per (grid shape, size) on
    ``device``; in the order given."""
    groups: dict[tuple, list[int]] = {}
    for i, (d, size) in enumerate(zip(distances, sizes)):
        groups.setdefault((tuple(d.shape), tuple(size)), []).append(i)
    out: list[Tensor | None] = [None] * len(distances)
    for (_, size), idx in groups.items():
        batch = torch.stack([distances[i] for i in idx]).to(device)
        for i, m in zip(idx, anomaly_maps_torch(batch, size)):
            out[i] = m
    return out  # type: ignore[return-value]


# Share of normal patches allowed above the pixel threshold (the outline and mask cut-off).
DEFAULT_FALSE_PIXEL_RATE = 0.01


def pixel_threshold(
    normal_distance_grids: Sequence[Tensor], rate: float, patch_size: int = PATCH_SIZE
) -> float:
    """The map value that at most ``rate`` of the normal images' map pixels exceed: the
    cut-off of anomaly masks and outlines (``anomaly_mask``) for a false-pixel rate of
    ``rate``. The maps are made from the patch-distance grids (h, w) as every map is
    (upsampling, blur), at the preprocessed size (h * ``patch_size``, w * ``patch_size``),
    since the blur lowers the peaks a threshold on raw patch distances would be set on.
    Feed it normal images that are not in the memory bank (calibration images, or support
    images scored leave-one-out): the support images' own distances are near zero."""
    if not 0.0 < rate < 1.0:
        raise ValueError(f"the false-pixel rate must be between 0 and 1, got {rate}")
    if len(normal_distance_grids) == 0:
        raise ValueError("a pixel threshold needs at least one normal image's distances")
    grids = [torch.as_tensor(g).detach().cpu() for g in normal_distance_grids]
    sizes = [(g.shape[-1] * patch_size, g.shape[-2] * patch_size) for g in grids]
    maps = anomaly_maps_grouped(grids, sizes, "cpu")
    values = np.concatenate([m.numpy().astype(np.float64).ravel() for m in maps])
    if not np.isfinite(values).all():
        raise ValueError("the normal images' patch distances hold non-finite values")
    # The smallest value that at most a ``rate`` share of the values exceeds.
    return float(np.quantile(values, 1.0 - rate, method="inverted_cdf"))


def anomaly_mask(amap: Tensor | np.ndarray, threshold: float) -> np.ndarray:
    """The anomalous region of an anomaly map: a boolean array, True where it exceeds
    ``threshold`` (a patch distance, as ``pixel_threshold`` sets it)."""
    return _numpy(amap) > threshold


def _numpy(values: Tensor | np.ndarray) -> np.ndarray:
    return values.detach().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)
