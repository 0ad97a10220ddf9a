"""Calibration, uncertainty and attack flagging (PROTOCOL section 6).

Calibrators map a raw anomaly score s to a probability of anomaly. They are fitted on the
clean calibration split only (:func:`calibration_split`) and applied to the evaluation
split, clean and adversarial. :func:`fit_calibrator_safely` gives a defined result (a
fallback to the uncalibrated score, with a note) when the calibration split cannot support
a fit.

Calibration metrics: :func:`ece` (top-label), :func:`classwise_ece` (anomaly class),
:func:`nll`, :func:`brier`; uncertainty: :func:`entropy`; attack flagging by entropy:
:class:`EntropyFlag`, :func:`flagging_auroc`, :func:`tpr_at_fpr`; a split-conformal
threshold with a guaranteed false-alarm rate: :class:`ConformalThreshold`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize
from scipy.special import entr, expit, logit
from sklearn.isotonic import IsotonicRegression
from sklearn.model_selection import train_test_split

from .metrics import auroc

__all__ = [
    "Calibrator",
    "Uncalibrated",
    "PlattCalibrator",
    "TemperatureCalibrator",
    "IsotonicCalibrator",
    "BetaCalibrator",
    "CALIBRATORS",
    "make_calibrator",
    "fit_calibrator_safely",
    "ece",
    "classwise_ece",
    "nll",
    "brier",
    "entropy",
    "reliability_diagram",
    "EntropyFlag",
    "flagging_auroc",
    "tpr_at_fpr",
    "ConformalThreshold",
    "CalibrationSplitError",
    "calibration_split",
]

# Probabilities are clipped to [EPS, 1 - EPS] wherever a logarithm is taken (as for NLL).
EPS = 1e-7
DEFAULT_FLAG_RATE = 0.05  # false flags allowed on clean inputs
DEFAULT_CALIBRATION_FRACTION = 0.2  # share of test images that fit the calibrators


def _scores(x: ArrayLike, what: str = "scores") -> np.ndarray:
    s = np.asarray(x, dtype=np.float64).ravel()
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{what} must be finite")
    return s


def _labels(y: ArrayLike, n: int | None = None) -> np.ndarray:
    y = np.asarray(y).ravel()
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0/1 (or bool)")
    if n is not None and y.size != n:
        raise ValueError(f"{y.size} labels for {n} scores")
    return y.astype(np.float64)


def _probs(p: ArrayLike) -> np.ndarray:
    p = _scores(p, "probabilities")
    if p.size == 0:
        raise ValueError("empty probabilities")
    if np.any((p < 0) | (p > 1)):
        raise ValueError("probabilities must lie in [0, 1]")
    return p


# ---------------------------------------------------------------------------------------
# Calibrators
# ---------------------------------------------------------------------------------------


@runtime_checkable
class Calibrator(Protocol):
    """Maps raw anomaly scores to probabilities of anomaly."""

    name: str

    def fit(self, scores: ArrayLike, labels: ArrayLike) -> Calibrator: ...

    def predict_proba(self, scores: ArrayLike) -> np.ndarray: ...


def _logistic_loss(w: np.ndarray, x: np.ndarray, y: np.ndarray, ridge: np.ndarray) -> float:
    z = x @ w
    return float(np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * np.sum(ridge * w * w))


def _fit_logistic(
    x: np.ndarray, y: np.ndarray, c: float | None = None, max_iter: int = 100
) -> tuple[np.ndarray, bool]:
    """Logistic regression by Newton's method with backtracking; the last column of x is 1.

    Minimises the mean NLL against targets y in [0, 1] (plus ||w||^2 / (2 c n) on the
    non-intercept weights when c is given, the scaling of sklearn's C). Returns (weights,
    converged). Without regularisation on perfectly separated 0/1 targets the
    maximum-likelihood weights are infinite; the solver then stops once the mean NLL falls
    below 1e-6 (a steep but finite fit) with converged=False.
    """
    n, d = x.shape
    ridge = np.zeros(d)
    if c is not None:
        if c <= 0:
            raise ValueError("c must be positive")
        ridge[:-1] = 1.0 / (c * n)
    w = np.zeros(d)
    loss = _logistic_loss(w, x, y, ridge)
    for _ in range(max_iter):
        p = expit(x @ w)
        grad = x.T @ (p - y) / n + ridge * w
        if np.max(np.abs(grad)) < 1e-12:
            return w, True
        if c is None and loss < 1e-6:
            return w, False
        hess = (x.T * (p * (1 - p))) @ x / n + np.diag(ridge)
        # lstsq: a constant feature (all scores equal) makes the Hessian singular.
        step = np.linalg.lstsq(hess, grad, rcond=None)[0]
        t = 1.0
        for _ in range(50):
            new_loss = _logistic_loss(w - t * step, x, y, ridge)
            if new_loss <= loss - 1e-4 * t * float(grad @ step):
                break
            t /= 2
        else:
            return w, True  # no descent possible: at the optimum up to rounding
        w = w - t * step
        done = np.max(np.abs(t * step)) <= 1e-10 * (1 + np.max(np.abs(w)))
        loss = new_loss
        if done:
            return w, True
    return w, False


def _clip01(s: np.ndarray) -> np.ndarray:
    return np.clip(s, EPS, 1 - EPS)


class Uncalibrated:
    """The raw score clipped to [0, 1] (the protocol's uncalibrated probability)."""

    name = "uncal"

    def fit(self, scores: ArrayLike, labels: ArrayLike) -> Uncalibrated:
        return self

    def predict_proba(self, scores: ArrayLike) -> np.ndarray:
        return np.clip(_scores(scores), 0.0, 1.0)


class PlattCalibrator:
    """Platt scaling: p = sigmoid(a_ * s + b_), logistic regression on the raw score.

    Unregularised on 0/1 targets by default (the protocol). ``c`` adds an L2 penalty on
    ``a_`` with sklearn's C scaling (not scale-free: it depends on the spread of the raw
    scores). ``smooth_targets`` fits Platt's (1999) targets instead, (N+ + 1) / (N+ + 2) for
    anomalous and 1 / (N- + 2) for normal images: a finite, less overconfident fit on small
    or perfectly separated calibration sets. ``converged_`` is False when the classes are
    perfectly separated and the unregularised fit on 0/1 targets was stopped (see
    ``_fit_logistic``).
    """

    name = "platt"

    def __init__(self, c: float | None = None, smooth_targets: bool = False) -> None:
        self.c = c
        self.smooth_targets = smooth_targets

    def fit(self, scores: ArrayLike, labels: ArrayLike) -> PlattCalibrator:
        s = _scores(scores)
        y = _labels(labels, s.size)
        if self.smooth_targets:
            n_pos = y.sum()
            y = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (y.size - n_pos + 2))
        w, self.converged_ = _fit_logistic(np.column_stack([s, np.ones_like(s)]), y, self.c)
        self.a_, self.b_ = float(w[0]), float(w[1])
        return self

    def predict_proba(self, scores: ArrayLike) -> np.ndarray:
        return expit(self.a_ * _scores(scores) + self.b_)


