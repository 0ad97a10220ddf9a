"""Detection metrics (PROTOCOL section 4).

Image level: AUROC, AP, F1-max and G-mean. Pixel level: pixel AUROC and AUPRO.

Every image-level metric needs both classes. When the labels hold only one class the
metric is undefined and the functions return ``float("nan")`` instead of raising, so
that a caller averaging over categories can decide what to do (skip, report, fail).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

__all__ = [
    "auroc",
    "average_precision",
    "f1_max",
    "g_mean",
    "image_metrics",
    "pixel_auroc",
    "aupro",
    "pro_curve",
    "PooledTruth",
    "pooled_truth",
]

# 8-connectivity for the ground-truth regions of AUPRO.
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _check_binary(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray, bool]:
    """Labels as 0/1 ints and finite float scores; the flag says whether both classes occur."""
    y = np.asarray(labels).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} vs {s.size}")
    if y.size == 0:
        raise ValueError("empty labels")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0/1 (or bool)")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    y = y.astype(np.int64)
    return y, s, bool(0 < y.sum() < y.size)


def auroc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve (ties count one half). NaN when only one class is present."""
    y, s, ok = _check_binary(labels, scores)
    return float(roc_auc_score(y, s)) if ok else float("nan")


def average_precision(labels: ArrayLike, scores: ArrayLike) -> float:
    """Average precision, sum over thresholds of (R_k - R_{k-1}) P_k (sklearn, no interpolation).

    NaN when only one class is present.
    """
    y, s, ok = _check_binary(labels, scores)
    return float(average_precision_score(y, s)) if ok else float("nan")


def f1_max(labels: ArrayLike, scores: ArrayLike) -> float:
    """Best F1 over all thresholds of the precision-recall curve (0/0 counts as F1 = 0).

    NaN when only one class is present.
    """
    y, s, ok = _check_binary(labels, scores)
    if not ok:
        return float("nan")
    precision, recall, _ = precision_recall_curve(y, s)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return float(f1.max())


def g_mean(labels: ArrayLike, scores: ArrayLike) -> float:
    """Max over all ROC thresholds of sqrt(TPR * TNR). NaN when only one class is present."""
    y, s, ok = _check_binary(labels, scores)
    if not ok:
        return float("nan")
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return float(np.sqrt(tpr * (1.0 - fpr)).max())


def image_metrics(labels: ArrayLike, scores: ArrayLike) -> dict[str, float]:
    """The four image-level metrics: keys auroc, ap, f1_max, g_mean (all NaN for one class)."""
    return {
        "auroc": auroc(labels, scores),
        "ap": average_precision(labels, scores),
        "f1_max": f1_max(labels, scores),
        "g_mean": g_mean(labels, scores),
    }


@dataclass(frozen=True)
class PooledTruth:
    """Ground-truth masks pooled once (row-major, image after image), for the pixel
    metrics of many sets of maps of the same images: the anomalous pixels, each pixel's
    1/|region| (0 for normal pixels) and the number of regions."""

    shapes: tuple[tuple[int, int], ...]
    anomalous: np.ndarray  # bool
    weight: np.ndarray  # float64
    n_regions: int


def _mask(m: ArrayLike, i: int) -> np.ndarray:
    m = np.asarray(m).astype(bool)
    if m.ndim != 2:
        raise ValueError(f"image {i}: mask must be 2-D, got shape {m.shape}")
    return m


def pooled_truth(masks: Sequence[ArrayLike]) -> PooledTruth:
    """The masks' pixels and regions (8-connected components), pooled."""
    masks = [_mask(m, i) for i, m in enumerate(masks)]
    if not masks:
        raise ValueError("no images")
    anomalous, weight = [], []
    n_regions = 0
    for m in masks:
        lab, k = ndimage.label(m, structure=_EIGHT_CONNECTED)
        sizes = np.bincount(lab.ravel(), minlength=k + 1).astype(np.float64)
        inv = np.zeros(k + 1)
        inv[1:] = 1.0 / sizes[1:]  # label 0 (normal pixels) keeps weight 0
        anomalous.append(m.ravel())
        weight.append(inv[lab.ravel()])
        n_regions += k
    return PooledTruth(
        tuple(m.shape for m in masks), np.concatenate(anomalous), np.concatenate(weight), n_regions
    )


def _pooled(masks: Sequence[ArrayLike] | PooledTruth, maps: Sequence[ArrayLike]) -> tuple:
    """(truth, pooled map values): maps checked against the masks' shapes, finite, in
    their own float dtype (float64 for integer maps)."""
    truth = masks if isinstance(masks, PooledTruth) else pooled_truth(masks)
    maps = list(maps)
    if len(maps) != len(truth.shapes):
        raise ValueError(f"{len(truth.shapes)} masks but {len(maps)} maps")
    flat = []
    for i, (a, shape) in enumerate(zip(maps, truth.shapes, strict=True)):
        a = np.asarray(a)
        if not np.issubdtype(a.dtype, np.floating):
            a = a.astype(np.float64)
        if a.shape != shape:
            raise ValueError(f"image {i}: mask {shape} and map {a.shape} must be equal 2-D shapes")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"image {i}: anomaly map has non-finite values")
        flat.append(a.ravel())
    return truth, np.concatenate(flat)


