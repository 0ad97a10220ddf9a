"""Calibration, uncertainty, flagging and conformal threshold (PROTOCOL section 6)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.special import expit, logit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, log_loss

from trustad.calibration import (
    CALIBRATORS,
    BetaCalibrator,
    CalibrationSplitError,
    Calibrator,
    ConformalThreshold,
    IsotonicCalibrator,
    PlattCalibrator,
    TemperatureCalibrator,
    Uncalibrated,
    brier,
    calibration_split,
    classwise_ece,
    ece,
    entropy,
    fit_calibrator_safely,
    make_calibrator,
    nll,
    reliability_diagram,
)
from trustad.flags import flagging_auroc, rate_threshold, tpr_at_fpr

# ---------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------

P = [0.95, 0.85, 0.25, 0.65, 0.62, 0.15]
Y = [1, 0, 0, 0, 1, 0]


def test_ece_hand() -> None:
    # confidence 0.95 0.85 0.75 0.65 0.62 0.85; prediction 1 1 0 1 1 0; correct 1 0 1 0 1 1.
    # bin (0.9,1]:  {0.95: correct}            |1 - 0.95|    = 0.05,  weight 1/6
    # bin (0.8,0.9]: {0.85 wrong, 0.85 right}  |0.5 - 0.85|  = 0.35,  weight 2/6
    # bin (0.7,0.8]: {0.75 right}              |1 - 0.75|    = 0.25,  weight 1/6
    # bin (0.6,0.7]: {0.65 wrong, 0.62 right}  |0.5 - 0.635| = 0.135, weight 2/6
    # ECE = (0.05 + 0.70 + 0.25 + 0.27) / 6 = 1.27 / 6
    assert ece(P, Y) == pytest.approx(1.27 / 6)


def test_classwise_ece_hand() -> None:
    # bins of p: 0.95 {y=1}: |1 - 0.95| = 0.05; 0.85 {0}: 0.85; 0.25 {0}: 0.25;
    # 0.65, 0.62 {0, 1}: |0.5 - 0.635| = 0.135 (weight 2); 0.15 {0}: 0.15.
    # sum |B|/n * gap = (0.05 + 0.85 + 0.25 + 0.27 + 0.15) / 6 = 1.57 / 6
    assert classwise_ece(P, Y) == pytest.approx(1.57 / 6)


def test_bins_are_right_inclusive() -> None:
    # p: 1.0 -> conf 1.0 (last bin), 0.0 -> conf 1.0 (last bin),
    # 0.5 -> conf 0.5 in (0.4, 0.5], 0.6 -> conf 0.6 in (0.5, 0.6].
    d = reliability_diagram([1.0, 0.0, 0.5, 0.6], [1, 0, 0, 1])
    np.testing.assert_array_equal(d["count"], [0, 0, 0, 0, 1, 1, 0, 0, 0, 2])
    # Histogram of p: 0.0 in the first bin, 0.5 in (0.4, 0.5], 0.6 in (0.5, 0.6], 1.0 last.
    np.testing.assert_array_equal(d["prob_count"], [1, 0, 0, 0, 1, 1, 0, 0, 0, 1])
    # Last bin: both right with confidence 1 (gap 0); p = 0.5 (predicted 1, label 0) wrong
    # at confidence 0.5; p = 0.6 right at confidence 0.6.
    # ECE = 1/4 * |0 - 0.5| + 1/4 * |1 - 0.6| = 0.125 + 0.1
    assert d["ece"] == pytest.approx(0.225)
    assert d["accuracy"][9] == 1.0 and d["confidence"][9] == 1.0
    assert np.isnan(d["accuracy"][0])


def test_reliability_diagram_matches_ece() -> None:
    d = reliability_diagram(P, Y)
    filled = d["count"] > 0
    gap = np.sum(d["count"][filled] * np.abs(d["accuracy"] - d["confidence"])[filled]) / 6
    assert gap == pytest.approx(ece(P, Y))
    assert d["classwise_ece"] == pytest.approx(classwise_ece(P, Y))
    assert d["prob_count"].sum() == 6 and d["edges"].size == 11


def test_nll_brier_hand() -> None:
    # p = 1.0 with label 0 is clipped to 1 - 1e-7:
    # NLL = -(ln 0.8 + ln 0.7 + ln 1e-7) / 3 = (0.2231436 + 0.3566749 + 16.1180957) / 3
    assert nll([0.8, 0.3, 1.0], [1, 0, 0]) == pytest.approx(16.6979142 / 3, rel=1e-6)
    # Brier = (0.2^2 + 0.3^2 + 1^2) / 3 = 1.13 / 3
    assert brier([0.8, 0.3, 1.0], [1, 0, 0]) == pytest.approx(1.13 / 3)


def test_nll_brier_are_sklearns_to_the_last_bit() -> None:
    # Results rows keep their numbers: the same values as log_loss / brier_score_loss on
    # probabilities of every kind (rounded, near 0 and 1, exactly 0 and 1, one class only).
    rng = np.random.default_rng(0)
    for case in range(600):
        n = int(rng.integers(1, 80))
        y = rng.integers(0, 2, n)
        y = np.zeros(n, int) if case % 7 == 0 else np.ones(n, int) if case % 11 == 0 else y
        p = rng.random(n) ** (8 if case % 3 == 0 else 1)
        p = np.round(p, 1) if case % 5 == 0 else p
        p[rng.integers(0, n)], p[rng.integers(0, n)] = 0.0, 1.0
        clipped = np.clip(p, 1e-7, 1 - 1e-7)
        assert nll(p, y) == log_loss(y, clipped, labels=[0, 1])
        assert brier(p, y) == brier_score_loss(y, p, pos_label=1)


def test_entropy_hand() -> None:
    # H(0.5) = ln 2; H(0) = H(1) = 0; H(0.1) = 0.1 ln 10 + 0.9 ln(10/9) = 0.2302585 + 0.0948245
    h = entropy([0.5, 0.0, 1.0, 0.1])
    np.testing.assert_allclose(h, [math.log(2), 0.0, 0.0, 0.3250830], atol=1e-7)


def test_metrics_reject_bad_probabilities() -> None:
    with pytest.raises(ValueError):
        ece([1.2], [1])
    with pytest.raises(ValueError):
        nll([0.5, float("nan")], [0, 1])


# ---------------------------------------------------------------------------------------
# Calibrators
# ---------------------------------------------------------------------------------------


def _miscalibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores in (0, 1) whose true anomaly probability is s^3: overconfident raw scores."""
    rng = np.random.default_rng(seed)
    s = rng.beta(2, 2, n)
    return s, (rng.random(n) < s**3).astype(int)