class TemperatureCalibrator:
    """Temperature scaling with a bias on the logit of the score.

    p = sigmoid(logit(clip(s, 1e-7, 1 - 1e-7)) / temperature_ + bias_), i.e. the raw score
    read as a probability, its logit divided by a temperature T > 0 and shifted. T and the
    bias minimise the mean NLL on the calibration set (L-BFGS-B over log T and the bias),
    with T kept in [1e-3, 1e3] so that separated or anti-correlated data stays finite.
    ``converged_`` is False when T ends on a bound or the optimiser failed.
    """

    name = "temperature"
    T_MIN, T_MAX = 1e-3, 1e3

    def fit(self, scores: ArrayLike, labels: ArrayLike) -> TemperatureCalibrator:
        z0 = logit(_clip01(_scores(scores)))
        y = _labels(labels, z0.size)

        def loss_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
            inv_t = math.exp(-theta[0])
            z = z0 * inv_t + theta[1]
            r = (expit(z) - y) / y.size
            loss = float(np.mean(np.logaddexp(0.0, z) - y * z))
            return loss, np.array([-float(r @ z0) * inv_t, float(r.sum())])

        bounds = [(math.log(self.T_MIN), math.log(self.T_MAX)), (None, None)]
        res = optimize.minimize(loss_grad, np.zeros(2), jac=True, method="L-BFGS-B", bounds=bounds)
        self.temperature_ = float(math.exp(res.x[0]))
        self.bias_ = float(res.x[1])
        on_bound = not (self.T_MIN * 1.001 < self.temperature_ < self.T_MAX / 1.001)
        self.converged_ = bool(res.success) and not on_bound
        return self

    def predict_proba(self, scores: ArrayLike) -> np.ndarray:
        z = logit(_clip01(_scores(scores)))
        return expit(z / self.temperature_ + self.bias_)


