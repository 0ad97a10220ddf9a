"""Calibrators: maps from a raw anomaly score to a probability of anomaly (PROTOCOL 6).

They are fitted on the clean calibration split only and applied to the evaluation split,
clean and adversarial. :func:`fit_calibrator_safely` gives a defined result (a fallback to
the uncalibrated score, with a note) when the calibration split cannot support a fit.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize
from scipy.special import expit, logit
from sklearn.isotonic import IsotonicRegression
from threadpoolctl import ThreadpoolController

from .bayes import BayesPlattCalibrator
from .inputs import as_labels, as_scores, clip_probs


@runtime_checkable
class Calibrator(Protocol):
    """Maps raw anomaly scores to probabilities of anomaly."""

    name: str

    def fit(self, scores: ArrayLike, labels: ArrayLike) -> Calibrator: ...

    def predict_proba(self, scores: ArrayLike) -> np.ndarray: ...


@functools.cache
def _thread_pools() -> ThreadpoolController:
    # Found once: looking the BLAS libraries up costs about 10 ms.
    return ThreadpoolController()


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


class Uncalibrated:
    """The raw score clipped to [0, 1] (the protocol's uncalibrated probability)."""

    name = "uncal"

    def fit(self, scores: ArrayLike, labels: ArrayLike) -> Uncalibrated:
        return self

    def predict_proba(self, scores: ArrayLike) -> np.ndarray:
        return np.clip(as_scores(scores), 0.0, 1.0)


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
        s = as_scores(scores)
        y = as_labels(labels, s.size)
        if self.smooth_targets:
            n_pos = y.sum()
            y = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (y.size - n_pos + 2))
        w, self.converged_ = _fit_logistic(np.column_stack([s, np.ones_like(s)]), y, self.c)
        self.a_, self.b_ = float(w[0]), float(w[1])
        return self

    def predict_proba(self, scores: ArrayLike) -> np.ndarray:
        return expit(self.a_ * as_scores(scores) + self.b_)


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
        z0 = logit(clip_probs(as_scores(scores)))
        y = as_labels(labels, z0.size)

        def loss_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
            inv_t = math.exp(-theta[0])
            z = z0 * inv_t + theta[1]
            r = (expit(z) - y) / y.size
            loss = float(np.mean(np.logaddexp(0.0, z) - y * z))
            return loss, np.array([-float(r @ z0) * inv_t, float(r.sum())])

        bounds = [(math.log(self.T_MIN), math.log(self.T_MAX)), (None, None)]
        # One BLAS thread: on two parameters more threads only wait on each other, which
        # on a busy machine costs milliseconds per L-BFGS-B step (100x the fit itself).
        with _thread_pools().limit(limits=1, user_api="blas"):
            res = optimize.minimize(
                loss_grad, np.zeros(2), jac=True, method="L-BFGS-B", bounds=bounds
            )
        self.temperature_ = float(math.exp(res.x[0]))
        self.bias_ = float(res.x[1])
        on_bound = not (self.T_MIN * 1.001 < self.temperature_ < self.T_MAX / 1.001)
        self.converged_ = bool(res.success) and not on_bound
        return self

    def predict_proba(self, scores: ArrayLike) -> np.ndarray:
        z = logit(clip_probs(as_scores(scores)))
        return expit(z / self.temperature_ + self.bias_)


class IsotonicCalibrator:
    """Isotonic regression of the label on the raw score: non-decreasing, in [0, 1],
    constant beyond the range of the calibration scores."""

    name = "isotonic"

    def fit(self, scores: ArrayLike, labels: ArrayLike) -> IsotonicCalibrator:
        s = as_scores(scores)
        y = as_labels(labels, s.size)
        self.model_ = IsotonicRegression(
            y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip"
        )
        self.model_.fit(s, y)
        return self

    def predict_proba(self, scores: ArrayLike) -> np.ndarray:
        return np.asarray(self.model_.predict(as_scores(scores)), dtype=np.float64)


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
        s = clip_probs(as_scores(scores))
        y = as_labels(labels, s.size)
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
        s = clip_probs(as_scores(scores))
        return expit(self.a_ * np.log(s) - self.b_ * np.log1p(-s) + self.c_)


CALIBRATORS: dict[str, type] = {
    "uncal": Uncalibrated,
    "platt": PlattCalibrator,
    "temperature": TemperatureCalibrator,
    "isotonic": IsotonicCalibrator,
    "beta": BetaCalibrator,
    "bayes": BayesPlattCalibrator,
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
# Bayesian Platt needs one of each: its prior keeps the fit finite and honest.
_MIN_PER_CLASS = {"uncal": 0, "platt": 2, "temperature": 2, "beta": 2, "isotonic": 1, "bayes": 1}


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
    s = as_scores(scores)
    y = as_labels(labels, s.size)
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
