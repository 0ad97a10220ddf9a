"""Attack flagging by predictive entropy (PROTOCOL 6): a flag with a bounded false-flag
rate on clean inputs, its AUROC and its true-positive rate."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from ..metrics import auroc
from .inputs import as_scores

DEFAULT_FLAG_RATE = 0.05  # false flags allowed on clean inputs


def _rate_threshold(values: np.ndarray, rate: float) -> float:
    """The smallest t with #{values > t} <= rate * n.

    That is the m-th smallest value, m = n - floor(rate * n) (1-based; -inf when m = 0).
    The floor gets 1e-9 of slack so that, e.g., 0.29 * 100 counts as 29.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    if values.size == 0:
        raise ValueError("no values to set a threshold on")
    m = values.size - math.floor(rate * values.size + 1e-9)
    return float(np.sort(values)[m - 1]) if m > 0 else -math.inf


class EntropyFlag:
    """Flags an input as attacked when its predictive entropy exceeds a threshold.

    ``fit`` sets ``threshold_`` on clean calibration entropies to the smallest t such that
    the fraction of clean entropies strictly above t is at most ``false_flag_rate``: the
    m-th smallest clean entropy with m = n - floor(rate * n). With ties the realised clean
    flag rate can be below the target.
    """

    def __init__(self, false_flag_rate: float = DEFAULT_FLAG_RATE) -> None:
        self.false_flag_rate = false_flag_rate

    def fit(self, clean_entropies: ArrayLike) -> EntropyFlag:
        self.threshold_ = _rate_threshold(
            as_scores(clean_entropies, "entropies"), self.false_flag_rate
        )
        return self

    def flag(self, entropies: ArrayLike) -> np.ndarray:
        return as_scores(entropies, "entropies") > self.threshold_


def flagging_auroc(clean_entropies: ArrayLike, adversarial_entropies: ArrayLike) -> float:
    """AUROC of entropy separating adversarial (positive) from clean inputs."""
    clean = as_scores(clean_entropies, "entropies")
    adv = as_scores(adversarial_entropies, "entropies")
    labels = np.concatenate([np.zeros(clean.size), np.ones(adv.size)])
    return auroc(labels, np.concatenate([clean, adv]))


def tpr_at_fpr(
    clean_entropies: ArrayLike, adversarial_entropies: ArrayLike, fpr: float = DEFAULT_FLAG_RATE
) -> float:
    """Fraction of adversarial inputs flagged at the :class:`EntropyFlag` threshold set on
    the clean entropies for a false-flag rate of at most ``fpr``."""
    flagger = EntropyFlag(fpr).fit(clean_entropies)
    adv = as_scores(adversarial_entropies, "entropies")
    if adv.size == 0:
        raise ValueError("no adversarial entropies")
    return float(flagger.flag(adv).mean())
