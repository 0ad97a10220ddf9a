"""Calibration metrics and predictive uncertainty (PROTOCOL 6).

NLL and the Brier score are the arithmetic of sklearn's ``log_loss`` and
``brier_score_loss`` (the same numbers to the last bit, tested against them) without their
input validation, which costs about 1 ms a call and is done here once by ``inputs``; a
grid computes them for every calibrator of every unit. sklearn computes the per-bin means
of the reliability diagram. ECE (top-label and class-wise) is ours: sklearn has none.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import entr
from sklearn.calibration import calibration_curve

from .inputs import as_labels, as_probs, clip_probs


def _bin_index(v: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bins on [0, 1], right-inclusive: (e_{k-1}, e_k], the first also holds 0."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.searchsorted(edges, v, side="left") - 1, 0, n_bins - 1)


def _binned_gap(value: np.ndarray, target: np.ndarray, n_bins: int) -> float:
    """sum over bins of |B|/n * |mean target - mean value|, binning by value."""
    idx = _bin_index(value, n_bins)
    sum_v = np.bincount(idx, weights=value, minlength=n_bins)
    sum_t = np.bincount(idx, weights=target, minlength=n_bins)
    # |B|/n * |sum_t/|B| - sum_v/|B|| = |sum_t - sum_v| / n; empty bins add 0.
    return float(np.sum(np.abs(sum_t - sum_v)) / value.size)


def _top_label(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Confidence max(p, 1 - p) and whether the prediction 1[p >= 0.5] equals the label."""
    correct = ((p >= 0.5) == (y == 1)).astype(np.float64)
    return np.maximum(p, 1 - p), correct


def ece(probs: ArrayLike, labels: ArrayLike, n_bins: int = 10) -> float:
    """Top-label expected calibration error.

    Confidence max(p, 1 - p), prediction 1[p >= 0.5], correct when it equals the label.
    Bins: ``n_bins`` equal-width bins over [0, 1] (edges 0, 0.1, ..., 1 for 10),
    right-inclusive with 0 in the first bin; confidence is >= 0.5, so only the upper half of
    the bins can be populated. ECE = sum over bins of |B|/n * |accuracy(B) - confidence(B)|.
    """
    p = as_probs(probs)
    conf, correct = _top_label(p, as_labels(labels, p.size))
    return _binned_gap(conf, correct, n_bins)


def classwise_ece(probs: ArrayLike, labels: ArrayLike, n_bins: int = 10) -> float:
    """Class-wise ECE for the anomaly class: bins of p (as in :func:`ece`) and
    sum over bins of |B|/n * |fraction of anomalies in B - mean p in B|."""
    p = as_probs(probs)
    return _binned_gap(p, as_labels(labels, p.size), n_bins)


def _two_columns(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(1 - p, p) and the one-hot labels (1 - y, y), as sklearn's binary metrics form them."""
    return np.stack((1 - p, p), axis=1), np.stack((1 - y, y), axis=1)


def nll(probs: ArrayLike, labels: ArrayLike) -> float:
    """Mean binary cross-entropy, natural log, p clipped to [1e-7, 1 - 1e-7]
    (``log_loss(y, clip(p), labels=[0, 1])``)."""
    p = as_probs(probs)
    # The protocol's clip: log_loss alone clips only to machine epsilon (no-op after it).
    q, t = _two_columns(clip_probs(p), as_labels(labels, p.size))
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(t == 0.0, 0.0, t * np.log(q))  # sklearn's xlogy, numpy's log
    return float(np.mean(-np.sum(terms, axis=1)))


def brier(probs: ArrayLike, labels: ArrayLike) -> float:
    """Mean squared difference between p and the 0/1 label (``brier_score_loss``: half the
    two-column squared error)."""
    p = as_probs(probs)
    q, t = _two_columns(p, as_labels(labels, p.size))
    return float(np.mean(np.sum((t - q) ** 2, axis=1)) * 0.5)


def entropy(probs: ArrayLike) -> np.ndarray:
    """Predictive entropy -p ln p - (1 - p) ln(1 - p) per input, natural log (0 ln 0 = 0);
    at most ln 2 (p = 0.5)."""
    p = as_probs(probs)
    return entr(p) + entr(1 - p)


def reliability_diagram(probs: ArrayLike, labels: ArrayLike, n_bins: int = 10) -> dict:
    """Per-bin data for reliability diagrams and probability histograms.

    Keys: ``edges`` (n_bins + 1 bin edges on [0, 1]); top-label, binned by confidence
    max(p, 1 - p): ``count``, ``confidence`` (mean confidence), ``accuracy`` (of 1[p >= 0.5]);
    class-wise, binned by p: ``prob_count`` (the histogram of p), ``mean_prob``,
    ``frac_pos`` (fraction of anomalies); ``ece`` and ``classwise_ece``. Means of empty
    bins are NaN. Bins as in :func:`ece`.
    """
    p = as_probs(probs)
    y = as_labels(labels, p.size)
    conf, correct = _top_label(p, y)

    def binned(value: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, ...]:
        count = np.bincount(_bin_index(value, n_bins), minlength=n_bins)
        mean_v, mean_t = np.full(n_bins, np.nan), np.full(n_bins, np.nan)
        # calibration_curve's uniform bins are ours, but it returns the non-empty ones only.
        mean_t[count > 0], mean_v[count > 0] = calibration_curve(
            target, value, pos_label=1, n_bins=n_bins
        )
        return count, mean_v, mean_t

    count, confidence, accuracy = binned(conf, correct)
    prob_count, mean_prob, frac_pos = binned(p, y)
    return {
        "edges": np.linspace(0.0, 1.0, n_bins + 1),
        "count": count,
        "confidence": confidence,
        "accuracy": accuracy,
        "prob_count": prob_count,
        "mean_prob": mean_prob,
        "frac_pos": frac_pos,
        "ece": ece(p, y, n_bins),
        "classwise_ece": classwise_ece(p, y, n_bins),
    }
