"""Detection metrics against hand-computed values (PROTOCOL section 4)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from trustad.metrics import (
    aupro,
    auroc,
    average_precision,
    f1_max,
    g_mean,
    image_metrics,
    pixel_auroc,
    pro_curve,
)

LABELS = [0, 0, 1, 1]


def test_hand_example() -> None:
    # labels [0, 0, 1, 1], scores [0.1, 0.4, 0.35, 0.8].
    # AUROC: positive/negative pairs (0.35>0.1, 0.35<0.4, 0.8>0.1, 0.8>0.4) -> 3/4.
    # Descending: 0.8(1) 0.4(0) 0.35(1) 0.1(0); per threshold (precision, recall):
    #   0.8: (1, 1/2)  0.4: (1/2, 1/2)  0.35: (2/3, 1)  0.1: (1/2, 1)
    # AP = sum (R_k - R_{k-1}) P_k = 1/2 * 1 + 1/2 * 2/3 = 5/6.
    # F1: 0.8 -> 2/3, 0.4 -> 1/2, 0.35 -> 2*(2/3)/(5/3) = 4/5, 0.1 -> 2/3; max 4/5.
    # (TPR, TNR): 0.8 (1/2, 1), 0.4 (1/2, 1/2), 0.35 (1, 1/2), 0.1 (1, 0);
    # G-mean = max sqrt(TPR*TNR) = sqrt(1/2).
    scores = [0.1, 0.4, 0.35, 0.8]
    assert auroc(LABELS, scores) == pytest.approx(0.75)
    assert average_precision(LABELS, scores) == pytest.approx(5 / 6)
    assert f1_max(LABELS, scores) == pytest.approx(0.8)
    assert g_mean(LABELS, scores) == pytest.approx(math.sqrt(0.5))
    assert image_metrics(LABELS, scores) == pytest.approx(
        {"auroc": 0.75, "ap": 5 / 6, "f1_max": 0.8, "g_mean": math.sqrt(0.5)}
    )


def test_perfect_ranking() -> None:
    m = image_metrics(LABELS, [0.1, 0.2, 0.3, 0.4])
    assert m == pytest.approx({"auroc": 1.0, "ap": 1.0, "f1_max": 1.0, "g_mean": 1.0})


def test_inverted_ranking() -> None:
    # Descending: 0.4(0) 0.3(0) 0.2(1) 0.1(1): (P, R) = (0, 0), (0, 0), (1/3, 1/2), (1/2, 1).
    # AP = 1/2 * 1/3 + 1/2 * 1/2 = 5/12. F1: 0.2 -> (1/3)/(5/6) = 2/5, 0.1 -> 2/3.
    # Every threshold has TPR = 0 or TNR = 0, so G-mean = 0.
    m = image_metrics(LABELS, [0.4, 0.3, 0.2, 0.1])
    assert m == pytest.approx({"auroc": 0.0, "ap": 5 / 12, "f1_max": 2 / 3, "g_mean": 0.0})


def test_ties() -> None:
    # One threshold flags both: P = 1/2, R = 1, F1 = 2/3, TPR = 1, TNR = 0.
    m = image_metrics([0, 1], [0.5, 0.5])
    assert m == pytest.approx({"auroc": 0.5, "ap": 0.5, "f1_max": 2 / 3, "g_mean": 0.0})
    # Tied pair between classes counts one half: pairs (0.5 vs 0.5) = 1/2, (0.9 vs 0.5) = 1.
    assert auroc([0, 1, 1], [0.5, 0.5, 0.9]) == pytest.approx(0.75)


def test_one_class_gives_nan() -> None:
    for labels in ([0, 0, 0], [1, 1, 1]):
        m = image_metrics(labels, [0.1, 0.2, 0.3])
        assert all(math.isnan(v) for v in m.values())


def test_bad_input() -> None:
    with pytest.raises(ValueError):
        auroc([0, 1], [0.1])
    with pytest.raises(ValueError):
        auroc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError):
        auroc([0, 1], [0.1, float("nan")])


def test_pixel_auroc_pools_differently_sized_maps() -> None:
    # Positives 0.35, 0.5; negatives 0.1, 0.2, 0.3, 0.4, 0.05.
    # 0.35 beats 4 of 5, 0.5 beats 5 of 5 -> 9/10.
    masks = [np.zeros((2, 2), bool), np.array([[1, 0, 1]], bool)]
    maps = [np.array([[0.1, 0.2], [0.3, 0.4]]), np.array([[0.35, 0.05, 0.5]])]
    assert pixel_auroc(masks, maps) == pytest.approx(0.9)


def test_pixel_auroc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    masks = [rng.random((8, 9)) < 0.3, rng.random((5, 4)) < 0.2]
    maps = [np.round(rng.random(m.shape) + 0.3 * m, 1) for m in masks]
    y = np.concatenate([m.ravel() for m in masks])
    s = np.concatenate([a.ravel() for a in maps])
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_pixel_auroc_nan_and_shape_checks() -> None:
    assert math.isnan(pixel_auroc([np.zeros((2, 2), bool)], [np.ones((2, 2))]))
    with pytest.raises(ValueError):
        pixel_auroc([np.zeros((2, 2), bool)], [np.ones((2, 3))])


# A 1x10 image: region A = {0} (1 pixel), region B = {2, 3, 4} (3 pixels), 6 normal pixels.
HAND_MASK = np.array([[1, 0, 1, 1, 1, 0, 0, 0, 0, 0]], bool)
HAND_MAP = np.array([[0.9, 0.5, 0.8, 0.5, 0.2, 0.2, 0.1, 0.1, 0.1, 0.1]])


def test_pro_curve_is_mean_over_regions() -> None:
    # t=0.9: A covered, B 0/3            -> PRO (1 + 0)/2   = 1/2, FPR 0
    # t=0.8: B 1/3                       -> PRO (1 + 1/3)/2 = 2/3, FPR 0
    #        (pixel-weighted would be 2/4 = 1/2: regions count equally, not pixels)
    # t=0.5: B 2/3, one normal pixel     -> PRO 5/6, FPR 1/6
    # t=0.2: B 3/3, another normal pixel -> PRO 1,   FPR 2/6
    # t=0.1: all                         -> PRO 1,   FPR 1
    fpr, pro = pro_curve([HAND_MASK], [HAND_MAP])
    np.testing.assert_allclose(fpr, [0, 0, 0, 1 / 6, 1 / 3, 1])
    np.testing.assert_allclose(pro, [0, 1 / 2, 2 / 3, 5 / 6, 1, 1])


def test_aupro_hand_example_interpolated_at_limit() -> None:
    # Area on [0, 1/6]: (2/3 + 5/6)/2 * 1/6 = 1/8.
    # At FPR 0.3 the segment (1/6, 5/6)-(1/3, 1) has PRO 5/6 + (0.3 - 1/6) = 29/30;
    # area on [1/6, 0.3]: (5/6 + 29/30)/2 * 2/15 = 3/25. Total 49/200; / 0.3 = 49/60.
    assert aupro([HAND_MASK], [HAND_MAP]) == pytest.approx(49 / 60)
    # Whole curve: 1/8 + (5/6 + 1)/2 * 1/6 + 2/3 * 1 = 17/18.
    assert aupro([HAND_MASK], [HAND_MAP], fpr_limit=1.0) == pytest.approx(17 / 18)
    # Enough equally spaced thresholds hit every distinct value here (steps of 0.1).
    assert aupro([HAND_MASK], [HAND_MAP], num_thresholds=81) == pytest.approx(49 / 60)


def test_aupro_regions_are_8_connected() -> None:
    # Diagonal pixels (0,0),(1,1) form one region; (0,4) is another. At t=0.9 only (0,0)
    # is flagged: 8-connected PRO = (1/2 + 0)/2 = 1/4 (4-connected would give 1/3).
    mask = np.zeros((3, 5), bool)
    mask[0, 0] = mask[1, 1] = mask[0, 4] = True
    amap = np.where(mask, 0.5, 0.1)
    amap[0, 0] = 0.9
    fpr, pro = pro_curve([mask], [amap])
    assert fpr[1] == 0 and pro[1] == pytest.approx(0.25)


def test_aupro_perfect_and_constant() -> None:
    masks = [np.zeros((4, 6), bool), np.zeros((5, 5), bool)]
    masks[1][1:3, 1:3] = True
    masks[1][4, 4] = True
    perfect = [m.astype(float) for m in masks]
    assert aupro(masks, perfect) == pytest.approx(1.0)
    # A constant map has one threshold: the curve is the diagonal, area 0.3^2/2 / 0.3.
    constant = [np.full(m.shape, 0.7) for m in masks]
    assert aupro(masks, constant) == pytest.approx(0.15)
    assert aupro(masks, constant, fpr_limit=1.0) == pytest.approx(0.5)


def test_aupro_nan_cases() -> None:
    assert math.isnan(aupro([np.zeros((3, 3), bool)], [np.random.rand(3, 3)]))
    assert math.isnan(aupro([np.ones((3, 3), bool)], [np.random.rand(3, 3)]))
    with pytest.raises(ValueError):
        aupro([HAND_MASK], [HAND_MAP], fpr_limit=0.0)


def _brute_force_aupro(masks: list, maps: list, limit: float) -> float:
    """Threshold by threshold, region by region, then trapezoids up to the limit."""
    regions = []
    for m, a in zip(masks, maps, strict=True):
        lab, k = ndimage.label(m, structure=np.ones((3, 3)))
        regions += [a[lab == r] for r in range(1, k + 1)]
    normal = np.concatenate([a[~m] for m, a in zip(masks, maps, strict=True)])
    xs, ys = [0.0], [0.0]
    for t in np.unique(np.concatenate([a.ravel() for a in maps]))[::-1]:
        xs.append(float(np.mean(normal >= t)))
        ys.append(float(np.mean([np.mean(r >= t) for r in regions])))
    area = 0.0
    for i in range(len(xs) - 1):
        x0, y0, x1, y1 = xs[i], ys[i], xs[i + 1], ys[i + 1]
        if x0 >= limit:
            break
        if x1 > limit:
            y1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            x1 = limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / limit


def test_aupro_matches_brute_force() -> None:
    rng = np.random.default_rng(1)
    masks, maps = [], []
    for shape in [(12, 15), (10, 10), (9, 14)]:
        m = ndimage.binary_dilation(rng.random(shape) < 0.04, iterations=1)
        masks.append(m)
        maps.append(np.round(rng.random(shape) + 0.4 * m, 2))  # rounding makes ties
    for limit in (0.05, 0.3, 1.0):
        expected = _brute_force_aupro(masks, maps, limit)
        assert aupro(masks, maps, fpr_limit=limit) == pytest.approx(expected, abs=1e-12)
    approx = aupro(masks, maps, num_thresholds=2000)
    assert approx == pytest.approx(aupro(masks, maps), abs=5e-3)
