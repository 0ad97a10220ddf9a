"""Pixel AUROC and AUPRO in torch, on any device, with the numbers of ``metrics``.

The ground truth of a category is fixed, so its regions (8-connected components, found
once with scipy on the CPU) are kept as :class:`PixelTargets`: one region id per pixel on
the device (0 for normal pixels) and 1/|region| per id. The maps are then pooled on the
device and every computation is a sort, a search or a cumulative sum there.

Both metrics are exact (``metrics.pixel_auroc`` and ``metrics.aupro`` with its default exact
curve agree within rounding) and work in pieces of at most ``max_elements`` pixels, so that
the sort workspace stays bounded when the pooled pixels of a category are many:

On the CPU the default is no limit (like the numpy metrics) and sorts go through numpy,
which sorts several times faster than torch there.

* pixel AUROC counts, for each anomalous pixel, the normal pixels below it and tied with
  it, summed over sorted pieces of the normal pixels;
* AUPRO walks the pixels from the highest score down in bands of whole score values (each
  at most ``max_elements`` pixels, or one value), integrating the PRO curve band by band up
  to the FPR limit and stopping there.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike
from scipy import ndimage
from torch import Tensor

# Pixels sorted at once on an accelerator: bounds the workspace (about 16 bytes a pixel).
MAX_ELEMENTS = 1 << 25
# Sub-ranges per split of a score band that holds too many pixels.
_BAND_BINS = 256
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class PixelTargets:
    """Ground-truth regions of a set of masks, pooled in row-major order on a device."""

    labels: Tensor  # (N,) int32 region id per pixel; 0: normal
    inv_sizes: Tensor  # (n_regions + 1,) float64: 1/|region|, 0 for id 0
    shapes: tuple[tuple[int, int], ...]
    n_regions: int
    n_normal: int

    @property
    def n_pixels(self) -> int:
        return int(self.labels.numel())


def pixel_targets(masks: Sequence[ArrayLike], device: torch.device | str = "cpu") -> PixelTargets:
    """Regions of boolean masks (each (H, W)), labelled once on the CPU, kept on ``device``."""
    if len(masks) == 0:
        raise ValueError("no images")
    labels, inv, shapes = [], [np.zeros(1)], []
    offset, n_normal = 0, 0
    for i, m in enumerate(masks):
        m = (m.detach().cpu().numpy() if isinstance(m, Tensor) else np.asarray(m)).astype(bool)
        if m.ndim != 2:
            raise ValueError(f"image {i}: mask must be 2-D, got shape {m.shape}")
        lab, k = ndimage.label(m, structure=_EIGHT_CONNECTED)
        sizes = np.bincount(lab.ravel(), minlength=k + 1)[1:].astype(np.float64)
        labels.append(np.where(lab > 0, lab + offset, 0).astype(np.int32).ravel())
        inv.append(1.0 / sizes)
        offset += k
        n_normal += int(m.size - m.sum())
        shapes.append(m.shape)
    return PixelTargets(
        labels=torch.from_numpy(np.concatenate(labels)).to(device),
        inv_sizes=torch.from_numpy(np.concatenate(inv)).to(device),
        shapes=tuple(shapes),
        n_regions=offset,
        n_normal=n_normal,
    )


def _targets(masks: PixelTargets | Sequence[ArrayLike], device: torch.device) -> PixelTargets:
    if isinstance(masks, PixelTargets):
        if masks.labels.device != device:
            raise ValueError(f"targets are on {masks.labels.device}, maps on {device}")
        return masks
    return pixel_targets(masks, device)


def _pooled(maps: Sequence[ArrayLike] | Tensor, shapes: tuple[tuple[int, int], ...]) -> Tensor:
    """The maps' values pooled in row-major order (one tensor), checked against the masks."""
    if len(maps) != len(shapes):
        raise ValueError(f"{len(shapes)} masks but {len(maps)} maps")
    flat = []
    for i, (a, shape) in enumerate(zip(maps, shapes, strict=True)):
        a = a if isinstance(a, Tensor) else torch.as_tensor(np.asarray(a))
        if tuple(a.shape) != shape:
            raise ValueError(
                f"image {i}: mask {shape} and map {tuple(a.shape)} must be equal 2-D shapes"
            )
        if not a.is_floating_point():
            a = a.double()
        flat.append(a.detach().reshape(-1))
    s = torch.cat([f.to(flat[0].device) for f in flat])  # mixed dtypes promote, as numpy
    if not bool(torch.isfinite(s).all()):
        bad = next(i for i, f in enumerate(flat) if not bool(torch.isfinite(f).all()))
        raise ValueError(f"image {bad}: anomaly map has non-finite values")
    return s