def pixel_auroc(masks: Sequence[ArrayLike] | PooledTruth, maps: Sequence[ArrayLike]) -> float:
    """AUROC over all pixels of all images pooled. NaN when all pixels share one class.
    ``masks`` may be pooled once (``pooled_truth``) for many sets of maps."""
    truth, s = _pooled(masks, maps)
    y = truth.anomalous
    # Scores keep their dtype: float32 maps sort several times faster than float64 ones.
    if y.all() or not y.any():
        return float("nan")
    return _rank_auc(y, s)


def _rank_auc(y: np.ndarray, s: np.ndarray) -> float:
    """AUROC as the Mann-Whitney statistic, ties counting one half (sklearn's value).

    The normal scores are sorted once (a plain value sort, several times faster than an
    argsort or sklearn's curve on millions of pixels) and each anomalous score is located
    among them.
    """
    normal = np.sort(s[~y])
    anomalous = s[y]
    below = np.searchsorted(normal, anomalous, side="left").sum(dtype=np.int64)
    not_above = np.searchsorted(normal, anomalous, side="right").sum(dtype=np.int64)
    return float((below + 0.5 * (not_above - below)) / (anomalous.size * normal.size))


def pro_curve(
    masks: Sequence[ArrayLike] | PooledTruth,
    maps: Sequence[ArrayLike],
    fpr_limit: float = 1.0,
    num_thresholds: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The per-region-overlap curve (FPR, PRO), starting at (0, 0), FPR non-decreasing.

    Regions are the 8-connected components of each ground-truth mask. At threshold t a pixel
    is flagged when map >= t; PRO(t) is the mean over all regions (of all images) of the
    flagged fraction of the region, so every region counts equally whatever its size;
    FPR(t) is the flagged fraction of all normal pixels of all images.

    With ``num_thresholds=None`` every distinct map value is a threshold (exact curve). The
    curve is returned at least up to the first point with FPR > ``fpr_limit`` (all of it
    for the default 1.0). With an integer, that many thresholds equally spaced between the
    largest and the smallest map value are used. Empty arrays when there are no regions or
    no normal pixels.
    """
    truth, scores = _pooled(masks, maps)
    normal, weight, n_regions = ~truth.anomalous, truth.weight, truth.n_regions
    n_normal = int(normal.sum())
    if n_regions == 0 or n_normal == 0:
        return np.empty(0), np.empty(0)

    if num_thresholds is None:
        # Only pixels scoring at least the normal score where FPR first exceeds the limit
        # matter; one normal pixel of margin keeps that crossing point despite rounding.
        k = int(np.floor(fpr_limit * n_normal)) + 2
        if k <= n_normal:
            normal_scores = scores[normal]
            cut = np.partition(normal_scores, n_normal - k)[n_normal - k]
            keep = scores >= cut
            scores, normal, weight = scores[keep], normal[keep], weight[keep]
        order = np.argsort(scores)[::-1]
        s = scores[order]
        fp = np.cumsum(normal[order])
        pro = np.cumsum(weight[order])
        # The last pixel of each run of equal scores closes one threshold.
        ends = np.flatnonzero(np.append(s[1:] != s[:-1], True))
        fpr = fp[ends] / n_normal
        pro = pro[ends] / n_regions
    else:
        if num_thresholds < 2:
            raise ValueError("num_thresholds must be at least 2")
        thresholds = np.linspace(scores.min(), scores.max(), num_thresholds)  # ascending
        # Bin j holds the pixels with thresholds[j] <= s < thresholds[j + 1]; a pixel is
        # flagged at every threshold up to its bin, so counts accumulate from the top.
        # No sort of all pixels is needed.
        idx = np.searchsorted(thresholds, scores, side="right") - 1
        fp = np.bincount(idx, weights=normal, minlength=num_thresholds)[::-1].cumsum()
        pro = np.bincount(idx, weights=weight, minlength=num_thresholds)[::-1].cumsum()
        fpr = fp / n_normal
        pro = pro / n_regions
    return np.concatenate([[0.0], fpr]), np.concatenate([[0.0], pro])


def _area_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under y(x) on [0, limit], the curve interpolated linearly at the limit."""
    i = int(np.searchsorted(x, limit, side="right"))  # points with x <= limit
    area = float(np.sum(np.diff(x[:i]) * (y[1:i] + y[: i - 1]) / 2))
    if i < x.size:  # x[i-1] <= limit < x[i]
        x0, y0, x1, y1 = x[i - 1], y[i - 1], x[i], y[i]
        y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        area += (limit - x0) * (y0 + y_lim) / 2
    return area


def aupro(
    masks: Sequence[ArrayLike] | PooledTruth,
    maps: Sequence[ArrayLike],
    fpr_limit: float = 0.3,
    num_thresholds: int | None = None,
) -> float:
    """Area under the per-region-overlap curve for FPR in [0, fpr_limit], divided by fpr_limit.

    The curve is :func:`pro_curve` (exact over all distinct map values by default), starting
    at (0, 0); it is integrated with the trapezoid rule and cut exactly at ``fpr_limit`` by
    linear interpolation. A perfect map gives 1; a constant map gives fpr_limit / 2 (the
    diagonal). NaN when there are no anomalous regions or no normal pixels.
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    fpr, pro = pro_curve(masks, maps, fpr_limit=fpr_limit, num_thresholds=num_thresholds)
    if fpr.size == 0:
        return float("nan")
    return _area_up_to(fpr, pro, fpr_limit) / fpr_limit