def test_registry_and_protocol() -> None:
    assert list(CALIBRATORS) == ["uncal", "platt", "temperature", "isotonic", "beta", "bayes"]
    for name in CALIBRATORS:
        cal = make_calibrator(name)
        assert isinstance(cal, Calibrator) and cal.name == name
    with pytest.raises(ValueError, match="platt"):
        make_calibrator("nope")


def test_uncalibrated_clips() -> None:
    cal = Uncalibrated().fit([0.2], [1])
    np.testing.assert_array_equal(cal.predict_proba([-0.5, 0.3, 1.7]), [0.0, 0.3, 1.0])


def test_platt_recovers_known_parameters() -> None:
    rng = np.random.default_rng(0)
    s = rng.random(50_000)
    y = rng.random(s.size) < expit(8 * s - 4)
    cal = PlattCalibrator().fit(s, y)
    assert cal.converged_
    assert cal.a_ == pytest.approx(8, rel=0.05)
    assert cal.b_ == pytest.approx(-4, rel=0.05)


def test_platt_matches_sklearn_logistic_regression() -> None:
    s, y = _miscalibrated(300, 1)
    ref = LogisticRegression(C=1e12, tol=1e-12, max_iter=10_000).fit(s[:, None], y)
    cal = PlattCalibrator().fit(s, y)
    assert cal.a_ == pytest.approx(ref.coef_[0, 0], rel=1e-4)
    assert cal.b_ == pytest.approx(ref.intercept_[0], rel=1e-4)
    # With an L2 penalty the scaling is sklearn's C.
    ref = LogisticRegression(C=0.5, tol=1e-12, max_iter=10_000).fit(s[:, None], y)
    cal = PlattCalibrator(c=0.5).fit(s, y)
    assert cal.a_ == pytest.approx(ref.coef_[0, 0], rel=1e-4)
    assert cal.b_ == pytest.approx(ref.intercept_[0], rel=1e-4)


