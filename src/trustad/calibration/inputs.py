"""Input checks shared by the calibration modules: scores, 0/1 labels, probabilities."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

# Probabilities are clipped to [EPS, 1 - EPS] wherever a logarithm is taken (PROTOCOL 6: NLL).
EPS = 1e-7


def as_scores(x: ArrayLike, what: str = "scores") -> np.ndarray:
    """``x`` as a flat float64 array; ValueError naming ``what`` if any value is not finite."""
    s = np.asarray(x, dtype=np.float64).ravel()
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{what} must be finite")
    return s


def as_labels(y: ArrayLike, n: int | None = None) -> np.ndarray:
    """0/1 (or bool) labels as a flat float64 array; with ``n``, exactly n of them."""
    y = np.asarray(y).ravel()
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0/1 (or bool)")
    if n is not None and y.size != n:
        raise ValueError(f"{y.size} labels for {n} scores")
    return y.astype(np.float64)


def as_probs(p: ArrayLike) -> np.ndarray:
    """A non-empty flat float64 array of finite probabilities in [0, 1]."""
    p = as_scores(p, "probabilities")
    if p.size == 0:
        raise ValueError("empty probabilities")
    if np.any((p < 0) | (p > 1)):
        raise ValueError("probabilities must lie in [0, 1]")
    return p


def clip_probs(p: np.ndarray) -> np.ndarray:
    """``p`` clipped to [EPS, 1 - EPS], so that its logarithms and logits are finite."""
    return np.clip(p, EPS, 1 - EPS)