def _limit(max_elements: int | None, device: torch.device) -> int:
    if max_elements is None:
        return MAX_ELEMENTS if device.type != "cpu" else 1 << 62
    if max_elements < 1:
        raise ValueError(f"max_elements must be >= 1, got {max_elements}")
    return max_elements


def _device_of(maps: Sequence[ArrayLike] | Tensor) -> torch.device:
    first = maps[0]
    return first.device if isinstance(first, Tensor) else torch.device("cpu")


def pixel_auroc_torch(
    masks: PixelTargets | Sequence[ArrayLike],
    maps: Sequence[ArrayLike] | Tensor,
    max_elements: int | None = None,
) -> float:
    """AUROC over all pixels pooled (ties one half), as ``metrics.pixel_auroc``; computed on
    the maps' device. NaN when all pixels share one class. ``max_elements``: pixels sorted
    at once (default: ``MAX_ELEMENTS`` on accelerators, no limit on the CPU)."""
    if len(maps) == 0:
        raise ValueError("no images")
    t = _targets(masks, _device_of(maps))
    s = _pooled(maps, t.shapes).to(t.labels.device)
    n_anomalous = t.n_pixels - t.n_normal
    if t.n_normal == 0 or n_anomalous == 0:
        return float("nan")
    max_elements = _limit(max_elements, s.device)
    anomalous = s[t.labels > 0]
    below = torch.zeros((), dtype=torch.int64, device=s.device)
    not_above = torch.zeros_like(below)
    for start in range(0, len(s), max_elements):
        piece = slice(start, start + max_elements)
        normal = _sorted(s[piece][t.labels[piece] == 0])
        if len(normal) == 0:
            continue
        for a in anomalous.split(max_elements):
            below += torch.searchsorted(normal, a, side="left").sum()
            not_above += torch.searchsorted(normal, a, side="right").sum()
    lo, hi = int(below), int(not_above)
    return float((lo + 0.5 * (hi - lo)) / (n_anomalous * t.n_normal))


def _sorted(x: Tensor) -> Tensor:
    # On the CPU numpy's sort is many times faster than torch's.
    if x.device.type == "cpu":
        return torch.from_numpy(np.sort(x.numpy()))
    return x.sort().values


def _sorted_descending(x: Tensor) -> tuple[Tensor, Tensor]:
    if x.device.type == "cpu":
        order = torch.from_numpy(np.argsort(-x.numpy()))
        return x[order], order
    return x.sort(descending=True)


def _in_band(s: Tensor, lo: float, hi: float) -> Tensor:
    return (s >= lo) & (s < hi)