def test_platt_separated_data_stays_finite() -> None:
    s = np.array([0.1, 0.2, 0.3, 0.6, 0.7])
    y = np.array([0, 0, 0, 1, 1])
    cal = PlattCalibrator().fit(s, y)
    assert not cal.converged_ and np.isfinite([cal.a_, cal.b_]).all() and cal.a_ > 0
    p = cal.predict_proba(s)
    assert np.all(p[:3] < 1e-3) and np.all(p[3:] > 1 - 1e-3)


def test_platt_smoothed_targets_fit_platts_targets() -> None:
    s = np.array([0.1, 0.2, 0.3, 0.6, 0.7])
    y = np.array([0, 0, 0, 1, 1])
    cal = PlattCalibrator(smooth_targets=True).fit(s, y)
    assert cal.converged_  # separated classes, yet a finite optimum
    # Stationarity of the log-loss against Platt's targets: (2+1)/(2+2) and 1/(3+2).
    t = np.where(y == 1, 3 / 4, 1 / 5)
    residual = cal.predict_proba(s) - t
    assert residual.sum() == pytest.approx(0, abs=1e-9)
    assert (residual * s).sum() == pytest.approx(0, abs=1e-9)
    # With plenty of data the smoothing hardly matters.
    rng = np.random.default_rng(0)
    big = rng.random(20_000)
    labels = rng.random(big.size) < expit(8 * big - 4)
    smooth = PlattCalibrator(smooth_targets=True).fit(big, labels)
    assert smooth.a_ == pytest.approx(PlattCalibrator().fit(big, labels).a_, rel=1e-3)


def test_isotonic_is_monotone() -> None:
    s, y = _miscalibrated(500, 2)
    cal = IsotonicCalibrator().fit(s, y)
    grid = np.linspace(-0.5, 1.5, 1001)
    p = cal.predict_proba(grid)
    assert np.all(np.diff(p) >= 0) and p.min() >= 0 and p.max() <= 1


@pytest.mark.parametrize("cls", [TemperatureCalibrator, BetaCalibrator, PlattCalibrator])
def test_parametric_calibrators_improve_nll(cls: type) -> None:
    s_fit, y_fit = _miscalibrated(2000, 3)
    s_ev, y_ev = _miscalibrated(2000, 4)
    p = cls().fit(s_fit, y_fit).predict_proba(s_ev)
    raw = Uncalibrated().predict_proba(s_ev)
    assert nll(p, y_ev) < nll(raw, y_ev) - 0.05
    assert brier(p, y_ev) < brier(raw, y_ev)


def test_temperature_recovers_known_parameters() -> None:
    # p = sigmoid(logit(s) / T + b) with T = 2, b = 0.5.
    rng = np.random.default_rng(5)
    s = rng.random(50_000)
    y = rng.random(s.size) < expit(logit(s) / 2 + 0.5)
    cal = TemperatureCalibrator().fit(s, y)
    assert cal.converged_
    assert cal.temperature_ == pytest.approx(2, rel=0.05)
    assert cal.bias_ == pytest.approx(0.5, rel=0.1)


def test_beta_recovers_known_parameters_and_constraint() -> None:
    # p = sigmoid(2 ln s - 0.5 ln(1 - s) + 1)
    rng = np.random.default_rng(6)
    s = rng.uniform(0.01, 0.99, 50_000)
    y = rng.random(s.size) < expit(2 * np.log(s) - 0.5 * np.log1p(-s) + 1)
    cal = BetaCalibrator().fit(s, y)
    assert (cal.a_, cal.b_, cal.c_) == pytest.approx((2, 0.5, 1), rel=0.1)
    # Anomaly probability decreasing in s near 0 (a < 0 unconstrained): a is dropped.
    y = rng.random(s.size) < expit(-1 * np.log(s) - 1 * np.log1p(-s) - 3)
    cal = BetaCalibrator().fit(s, y)
    assert cal.a_ == 0 and cal.b_ >= 0
    assert np.all(np.diff(cal.predict_proba(np.linspace(0, 1, 201))) >= 0)
    # Anomaly probability decreasing everywhere: only the intercept is left.
    y = rng.random(s.size) < 1 - s
    cal = BetaCalibrator().fit(s, y)
    assert cal.a_ == 0 and cal.b_ == 0 and expit(cal.c_) == pytest.approx(y.mean())


# ---------------------------------------------------------------------------------------
# Safe fitting
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["platt", "temperature", "isotonic", "beta"])
def test_one_class_falls_back_with_a_note(name: str) -> None:
    s = np.array([0.2, 0.3, 0.25, 0.4])
    cal, note = fit_calibrator_safely(name, s, [0, 0, 0, 0])
    assert isinstance(cal, Uncalibrated) and note is not None and name in note
    p = cal.predict_proba(s)
    assert np.isfinite([ece(p, [0] * 4), nll(p, [0] * 4), brier(p, [0] * 4)]).all()


