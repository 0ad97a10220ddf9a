"""Batched preprocessing in torch on any device, equal to ``preprocess.preprocess``.

Pillow's BICUBIC resize of 8-bit images is replayed exactly: the same filter (a = -0.5,
support widened by the scale when shrinking), the same coefficients rounded to 22-bit fixed
point, the horizontal pass first with an 8-bit intermediate image, then the vertical pass,
each rounded and clipped as Pillow's integer code does. The sums are exact in int32 (Pillow
sizes its fixed point for that), so the images equal Pillow's bit for bit.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .preprocess import DEFAULT_RESOLUTION, crop_to_patches, preprocess, resized_size

_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed point for 8-bit images
_BICUBIC_A = -0.5
_BICUBIC_SUPPORT = 2.0


def _bicubic(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    a = _BICUBIC_A
    inner = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    outer = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, inner, np.where(x < 2.0, outer, 0.0))


@functools.lru_cache(maxsize=64)
def pillow_coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices (out_size, k) and int32 weights (out_size, k) of Pillow's bicubic
    resampling of one axis (``precompute_coeffs`` and ``normalize_coeffs_8bpc``)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = _BICUBIC_SUPPORT * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    center = (np.arange(out_size) + 0.5) * scale
    # C's (int) cast truncates toward zero.
    xmin = np.maximum(np.trunc(center - support + 0.5).astype(np.int64), 0)
    xmax = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - xmin
    taps = np.arange(ksize)
    w = _bicubic(((taps[None, :] + xmin[:, None]) - center[:, None] + 0.5) * (1.0 / filterscale))
    w = np.where(taps[None, :] < xmax[:, None], w, 0.0)
    ww = np.cumsum(w, axis=1)[:, -1:]  # summed in order, as the C loop does
    k = np.divide(w, ww, out=w.copy(), where=ww != 0)
    scaled = k * (1 << _PRECISION_BITS)
    kk = np.where(k < 0, np.trunc(-0.5 + scaled), np.trunc(0.5 + scaled)).astype(np.int32)
    idx = np.minimum(xmin[:, None] + taps[None, :], in_size - 1)
    return idx, kk


def _resample(x: Tensor, dim: int, out_size: int) -> Tensor:
    """One Pillow bicubic pass of uint8 images along ``dim`` (-1: width, -2: height)."""
    idx, kk = pillow_coefficients(x.shape[dim], out_size)
    idx_t = torch.from_numpy(idx).to(x.device)
    kk_t = torch.from_numpy(kk).to(x.device)
    if dim == -2:
        kk_t = kk_t[:, None, :]  # broadcast over the width
    acc = torch.full((), 1 << (_PRECISION_BITS - 1), dtype=torch.int32, device=x.device)
    for t in range(idx.shape[1]):
        acc = acc + x.index_select(dim, idx_t[:, t]).int() * kk_t[..., t]
    return (acc >> _PRECISION_BITS).clamp_(0, 255).to(torch.uint8)


def resize_bicubic_uint8(images: Tensor, size: tuple[int, int]) -> Tensor:
    """Pillow's ``Image.resize(size, BICUBIC)`` of uint8 images (B, C, H, W); ``size`` is
    (width, height)."""
    width, height = size
    x = images
    if width != x.shape[-1]:
        x = _resample(x, -1, width)
    if height != x.shape[-2]:
        x = _resample(x, -2, height)
    return x


def _as_hwc_uint8(image: np.ndarray | Tensor, i: int) -> Tensor:
    t = image if isinstance(image, Tensor) else torch.from_numpy(np.ascontiguousarray(image))
    if t.dtype != torch.uint8 or t.ndim != 3 or t.shape[-1] != 3:
        raise ValueError(
            f"image {i}: expected a uint8 (H, W, 3) array, got {t.dtype} {tuple(t.shape)}"
        )
    return t


def preprocess_batch(
    images: Sequence[np.ndarray | Tensor] | Tensor,
    resolution: int = DEFAULT_RESOLUTION,
    device: torch.device | str | None = None,
) -> Tensor:
    """Decoded images, uint8 (H, W, 3) each and all of one size (or one (B, H, W, 3) tensor),
    as the model input (B, 3, H', W') in [0, 1] on ``device`` (default: the images' device):
    smaller edge ``resolution`` by Pillow's bicubic, cropped top-left to multiples of 14.
    Equal to stacking ``preprocess`` of each image (which it is, on the CPU)."""
    if len(images) == 0:
        raise ValueError("no images to preprocess")
    hwc = [_as_hwc_uint8(img, i) for i, img in enumerate(images)]
    shapes = {tuple(t.shape) for t in hwc}
    if len(shapes) > 1:
        raise ValueError(f"images of one batch must share a size, got {sorted(shapes)}")
    if device is None:
        device = hwc[0].device
    if torch.device(device).type == "cpu":
        # Pillow is several times faster on the CPU, with the same result.
        return torch.stack([preprocess(t.cpu().numpy(), resolution) for t in hwc])
    x = torch.stack([t.to(device) for t in hwc]).permute(0, 3, 1, 2)
    h, w = x.shape[-2:]
    x = resize_bicubic_uint8(x, resized_size(w, h, resolution))
    return crop_to_patches(x.float() / 255.0)