def _bands(s: Tensor, lo: float, hi: float, count: int, limit: int) -> Iterator[tuple]:
    """Score ranges [lo, hi) covering [lo, hi) from the top down, each holding at most
    ``limit`` pixels or a single value; ``count``: the pixels in [lo, hi)."""
    if count <= limit:
        yield lo, hi
        return
    inside = _in_band(s, lo, hi)
    top = float(torch.where(inside, s, -torch.inf).max())
    bottom = float(torch.where(inside, s, torch.inf).min())
    if top == bottom:
        yield lo, hi
        return
    edges = torch.linspace(bottom, top, _BAND_BINS + 1, dtype=torch.float64)[1:]
    # Edges in the scores' dtype, strictly increasing; the top value alone is the last bin,
    # so every split makes progress even when the values are float neighbours.
    edges = torch.unique(edges.to(s.dtype)).to(s.device)
    n_bins = len(edges) + 1
    counts = torch.zeros(n_bins + 1, dtype=torch.int64, device=s.device)
    for start in range(0, len(s), limit):
        piece = s[start : start + limit]
        b = torch.bucketize(piece, edges, right=True)
        b = torch.where(_in_band(piece, lo, hi), b, n_bins)
        counts += torch.bincount(b, minlength=n_bins + 1)
    counts = counts[:n_bins].tolist()
    bounds = [lo, *edges.tolist(), hi]
    j = n_bins - 1
    while j >= 0:  # merge bins from the top while they fit; split a bin that does not
        i, total = j, counts[j]
        while i > 0 and total + counts[i - 1] <= limit:
            i -= 1
            total += counts[i]
        if total > 0:
            yield from _bands(s, bounds[i], bounds[j + 1], total, limit)
        j = i - 1


def _trapezoid(x: Tensor, y: Tensor) -> Tensor:
    return (torch.diff(x) * (y[1:] + y[:-1]) / 2).sum()


def aupro_torch(
    masks: PixelTargets | Sequence[ArrayLike],
    maps: Sequence[ArrayLike] | Tensor,
    fpr_limit: float = 0.3,
    max_elements: int | None = None,
) -> float:
    """Area under the exact PRO curve for FPR in [0, fpr_limit], divided by ``fpr_limit``,
    as ``metrics.aupro``; computed on the maps' device. NaN when there are no anomalous
    regions or no normal pixels. ``max_elements`` as in :func:`pixel_auroc_torch`."""
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    if len(maps) == 0:
        raise ValueError("no images")
    t = _targets(masks, _device_of(maps))
    s = _pooled(maps, t.shapes).to(t.labels.device)
    if t.n_regions == 0 or t.n_normal == 0:
        return float("nan")
    max_elements = _limit(max_elements, s.device)
    if len(s) <= max_elements:
        # Only pixels scoring at least the normal score where the FPR first exceeds the
        # limit matter (as in metrics.pro_curve); the rest is a fallback band.
        k = int(np.floor(fpr_limit * t.n_normal)) + 2
        bands: Iterator[tuple] | list[tuple] = [(-torch.inf, torch.inf)]
        if k <= t.n_normal:
            cut = float(torch.kthvalue(s[t.labels == 0], t.n_normal - k + 1).values)
            bands = [(cut, torch.inf), (-torch.inf, cut)]
    else:
        bands = _bands(s, -torch.inf, torch.inf, len(s), max_elements)
    zero = torch.zeros((), dtype=torch.float64, device=s.device)
    x_prev, y_prev, area = zero, zero, zero
    fp, covered = torch.zeros((), dtype=torch.int64, device=s.device), zero
    for lo, hi in bands:
        inside = _in_band(s, lo, hi)
        v, order = _sorted_descending(s[inside])
        if len(v) == 0:
            continue
        lab = t.labels[inside][order]
        fps = torch.cumsum(lab == 0, 0) + fp
        pros = torch.cumsum(t.inv_sizes[lab.long()], 0) + covered
        ends = torch.nonzero(torch.cat([v[1:] != v[:-1], v.new_ones(1, dtype=torch.bool)]))[:, 0]
        x = torch.cat([x_prev[None], fps[ends].double() / t.n_normal])
        y = torch.cat([y_prev[None], pros[ends] / t.n_regions])
        i = int((x <= fpr_limit).sum())  # x is non-decreasing
        area = area + _trapezoid(x[:i], y[:i])
        if i < len(x):  # x[i-1] <= limit < x[i]: cut the last trapezoid at the limit
            x0, y0, x1, y1 = x[i - 1], y[i - 1], x[i], y[i]
            y_lim = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            area = area + (fpr_limit - x0) * (y0 + y_lim) / 2
            break
        x_prev, y_prev, fp, covered = x[-1], y[-1], fps[-1], pros[-1]
    return float(area) / fpr_limit