def test_too_few_per_class() -> None:
    s = np.array([0.2, 0.3, 0.25, 0.6])
    y = np.array([0, 0, 0, 1])
    for name in ("platt", "temperature", "beta"):
        cal, note = fit_calibrator_safely(name, s, y)
        assert isinstance(cal, Uncalibrated) and "uncalibrated" in note
    cal, note = fit_calibrator_safely("isotonic", s, y)  # both classes present: enough
    assert isinstance(cal, IsotonicCalibrator) and note is None
    cal, note = fit_calibrator_safely("uncal", s, [0, 0, 0, 0])
    assert isinstance(cal, Uncalibrated) and note is None


def test_safe_fit_notes_separation_and_passes_normal_fits() -> None:
    s = np.array([0.1, 0.2, 0.3, 0.6, 0.7])
    cal, note = fit_calibrator_safely("platt", s, [0, 0, 0, 1, 1])
    assert isinstance(cal, PlattCalibrator) and "separated" in note
    assert np.isfinite(cal.predict_proba(np.linspace(0, 1, 11))).all()
    s, y = _miscalibrated(200, 7)
    for name in CALIBRATORS:
        cal, note = fit_calibrator_safely(name, s, y)
        assert note is None and cal.name == name


# ---------------------------------------------------------------------------------------
# Entropy flagging
# ---------------------------------------------------------------------------------------


def test_entropy_flag_rate_on_its_own_data() -> None:
    rng = np.random.default_rng(8)
    for n in (7, 20, 33, 100, 101):
        for rate in (0.0, 0.05, 0.1, 0.29, 0.5):
            clean = rng.random(n)
            threshold = rate_threshold(clean, rate)
            flagged = np.sum(clean > threshold)
            assert flagged <= rate * n + 1e-9
            # Smallest such threshold: the next lower value would flag too many.
            below = np.sort(clean)[np.sort(clean) < threshold]
            if below.size:
                assert np.sum(clean > below[-1]) > rate * n + 1e-9


def test_entropy_flag_with_ties() -> None:
    clean = np.array([0.1] * 10 + [0.5] * 10)
    threshold = rate_threshold(clean, 0.05)  # m = 20 - 1 = 19: threshold 0.5
    assert threshold == 0.5 and not (clean > threshold).any()


def test_flagging_auroc() -> None:
    assert flagging_auroc([0.1, 0.2, 0.3], [0.5, 0.6]) == 1.0
    assert flagging_auroc([0.3, 0.3], [0.3, 0.3, 0.3]) == 0.5


def test_tpr_at_fpr_hand() -> None:
    # 20 clean values 0, 0.05, ..., 0.95; rate 0.05: m = 20 - floor(1) = 19, threshold 0.9
    # (only 0.95 is above it). Adversarial 0.5, 0.92, 0.95, 1.0: three above -> 3/4.
    clean = np.arange(20) / 20
    assert tpr_at_fpr(clean, [0.5, 0.92, 0.95, 1.0], fpr=0.05) == 0.75


# ---------------------------------------------------------------------------------------
# Conformal threshold
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_conformal_false_alarm_rate(alpha: float) -> None:
    # Expected false-alarm rate is exactly (n + 1 - k) / (n + 1), k = ceil((n+1)(1-alpha)):
    # 2/51 for alpha 0.05, 5/51 for 0.1 (n = 50). Monte Carlo sd over 2000 draws < 0.001.
    rng = np.random.default_rng(9)
    n, draws, fresh = 50, 2000, 50
    rates = np.empty(draws)
    for i in range(draws):
        conf = ConformalThreshold(alpha).fit(rng.standard_normal(n))
        rates[i] = conf.predict(rng.standard_normal(fresh)).mean()
    slack = 0.004
    assert rates.mean() <= alpha + slack
    assert rates.mean() >= alpha - 1 / (n + 1) - slack


def test_conformal_p_values_agree_with_threshold() -> None:
    rng = np.random.default_rng(10)
    for n in (19, 20, 49, 50, 99):
        for alpha in (0.05, 0.1, 0.2):
            cal = rng.integers(0, 10, n).astype(float)  # integers: many ties
            conf = ConformalThreshold(alpha).fit(cal)
            test = np.concatenate([rng.integers(-1, 12, 200).astype(float), cal])
            p = conf.p_values(test)
            np.testing.assert_array_equal(conf.predict(test), (p <= alpha).astype(int))


