"""The seeded, label-stratified calibration/evaluation split (PROTOCOL 6)."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike
from sklearn.model_selection import train_test_split

DEFAULT_CALIBRATION_FRACTION = 0.2  # share of test images that fit the calibrators


class CalibrationSplitError(ValueError):
    """A stratified calibration/evaluation split is impossible for these labels."""


def calibration_split(
    labels: ArrayLike, fraction: float = DEFAULT_CALIBRATION_FRACTION, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted indices (calibration, evaluation): a seeded split stratified by label.

    The calibration part has ceil(fraction * n) images (sklearn's train_test_split with
    test_size=fraction, stratify=labels, random_state=seed; its test part is the
    calibration part). A single-class label set is split plainly (trivially stratified).
    Raises :class:`CalibrationSplitError` when stratification is impossible: a class with
    fewer than 2 images, or a part too small to hold every class.
    """
    y = np.asarray(labels).ravel()
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    classes, counts = np.unique(y, return_counts=True)
    n = y.size
    n_cal = math.ceil(fraction * n)
    what = ", ".join(f"{c}: {k}" for c, k in zip(classes.tolist(), counts.tolist(), strict=True))
    if n < 2:
        raise CalibrationSplitError(f"cannot split {n} image(s) into calibration and evaluation")
    if counts.min() < 2:
        raise CalibrationSplitError(f"a class has fewer than 2 images ({what}); cannot stratify")
    if n_cal < classes.size or n - n_cal < classes.size:
        raise CalibrationSplitError(
            f"{n} images ({what}) leave a part too small for every class at fraction {fraction}"
        )
    try:
        evaluation, calibration = train_test_split(
            np.arange(n), test_size=fraction, stratify=y, random_state=seed
        )
    except ValueError as err:
        raise CalibrationSplitError(f"stratified split failed ({what}): {err}") from err
    return np.sort(calibration), np.sort(evaluation)