class IsotonicCalibrator:
    """Isotonic regression of the label on the raw score: non-decreasing, in [0, 1],
    constant beyond the range of the calibration scores."""

    name = "isotonic"

    def fit(self, scores: ArrayLike, labels: ArrayLike) -> IsotonicCalibrator:
        s = _scores(scores)
        y = _labels(labels, s.size)
        self.model_ = IsotonicRegression(
            y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip"
        )
        self.model_.fit(s, y)
        return self

    def predict_proba(self, scores: ArrayLike) -> np.ndarray:
        return np.asarray(self.model_.predict(_scores(scores)), dtype=np.float64)


class BetaCalibrator:
    """Beta calibration (Kull et al., 2017), the three-parameter family.

    With s clipped to [1e-7, 1 - 1e-7]: p = sigmoid(a_ ln s - b_ ln(1 - s) + c_), a logistic
    regression on the features (ln s, -ln(1 - s)), unregularised. The map is monotone
    non-decreasing only for a_, b_ >= 0, so as in the paper: if the fit gives a_ < 0 it is
    refitted on -ln(1 - s) alone (a_ = 0); otherwise if b_ < 0, on ln s alone (b_ = 0); if
    the remaining coefficient is still negative, only the intercept is kept.
    """

    name = "beta"

    def fit(self, scores: ArrayLike, labels: ArrayLike) -> BetaCalibrator:
        s = _clip01(_scores(scores))
        y = _labels(labels, s.size)
        feats = np.column_stack([np.log(s), -np.log1p(-s)])
        ones = np.ones((s.size, 1))
        w, conv = _fit_logistic(np.hstack([feats, ones]), y)
        a, b, c = w
        if a < 0 or b < 0:
            keep = 1 if a < 0 else 0  # drop the feature whose coefficient is negative
            w1, conv = _fit_logistic(np.hstack([feats[:, [keep]], ones]), y)
            if w1[0] < 0:
                w0, conv = _fit_logistic(ones, y)
                a, b, c = 0.0, 0.0, w0[0]
            elif keep == 1:
                a, b, c = 0.0, w1[0], w1[1]
            else:
                a, b, c = w1[0], 0.0, w1[1]
        self.a_, self.b_, self.c_ = float(a), float(b), float(c)
        self.converged_ = conv
        return self

    def predict_proba(self, scores: ArrayLike) -> np.ndarray:
        s = _clip01(_scores(scores))
        return expit(self.a_ * np.log(s) - self.b_ * np.log1p(-s) + self.c_)


CALIBRATORS: dict[str, type] = {
    "uncal": Uncalibrated,
    "platt": PlattCalibrator,
    "temperature": TemperatureCalibrator,
    "isotonic": IsotonicCalibrator,
    "beta": BetaCalibrator,
}