def test_conformal_p_values_hand() -> None:
    conf = ConformalThreshold(0.2).fit([1.0, 2.0, 3.0, 4.0])
    # (1 + #{cal >= s}) / 5
    np.testing.assert_allclose(conf.p_values([0.0, 2.0, 2.5, 5.0]), [1.0, 0.8, 0.6, 0.2])
    # k = ceil(5 * 0.8) = 4: threshold 4.0; only 5.0 is above it (p 0.2 <= 0.2).
    assert conf.threshold_ == 4.0
    np.testing.assert_array_equal(conf.predict([0.0, 2.0, 4.0, 5.0]), [0, 0, 0, 1])


def test_conformal_too_few_scores() -> None:
    assert ConformalThreshold.min_calibration_size(0.05) == 19
    assert ConformalThreshold.min_calibration_size(0.1) == 9
    with pytest.warns(UserWarning, match="19"):
        conf = ConformalThreshold(0.05).fit(np.arange(18.0))
    assert conf.threshold_ == math.inf and not conf.predict([1e9]).any()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ConformalThreshold(0.05).fit(np.arange(19.0)).threshold_ == 18.0


# ---------------------------------------------------------------------------------------
# Calibration split
# ---------------------------------------------------------------------------------------


def test_calibration_split_properties() -> None:
    labels = np.array([0] * 60 + [1] * 40)
    cal, ev = calibration_split(labels, 0.2, seed=0)
    assert cal.size == 20 and ev.size == 80
    assert np.intersect1d(cal, ev).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([cal, ev])), np.arange(100))
    assert np.all(np.diff(cal) > 0) and np.all(np.diff(ev) > 0)
    assert labels[cal].sum() == 8  # stratified: 40% anomalies in both parts
    again, _ = calibration_split(labels, 0.2, seed=0)
    other, _ = calibration_split(labels, 0.2, seed=1)
    np.testing.assert_array_equal(cal, again)
    assert not np.array_equal(cal, other)


def test_calibration_split_rounds_up() -> None:
    labels = np.array([0] * 7 + [1] * 6)  # 13 images: ceil(2.6) = 3 for calibration
    cal, ev = calibration_split(labels, 0.2, seed=0)
    assert cal.size == 3 and ev.size == 10
    assert 0 < labels[cal].sum() < 3


def test_calibration_split_impossible_cases() -> None:
    with pytest.raises(CalibrationSplitError, match="fewer than 2"):
        calibration_split([0, 0, 0, 0, 1], 0.2)
    with pytest.raises(CalibrationSplitError):
        calibration_split([0, 0, 1, 1], 0.2)  # 1 calibration image cannot hold both classes
    with pytest.raises(CalibrationSplitError):
        calibration_split([0], 0.2)
    assert issubclass(CalibrationSplitError, ValueError)
    # A single class is split plainly.
    cal, ev = calibration_split([0] * 10, 0.2, seed=0)
    assert cal.size == 2 and ev.size == 8


def test_bayes_platt_stays_honest_on_a_few_separable_images() -> None:
    s = np.array([0.010, 0.012, 0.015, 0.011, 0.05, 0.06, 0.07, 0.08])
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    platt = make_calibrator("platt").fit(s, y)
    bayes = make_calibrator("bayes").fit(s, y)
    assert platt.predict_proba([0.016])[0] < 1e-3 or platt.predict_proba([0.016])[0] > 0.999
    p = bayes.predict_proba(s)
    assert np.all((p > 0.05) & (p < 0.95))  # no step function from 8 images
    assert np.all(p[y == 1] > 0.5) and np.all(p[y == 0] < 0.5)
    lo, hi = bayes.predict_interval(s).T
    assert np.all((lo < p) & (p < hi)) and np.all(hi - lo > 0.1)
    # More data, narrower intervals and firmer probabilities.
    many = make_calibrator("bayes").fit(np.tile(s, 20), np.tile(y, 20))
    assert np.all(
        np.diff(many.predict_interval(s), axis=1) < np.diff(bayes.predict_interval(s), axis=1)
    )
    with pytest.raises(ValueError, match="credible level"):
        bayes.predict_interval(s, level=1.5)
