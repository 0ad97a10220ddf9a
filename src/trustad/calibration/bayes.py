"""Bayesian Platt scaling: probabilities that stay honest on a handful of images.

Platt's logistic regression fitted by maximum likelihood on 4-16 calibration images turns
into a step function as soon as the two classes separate (its slope grows without bound,
and a normal image just above the step gets probability 1.000). Here the same model gets
the weakly informative prior of Gelman et al. (2008, "A weakly informative default prior
distribution for logistic and other regression models"): the score is centred and scaled to
a standard deviation of 0.5, the slope has a Cauchy(0, 2.5) prior and the intercept a
Cauchy(0, 10) prior. The posterior is approximated by a Gaussian at its mode (Laplace), and
the probability is the posterior predictive mean, so it is pulled towards 0.5 exactly where
the data say little; ``predict_interval`` gives a credible interval of the probability.

Written here rather than taken from a library: scikit-learn's logistic regression has no
Cauchy prior and no posterior, and a full MCMC library is out of proportion for two
parameters.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize
from scipy.special import expit
from scipy.stats import norm

from .inputs import as_labels, as_scores

SLOPE_SCALE = 2.5  # Cauchy scale of the slope, for the score scaled to sd 0.5
INTERCEPT_SCALE = 10.0
DEFAULT_INTERVAL = 0.9  # credible level of predict_interval


def _neg_log_posterior(w: np.ndarray, z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    eta = w[0] * z + w[1]
    nll = np.sum(np.logaddexp(0.0, eta) - y * eta)
    scales = np.array([SLOPE_SCALE, INTERCEPT_SCALE])
    prior = np.sum(np.log1p((w / scales) ** 2))
    r = expit(eta) - y
    grad = np.array([np.sum(r * z), np.sum(r)]) + 2 * w / (scales**2 + w**2)
    return float(nll + prior), grad


class BayesPlattCalibrator:
    """p = posterior predictive of sigmoid(a * z + b), z = (s - centre_) / scale_."""

    name = "bayes"

    def fit(self, scores: ArrayLike, labels: ArrayLike) -> BayesPlattCalibrator:
        s = as_scores(scores)
        y = as_labels(labels, s.size)
        self.centre_ = float(s.mean())
        # Gelman's scaling to sd 0.5; a constant score keeps a unit scale.
        self.scale_ = float(2 * s.std()) if s.std() > 0 else 1.0
        z = (s - self.centre_) / self.scale_
        res = optimize.minimize(
            _neg_log_posterior, np.zeros(2), args=(z, y), jac=True, method="BFGS"
        )
        self.a_, self.b_ = float(res.x[0]), float(res.x[1])
        self.converged_ = bool(res.success)
        # Laplace: the inverse Hessian of the negative log posterior at its mode; the
        # Cauchy prior's curvature, negative in its tails, is floored at zero so that the
        # covariance stays positive definite.
        eta = self.a_ * z + self.b_
        v = expit(eta) * (1 - expit(eta))
        x = np.column_stack([z, np.ones_like(z)])
        h = x.T @ (v[:, None] * x)
        for i, (w, scale) in enumerate(zip(res.x, (SLOPE_SCALE, INTERCEPT_SCALE))):
            h[i, i] += max(2 * (scale**2 - w**2) / (scale**2 + w**2) ** 2, 0.0) + 1e-9
        cov = np.linalg.inv(h)
        self.var_a_, self.var_b_, self.cov_ab_ = (
            float(cov[0, 0]),
            float(cov[1, 1]),
            float(cov[0, 1]),
        )
        return self

    def _logit_moments(self, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        z = (as_scores(scores) - self.centre_) / self.scale_
        mean = self.a_ * z + self.b_
        var = self.var_a_ * z**2 + 2 * self.cov_ab_ * z + self.var_b_
        return mean, np.maximum(var, 0.0)

    def predict_proba(self, scores: ArrayLike) -> np.ndarray:
        """The posterior predictive probability (MacKay's probit approximation of the
        Gaussian average of the sigmoid)."""
        mean, var = self._logit_moments(scores)
        return expit(mean / np.sqrt(1 + math.pi * var / 8))

    def predict_interval(self, scores: ArrayLike, level: float = DEFAULT_INTERVAL) -> np.ndarray:
        """(n, 2): the central ``level`` credible interval of each probability."""
        if not 0 < level < 1:
            raise ValueError(f"credible level must lie in (0, 1), got {level}")
        mean, var = self._logit_moments(scores)
        half = norm.ppf(0.5 + level / 2) * np.sqrt(var)
        return np.column_stack([expit(mean - half), expit(mean + half)])