def make_calibrator(name: str, **options: Any) -> Calibrator:
    """A fresh calibrator by its short name (the suffix of result columns such as ece_platt);
    ``options`` go to its constructor (e.g. ``c`` for Platt)."""
    try:
        return CALIBRATORS[name](**options)
    except KeyError:
        raise ValueError(
            f"unknown calibrator {name!r}; choose one of {', '.join(CALIBRATORS)}"
        ) from None


# Calibrators with a parametric fit need two images of each class; isotonic needs both classes.
_MIN_PER_CLASS = {"uncal": 0, "platt": 2, "temperature": 2, "beta": 2, "isotonic": 1}


def fit_calibrator_safely(
    name: str, scores: ArrayLike, labels: ArrayLike, **options: Any
) -> tuple[Calibrator, str | None]:
    """Fit calibrator ``name``, falling back to :class:`Uncalibrated` when that is impossible.

    The fallback happens when the calibration set has fewer than two images of either class
    (Platt, temperature, beta) or lacks a class (isotonic), or when a fit yields non-finite
    probabilities; the note then says so. A fit on perfectly separated classes is kept, with
    a note that it is steep and was stopped. Returns (calibrator, note or None). Unknown
    names raise ValueError; ``options`` go to the calibrator's constructor.
    """
    cal = make_calibrator(name, **options)
    s = _scores(scores)
    y = _labels(labels, s.size)
    n_pos = int(y.sum())
    n_neg = s.size - n_pos
    need = _MIN_PER_CLASS[name]
    if min(n_pos, n_neg) < need:
        return Uncalibrated(), (
            f"{name}: calibration set has {n_neg} normal and {n_pos} anomalous images "
            f"(needs at least {need} of each); using uncalibrated scores instead"
        )
    cal.fit(s, y)
    if not np.all(np.isfinite(cal.predict_proba(s))):
        return (
            Uncalibrated(),
            f"{name}: fit gave non-finite probabilities; using uncalibrated scores",
        )
    if getattr(cal, "converged_", True) is False:
        return cal, (
            f"{name}: fit did not converge (calibration classes perfectly separated or a "
            "parameter at its bound); kept a steep but finite fit"
        )
    return cal, None


# ---------------------------------------------------------------------------------------
# Calibration metrics
# ---------------------------------------------------------------------------------------


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


def ece(probs: ArrayLike, labels: ArrayLike, n_bins: int = 10) -> float:
    """Top-label expected calibration error.

    Confidence max(p, 1 - p), prediction 1[p >= 0.5], correct when it equals the label.
    Bins: ``n_bins`` equal-width bins over [0, 1] (edges 0, 0.1, ..., 1 for 10),
    right-inclusive with 0 in the first bin; confidence is >= 0.5, so only the upper half of
    the bins can be populated. ECE = sum over bins of |B|/n * |accuracy(B) - confidence(B)|.
    """
    p = _probs(probs)
    y = _labels(labels, p.size)
    conf = np.maximum(p, 1 - p)
    correct = ((p >= 0.5) == (y == 1)).astype(np.float64)
    return _binned_gap(conf, correct, n_bins)


def classwise_ece(probs: ArrayLike, labels: ArrayLike, n_bins: int = 10) -> float:
    """Class-wise ECE for the anomaly class: bins of p (as in :func:`ece`) and
    sum over bins of |B|/n * |fraction of anomalies in B - mean p in B|."""
    p = _probs(probs)
    return _binned_gap(p, _labels(labels, p.size), n_bins)


def nll(probs: ArrayLike, labels: ArrayLike) -> float:
    """Mean binary cross-entropy, natural log, p clipped to [1e-7, 1 - 1e-7]."""
    p = np.clip(_probs(probs), EPS, 1 - EPS)
    y = _labels(labels, p.size)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def brier(probs: ArrayLike, labels: ArrayLike) -> float:
    """Mean squared difference between p and the 0/1 label."""
    p = _probs(probs)
    return float(np.mean((p - _labels(labels, p.size)) ** 2))


