"""The one threshold rule of every flag, how well a flag separates two sets of inputs, and
the gate (a flagged input's probability becomes the prior).

A flag's threshold is set on values of clean (normal) inputs only, for a target false-flag
rate; the defender never sees an attack.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from ..calibration.inputs import as_scores
from ..metrics import auroc

DEFAULT_FALSE_FLAG_RATE = 0.05  # false flags allowed on clean inputs


def rate_threshold(values: ArrayLike, rate: float = DEFAULT_FALSE_FLAG_RATE) -> float:
    """The smallest t with #{values > t} <= rate * n.

    That is the m-th smallest value, m = n - floor(rate * n) (1-based; -inf when m = 0).
    The floor gets 1e-9 of slack so that, e.g., 0.29 * 100 counts as 29. With ties the
    realised flag rate on ``values`` can be below the target.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"false-flag rate must lie in [0, 1], got {rate}")
    v = as_scores(values, "flag values")
    if v.size == 0:
        raise ValueError("no values to set a threshold on")
    m = v.size - math.floor(rate * v.size + 1e-9)
    return float(np.sort(v)[m - 1]) if m > 0 else -math.inf


def flagging_auroc(clean_values: ArrayLike, flagged_values: ArrayLike) -> float:
    """AUROC of a flag statistic separating other inputs (positive) from clean ones."""
    clean = as_scores(clean_values, "flag values")
    other = as_scores(flagged_values, "flag values")
    labels = np.concatenate([np.zeros(clean.size), np.ones(other.size)])
    return auroc(labels, np.concatenate([clean, other]))


def tpr_at_fpr(
    clean_values: ArrayLike, other_values: ArrayLike, fpr: float = DEFAULT_FALSE_FLAG_RATE
) -> float:
    """Share of ``other_values`` above the :func:`rate_threshold` of ``clean_values``."""
    other = as_scores(other_values, "flag values")
    if other.size == 0:
        raise ValueError("no values to flag")
    return float((other > rate_threshold(clean_values, fpr)).mean())


def gate_probabilities(probs: ArrayLike, fired: ArrayLike, base_rate: float) -> np.ndarray:
    """``probs`` with ``base_rate`` wherever ``fired`` (a flag's decision) is true."""
    p = np.asarray(probs, dtype=np.float64).ravel()
    gate = np.asarray(fired, dtype=bool).ravel()
    if p.size != gate.size:
        raise ValueError(f"{p.size} probabilities and {gate.size} flag decisions")
    if not 0.0 <= base_rate <= 1.0:
        raise ValueError(f"base rate must lie in [0, 1], got {base_rate}")
    return np.where(gate, base_rate, p)
