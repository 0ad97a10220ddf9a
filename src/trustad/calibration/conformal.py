"""Split-conformal anomaly threshold with a guaranteed false-alarm rate on normal images."""

from __future__ import annotations

import math
import warnings

import numpy as np
from numpy.typing import ArrayLike

from .inputs import as_scores


class ConformalThreshold:
    """Split-conformal anomaly threshold with a guaranteed false-alarm rate.

    Fitted on n scores of NORMAL calibration images. ``threshold_`` is the k-th smallest
    calibration score with k = ceil((n + 1)(1 - alpha)); a score is anomalous when it is
    strictly above it. Equivalently its conformal p-value (1 + #{cal >= s}) / (n + 1) is
    <= alpha. Guarantee: for a fresh normal score exchangeable with the calibration scores,
    P(false alarm) <= alpha, and >= alpha - 1/(n + 1) when scores have no ties. If k > n,
    i.e. n < ceil(1/alpha) - 1 (19 for alpha = 0.05), no threshold achieves alpha:
    ``threshold_`` is +inf (nothing is flagged) and a warning says so.
    """

    def __init__(self, alpha: float = 0.05) -> None:
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        self.alpha = alpha

    @staticmethod
    def min_calibration_size(alpha: float) -> int:
        """The smallest n with a finite threshold: ceil(1/alpha) - 1."""
        return math.ceil(1.0 / alpha - 1e-9) - 1

    def fit(self, normal_scores: ArrayLike) -> ConformalThreshold:
        cal = np.sort(as_scores(normal_scores))
        n = cal.size
        if n == 0:
            raise ValueError("no calibration scores")
        # 1e-9 slack: (n + 1)(1 - alpha) is often an integer up to rounding.
        k = math.ceil((n + 1) * (1 - self.alpha) - 1e-9)
        self.calibration_scores_ = cal
        self.rank_ = k
        if k > n:
            self.threshold_ = math.inf
            warnings.warn(
                f"{n} normal scores are too few for alpha={self.alpha}: at least "
                f"{self.min_calibration_size(self.alpha)} are needed; nothing will be flagged",
                stacklevel=2,
            )
        else:
            self.threshold_ = float(cal[k - 1])
        return self

    def p_values(self, scores: ArrayLike) -> np.ndarray:
        """(1 + #{calibration scores >= s}) / (n + 1) for each score s."""
        cal = self.calibration_scores_
        s = as_scores(scores)
        at_least = cal.size - np.searchsorted(cal, s, side="left")
        return (1.0 + at_least) / (cal.size + 1.0)

    def predict(self, scores: ArrayLike) -> np.ndarray:
        """1 (anomalous) where the score is above ``threshold_``, else 0."""
        return (as_scores(scores) > self.threshold_).astype(np.int64)