def entropy(probs: ArrayLike) -> np.ndarray:
    """Predictive entropy -p ln p - (1 - p) ln(1 - p) per input, natural log (0 ln 0 = 0);
    at most ln 2 (p = 0.5)."""
    p = _probs(probs)
    return entr(p) + entr(1 - p)


def reliability_diagram(probs: ArrayLike, labels: ArrayLike, n_bins: int = 10) -> dict:
    """Per-bin data for reliability diagrams and probability histograms.

    Keys: ``edges`` (n_bins + 1 bin edges on [0, 1]); top-label, binned by confidence
    max(p, 1 - p): ``count``, ``confidence`` (mean confidence), ``accuracy`` (of 1[p >= 0.5]);
    class-wise, binned by p: ``prob_count`` (the histogram of p), ``mean_prob``,
    ``frac_pos`` (fraction of anomalies); ``ece`` and ``classwise_ece``. Means of empty
    bins are NaN. Bins as in :func:`ece`.
    """
    p = _probs(probs)
    y = _labels(labels, p.size)
    conf = np.maximum(p, 1 - p)
    correct = ((p >= 0.5) == (y == 1)).astype(np.float64)

    def binned(value: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, ...]:
        idx = _bin_index(value, n_bins)
        count = np.bincount(idx, minlength=n_bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_v = np.bincount(idx, weights=value, minlength=n_bins) / count
            mean_t = np.bincount(idx, weights=target, minlength=n_bins) / count
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


# ---------------------------------------------------------------------------------------
# Attack flagging by entropy
# ---------------------------------------------------------------------------------------


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
            _scores(clean_entropies, "entropies"), self.false_flag_rate
        )
        return self

    def flag(self, entropies: ArrayLike) -> np.ndarray:
        return _scores(entropies, "entropies") > self.threshold_


def flagging_auroc(clean_entropies: ArrayLike, adversarial_entropies: ArrayLike) -> float:
    """AUROC of entropy separating adversarial (positive) from clean inputs."""
    clean = _scores(clean_entropies, "entropies")
    adv = _scores(adversarial_entropies, "entropies")
    labels = np.concatenate([np.zeros(clean.size), np.ones(adv.size)])
    return auroc(labels, np.concatenate([clean, adv]))


def tpr_at_fpr(
    clean_entropies: ArrayLike, adversarial_entropies: ArrayLike, fpr: float = DEFAULT_FLAG_RATE
) -> float:
    """Fraction of adversarial inputs flagged at the :class:`EntropyFlag` threshold set on
    the clean entropies for a false-flag rate of at most ``fpr``."""
    flagger = EntropyFlag(fpr).fit(clean_entropies)
    adv = _scores(adversarial_entropies, "entropies")
    if adv.size == 0:
        raise ValueError("no adversarial entropies")
    return float(flagger.flag(adv).mean())


# ---------------------------------------------------------------------------------------
# Conformal threshold
# ---------------------------------------------------------------------------------------


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
        cal = np.sort(_scores(normal_scores))
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
                f"{n} normal calibration scores are too few for alpha={self.alpha}: at least "
                f"{self.min_calibration_size(self.alpha)} are needed; nothing will be flagged",
                stacklevel=2,
            )
        else:
            self.threshold_ = float(cal[k - 1])
        return self

    def p_values(self, scores: ArrayLike) -> np.ndarray:
        """(1 + #{calibration scores >= s}) / (n + 1) for each score s."""
        cal = self.calibration_scores_
        s = _scores(scores)
        at_least = cal.size - np.searchsorted(cal, s, side="left")
        return (1.0 + at_least) / (cal.size + 1.0)

    def predict(self, scores: ArrayLike) -> np.ndarray:
        """1 (anomalous) where the score is above ``threshold_``, else 0."""
        return (_scores(scores) > self.threshold_).astype(np.int64)


# ---------------------------------------------------------------------------------------
# Calibration / evaluation split
# ---------------------------------------------------------------------------------------


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
